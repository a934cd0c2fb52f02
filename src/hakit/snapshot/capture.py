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
import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from hakit.snapshot.database import DUMP, capture_database, database_target
from hakit.snapshot.format import (
    FILE,
    ChunkRef,
    DatabaseCapture,
    Entry,
    Limits,
    Manifest,
    SnapshotError,
    TreeRef,
    decode_manifest,
    encode_manifest,
    manifest_key,
    new_generation_id,
    tree_key,
)
from hakit.snapshot.hashcache import HashCache
from hakit.snapshot.hooks import Hook, run_hook
from hakit.snapshot.reading import OnRead, read_stable
from hakit.snapshot.scan import stats_digest
from hakit.snapshot.scanahead import HomeScan
from hakit.snapshot.scratch import scratch_directory
from hakit.snapshot.store import LocalStore, RetainsTreeCopies, Store
from hakit.snapshot.tree import TreeDiff, diff_trees
from hakit.snapshot.trees import (
    RawEntry,
    encode_tree,
    newest_ns,
    raw_row,
    tree_reader,
    with_entries,
)
from hakit.snapshot.walk import PIN_DIRECTORY, HomeWalk, WalkedEntry, WalkStats
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


@dataclass(slots=True)
class CaptureReport:
    header: Manifest  # as stored: a tree manifest's entries are in its trees
    written: WriteStats
    walked: WalkStats
    store: Store
    previous: Manifest | None  # the generation it built on, as stored (None: none)
    _manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        """The generation with all its entries (its trees read back from the store when
        asked: the agent's captures never ask; a write-only store cannot answer)."""
        if self._manifest is None:
            self._manifest = with_entries(self.store, self.header)
        return self._manifest

    @property
    def files(self) -> int:
        """The home's regular files in the generation."""
        return self.header.totals()[0]

    @property
    def entries(self) -> int:
        """The home's entries (files, directories, symlinks) in the generation."""
        return sum(tree.count for tree in self.header.trees)

    @property
    def diff(self) -> TreeDiff:
        """What changed against the previous generation (read when asked)."""
        previous = with_entries(self.store, self.previous).entries if self.previous else ()
        return diff_trees(previous, self.manifest.entries)


def latest_manifest(store: Store) -> Manifest | None:
    """The newest generation as stored (a tree manifest without its entries)."""
    generations = store.list_manifests()
    return decode_manifest(store.get(manifest_key(generations[-1]))) if generations else None


def _capture_database(
    url: str, method: str, writer: BlobWriter, limits: Limits, retries: int
) -> tuple[str, str, int, tuple[tuple[str, int], ...], dict[str, int | str]] | None:
    target = database_target(url, method)
    if target is None:
        return None
    # A scratch directory, not a temporary one: the agent kills a capture whose node
    # stops being active, and the copy is as large as the database (hakit.snapshot.scratch).
    with scratch_directory("database") as scratch:
        copy = capture_database(target, scratch)
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


def _entry(walked: WalkedEntry, writer: BlobWriter) -> RawEntry:
    """The entry of ``walked`` in its JSON form: an unchanged file's as its previous tree
    had it (no object made, nothing encoded again)."""
    st = walked.st
    previous = walked.previous
    if previous is not None:
        if previous["ctime_ns"] == st.st_ctime_ns and previous["mode"] == stat.S_IMODE(st.st_mode):
            # The hash cache matched inode, size and mtime: with ctime and mode the same
            # too the entry is the previous one, reused as it is.
            return previous
        chunks = tuple(ChunkRef.decode(chunk) for chunk in previous["chunks"])
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
    ).encode()


def _writing_behind(store: Store) -> contextlib.AbstractContextManager[None]:
    """A local repository's writes in the background for the capture (the manifest
    still only after all of them are durable); other stores write as they do."""
    inner = getattr(store, "inner", store)  # under an EncryptedStore: its store
    return inner.writing_behind() if isinstance(inner, LocalStore) else contextlib.nullcontext()


