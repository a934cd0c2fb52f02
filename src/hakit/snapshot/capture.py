"""Taking a generation: freeze, database, home, thaw, then the manifest last.

The database is copied before the home is walked: with the app's write order
(an attachment's file written before its row, a row deleted before its file)
every row of the copy then finds its file in the home captured after it, even
without a freeze; the home may hold newer files no row names yet (orphans,
harmless). Blobs and packs are written as they are read; the manifest only once
all of them are durable, so an interrupted capture leaves no generation.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hakit.snapshot.database import DUMP, capture_database, database_target
from hakit.snapshot.format import (
    DatabaseCapture,
    Entry,
    Limits,
    Manifest,
    SnapshotError,
    decode_manifest,
    encode_manifest,
    manifest_key,
    new_generation_id,
)
from hakit.snapshot.hashcache import HashCache
from hakit.snapshot.hooks import Hook, run_hook
from hakit.snapshot.reading import OnRead, read_stable
from hakit.snapshot.store import Store
from hakit.snapshot.tree import TreeDiff, diff_trees
from hakit.snapshot.walk import HomeWalk, WalkedEntry, WalkStats
from hakit.snapshot.writer import BlobWriter, WriteStats


@dataclass(frozen=True, slots=True)
class CaptureOptions:
    home: Path
    database_url: str = ""
    postgres_method: str = DUMP  # [snapshot] postgres_method (hakit.snapshot.database)
    node: str = ""
    epoch: int | None = None
    limits: Limits = field(default_factory=Limits)
    retries: int = 5
    freeze: Hook | None = None
    thaw: Hook | None = None
    on_read: OnRead | None = None
    exclude: frozenset[str] = (
        frozenset()
    )  # paths relative to the home, left out with their contents


@dataclass(frozen=True, slots=True)
class CaptureReport:
    manifest: Manifest
    written: WriteStats
    walked: WalkStats
    diff: TreeDiff  # against the previous generation


def latest_manifest(store: Store) -> Manifest | None:
    generations = store.list_manifests()
    return decode_manifest(store.get(manifest_key(generations[-1]))) if generations else None


def _capture_database(
    url: str, method: str, writer: BlobWriter, limits: Limits, retries: int
) -> tuple[str, str, int, tuple[tuple[str, int], ...], dict[str, int | str]] | None:
    target = database_target(url, method)
    if target is None:
        return None
    with tempfile.TemporaryDirectory(prefix="hakit-snapshot-db-") as scratch:
        copy = capture_database(target, Path(scratch))
        read = read_stable(
            copy.file,
            chunk_size=limits.chunk_size,
            small_file=limits.small_file,
            add=writer.add,
            retries=retries,
        )
        if read is None:  # pragma: no cover - our own scratch file
            raise SnapshotError(f"the copy {copy.file} vanished")
        return copy.kind, copy.file.name, read.st.st_size, read.chunks, copy.position


def _entry(walked: WalkedEntry, writer: BlobWriter) -> Entry:
    st = walked.st
    return Entry(
        path=walked.path,
        type=walked.type,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size if walked.chunks or stat.S_ISREG(st.st_mode) else 0,
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
        ctime_ns=st.st_ctime_ns,
        chunks=tuple(writer.ref(digest) for digest, _ in walked.chunks),
        target=walked.target,
    )


def create_snapshot(store: Store, options: CaptureOptions) -> CaptureReport:
    home = options.home.absolute()
    if not home.is_dir():
        raise SnapshotError(f"the home {home} is not a directory")
    previous = latest_manifest(store)
    known = {ref.hash: ref for ref in previous.chunk_refs()} if previous else {}
    writer = BlobWriter(store, options.limits, known)
    walk = HomeWalk(
        home,
        writer.add,
        HashCache(previous),
        options.limits,
        retries=options.retries,
        on_read=options.on_read,
        exclude=options.exclude,
    )
    started = time.time_ns()
    try:
        if options.freeze is not None:
            run_hook("freeze", options.freeze)
        database = _capture_database(
            options.database_url, options.postgres_method, writer, options.limits, options.retries
        )
        walked = walk.run()
    finally:
        if options.thaw is not None:
            run_hook("thaw", options.thaw)
    writer.seal()
    entries = tuple(_entry(item, writer) for item in walked)
    manifest = Manifest(
        generation=new_generation_id(started),
        started_ns=started,
        finished_ns=time.time_ns(),
        node=options.node or os.uname().nodename,
        epoch=options.epoch,
        home=str(home),
        database=None
        if database is None
        else DatabaseCapture(
            kind=database[0],
            name=database[1],
            size=database[2],
            chunks=tuple(writer.ref(digest) for digest, _ in database[3]),
            position=database[4],
        ),
        entries=entries,
    )
    store.put_manifest(manifest.generation, encode_manifest(manifest))
    return CaptureReport(
        manifest,
        writer.stats,
        walk.stats,
        diff_trees(previous.entries if previous else (), entries),
    )
