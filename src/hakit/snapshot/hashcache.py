"""Which files need not be read again: the previous generation's hashes, by stat.

A file whose (inode, size, mtime_ns, ctime_ns) is what the previous generation
recorded at the same path has the same content, and its chunks are reused
without reading it. Not when its times are within ``RACY_NS`` of that
generation's start: a write in the same timestamp tick as the read that hashed
it would leave the stat unchanged (git's "racily clean" entries). Files whose
ctime changes without their content (git objects, whose ctime a hard-link pin
moves) are compared without ctime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hakit.snapshot.format import FILE, ChunkRef, Entry, Manifest

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
    def __init__(self, previous: Manifest | None) -> None:
        self._entries = (
            {entry.path: entry for entry in previous.entries if entry.type == FILE}
            if previous
            else {}
        )
        self._trusted_before = previous.started_ns - RACY_NS if previous else 0

    def lookup(self, path: str, key: StatKey) -> tuple[ChunkRef, ...] | None:
        """The chunks recorded for ``path`` when its stat still matches, else None (read it)."""
        entry = self._match(path, key.inode, key.size, key.mtime_ns, key.ctime_ns)
        return None if entry is None else entry.chunks

    def entry(self, path: str, st: os.stat_result, trust_ctime: bool = True) -> Entry | None:
        """``lookup`` for the walk, without a key object per file: the previous entry
        itself when ``st`` still matches it (its chunks reused), else None (read it)."""
        ctime = st.st_ctime_ns if trust_ctime else None
        return self._match(path, st.st_ino, st.st_size, st.st_mtime_ns, ctime)

    def _match(
        self, path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int | None
    ) -> Entry | None:
        entry = self._entries.get(path)
        if (
            entry is None
            or entry.inode != inode
            or entry.size != size
            or entry.mtime_ns != mtime_ns
            or (ctime_ns is not None and entry.ctime_ns != ctime_ns)
        ):
            return None
        newest = entry.mtime_ns if ctime_ns is None else max(entry.mtime_ns, entry.ctime_ns)
        if newest >= self._trusted_before:
            return None  # racily clean: it may have changed within the same tick
        return entry
