"""A standby applies a generation: restored beside its home, then swapped in by one rename.

Replicated storage (``[cluster] storage = "replicated"``) gives every node a home
of its own. On a standby the home path ``H`` is a symbolic link into a directory
of restored generations beside it::

    H                          -> H.generations/<generation>/home   (relative link)
    H.generations/<generation>/home/...          the home of that generation
    H.generations/<generation>/RESTORED.json     what it is: generation, node, epoch, time
    H.generations/adopted-<ns>/                  H itself, when it was a real directory

``apply_generation`` (the app on this node NOT running: a cold standby) restores
the generation into a staging directory in ``H.generations``
(hakit.snapshot.restore: every object checked against its hash, the whole
directory made durable), places the database in it, fsyncs, renames it to its generation's
name, then swaps: a new symbolic link made beside ``H`` and renamed over it, one
atomic step (rename(2)), the directory fsynced. The app, started later, finds
either the whole previous generation or the whole new one: the home and the
database of one moment, never one newer than the other. A failure before the
rename leaves ``H`` as it was; the live home of a running app is never touched
(``AppRunning`` is asked before anything is written and again just before the
rename).

The database: SQLite must live INSIDE the home (``database_url =
"sqlite:///<home>/data/app.db"``), so the same link switches it with the home;
the copy is renamed to that path in the new generation. PostgreSQL (the node's
own database, hakit.snapshot.pgreplica): the dump is restored into a new
database beside the live one while the generation is prepared; the swap renames
the databases (one transaction), then the home's link, and renames the databases
back if the link's rename fails: home and database of one generation, always.

Each restored generation records its files as the restore left them
(hakit.snapshot.ledger); the next one hard-links the files that did not change
from the generation ``H`` points to (``link``), so an apply writes what changed.

Generations of an older epoch than the one applied are refused (a node that lost
its lease may still have captured one), as are generations that are not newer,
and generations taken outside the agent (no epoch). ``prune_generations`` keeps
the newest ``keep`` (never the one ``H`` points to).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot import pgreplica
from hakit.snapshot.database import SQLITE, DatabaseTarget
from hakit.snapshot.format import Manifest, SnapshotError
from hakit.snapshot.ledger import APP_STARTED, LinkSource, load_ledger
from hakit.snapshot.peerstore import GENERATION
from hakit.snapshot.postgres import POSTGRESQL
from hakit.snapshot.restore import DATABASE, HOME, RECEIPT, SQLITE_SIDE_FILES, restore_generation
from hakit.snapshot.store import Store
from hakit.snapshot.verify import read_manifest

GENERATIONS_SUFFIX = ".generations"
ADOPTED = "adopted-"
STAGING = ".restore-"
LEFTOVERS = (STAGING, f".{STAGING}")  # what an interrupted preparation leaves behind

AppRunning = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class AppliedCopy:
    """The generation a node's home holds: what ``hakit status`` shows as its recovery point."""

    generation: str
    epoch: int | None
    node: str  # where it was taken
    started_ns: int  # when its capture began: every write acknowledged before is in it

    def age(self, now: float) -> float:
        return max(now - self.started_ns / 1e9, 0.0)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    copy: AppliedCopy
    directory: Path  # H.generations/<generation>
    files: int
    bytes: int
    adopted: Path | None  # where a real directory at H was moved
    pruned: tuple[Path, ...]


