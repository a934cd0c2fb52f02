"""Trees: the entries of the home's directories, content addressed, in tree packs.

A ``FORMAT_TREES`` manifest holds no entries itself: it lists the home's trees
as ``TreeRef``s (a tree's directory, its SHA-256, where it is: a tree pack and
an offset, the digest of its entries' stats, the newest time of its files,
counts), and each tree holds entries of that directory (the entries whose
parent it is: files, symlinks and subdirectories, as ``Entry.encode`` writes
them, compact JSON): a part of them (below). A capture puts the trees it writes
into one tree pack ``trees/<p[:2]>/<p>`` (p: the SHA-256 of the pack), as small
files go into packs: a generation is a few objects, not one per directory, for
S3 as for a restore.

Why: an incremental capture must not cost a decode and an encode of every
entry of the home. It lstats every path (as rsync does) and digests each
part's stats (``stats_digest``, made by hakit.snapshot.scan); a part whose digest is the one a previous tree
of its directory recorded is unchanged, and that tree is reused by hash: not
read, not decoded, not written. Only the trees of changed parts are read (for
the hash cache of their files) and written again. The manifest stays one short
line per tree, and trees are content addressed like blobs: two generations with
the same part share its tree (where it is stored), and a reader checks each
against its hash.

The stats digested are exactly what an entry records besides its chunks (path,
type, mode, size, mtime, inode, ctime; a symlink's target): equal stats give
equal chunks by the hash cache's rule, so an equal digest means an equal tree,
unless a file was racily clean (``TreeRef.newest_ns``, hakit.snapshot.hashcache).

**Parts.** A directory's entries are cut into parts (``part_ranges``, hakit.snapshot.scan), each its
own tree with its own ``TreeRef``: the manifest lists them by path, a directory's
parts in the order of their entries, and a reader takes a directory's entries as
its parts' in that order. Why: 1 % of the files changed across every directory
(a day of a busy home) would otherwise make every directory's tree be read,
decoded and encoded again whole; with parts, only the parts holding a changed
file are (measured: benchmarks/snapshot.py, the spread rows). A part ends after
an entry whose name's CRC-32 ends in three 1 bits (8 entries on average: a
smaller part re-reads fewer entries around a change, a manifest line per part
costs every capture), or at ``PART_MAX`` entries: the cut depends on the names,
not on positions, so a file added or removed changes the one part it falls in,
and the parts after it keep their trees. A manifest written before parts has one
tree per directory: a directory of one part, read the same way.
"""

from __future__ import annotations

import hashlib
import json
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
from hakit.snapshot.scan import Row
from hakit.snapshot.store import ReadsRanges, Store

RawEntry = Mapping[str, Any]  # an entry in its JSON form (``Entry.encode``)

# Reading a manifest's tree packs from a remote store: several at once.
READ_CONCURRENCY = 16
PACKS_KEPT = 4  # tree packs a capture's hash cache keeps from a remote store


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
    """Read and check one tree of ``store``, its entries in their JSON form. A capture
    reads the trees of the parts that changed, spread over the packs of the captures
    that wrote them: from a store that reads ranges (a local repository) each tree alone (measured: a 1 % change
    across every directory read the first capture's 6.5 MB pack 6 times, 16 ms); from
    another store whole packs, the last ``PACKS_KEPT`` fetched kept."""
    if isinstance(store, ReadsRanges):
        ranges = store

        def read_range(ref: TreeRef) -> list[RawEntry]:
            return read_tree(ref, ranges.get_range(tree_key(ref.pack), ref.offset, ref.size))

        return read_range
    kept: dict[str, bytes] = {}  # in the order used, the last used last

    def read(ref: TreeRef) -> list[RawEntry]:
        pack = kept.pop(ref.pack, None)
        if pack is None:
            pack = store.get(tree_key(ref.pack))
        kept[ref.pack] = pack
        while len(kept) > PACKS_KEPT:
            del kept[next(iter(kept))]
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
