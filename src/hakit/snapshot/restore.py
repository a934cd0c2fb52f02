"""``restore``: a generation into a NEW directory, every hash checked; then, optionally, the swap.

The generation is written into a staging directory beside ``into``
(``.<name>.partial-<hex>``): the home under ``home/``, the database file under
``database/<name>`` (a base backup's: a new data directory there,
hakit.snapshot.pgdatadir), each file with its mode and mtime, its objects fetched
concurrently and checked (hakit.snapshot.reader, hakit.snapshot.restoretree),
then ``RESTORED.json``; the whole staging directory is made durable at once
(syncfs), and only then renamed to ``into``. A failure (a missing or corrupt
object, a full disk, an interrupt) stops every fetch, removes the staging
directory and raises; ``into`` then does not exist and nothing else was touched.
The live home is never a restore's target.

``swap_into_place`` (``--swap``, with the app stopped) then renames the live
home and database aside (``<path>.before-<generation>``, with the database's
``-wal``, ``-shm`` and ``-journal`` files, whose stale pages would otherwise be
applied to the restored file) and the restored ones into place, on the same
file system; a failure part-way renames back what was moved.

``swap_generation`` is the swap for any database: SQLite as above; PostgreSQL
(``hakit.snapshot.pgrestore``) first restores the dump into a new database on
the app's server and checks it, then renames the live database aside and the
restored one in, and only then swaps the home (renaming the databases back if
that fails). A generation whose database is of another kind than the app's is
refused before anything moves.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot.basebackup import BASEBACKUP, SWAP_REFUSED
from hakit.snapshot.database import SQLITE, DatabaseTarget
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.ledger import LinkSource, record_files, write_ledger
from hakit.snapshot.pgdatadir import unpack_data_directory
from hakit.snapshot.pgrestore import OnStarted, restore_in_place, swap_back
from hakit.snapshot.postgres import POSTGRESQL, parse_postgres_url
from hakit.snapshot.reader import (
    DEFAULT_BUDGET,
    OnFetch,
    fetch_objects,
    plan_fetches,
    read_concurrency,
    read_in_order,
)
from hakit.snapshot.restoretree import TreeWriter, make_durable, open_for_sync, safe_path
from hakit.snapshot.store import Store
from hakit.snapshot.verify import read_manifest

HOME = "home"
DATABASE = "database"
RECEIPT = "RESTORED.json"
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


@dataclass(frozen=True, slots=True)
class RestoreReport:
    generation: str
    into: Path
    files: int
    bytes: int
    database: Path | None
    linked: int = 0  # files hard-linked from the generation before (hakit.snapshot.ledger)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_target(into: Path, live: list[Path]) -> None:
    """``into`` must be new, and neither a live path nor inside or around one."""
    target = into.absolute().resolve()
    if into.exists() or into.is_symlink():
        raise SnapshotError(f"{into} exists: restore into a new directory")
    for path in live:
        path = path.absolute().resolve()
        if target == path or path in target.parents or target in path.parents:
            raise SnapshotError(
                f"{into} is (in) the live {path}: restore into a new directory, then --swap"
            )


def restore_generation(
    store: Store,
    generation: str | None,
    into: Path,
    live: list[Path] | None = None,
    *,
    concurrency: int | None = None,
    budget: int = DEFAULT_BUDGET,
    on_fetch: OnFetch | None = None,
    ledger: bool = False,
    link_from: LinkSource | None = None,
) -> RestoreReport:
    """``concurrency``: objects fetched at once (None: the store's, ``read_concurrency``);
    ``budget``: their bytes at most (hakit.snapshot.reader); ``on_fetch``: for tests.
    ``ledger``: the restored files recorded beside them, and ``link_from``: the files
    linked from a generation restored before, where its ledger allows (a standby's
    apply: hakit.snapshot.ledger)."""
    check_target(into, live or [])
    manifest = read_manifest(store, generation)
    into = into.absolute()
    into.parent.mkdir(parents=True, exist_ok=True)
    staging = into.parent / f".{into.name}.partial-{secrets.token_hex(4)}"
    staging.mkdir()
    sync_fd = open_for_sync(staging)
    try:
        tree = TreeWriter()
        unpacked = 0  # a base backup's archive bytes
        database: Path | None = None
        if manifest.database is not None:
            (staging / DATABASE).mkdir()
            database = staging / DATABASE / safe_path(Path(), manifest.database.name).name
            if manifest.database.kind == BASEBACKUP:  # a data directory (hakit.snapshot.pgdatadir)
                # A tar stream: read in order, unpacked and checked as it comes.
                chunks = read_in_order(store, manifest.database.chunks)
                major = int(manifest.database.position["server_version_num"]) // 10000
                unpacked = unpack_data_directory(chunks, database, major)
            else:
                tree.add_file(
                    database,
                    f"the database copy {manifest.database.name}",
                    manifest.database.size,
                    0o600,
                    None,
                    manifest.database.chunks,
                )
        tree.prepare(manifest, staging / HOME, link_from)
        fetch_objects(
            store,
            plan_fetches(tree.refs()),
            tree.deliver,
            concurrency=read_concurrency(store) if concurrency is None else concurrency,
            budget=budget,
            on_fetch=on_fetch,
        )
        tree.finish()
        receipt = {
            "generation": manifest.generation,
            "node": manifest.node,
            "epoch": manifest.epoch,
            "started_ns": manifest.started_ns,
            "database": None
            if manifest.database is None
            else dict(manifest.database.encode(), chunks=None),
        }
        if link_from is not None:
            receipt["linked"] = {"from": link_from.generation, "files": link_from.linked}
        if ledger:
            write_ledger(staging, record_files(staging / HOME, manifest.entries))
        (staging / RECEIPT).write_text(json.dumps(receipt, indent=2) + "\n")
        # Durable before the rename: whoever finds ``into`` (a swap, a crash and a
        # reboot) finds every byte of it.
        make_durable(staging, sync_fd)
        os.rename(staging, into)
        _fsync_directory(into.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(sync_fd)
    return RestoreReport(
        manifest.generation,
        into,
        tree.files,
        tree.bytes + unpacked,
        None if database is None else into / DATABASE / database.name,
        0 if link_from is None else link_from.linked,
    )


@dataclass(frozen=True, slots=True)
class SwapReport:
    moved_aside: tuple[Path, ...]
    kept_database: str | None = None  # PostgreSQL: the previous database's new name
    terminated: tuple[str, ...] = ()  # PostgreSQL: the sessions ended by force


def swap_into_place(restored: Path, home: Path, database: Path | None) -> SwapReport:
    """Move the live home (and database) aside and the restored ones in (the app stopped)."""
    receipt = json.loads((restored / RECEIPT).read_text())
    suffix = f".before-{receipt['generation']}"
    moves: list[tuple[Path, Path]] = []  # (from, to), in order
    home = home.absolute()
    if home.exists():
        moves.append((home, home.with_name(home.name + suffix)))
    moves.append((restored / HOME, home))
    restored_database = restored / DATABASE / database.name if database is not None else None
    if database is not None and restored_database is not None and restored_database.exists():
        database = database.absolute()
        for side in ("", *SQLITE_SIDE_FILES):
            live = database.with_name(database.name + side)
            if live.exists():
                moves.append((live, live.with_name(live.name + suffix)))
        moves.append((restored_database, database))
    vacated: set[Path] = set()  # moved away by an earlier step
    for source, target in moves:
        vacated.add(source)
        if target.exists() and target not in vacated:
            raise SnapshotError(f"{target} exists: move it away first; nothing was swapped")
        if source.exists() and os.stat(source).st_dev != os.stat(target.parent).st_dev:
            raise SnapshotError(
                f"{source} and {target.parent} are on different file systems: restore "
                "--into a directory beside the home; nothing was swapped"
            )
    done: list[tuple[Path, Path]] = []
    try:
        for source, target in moves:
            os.rename(source, target)
            done.append((source, target))
            _fsync_directory(target.parent)
    except OSError as error:
        for source, target in reversed(done):
            os.rename(target, source)
        raise SnapshotError(f"the swap failed ({error}); everything was moved back") from None
    return SwapReport(tuple(target for _, target in moves if target.name.endswith(suffix)))


def restored_database(restored: Path) -> tuple[str, Path] | None:
    """(kind, file) of the database a restored directory holds, from its receipt."""
    receipt = json.loads((restored / RECEIPT).read_text())
    database = receipt["database"]
    if database is None:
        return None
    return str(database["kind"]), restored / DATABASE / safe_path(Path(), database["name"]).name


def swap_generation(
    restored: Path,
    home: Path,
    target: DatabaseTarget | None,
    *,
    force: bool = False,
    on_restore_started: OnStarted | None = None,
) -> SwapReport:
    """Swap a restored directory in for the live home and the app's database (``target``)."""
    held = restored_database(restored)
    if held is not None and held[0] == BASEBACKUP:
        raise SnapshotError(SWAP_REFUSED.format(data_directory=held[1]))
    if target is not None and held is not None and held[0] != target.kind:
        raise SnapshotError(
            f"the generation holds a {held[0]} database, the app uses {target.kind}; "
            "nothing was swapped"
        )
    if target is None or target.kind == SQLITE:
        return swap_into_place(restored, home, None if target is None else target.path)
    if held is None:
        raise SnapshotError("the generation holds no database dump; nothing was swapped")
    assert target.kind == POSTGRESQL
    generation = str(json.loads((restored / RECEIPT).read_text())["generation"])
    swap = restore_in_place(target.url, held[1], generation, force, on_restore_started)
    try:
        files = swap_into_place(restored, home, None)
    except BaseException:
        swap_back(parse_postgres_url(target.url), swap)
        raise
    return SwapReport(
        files.moved_aside,
        kept_database=swap.kept,
        terminated=tuple(session.describe() for session in swap.terminated),
    )
