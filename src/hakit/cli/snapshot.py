"""``hakit snapshot create|list|verify|restore|prune``: consistent copies of the home and
database.

The work is in hakit.snapshot; these commands read ``app.home`` and
``app.database_url`` (SQLite or PostgreSQL; ``[snapshot]`` for prune) from the config,
open the repository and print. ``database_url`` may hold a password: it is never printed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hakit.cli.base import ConfigOption, console, fail, load_or_exit
from hakit.config import format_duration, parse_duration
from hakit.snapshot.basebackup import BASEBACKUP, PUT_IN_PLACE, SWAP_REFUSED
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.database import DatabaseTarget, database_target
from hakit.snapshot.format import SnapshotError, decode_manifest, manifest_key
from hakit.snapshot.pgrestore import restore_copy
from hakit.snapshot.postgres import POSTGRESQL
from hakit.snapshot.prune import DEFAULT_GRACE
from hakit.snapshot.prune import prune as prune_store
from hakit.snapshot.restore import restore_generation, restored_database, swap_generation
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import verify_generation

snapshot_app = typer.Typer(
    no_args_is_help=True,
    help="Consistent snapshots of the app's home and database into a repository directory.",
)

RepoOption = Annotated[Path, typer.Option("--repo", help="The repository directory.")]
GenerationArgument = Annotated[
    str | None, typer.Argument(help="The generation (default: the newest).", show_default=False)
]


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


@snapshot_app.command("create")
def create(
    to: Annotated[Path, typer.Option("--to", help="The repository directory (created if new).")],
    config: ConfigOption = Path("hakit.toml"),
    node: Annotated[str, typer.Option(help="The node recorded (default: this host).")] = "",
    epoch: Annotated[int | None, typer.Option(help="The epoch recorded.")] = None,
    freeze: Annotated[str | None, typer.Option(help="A command run before (shell).")] = None,
    thaw: Annotated[str | None, typer.Option(help="A command run after, always (shell).")] = None,
) -> None:
    """Capture the app's database, then its home, as a new generation in --to."""
    cfg = load_or_exit(config)
    options = CaptureOptions(
        home=cfg.app.home,
        database_url=cfg.app.database_url,
        postgres_method=cfg.snapshot.postgres_method,
        node=node,
        epoch=epoch,
        freeze=freeze,
        thaw=thaw,
    )
    try:
        report = create_snapshot(open_local_store(to, create=True), options)
    except SnapshotError as error:
        fail(error)
    manifest, written, walked = report.header, report.written, report.walked
    console.print(
        f"generation {manifest.generation}: {report.entries} entries, "
        f"{walked.files_read} files read ({_size(walked.bytes_read)}), "
        f"{walked.files_cached} unchanged; {written.blobs_written} blobs and "
        f"{written.packs_written} packs written ({_size(written.bytes_written)}); "
        f"{len(report.diff.added)} added, {len(report.diff.changed)} changed, "
        f"{len(report.diff.removed)} removed"
        + (
            f"; git repositories: {', '.join(walked.git_repositories)}"
            if walked.git_repositories
            else ""
        ),
        highlight=False,
    )


@snapshot_app.command("list")
def list_(repo: RepoOption) -> None:
    """The generations of a repository, oldest first."""
    try:
        store = open_local_store(repo)
        table = Table("generation", "taken", "node", "epoch", "files", "size", "database")
        for generation in store.list_manifests():
            manifest = decode_manifest(store.get(manifest_key(generation)))
            files, total = manifest.totals()
            taken = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(manifest.started_ns / 1e9))
            database = manifest.database
            table.add_row(
                generation,
                taken,
                manifest.node,
                "-" if manifest.epoch is None else str(manifest.epoch),
                str(files),
                _size(total),
                "-" if database is None else f"{database.kind} {_size(database.size)}",
            )
    except SnapshotError as error:
        fail(error)
    console.print(table)


@snapshot_app.command("verify")
def verify(repo: RepoOption, generation: GenerationArgument = None) -> None:
    """Re-read and re-hash every object of a generation (exit 1 on any problem)."""
    try:
        report = verify_generation(open_local_store(repo), generation)
    except SnapshotError as error:
        fail(error)
    for problem in report.problems:
        console.print(f"[red]{problem}[/red]", highlight=False)
    if not report.ok:
        fail(SnapshotError(f"generation {report.generation}: {len(report.problems)} problems"))
    console.print(
        f"generation {report.generation}: ok, {report.chunks} blobs in {report.objects} "
        f"objects ({_size(report.bytes)}) re-hashed",
        highlight=False,
    )


