"""Which files need not be read again: the previous generation's hashes, by stat.

A file whose (inode, size, mtime_ns, ctime_ns) is what the previous generation
recorded at the same path has the same content, and its chunks are reused
without reading it. Not when its times are within ``RACY_NS`` of that
generation's start: a write in the same timestamp tick as the read that hashed
it would leave the stat unchanged (git's "racily clean" entries). Files whose
ctime changes without their content (git objects, whose ctime a hard-link pin
moves) are compared without ctime.

A part of a directory (hakit.snapshot.trees) is known unchanged without its
entries (``unchanged``): the digest of its entries' stats matches what one of
the directory's previous trees recorded, and no file in that tree was racily
clean then. A directory's previous trees not reused are read when one of its files is
first asked for: those hold the files of its parts that changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hakit.snapshot.format import FILE, ChunkRef, Entry, Manifest, SnapshotError, TreeRef
from hakit.snapshot.trees import RawEntry

RACY_NS = 2_000_000_000


@dataclass(frozen=True, slots=True)
class StatKey:
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int | None  # None: not compared

    @classmethod
    def of(cls, st: os.stat_result, trust_ctime: bool = True) -> StatKey:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns if trust_ctime else None)

    @classmethod
    def of_entry(cls, entry: Entry, trust_ctime: bool = True) -> StatKey:
        return cls(entry.inode, entry.size, entry.mtime_ns, entry.ctime_ns if trust_ctime else None)


class HashCache:
    """The previous generation's files by path; with a tree manifest, each directory's
    tree is read (``read_tree``) only when one of its files is first asked for, so an
    incremental capture reads the trees of the directories that changed and no other."""

    def __init__(
        self,
        previous: Manifest | None,
        read_tree: Callable[[TreeRef], Sequence[RawEntry]] | None = None,
    ) -> None:
        # Entries in their JSON form: a changed directory's unchanged files are reused
        # without an object made for them (a first-format manifest's are encoded once).
        self._entries: dict[str, RawEntry] = (
            {entry.path: entry.encode() for entry in previous.entries if entry.type == FILE}
            if previous
            else {}
        )
        # Each directory's previous trees (its parts) by the digest of their stats.
        self._trees: dict[str, dict[str, TreeRef]] = {}
        for tree in previous.trees if previous else ():
            self._trees.setdefault(tree.path, {})[tree.digest] = tree
        self._reused: set[str] = set()  # hashes of the previous trees reused whole
        self._read_tree = read_tree
        self._loaded: set[str] = set()
        self._trusted_before = previous.started_ns - RACY_NS if previous else 0
        self.trees_read = 0

    def unchanged(self, directory: str, digest: str) -> TreeRef | None:
        """The previous tree of ``directory`` whose entries' stats digest to ``digest``, when
        none of its files was racily clean then: reused as it is, entries unread. Asked for
        every part of a directory before any of its files is (``entry``)."""
        tree = self._trees.get(directory, {}).get(digest)
        if tree is None or tree.newest_ns >= self._trusted_before:
            return None
        self._reused.add(tree.hash)
        return tree

    def lookup(self, path: str, key: StatKey) -> tuple[ChunkRef, ...] | None:
        """The chunks recorded for ``path`` when its stat still matches, else None (read it)."""
        raw = self._match(path, key.inode, key.size, key.mtime_ns, key.ctime_ns)
        return None if raw is None else tuple(ChunkRef.decode(chunk) for chunk in raw["chunks"])

    def entry(self, path: str, st: os.stat_result, trust_ctime: bool = True) -> RawEntry | None:
        """``lookup`` for the walk, without a key object per file: the previous entry
        itself when ``st`` still matches it (its chunks reused), else None (read it)."""
        ctime = st.st_ctime_ns if trust_ctime else None
        return self._match(path, st.st_ino, st.st_size, st.st_mtime_ns, ctime)

    def _previous(self, path: str) -> RawEntry | None:
        entry = self._entries.get(path)
        if entry is None and self._trees:
            directory = path.rpartition("/")[0]
            if directory not in self._loaded:
                self._loaded.add(directory)
                self._load(directory)
                entry = self._entries.get(path)
        return entry

    def _load(self, directory: str) -> None:
        if self._read_tree is None:
            return
        for tree in self._trees.get(directory, {}).values():
            if tree.hash in self._reused:
                continue  # its files are in a part reused whole: none is asked for
            try:
                entries = self._read_tree(tree)
            except SnapshotError:
                continue  # unreadable (a write-only store without its copy): files read
            self.trees_read += 1
            for raw in entries:
                if raw.get("type") == FILE:
                    self._entries[raw["path"]] = raw

    def _match(
        self, path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int | None
    ) -> RawEntry | None:
        raw = self._previous(path)
        if raw is None:
            return None
        try:
            recorded_ctime = raw["ctime_ns"]
            if (
                raw["inode"] != inode
                or raw["size"] != size
                or raw["mtime_ns"] != mtime_ns
                or (ctime_ns is not None and recorded_ctime != ctime_ns)
            ):
                return None
        except (KeyError, TypeError):
            return None  # an entry not as hakit writes them: the file is read
        newest = mtime_ns if ctime_ns is None else max(mtime_ns, recorded_ctime)
        if newest >= self._trusted_before:
            return None  # racily clean: it may have changed within the same tick
        return raw
