"""``hakit snapshot create|list|verify|restore|prune``: consistent copies of the home and
database.

The work is in hakit.snapshot; these commands read ``app.home`` and
``app.database_url`` (SQLite or PostgreSQL; ``[snapshot]`` for prune) from the config,
open the repository and print (what ``hakit backup`` prints alike: hakit.cli.generations).
``database_url`` may hold a password: it is never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hakit.cli import generations
from hakit.cli.base import ConfigOption, console, fail, load_or_exit
from hakit.snapshot.capture import create_snapshot
from hakit.snapshot.database import DatabaseTarget, database_target
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.pgrestore import restore_copy
from hakit.snapshot.postgres import POSTGRESQL
from hakit.snapshot.prune import DEFAULT_GRACE
from hakit.snapshot.prune import prune as prune_store
from hakit.snapshot.restore import restore_generation, swap_generation
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import verify_generation

snapshot_app = typer.Typer(
    no_args_is_help=True,
    help="Consistent snapshots of the app's home and database into a repository directory.",
)

RepoOption = Annotated[Path, typer.Option("--repo", help="The repository directory.")]


@snapshot_app.command("create")
def create(
    to: Annotated[Path, typer.Option("--to", help="The repository directory (created if new).")],
    config: ConfigOption = Path("hakit.toml"),
    node: generations.NodeOption = "",
    epoch: generations.EpochOption = None,
    freeze: generations.FreezeOption = None,
    thaw: generations.ThawOption = None,
) -> None:
    """Capture the app's database, then its home, as a new generation in --to."""
    cfg = load_or_exit(config)
    options = generations.capture_options(cfg, node, epoch, freeze, thaw)
    try:
        report = create_snapshot(open_local_store(to, create=True), options)
    except SnapshotError as error:
        fail(error)
    manifest, written, walked = report.header, report.written, report.walked
    console.print(
        f"generation {manifest.generation}: {report.entries} entries, "
        f"{walked.files_read} files read ({generations.size(walked.bytes_read)}), "
        f"{walked.files_cached} unchanged; {written.blobs_written} blobs and "
        f"{written.packs_written} packs written ({generations.size(written.bytes_written)}); "
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
        table = generations.table(open_local_store(repo))
    except SnapshotError as error:
        fail(error)
    console.print(table)


@snapshot_app.command("verify")
def verify(repo: RepoOption, generation: generations.GenerationArgument = None) -> None:
    """Re-read and re-hash every object of a generation (exit 1 on any problem)."""
    try:
        report = verify_generation(open_local_store(repo), generation)
    except SnapshotError as error:
        fail(error)
    generations.print_verified(report)


@snapshot_app.command("restore")
def restore(
    repo: RepoOption,
    into: generations.IntoOption,
    generation: generations.GenerationArgument = None,
    swap: generations.SwapOption = False,
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
        generations.print_restored(report, in_place=swap or database is not None)
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
            generations.print_swapped(swapped.moved_aside)
            if swapped.kept_database is not None:
                console.print(
                    f"the previous database is kept as {swapped.kept_database}; once the "
                    f'restored one is accepted: DROP DATABASE "{swapped.kept_database}"',
                    highlight=False,
                )
    except SnapshotError as error:
        fail(error)


GraceOption = Annotated[
    str | None,
    generations.grace_option('"1h" or "0" (default: [snapshot] prune_grace, else 1h).'),
]


@snapshot_app.command("prune")
def prune(
    repo: Annotated[
        Path | None,
        typer.Option("--repo", help="The repository (default: [snapshot] directory)."),
    ] = None,
    keep_last: generations.KeepOption = None,
    keep_daily: generations.KeepOption = None,
    keep_weekly: generations.KeepOption = None,
    grace: GraceOption = None,
    dry_run: generations.DryRunOption = False,
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
    configured = (
        RetentionPolicy()
        if section is None
        else RetentionPolicy(section.keep_last, section.keep_daily, section.keep_weekly)
    )
    policy = generations.retention_policy(keep_last, keep_daily, keep_weekly, configured)
    seconds = generations.grace_seconds(
        grace, DEFAULT_GRACE if section is None else section.prune_grace
    )
    try:
        report = prune_store(open_local_store(repo), policy, grace=seconds, dry_run=dry_run)
    except SnapshotError as error:
        fail(error)
    verb = generations.print_decisions(report.decisions, policy, seconds, dry_run=dry_run)
    console.print(
        f"{verb} {len(report.removed_generations)} generations and {report.removed_objects} "
        f"objects ({generations.size(report.removed_bytes)}); {report.kept_objects} objects "
        f"kept for the generations kept, {report.young_objects} unreferenced kept as younger "
        "than the grace period",
        highlight=False,
        soft_wrap=True,
    )
