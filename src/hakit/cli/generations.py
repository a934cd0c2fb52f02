"""What ``hakit snapshot`` and ``hakit backup`` share: their commands' common options, and
what they print of a repository's generations.

Both command groups work on the same repository format (hakit.snapshot): ``snapshot``
on a local directory named on the command line, ``backup`` on the configured backup
target (S3 or a directory). Creating, listing, verifying, restoring and pruning
generations take the same options and print the same way in both, so that part is
written once, here; each command keeps what is its own (where its store comes from,
what it prints around this, its other options).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hakit.cli.base import console, fail
from hakit.config import Config, format_duration, parse_duration
from hakit.snapshot.basebackup import BASEBACKUP, PUT_IN_PLACE, SWAP_REFUSED
from hakit.snapshot.capture import CaptureOptions
from hakit.snapshot.format import SnapshotError, decode_manifest, manifest_key
from hakit.snapshot.restore import RestoreReport, restored_database
from hakit.snapshot.retention import Decision, RetentionPolicy
from hakit.snapshot.store import Store
from hakit.snapshot.verify import VerifyReport

# The options the two groups' commands share (their --help, word for word).
GenerationArgument = Annotated[
    str | None, typer.Argument(help="The generation (default: the newest).", show_default=False)
]
NodeOption = Annotated[str, typer.Option(help="The node recorded (default: this host).")]
EpochOption = Annotated[int | None, typer.Option(help="The epoch recorded.")]
FreezeOption = Annotated[str | None, typer.Option(help="A command run before (shell).")]
ThawOption = Annotated[str | None, typer.Option(help="A command run after, always (shell).")]
IntoOption = Annotated[Path, typer.Option("--into", help="A new directory to restore into.")]
SwapOption = Annotated[
    bool,
    typer.Option(
        "--swap",
        help="Then move the live home and database aside and the restored ones in "
        "(stop the app first).",
    ),
]
KeepOption = Annotated[int | None, typer.Option(min=0, show_default=False)]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Say what, remove nothing.")]


def grace_option(default: str) -> Any:  # typer's OptionInfo, typed Any as typer.Option is
    """``prune --grace``, with each group's examples and default."""
    return typer.Option(
        help=f"Objects and generations younger are never removed, e.g. {default}",
        show_default=False,
    )


def size(count: int) -> str:
    """A byte count as people read it: 512 B, 1.5 KiB ... GiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def local_time(ns: float) -> str:
    """A time in nanoseconds since the epoch, in this host's time zone, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ns / 1e9))


def capture_options(
    cfg: Config,
    node: str,
    epoch: int | None,
    freeze: str | None,
    thaw: str | None,
    exclude: frozenset[str] = frozenset(),
) -> CaptureOptions:
    """What ``create`` captures: the config's home and database, the options given."""
    return CaptureOptions(
        home=cfg.app.home,
        database_url=cfg.app.database_url,
        postgres_method=cfg.snapshot.postgres_method,
        node=node,
        epoch=epoch,
        freeze=freeze,
        thaw=thaw,
        exclude=exclude,
    )


def table(store: Store) -> Table:
    """``list``: one row a generation, oldest first (SnapshotError: one cannot be read)."""
    rows = Table("generation", "taken", "node", "epoch", "files", "size", "database")
    for generation in store.list_manifests():
        manifest = decode_manifest(store.get(manifest_key(generation)))
        files, total = manifest.totals()
        database = manifest.database
        rows.add_row(
            generation,
            local_time(manifest.started_ns),
            manifest.node,
            "-" if manifest.epoch is None else str(manifest.epoch),
            str(files),
            size(total),
            "-" if database is None else f"{database.kind} {size(database.size)}",
        )
    return rows


def print_verified(report: VerifyReport) -> None:
    """``verify``: each problem, then exit 1 if there was any, else what was re-hashed."""
    for problem in report.problems:
        console.print(f"[red]{escape(problem)}[/red]", highlight=False)
    if not report.ok:
        fail(SnapshotError(f"generation {report.generation}: {len(report.problems)} problems"))
    console.print(
        f"generation {report.generation}: ok, {report.chunks} blobs in {report.objects} "
        f"objects ({size(report.bytes)}) re-hashed",
        highlight=False,
    )


def print_restored(report: RestoreReport, *, in_place: bool) -> None:
    """``restore``: what was restored where. A PostgreSQL base backup is put in place by
    hand (the steps are printed); asked to be put ``in_place``, it is a SnapshotError."""
    console.print(
        f"generation {report.generation} restored into {report.into}: {report.files} files, "
        f"{size(report.bytes)}" + (f", database {report.database}" if report.database else ""),
        highlight=False,
    )
    held = restored_database(report.into)
    if held is not None and held[0] == BASEBACKUP:
        if in_place:
            raise SnapshotError(SWAP_REFUSED.format(data_directory=held[1]))
        console.print(PUT_IN_PLACE.format(data_directory=held[1]), highlight=False)


def print_swapped(moved_aside: Iterable[Path]) -> None:
    console.print(
        "swapped in; the previous ones kept at " + ", ".join(str(path) for path in moved_aside),
        highlight=False,
    )


def retention_policy(
    keep_last: int | None,
    keep_daily: int | None,
    keep_weekly: int | None,
    configured: RetentionPolicy,
) -> RetentionPolicy:
    """``prune``'s policy: the --keep-* options when any is given, else the config's."""
    if any(value is not None for value in (keep_last, keep_daily, keep_weekly)):
        return RetentionPolicy(keep_last or 0, keep_daily or 0, keep_weekly or 0)
    return configured


def grace_seconds(grace: str | None, configured: float) -> float:
    """``prune``'s grace period: --grace when given (exit 1 if unreadable), else the config's."""
    if grace is None:
        return configured
    try:
        return parse_duration(grace)
    except ValueError as error:
        fail(SnapshotError(f"--grace: {error}"))


def print_decisions(
    decisions: Iterable[Decision],
    policy: RetentionPolicy,
    grace: float,
    *,
    dry_run: bool,
    protected: Collection[str] = (),
) -> str:
    """``prune``: the policy, then one line a generation, newest first; returns the verb
    said of the generations dropped ("removed", or "would remove" on a dry run).

    One line a generation, not a table: the reasons are long, and a line stays whole
    for grep. A kept generation in ``protected`` (backup: each node's newest) says so."""
    console.print(
        f"policy: {policy.describe()}; grace period {format_duration(grace)}", highlight=False
    )
    removed = "would remove" if dry_run else "removed"
    for decision in decisions:
        generation = decision.generation
        taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(generation.taken_ns / 1e9))
        verdict = f"{'keep':<12}" if decision.keep else f"[red]{removed:<12}[/red]"
        why = "; ".join(str(reason) for reason in decision.reasons) or "no rule keeps it"
        if generation.id in protected and decision.keep:
            why += "; a node's newest"
        console.print(f"{verdict} {generation.id}  {taken}  {why}", highlight=False, soft_wrap=True)
    return removed
