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
        entry = self._entries.get(path)
        if entry is None or StatKey.of_entry(entry, key.ctime_ns is not None) != key:
            return None
        newest = max(entry.mtime_ns, entry.ctime_ns if key.ctime_ns is not None else 0)
        if newest >= self._trusted_before:
            return None  # racily clean: it may have changed within the same tick
        return entry.chunks