def create_snapshot(store: Store, options: CaptureOptions) -> CaptureReport:
    home = options.home.absolute()
    if not home.is_dir():
        raise SnapshotError(f"the home {home} is not a directory")
    # The scan helper starts first: its interpreter starts while the previous generation
    # is read and the database captured (hakit.snapshot.scanahead).
    with HomeScan(str(home), PIN_DIRECTORY, options.exclude) as scan, _writing_behind(store):
        return _create(store, options, home, scan)


def _create(store: Store, options: CaptureOptions, home: Path, scan: HomeScan) -> CaptureReport:
    previous = latest_manifest(store)
    known = {ref.hash: ref for ref in previous.chunk_refs()} if previous else {}
    writer = BlobWriter(store, options.limits, known)
    read_tree = tree_reader(store)

    def read_previous_tree(ref: TreeRef) -> list[RawEntry]:
        entries = read_tree(ref)
        writer.know(chunk for raw in entries for chunk in raw.get("chunks", ()))
        return entries

    walk = HomeWalk(
        home,
        writer.add,
        HashCache(previous, read_previous_tree),
        options.limits,
        retries=options.retries,
        on_read=options.on_read,
        exclude=options.exclude,
        scan=scan,
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
    trees = _write_trees(
        store, [(item.part, _entry(item, writer)) for item in walked], walk.reused, previous
    )
    header = Manifest(
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
        entries=(),
        trees=trees,
    )
    store.put_manifest(header.generation, encode_manifest(header))
    if isinstance(store, RetainsTreeCopies):
        store.retain_tree_copies({tree_key(tree.pack) for tree in trees})
    return CaptureReport(header, writer.stats, walk.stats, store, previous)


def _write_trees(
    store: Store,
    entries: list[tuple[int, RawEntry]],
    reused: list[tuple[int, TreeRef]],
    previous: Manifest | None,
) -> tuple[TreeRef, ...]:
    """The trees of the parts not reused (``entries``: each with its part's number in its
    directory), put in one tree pack, and every part's ref, by path and part. The home
    itself always has one, if only empty: a tree manifest names a tree. A tree encoded
    again with the bytes of one of the previous generation's (its files read again for a
    racy time) keeps that generation's place, not put again (prune keeps a capture's
    base: hakit.snapshot.prune)."""
    before = {(tree.path, tree.hash): tree for tree in previous.trees} if previous else {}
    groups: dict[tuple[str, int], list[RawEntry]] = {}
    for part, entry in entries:
        groups.setdefault((entry["path"].rpartition("/")[0], part), []).append(entry)
    refs = {(ref.path, part): ref for part, ref in reused}
    if not any(directory == "" for directory, _ in [*refs, *groups]):
        groups[("", 0)] = []
    parts: list[bytes] = []
    placed: list[tuple[tuple[str, int], list[RawEntry], str, int, int]] = []  # to find in the pack
    offset = 0
    for key, members in groups.items():
        if key in refs:
            raise SnapshotError(f"part {key} walked twice")  # pragma: no cover
        data = encode_tree(members)
        digest = hashlib.sha256(data).hexdigest()
        same = before.get((key[0], digest))
        if same is not None:
            refs[key] = same
            continue
        parts.append(data)
        placed.append((key, members, digest, offset, len(data)))
        offset += len(data)
    if parts:
        pack = b"".join(parts)
        pack_id = hashlib.sha256(pack).hexdigest()
        store.put_if_absent(tree_key(pack_id), pack)
        for key, members, digest, at, size in placed:
            files = [entry for entry in members if entry["type"] == FILE]
            refs[key] = TreeRef(
                key[0],
                digest,
                pack_id,
                at,
                size,
                stats_digest([raw_row(entry) for entry in members]),
                newest_ns(members),
                len(members),
                len(files),
                sum(entry["size"] for entry in files),
            )
    return tuple(refs[key] for key in sorted(refs))
