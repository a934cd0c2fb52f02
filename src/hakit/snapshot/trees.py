"""Trees: each directory's entries, content addressed, stored in tree packs.

A ``FORMAT_TREES`` manifest holds no entries itself: it lists every directory of
the home as a ``TreeRef`` (its path, the SHA-256 of its tree, where the tree is:
a tree pack and an offset, the digest of its entries' stats, the newest time of
its files, counts), and each tree holds that directory's entries (the entries
whose parent it is: files, symlinks and subdirectories, as ``Entry.encode``
writes them, compact JSON). A capture puts the trees it writes into one tree
pack ``trees/<p[:2]>/<p>`` (p: the SHA-256 of the pack), as small files go into
packs: a generation is a few objects, not one per directory, for S3 as for a
restore.

Why: an incremental capture must not cost a decode and an encode of every
entry of the home. It lstats every path (as rsync does) and digests each
directory's stats (``stats_digest``); a directory whose digest is the one its
previous tree recorded is unchanged, and its tree is reused by hash: not read,
not decoded, not written. Only the trees of changed directories are read (for
the hash cache of their files) and written again. The manifest stays one short
line per directory, and trees are content addressed like blobs: two generations
with the same directory share its tree (where it is stored), and a reader checks
each against its hash.

The stats digested are exactly what an entry records besides its chunks (path,
type, mode, size, mtime, inode, ctime; a symlink's target): equal stats give
equal chunks by the hash cache's rule, so an equal digest means an equal tree,
unless a file was racily clean (``TreeRef.newest_ns``, hakit.snapshot.hashcache).
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import stat
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hakit.snapshot.format import (
    DIRECTORY,
    FILE,
    SYMLINK,
    Entry,
    Manifest,
    SnapshotError,
    TreeRef,
    decode_manifest,
    manifest_key,
    tree_key,
)
from hakit.snapshot.store import Store

Row = tuple[str, str, int, int, int, int, int, str]
RawEntry = Mapping[str, Any]  # an entry in its JSON form (``Entry.encode``)

# Reading a manifest's tree packs from a remote store: several at once.
READ_CONCURRENCY = 16


def stat_row(path: str, kind: str, st: os.stat_result, target: str = "") -> Row:
    """What an entry of ``kind`` records of ``st`` (besides its chunks), as ``Entry.encode``
    writes it: a directory's inode, size and ctime, and a file's target, are left at 0."""
    if kind == FILE:
        return (
            path,
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
            "",
        )
    if kind == DIRECTORY:
        return (path, kind, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, 0, 0, "")
    return (path, SYMLINK, stat.S_IMODE(st.st_mode), 0, 0, 0, 0, target)


def entry_row(entry: Entry) -> Row:
    """``stat_row`` of what ``entry`` records."""
    if entry.type == FILE:
        return (
            entry.path,
            FILE,
            entry.mode,
            entry.size,
            entry.mtime_ns,
            entry.inode,
            entry.ctime_ns,
            "",
        )
    if entry.type == DIRECTORY:
        return (entry.path, DIRECTORY, entry.mode, 0, entry.mtime_ns, 0, 0, "")
    return (entry.path, SYMLINK, entry.mode, 0, 0, 0, 0, entry.target)


def raw_row(raw: RawEntry) -> Row:
    """``entry_row`` of an entry in its JSON form."""
    kind = raw["type"]
    if kind == FILE:
        return (
            raw["path"],
            FILE,
            raw["mode"],
            raw["size"],
            raw["mtime_ns"],
            raw["inode"],
            raw["ctime_ns"],
            "",
        )
    if kind == DIRECTORY:
        return (raw["path"], DIRECTORY, raw["mode"], 0, raw["mtime_ns"], 0, 0, "")
    return (raw["path"], SYMLINK, raw["mode"], 0, 0, 0, 0, raw["target"])


def stats_digest(rows: Sequence[Row]) -> str:
    """A digest of a directory's rows, in order. marshal (version 2: no back-references,
    so equal rows give equal bytes) is the cheapest exact serialisation of tuples of
    ints and strings; a different Python's marshal could only make digests differ,
    which costs one directory read again, never a wrong reuse."""
    return hashlib.blake2b(marshal.dumps(list(rows), 2), digest_size=16).hexdigest()


def newest_ns(entries: Sequence[RawEntry]) -> int:
    """The newest mtime or ctime of the files among ``entries`` (0: none)."""
    return max(
        (max(raw["mtime_ns"], raw["ctime_ns"]) for raw in entries if raw["type"] == FILE),
        default=0,
    )


def encode_tree(entries: Sequence[RawEntry]) -> bytes:
    """A tree of entries in their JSON form (an unchanged file's as the previous tree had
    it: neither decoded nor encoded again)."""
    return json.dumps(list(entries), separators=(",", ":")).encode()


def read_tree(ref: TreeRef, data: bytes | memoryview) -> list[RawEntry]:
    """The entries, in their JSON form, of the tree ``data`` (its bytes in its pack) of
    ``ref``: checked against its hash, its directory and its count."""
    key = f"tree {ref.hash} in {tree_key(ref.pack)}"
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.hash:
        raise SnapshotError(f"{key} is corrupt: its SHA-256 is not its name")
    try:
        raws = json.loads(bytes(data))
        if not isinstance(raws, list) or not all(isinstance(raw, dict) for raw in raws):
            raise TypeError("not a list of entries")
        prefix = f"{ref.path}/" if ref.path else ""
        for raw in raws:
            path = raw["path"]
            name = path.removeprefix(prefix)
            if not isinstance(path, str) or not path.startswith(prefix) or not name or "/" in name:
                raise SnapshotError(f"{key} of {ref.path or '.'} holds {path!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SnapshotError(f"{key} cannot be read: {error!r}") from None
    if len(raws) != ref.count:
        raise SnapshotError(f"{key} holds {len(raws)} entries, the manifest {ref.count}")
    return raws


def decode_tree(ref: TreeRef, data: bytes | memoryview) -> tuple[Entry, ...]:
    """``read_tree``, each entry decoded (and so checked whole)."""
    raws = read_tree(ref, data)
    try:
        return tuple(Entry.decode(raw) for raw in raws)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SnapshotError(
            f"tree {ref.hash} in {tree_key(ref.pack)} cannot be read: {error!r}"
        ) from None


def tree_reader(store: Store) -> Callable[[TreeRef], list[RawEntry]]:
    """Read and check one tree of ``store``, its entries in their JSON form (the last
    tree pack fetched kept: a capture reads the trees of the directories that changed,
    mostly from one pack)."""
    last: list[tuple[str, bytes]] = []

    def read(ref: TreeRef) -> list[RawEntry]:
        if not last or last[0][0] != ref.pack:
            last[:] = [(ref.pack, store.get(tree_key(ref.pack)))]
        pack = last[0][1]
        return read_tree(ref, memoryview(pack)[ref.offset : ref.offset + ref.size])

    return read


def with_entries(store: Store, manifest: Manifest) -> Manifest:
    """``manifest`` with its entries: a tree manifest's read from its trees (each checked;
    a missing or corrupt one is a SnapshotError), a FORMAT one's as they are."""
    if not manifest.trees:
        return manifest
    packs = list(dict.fromkeys(tree.pack for tree in manifest.trees))
    if len(packs) == 1:
        fetched = [store.get(tree_key(packs[0]))]
    else:
        with ThreadPoolExecutor(min(READ_CONCURRENCY, len(packs))) as pool:
            fetched = list(pool.map(lambda pack: store.get(tree_key(pack)), packs))
    by_pack = dict(zip(packs, fetched, strict=True))
    entries = tuple(
        entry
        for tree in manifest.trees
        for entry in decode_tree(
            tree, memoryview(by_pack[tree.pack])[tree.offset : tree.offset + tree.size]
        )
    )
    return Manifest(
        manifest.generation,
        manifest.started_ns,
        manifest.finished_ns,
        manifest.node,
        manifest.epoch,
        manifest.home,
        manifest.database,
        entries,
        manifest.trees,
    )


def load_manifest(store: Store, generation: str) -> Manifest:
    """Generation ``generation`` of ``store`` with all its entries."""
    return with_entries(store, decode_manifest(store.get(manifest_key(generation))))
