"""Taking a generation: freeze, database, home, thaw, then the manifest last.

The database is copied before the home is walked: with the app's write order
(an attachment's file written before its row, a row deleted before its file)
every row of the copy then finds its file in the home captured after it, even
without a freeze; the home may hold newer files no row names yet (orphans,
harmless). Blobs and packs are written as they are read; the manifest only once
all of them are durable, so an interrupted capture leaves no generation.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.snapshot.database import DUMP, capture_database, database_target
from hakit.snapshot.format import (
    FILE,
    DatabaseCapture,
    Entry,
    Limits,
    Manifest,
    SnapshotError,
    decode_manifest_json,
    encode_manifest,
    manifest_key,
    new_generation_id,
)
from hakit.snapshot.hashcache import HashCache
from hakit.snapshot.hooks import Hook, run_hook
from hakit.snapshot.reading import OnRead, read_stable
from hakit.snapshot.store import LocalStore, Store
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
    previous: tuple[Entry, ...]  # the previous generation's tree (empty: none)

    @property
    def diff(self) -> TreeDiff:
        """What changed against the previous generation (computed when asked: the
        agent's captures never ask)."""
        return diff_trees(self.previous, self.manifest.entries)


def latest_manifest(store: Store) -> Manifest | None:
    latest = _latest(store)
    return latest[0] if latest else None


def _latest(store: Store) -> tuple[Manifest, list[Mapping[str, Any]]] | None:
    generations = store.list_manifests()
    return decode_manifest_json(store.get(manifest_key(generations[-1]))) if generations else None


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
    previous = walked.previous
    if previous is not None:
        if previous.ctime_ns == st.st_ctime_ns and previous.mode == stat.S_IMODE(st.st_mode):
            # The hash cache matched inode, size and mtime: with ctime and mode the same
            # too the entry is the previous one, reused as it is (and its JSON with it).
            return previous
        chunks = previous.chunks
    else:
        chunks = tuple(writer.ref(digest) for digest, _ in walked.chunks)
    return Entry(
        path=walked.path,
        type=walked.type,
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size if walked.type == FILE else 0,
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
        ctime_ns=st.st_ctime_ns,
        chunks=chunks,
        target=walked.target,
    )


def _writing_behind(store: Store) -> contextlib.AbstractContextManager[None]:
    """A local repository's writes in the background for the capture (the manifest
    still only after all of them are durable); other stores write as they do."""
    inner = getattr(store, "inner", store)  # under an EncryptedStore: its store
    return inner.writing_behind() if isinstance(inner, LocalStore) else contextlib.nullcontext()


def create_snapshot(store: Store, options: CaptureOptions) -> CaptureReport:
    home = options.home.absolute()
    if not home.is_dir():
        raise SnapshotError(f"the home {home} is not a directory")
    with _writing_behind(store):
        return _create(store, options, home)


def _create(store: Store, options: CaptureOptions, home: Path) -> CaptureReport:
    latest = _latest(store)
    previous = latest[0] if latest else None
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
    encoded = _reused_json(entries, latest)
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
    store.put_manifest(manifest.generation, encode_manifest(manifest, encoded))
    return CaptureReport(manifest, writer.stats, walk.stats, previous.entries if previous else ())


def _reused_json(
    entries: tuple[Entry, ...], latest: tuple[Manifest, list[Mapping[str, Any]]] | None
) -> list[Mapping[str, Any] | None]:
    """By index: the previous manifest's JSON object of each entry reused as it was
    (the very same ``Entry``), None for the others (encoded anew)."""
    if latest is None:
        return []
    manifest, raws = latest
    by_path = {e.path: (e, raw) for e, raw in zip(manifest.entries, raws, strict=True)}
    encoded: list[Mapping[str, Any] | None] = []
    for entry in entries:
        found = by_path.get(entry.path)
        encoded.append(found[1] if found is not None and found[0] is entry else None)
    return encoded
