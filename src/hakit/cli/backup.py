"""``hakit backup create|list|verify|restore|prune|check|drill``: snapshots into the backup target.

The target comes from the config (hakit.backup.target): the S3 filestore Jira's
filestore-config.xml associates with ``backups``, else a local directory. The
work is in hakit.snapshot (the same repository format as ``hakit snapshot``, and what
both print alike is in hakit.cli.generations).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn

from hakit.backup.drill import (
    DrillReport,
    drill_from_config,
    format_age,
    load_record,
    record_path,
)
from hakit.backup.drillchecks import FAIL, PASS
from hakit.backup.healthcheck import Status, run_directory_check, run_s3_check
from hakit.backup.prune import prune_backups, prune_credential
from hakit.backup.stores import close_store, open_store, s3_client, unwrapped
from hakit.backup.target import BackupTarget, LocalTarget, S3Target, resolve_target
from hakit.cli import generations
from hakit.cli.base import ConfigOption, console, fail, load_or_exit
from hakit.config import Config
from hakit.errors import ConfigError, HakitError
from hakit.snapshot.capture import create_snapshot
from hakit.snapshot.database import database_target
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.restore import restore_generation, swap_into_place
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.s3store import S3Stats, S3Store
from hakit.snapshot.store import Store
from hakit.snapshot.verify import verify_generation

backup_app = typer.Typer(
    no_args_is_help=True,
    help="Backups of the app's home and database to S3 (Jira's filestore-config.xml) or a "
    "directory.",
)


def _target(cfg: Config) -> BackupTarget:
    try:
        return resolve_target(cfg)
    except ConfigError as error:
        for problem in error.problems:
            console.print(f"[red]{escape(problem)}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _open(target: BackupTarget, create: bool = False) -> Store:
    """The repository; for reading unless ``create`` (a write-only record is a writer's)."""
    try:
        return open_store(target, create=create, reading=not create)
    except SnapshotError as error:
        fail(error)


@contextmanager
def _progress(store: Store) -> Iterator[None]:
    """On a terminal, what an S3 backup has sent so far, refreshed while it runs."""
    store = unwrapped(store)
    if not isinstance(store, S3Store) or not console.is_terminal:
        yield
        return
    stop = threading.Event()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=console) as bar:
        task = bar.add_task("capturing")

        def refresh() -> None:
            while not stop.wait(0.2):
                bar.update(task, description=_uploaded(store.stats))

        thread = threading.Thread(target=refresh, name="backup-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _uploaded(stats: S3Stats) -> str:
    return (
        f"{stats.objects_put} objects uploaded ({generations.size(stats.bytes_put)}), "
        f"{stats.objects_present} already there"
    )


def _excluded(cfg: Config, target: BackupTarget) -> frozenset[str]:
    """A backup directory inside the home is not backed up into itself."""
    if not isinstance(target, LocalTarget):
        return frozenset()
    home = cfg.app.home.absolute()
    directory = target.directory.absolute()
    if home in directory.parents:
        return frozenset({directory.relative_to(home).as_posix()})
    return frozenset()


@backup_app.command("create")
def create(
    config: ConfigOption = Path("hakit.toml"),
    node: generations.NodeOption = "",
    epoch: generations.EpochOption = None,
    freeze: generations.FreezeOption = None,
    thaw: generations.ThawOption = None,
    rebuild_index: Annotated[
        bool,
        typer.Option(
            "--rebuild-index",
            help="First rebuild this node's record of stored objects from a listing of the "
            "bucket (needs read access).",
        ),
    ] = False,
) -> None:
    """Capture the database, then the home, as a new generation in the backup target."""
    cfg = load_or_exit(config)
    target = _target(cfg)
    store = _open(target, create=True)
    options = generations.capture_options(
        cfg, node, epoch, freeze, thaw, exclude=_excluded(cfg, target)
    )
    try:
        bottom = unwrapped(store)
        if rebuild_index and isinstance(bottom, S3Store):
            console.print(f"record rebuilt: {bottom.rebuild_record()} objects", highlight=False)
        with _progress(store):
            report = create_snapshot(store, options)
    except (SnapshotError, OSError) as error:  # OSError: the repository's disk is full...
        fail(SnapshotError(f"backup to {target.describe()} failed, no generation written: {error}"))
    finally:
        close_store(store)
    manifest, written = report.header, report.written
    sent = ""
    if isinstance(bottom, S3Store):
        sent = f"; {_uploaded(bottom.stats)}"
    console.print(
        f"generation {manifest.generation} in {target.describe()}: {report.entries} "
        f"entries, {report.walked.files_read} files read, {report.walked.files_cached} "
        f"unchanged; {written.blobs_written} blobs and {written.packs_written} packs new{sent}",
        highlight=False,
        soft_wrap=True,
    )


@backup_app.command("list")
def list_(config: ConfigOption = Path("hakit.toml")) -> None:
    """The generations in the backup target, oldest first."""
    cfg = load_or_exit(config)
    target = _target(cfg)
    store = _open(target)
    try:
        table = generations.table(store)
    except SnapshotError as error:
        fail(error)
    finally:
        close_store(store)
    console.print(f"backups in {target.describe()}", highlight=False, soft_wrap=True)
    console.print(table)
    last = load_record(record_path(cfg.cluster.state_dir))
    if last is not None:
        console.print(_last_drill(last, target.describe()), highlight=False, soft_wrap=True)


def _when(ns: object) -> str:
    return generations.local_time(ns) if isinstance(ns, int) else "-"


def _last_drill(record: dict[str, object], target: str) -> str:
    verdict = "[green]passed[/green]" if record.get("ok") else "[red]FAILED[/red]"
    checks = record.get("checks")
    count = len(checks) if isinstance(checks, list) else 0
    where = "" if record.get("target") == target else f" of {escape(str(record.get('target')))}"
    return (
        f"last drill{where}: {_when(record.get('finished_ns'))}, generation "
        f"{record.get('generation') or '-'} (taken {_when(record.get('taken_ns'))}) "
        f"{verdict}, {count} checks"
    )


@backup_app.command("verify")
def verify(
    config: ConfigOption = Path("hakit.toml"), generation: generations.GenerationArgument = None
) -> None:
    """Re-read and re-hash every object of a generation (exit 1 on any problem)."""
    cfg = load_or_exit(config)
    store = _open(_target(cfg))
    try:
        report = verify_generation(store, generation)
    except SnapshotError as error:
        fail(error)
    finally:
        close_store(store)
    generations.print_verified(report)


@backup_app.command("restore")
def restore(
    into: generations.IntoOption,
    generation: generations.GenerationArgument = None,
    swap: generations.SwapOption = False,
    config: ConfigOption = Path("hakit.toml"),
) -> None:
    """Restore a generation into a new directory (home/, database/); --swap puts it in place."""
    cfg = load_or_exit(config)
    store = _open(_target(cfg))
    try:
        target = database_target(cfg.app.database_url)
        database = target.path if target else None
        live = [cfg.app.home, *([database] if database else [])]
        report = restore_generation(store, generation, into, live)
        generations.print_restored(report, in_place=swap)
        if swap:
            generations.print_swapped(
                swap_into_place(report.into, cfg.app.home, database).moved_aside
            )
    except SnapshotError as error:
        fail(error)
    except OSError as error:  # the restore's disk is full...: its partial directory is removed
        fail(
            SnapshotError(
                f"restore into {into} failed: {error}; nothing was replaced (the live home "
                "and database are untouched)"
            )
        )
    finally:
        close_store(store)


@backup_app.command("check")
def check(
    config: ConfigOption = Path("hakit.toml"),
    node: generations.NodeOption = "",
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 on a warning too.")] = False,
) -> None:
    """Jira's backup health check: write, read and delete an object under backups/Healthcheck/."""
    cfg = load_or_exit(config)
    target = _target(cfg)
    name = node or os.uname().nodename
    try:
        if isinstance(target, LocalTarget):
            report = run_directory_check(target.directory, name)
        else:
            report = run_s3_check(s3_client(target), target.filestore.bucket, name)
    except HakitError as error:
        fail(error)
    colour = {Status.OK: "green", Status.WARNING: "yellow", Status.ERROR: "red"}[report.status]
    console.print(f"backups: {escape(target.describe())}", highlight=False, soft_wrap=True)
    for message in report.messages:
        console.print(
            f"[{colour}]{report.status.upper()}: {escape(message)}[/{colour}]",
            highlight=False,
            soft_wrap=True,
        )
    if report.status is Status.ERROR or (strict and report.status is Status.WARNING):
        raise typer.Exit(1)


def _print_drill(report: DrillReport, target: str) -> None:
    console.print(f"drill of {escape(target)}", highlight=False, soft_wrap=True)
    colours = {PASS: "green", FAIL: "red"}
    for check in report.checks:
        colour = colours.get(check.status, "yellow")
        console.print(
            f"[{colour}]{check.status.upper():4}[/{colour}] {escape(check.name)}: "
            f"{escape(check.detail)}",
            highlight=False,
            soft_wrap=True,
        )
    if report.generation is not None and report.taken_ns is not None:
        age = max(0.0, (report.finished_ns - report.taken_ns) / 1e9)
        console.print(
            f"recovery point: generation {report.generation}, taken {_when(report.taken_ns)} "
            f"({format_age(age)} before this drill)",
            highlight=False,
            soft_wrap=True,
        )
    if report.kept is not None:
        console.print(f"kept: {report.kept}", highlight=False, soft_wrap=True)
    verdict = "[green]passed[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(f"drill {verdict}", highlight=False)


@backup_app.command("drill")
def drill(
    config: ConfigOption = Path("hakit.toml"),
    generation: generations.GenerationArgument = None,
    scratch: Annotated[
        Path | None,
        typer.Option(
            "--scratch",
            help="Where to restore (a new directory is made in it; default: the system's "
            "temporary directory). Never the live home.",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the restored directory (and scratch database).")
    ] = False,
    scratch_database_url: Annotated[
        str | None,
        typer.Option(
            "--scratch-database-url",
            help="PostgreSQL: a server where the dump is restored into a new database, "
            "checked and dropped (without it the dump is only listed).",
        ),
    ] = None,
) -> None:
    """Restore the newest generation into a scratch directory and check it as the app
    would: database integrity, git fsck, attachments (exit 1 on any failure)."""
    cfg = load_or_exit(config)
    _target(cfg)  # its configuration errors, printed as the other commands print them
    try:
        report, target = drill_from_config(
            cfg,
            scratch=scratch,
            keep=keep,
            scratch_database_url=scratch_database_url,
            generation=generation,
        )
    except HakitError as error:
        fail(error)
    _print_drill(report, target)
    if not report.ok:
        raise typer.Exit(1)


EnvOption = Annotated[
    str | None,
    typer.Option(
        help="The environment variable holding prune's key (default: [backup] "
        "prune_access_key_env / prune_secret_key_env, else the backup credential).",
        show_default=False,
    ),
]

GraceOption = Annotated[
    str | None, generations.grace_option('"1h" (default: [backup] prune_grace, 1h).')
]


@backup_app.command("prune")
def prune(
    keep_last: generations.KeepOption = None,
    keep_daily: generations.KeepOption = None,
    keep_weekly: generations.KeepOption = None,
    grace: GraceOption = None,
    dry_run: generations.DryRunOption = False,
    access_key_env: EnvOption = None,
    secret_key_env: EnvOption = None,
    config: ConfigOption = Path("hakit.toml"),
) -> None:
    """Remove the backups a retention policy drops, then the objects no kept one needs.

    The policy is the --keep-* options when any is given, else [backup] keep_last,
    keep_daily and keep_weekly. The newest generation, and each node's newest, are
    always kept. Needs list, read and delete access: meant for a more privileged
    credential than the backups' (--access-key-env/--secret-key-env or [backup]
    prune_access_key_env/prune_secret_key_env).
    """
    cfg = load_or_exit(config)
    section = cfg.backup
    target = _target(cfg)
    policy = generations.retention_policy(
        keep_last,
        keep_daily,
        keep_weekly,
        RetentionPolicy(section.keep_last, section.keep_daily, section.keep_weekly),
    )
    seconds = generations.grace_seconds(grace, section.prune_grace)
    try:
        if isinstance(target, S3Target):
            target = prune_credential(
                target,
                access_key_env,
                secret_key_env,
                (section.prune_access_key_env, section.prune_secret_key_env),
            )
        elif access_key_env is not None or secret_key_env is not None:
            fail(SnapshotError(f"--access-key-env: the backups are in {target.describe()}"))
        report = prune_backups(target, policy, grace=seconds, dry_run=dry_run)
    except SnapshotError as error:
        fail(SnapshotError(f"prune of {target.describe()}: {error}; nothing more was removed"))
    console.print(f"backups in {escape(target.describe())}", highlight=False, soft_wrap=True)
    removed = generations.print_decisions(
        report.prune.decisions, policy, seconds, dry_run=dry_run, protected=report.protected
    )
    pruned = report.prune
    console.print(
        f"{removed} {len(pruned.removed_generations)} generations and {pruned.removed_objects} "
        f"objects ({generations.size(pruned.removed_bytes)}); {pruned.kept_objects} objects "
        f"kept for the generations kept, {pruned.young_objects} unreferenced kept (younger "
        "than the grace period, or a backup in progress)",
        highlight=False,
        soft_wrap=True,
    )
    if report.open_captures:
        console.print(
            f"[yellow]{len(report.open_captures)} backup(s) in progress: unreferenced objects "
            "are kept until they finish; run prune again later[/yellow]",
            highlight=False,
            soft_wrap=True,
        )