def generations_dir(home: Path) -> Path:
    home = home.absolute()
    return home.with_name(home.name + GENERATIONS_SUFFIX)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_of(directory: Path) -> AppliedCopy | None:
    try:
        receipt = json.loads((directory / RECEIPT).read_text())
        return AppliedCopy(
            generation=str(receipt["generation"]),
            epoch=None if receipt["epoch"] is None else int(receipt["epoch"]),
            node=str(receipt["node"]),
            started_ns=int(receipt["started_ns"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def current_directory(home: Path) -> Path | None:
    """The directory of the generation ``home`` links to (None: not a link into its
    generations)."""
    home = home.absolute()
    try:
        target = os.readlink(home)
    except OSError:
        return None
    parts = Path(target).parts
    if len(parts) != 3 or parts[0] != home.name + GENERATIONS_SUFFIX or parts[2] != HOME:
        return None
    return generations_dir(home) / parts[1]


def current_copy(home: Path) -> AppliedCopy | None:
    """The generation ``home`` links to (None: not a link into its generations)."""
    directory = current_directory(home)
    return None if directory is None else _copy_of(directory)


def link_source(home: Path) -> LinkSource | None:
    """What the next generation may link from: the one ``home`` links to, with its ledger,
    the app never started on it (None: none such; hakit.snapshot.ledger)."""
    directory = current_directory(home)
    if directory is None or (directory / APP_STARTED).exists():
        return None
    files = load_ledger(directory)
    return None if files is None else LinkSource(directory.name, directory / HOME, files)


def mark_app_started(home: Path) -> None:
    """Mark the generation ``home`` links to before the app starts on it (durably: a
    crash and a reboot find it): from now on it may change, and nothing links from it
    (hakit.snapshot.ledger). Nothing to do when ``home`` is no link into generations."""
    directory = current_directory(home)
    if directory is None or not directory.is_dir():
        return
    fd = os.open(directory / APP_STARTED, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_directory(directory)


UNKNOWN_SOURCE = ""  # a prepared generation whose receipt cannot say what it links


def linked_from(prepared: Path) -> str | None:
    """The generation whose files ``prepared`` links (None: its files are its own)."""
    try:
        receipt = json.loads((prepared / RECEIPT).read_text())
        source = receipt.get("linked", {})
        return str(source["from"]) if source.get("files") else None
    except (OSError, ValueError, AttributeError, KeyError):
        return UNKNOWN_SOURCE  # taken as linking a generation the app started on


def refusal(manifest: Manifest, current: AppliedCopy | None) -> str | None:
    """Why ``manifest`` must not replace ``current`` (None: it may). Pure."""
    if manifest.epoch is None:
        return (
            f"generation {manifest.generation} was taken outside the agent (no epoch): "
            "only the active's generations are applied"
        )
    if current is None:
        return None
    if current.epoch is not None and manifest.epoch < current.epoch:
        return (
            f"generation {manifest.generation} is of epoch {manifest.epoch}, older than the "
            f"epoch {current.epoch} of the copy here ({current.generation}): refused"
        )
    if manifest.generation <= current.generation:
        return f"generation {manifest.generation} is not newer than {current.generation}"
    return None


def keep_prepared(source: str | None, started: Callable[[str], bool]) -> bool:
    """Whether a prepared generation whose files link those of ``source`` (None: it links
    none) may be swapped in: not when the app was started on ``source`` (``started``)
    since, which may have written the files they share (hakit.snapshot.ledger)."""
    return source is None or not started(source)


def app_started_on(home: Path) -> Callable[[str], bool]:
    """Whether the app was started on a generation of ``home`` (by name), as marked."""
    generations = generations_dir(home)
    return lambda generation: (
        generation == UNKNOWN_SOURCE or (generations / generation / APP_STARTED).exists()
    )


def _inside(home: Path, path: Path) -> str:
    """``path`` relative to ``home``, both taken as written (a link at ``home`` not followed)."""
    home, path = home.absolute(), path.absolute()
    if home not in path.parents:
        raise SnapshotError(
            f"replicated storage: the SQLite database {path} is not inside the home {home}; "
            "the home and the database switch together only when it is (e.g. "
            f'database_url = "sqlite:///{home}/data/app.db")'
        )
    return path.relative_to(home).as_posix()


def home_exclusions(home: Path, database: DatabaseTarget | None) -> frozenset[str]:
    """What a capture of ``home`` leaves out: the SQLite file inside it and its side files
    (captured through SQLite's backup API, not read as files)."""
    if database is None or database.kind != SQLITE or database.path is None:
        return frozenset()
    relative = _inside(home, database.path)
    return frozenset(relative + side for side in ("", *SQLITE_SIDE_FILES))


def _place_sqlite(restored: Path, home: Path, database: DatabaseTarget) -> None:
    assert database.path is not None
    relative = _inside(home, database.path)
    receipt = json.loads((restored / RECEIPT).read_text())
    name = Path(str(receipt["database"]["name"])).name
    target = restored / HOME / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    for side in SQLITE_SIDE_FILES:  # a capture that read them as files: stale pages
        target.with_name(target.name + side).unlink(missing_ok=True)
    os.rename(restored / DATABASE / name, target)
    _fsync_directory(target.parent)
    (restored / DATABASE).rmdir()
    _fsync_directory(restored)


def _place_postgresql(restored: Path, home: Path, database: DatabaseTarget) -> None:
    generation = str(json.loads((restored / RECEIPT).read_text())["generation"])
    pgreplica.load_for_swap(restored, database.url, generation)
    _fsync_directory(restored)


# How a restored generation's database is put where the node's app reads it, by kind.
DatabasePlacer = Callable[[Path, Path, DatabaseTarget], None]
DATABASE_PLACERS: dict[str, DatabasePlacer] = {
    SQLITE: _place_sqlite,
    POSTGRESQL: _place_postgresql,
}


def _refuse_running(app_running: AppRunning, what: str) -> None:
    if app_running():
        raise SnapshotError(
            f"the app runs on this node: {what} refused (a generation is applied only to "
            "a cold standby; the live home of a running app is never touched)"
        )


def prepare_generation(
    store: Store,
    manifest: Manifest,
    home: Path,
    database: DatabaseTarget | None,
    link: bool = False,
) -> Path:
    """Restore ``manifest``'s generation into ``H.generations/<generation>`` (complete, or
    not there at all); its path. ``link``: the files unchanged since the generation
    ``home`` links to are hard links to its own (hakit.snapshot.ledger), for a caller
    that does not swap it in if the app started on that one meanwhile
    (``keep_prepared``; hakit.agent.replication)."""
    generations = generations_dir(home)
    generations.mkdir(exist_ok=True)
    final = generations / manifest.generation
    if (final / RECEIPT).is_file() and keep_prepared(linked_from(final), app_started_on(home)):
        return final  # prepared earlier, the swap not done then (the app started)
    # A swap undone (PostgreSQL), or prepared earlier with links to files the app may
    # have written since (it started on their generation): prepared again.
    shutil.rmtree(final, ignore_errors=True)
    staging = generations / f"{STAGING}{manifest.generation}-{secrets.token_hex(4)}"
    try:
        restore_generation(
            store,
            manifest.generation,
            staging,
            live=[home],
            ledger=True,
            link_from=link_source(home) if link else None,
        )
        if manifest.database is not None:
            if database is None:
                raise SnapshotError(
                    f"generation {manifest.generation} holds a {manifest.database.kind} database, "
                    "but this node's app has no database_url"
                )
            if manifest.database.kind != database.kind:
                raise SnapshotError(
                    f"generation {manifest.generation} holds a {manifest.database.kind} "
                    f"database, this node's app uses {database.kind}"
                )
            DATABASE_PLACERS[database.kind](staging, home, database)
        os.rename(staging, final)
        _fsync_directory(generations)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def swap_in(
    home: Path,
    prepared: Path,
    app_running: AppRunning,
    database: DatabaseTarget | None = None,
) -> Path | None:
    """Point ``home`` at ``prepared``'s home in one rename (a PostgreSQL ``database``'s
    restored database renamed in just before); where a real directory at ``home`` was
    moved (None: it was a link or absent)."""
    home = home.absolute()
    generations = generations_dir(home)
    _refuse_running(app_running, "the swap")
    first = not home.is_symlink()  # the node's own home and database until now
    pg_swap = None
    if database is not None and database.kind == POSTGRESQL:
        try:
            pg_swap = pgreplica.swap_database(prepared, database.url, adopted=first)
        except BaseException:
            # Nothing was renamed: the restored database goes, prepared again next time.
            with contextlib.suppress(Exception):  # the swap's own error is the one to tell
                pgreplica.drop_databases(prepared, database.url)
            shutil.rmtree(prepared, ignore_errors=True)
            raise
    try:
        _refuse_running(app_running, "the swap")
        adopted = _swap_link(home, generations, prepared)
    except BaseException:
        if pg_swap is not None:
            assert database is not None
            pgreplica.undo(prepared, database.url, pg_swap)
            shutil.rmtree(prepared, ignore_errors=True)
        raise
    return adopted


def _swap_link(home: Path, generations: Path, prepared: Path) -> Path | None:
    adopted: Path | None = None
    if home.is_dir() and not home.is_symlink():
        # The node's first generation: its own directory is kept, never deleted.
        adopted = generations / f"{ADOPTED}{time.time_ns()}"
        os.rename(home, adopted)
        _fsync_directory(generations)
    link = home.with_name(f".{home.name}.swap-{secrets.token_hex(4)}")
    os.symlink(f"{generations.name}/{prepared.name}/{HOME}", link)
    try:
        os.rename(link, home)  # atomic: the old link, or the new one
    except OSError as error:
        link.unlink(missing_ok=True)
        if adopted is not None:
            os.rename(adopted, home)
        raise SnapshotError(f"the swap of {home} failed ({error}); it is as it was") from None
    _fsync_directory(home.parent)
    return adopted


def prune_generations(home: Path, keep: int, database: DatabaseTarget | None = None) -> list[Path]:
    """Remove all but the newest ``keep`` generations (never the current one) and leftover
    staging directories (with PostgreSQL, the databases only they name:
    hakit.snapshot.pgreplica.drop_databases); what was removed."""
    generations = generations_dir(home)
    if not generations.is_dir():
        return []
    current = current_copy(home)
    names = sorted(name for name in os.listdir(generations) if GENERATION.fullmatch(name))
    doomed = [name for name in names[: max(len(names) - max(keep, 1), 0)]]
    # Ours (``.restore-<generation>-<hex>``), and the restore's own staging inside it
    # (``..restore-<...>.partial-<hex>``, hakit.snapshot.restore): the one a killed agent
    # leaves, as large as the home.
    doomed += [name for name in os.listdir(generations) if name.startswith(LEFTOVERS)]
    removed = []
    for name in doomed:
        if current is not None and name == current.generation:
            continue
        if database is not None and database.kind == POSTGRESQL:
            pgreplica.drop_databases(generations / name, database.url)
        shutil.rmtree(generations / name, ignore_errors=True)
        removed.append(generations / name)
    return removed


def apply_generation(
    store: Store,
    generation: str | None,
    home: Path,
    database: DatabaseTarget | None,
    app_running: AppRunning,
    keep: int = 3,
    link: bool = False,
) -> ApplyReport:
    """Apply ``generation`` (None: the newest) of ``store`` to this node's home (``link``:
    as ``prepare_generation``, for a caller that knows the app cannot start meanwhile)."""
    _refuse_running(app_running, "applying a generation")
    manifest = read_manifest(store, generation)
    why = refusal(manifest, current_copy(home))
    if why is not None:
        raise SnapshotError(why)
    prepared = prepare_generation(store, manifest, home, database, link)
    adopted = swap_in(home, prepared, app_running, database)
    copy = _copy_of(prepared)
    assert copy is not None
    files = sum(1 for entry in manifest.entries if entry.type == "f")
    size = sum(entry.size for entry in manifest.entries)
    size += manifest.database.size if manifest.database else 0
    pruned = tuple(prune_generations(home, keep, database))
    return ApplyReport(copy, prepared, files, size, adopted, pruned)