@snapshot_app.command("restore")
def restore(
    repo: RepoOption,
    into: Annotated[Path, typer.Option("--into", help="A new directory to restore into.")],
    generation: GenerationArgument = None,
    swap: Annotated[
        bool,
        typer.Option(
            "--swap",
            help="Then move the live home and database aside and the restored ones in "
            "(stop the app first).",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --swap on PostgreSQL: terminate sessions on the live database."
        ),
    ] = False,
    database: Annotated[
        str | None,
        typer.Option(
            "--database",
            help="PostgreSQL: also restore the dump into this NEW database on the app's "
            "server, for inspection (no swap).",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = Path("hakit.toml"),
) -> None:
    """Restore a generation into a new directory (home/, database/); --swap puts it in place."""
    if swap and database is not None:
        fail(SnapshotError("--database restores beside the live database; --swap replaces it"))
    needs_config = swap or database is not None
    cfg = load_or_exit(config) if needs_config or config.exists() else None
    live: list[Path] = []
    target: DatabaseTarget | None = None
    try:
        if cfg is not None:
            target = database_target(cfg.app.database_url)
            live = [cfg.app.home, *([target.path] if target and target.path else [])]
        if database is not None and (target is None or target.kind != POSTGRESQL):
            raise SnapshotError("--database needs a postgresql:// app.database_url")
        report = restore_generation(open_local_store(repo), generation, into, live)
        console.print(
            f"generation {report.generation} restored into {report.into}: {report.files} files, "
            f"{_size(report.bytes)}" + (f", database {report.database}" if report.database else ""),
            highlight=False,
        )
        held = restored_database(report.into)
        if held is not None and held[0] == BASEBACKUP:
            if swap or database is not None:
                raise SnapshotError(SWAP_REFUSED.format(data_directory=held[1]))
            console.print(PUT_IN_PLACE.format(data_directory=held[1]), highlight=False)
        if database is not None and target is not None and report.database is not None:
            loaded = restore_copy(target.url, report.database, database)
            console.print(
                f"dump restored into the new database {loaded.database} "
                f'({loaded.tables} tables); drop it with: DROP DATABASE "{loaded.database}"',
                highlight=False,
            )
        if swap and cfg is not None:
            swapped = swap_generation(report.into, cfg.app.home, target, force=force)
            for session in swapped.terminated:
                console.print(f"terminated {session}", highlight=False)
            console.print(
                "swapped in; the previous ones kept at "
                + ", ".join(str(path) for path in swapped.moved_aside),
                highlight=False,
            )
            if swapped.kept_database is not None:
                console.print(
                    f"the previous database is kept as {swapped.kept_database}; once the "
                    f'restored one is accepted: DROP DATABASE "{swapped.kept_database}"',
                    highlight=False,
                )
    except SnapshotError as error:
        fail(error)


KeepOption = Annotated[int | None, typer.Option(min=0, show_default=False)]


@snapshot_app.command("prune")
def prune(
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="The repository (default: [snapshot] directory)."),
    ] = None,
    keep_last: KeepOption = None,
    keep_daily: KeepOption = None,
    keep_weekly: KeepOption = None,
    grace: Annotated[
        str | None,
        typer.Option(
            help='Objects and generations younger are never removed, e.g. "1h" or "0" '
            "(default: [snapshot] prune_grace, else 1h).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what, remove nothing.")] = False,
    config: ConfigOption = Path("hakit.toml"),
) -> None:
    """Remove the generations a retention policy drops, then the objects no kept one needs.

    The policy is the --keep-* options when any is given, else [snapshot] keep_last,
    keep_daily and keep_weekly. The newest generation is always kept. Needs delete
    access to the repository: meant for a more privileged credential than capture's.
    """
    cfg = load_or_exit(config) if repo is None or config.exists() else None
    section = cfg.snapshot if cfg is not None else None
    if repo is None:
        if section is None or section.directory is None:
            fail(SnapshotError(f"no --repo, and {config} sets no [snapshot] directory"))
        repo = section.directory
    if any(value is not None for value in (keep_last, keep_daily, keep_weekly)):
        policy = RetentionPolicy(keep_last or 0, keep_daily or 0, keep_weekly or 0)
    elif section is not None:
        policy = RetentionPolicy(section.keep_last, section.keep_daily, section.keep_weekly)
    else:
        policy = RetentionPolicy()
    if grace is None:
        seconds = section.prune_grace if section is not None else DEFAULT_GRACE
    else:
        try:
            seconds = parse_duration(grace)
        except ValueError as error:
            fail(SnapshotError(f"--grace: {error}"))
    try:
        report = prune_store(open_local_store(repo), policy, grace=seconds, dry_run=dry_run)
    except SnapshotError as error:
        fail(error)
    console.print(
        f"policy: {policy.describe()}; grace period {format_duration(seconds)}", highlight=False
    )
    # One line per generation, newest first (not a table: the reasons are long, and a
    # line stays whole for grep).
    removed = "would remove" if dry_run else "removed"
    for decision in report.decisions:
        generation = decision.generation
        taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(generation.taken_ns / 1e9))
        verdict = f"{'keep':<12}" if decision.keep else f"[red]{removed:<12}[/red]"
        why = "; ".join(str(reason) for reason in decision.reasons) or "no rule keeps it"
        console.print(f"{verdict} {generation.id}  {taken}  {why}", highlight=False, soft_wrap=True)
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{verb} {len(report.removed_generations)} generations and {report.removed_objects} "
        f"objects ({_size(report.removed_bytes)}); {report.kept_objects} objects kept for "
        f"the generations kept, {report.young_objects} unreferenced kept as younger than "
        "the grace period",
        highlight=False,
        soft_wrap=True,
    )
