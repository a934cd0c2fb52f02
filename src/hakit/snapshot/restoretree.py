"""Writing a generation's files into a new directory as their chunks arrive, in any order.

``TreeWriter.prepare`` makes the directories, the symbolic links, the empty files
and every file of more than one chunk (sized up front, so each chunk is written at
its offset whatever the order the objects arrive in: hakit.snapshot.reader
fetches them concurrently); a file of one chunk is created when its chunk
arrives. ``deliver`` writes a checked chunk at every place the tree needs it; a
file whose last chunk was written gets its mode and mtime. ``finish`` checks
that every file is complete and sets the directories' modes and mtimes, deepest
first.

No file is fsynced as it is written: ``make_durable`` makes the whole tree
durable at once at the end, before the caller renames it into place (see there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hakit.snapshot.format import DIRECTORY, FILE, SYMLINK, ChunkRef, Manifest, SnapshotError
from hakit.snapshot.ledger import LinkSource

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_path(root: Path, relative: str) -> Path:
    parts = relative.split("/")
    if relative.startswith("/") or ".." in parts or "" in parts:
        raise SnapshotError(f"the manifest names an unsafe path {relative!r}")
    return root.joinpath(*parts)


@dataclass(slots=True)
class _File:
    path: Path
    name: str  # as the manifest names it (for errors)
    size: int
    mode: int
    mtime_ns: int | None  # None: left as written (the database copy)
    chunks: int  # how many chunk writes it needs
    created: bool  # by prepare (more than one chunk, or none)
    written: int = 0  # chunk writes done


class TreeWriter:
    """The files of one restore; ``deliver`` is called from several threads at once."""

    def __init__(self) -> None:
        self._files: list[_File] = []
        self._places: dict[ChunkRef, list[tuple[int, int]]] = {}  # -> (file index, offset)
        self._directories: list[tuple[Path, int, int]] = []
        self._lock = threading.Lock()
        self.files = 0  # the home's regular files
        self.bytes = 0  # every file's bytes (home and database)

    def refs(self) -> list[ChunkRef]:
        """Every chunk a file needs, in the order of the files (each once)."""
        return list(self._places)

    def add_file(
        self,
        path: Path,
        name: str,
        size: int,
        mode: int,
        mtime_ns: int | None,
        chunks: tuple[ChunkRef, ...],
    ) -> None:
        if sum(ref.size for ref in chunks) != size:
            raise SnapshotError(
                f"{name}: its chunks hold {sum(ref.size for ref in chunks)} bytes, "
                f"the manifest says {size}"
            )
        index = len(self._files)
        file = _File(path, name, size, mode, mtime_ns, len(chunks), len(chunks) != 1)
        if file.created:
            fd = os.open(path, CREATE, 0o600)
            try:
                if size:
                    os.ftruncate(fd, size)
                if not chunks:
                    self._complete(file, fd)
            finally:
                os.close(fd)
        self._files.append(file)
        self.bytes += size
        offset = 0
        for ref in chunks:
            self._places.setdefault(ref, []).append((index, offset))
            offset += ref.size

    def prepare(self, manifest: Manifest, root: Path, link_from: LinkSource | None = None) -> None:
        """The home's tree under ``root`` (a new directory), its files still to be filled;
        those ``link_from`` has as they are linked from there instead (hakit.snapshot.ledger)."""
        root.mkdir()
        made: set[Path] = {root}
        for entry in manifest.entries:
            path = safe_path(root, entry.path)
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            if entry.type == DIRECTORY:
                path.mkdir(exist_ok=True)
                made.add(path)
                self._directories.append((path, entry.mode, entry.mtime_ns))
            elif entry.type == FILE:
                if link_from is not None and link_from.link(entry, path):
                    self.files += 1
                    self.bytes += entry.size
                    continue
                self.add_file(
                    path, entry.path, entry.size, entry.mode, entry.mtime_ns, entry.chunks
                )
                self.files += 1
            elif entry.type == SYMLINK:
                os.symlink(entry.target, path)
            else:
                raise SnapshotError(f"{entry.path}: unknown entry type {entry.type!r}")

    def deliver(self, ref: ChunkRef, data: memoryview) -> None:
        """Write ``data`` (``ref``'s checked bytes) wherever the tree needs it."""
        for index, offset in self._places.get(ref, ()):
            file = self._files[index]
            if file.created:
                fd = os.open(file.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            else:
                fd = os.open(file.path, CREATE, 0o600)
            try:
                _write_all(fd, data, offset)
                with self._lock:
                    file.written += 1
                    done = file.written == file.chunks
                if done:  # every other write to it has returned: its mode and time now
                    self._complete(file, fd)
            finally:
                os.close(fd)

    @staticmethod
    def _complete(file: _File, fd: int) -> None:
        os.fchmod(fd, file.mode)
        if file.mtime_ns is not None:
            os.utime(fd, ns=(file.mtime_ns, file.mtime_ns))

    def finish(self) -> None:
        """Every file complete (else SnapshotError), then the directories' modes and times."""
        for file in self._files:
            if file.written != file.chunks:
                raise SnapshotError(
                    f"{file.name}: {file.chunks - file.written} of its chunks were not restored"
                )
        # Deepest first: their contents are complete, so their mtimes stay as set.
        for path, mode, mtime_ns in sorted(
            self._directories, key=lambda d: len(d[0].parts), reverse=True
        ):
            os.chmod(path, mode)
            os.utime(path, ns=(mtime_ns, mtime_ns))


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:  # bounded: each pwrite writes at least one byte or raises
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


# --- durability -------------------------------------------------------------------


def _libc_syncfs() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    syncfs: Callable[[int], int] = function
    return syncfs


_SYNCFS = _libc_syncfs()


def open_for_sync(directory: Path) -> int:
    """A descriptor of ``directory`` to give ``make_durable``: opened BEFORE anything is
    written, since syncfs(2) reports the file system's write-back errors since then."""
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def make_durable(directory: Path, fd: int) -> None:
    """Everything written under ``directory`` (``fd``: ``open_for_sync(directory)``) on disk.

    syncfs(2) on its file system: one call writes back every dirty file and directory
    and commits the journal once, where an fsync per file (as restores did) commits it
    once per file (20,000 journal commits for 20,000 files: most of a restore's time).
    It may also write other programs' dirty data of that file system: more to wait
    for, never less durable. It reports write-back errors since ``fd`` was opened
    (Linux >= 5.8; any file on that file system: a false alarm fails the restore,
    never a silent loss). Where libc has no syncfs, every file and directory under
    ``directory`` is fsynced, deepest first: the same guarantee, slower.
    """
    if _SYNCFS is not None:
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"syncfs of {directory}: {os.strerror(error)}")
        return
    for current, dirs, names in os.walk(directory, topdown=False):  # pragma: no cover
        for name in names:
            path = os.path.join(current, name)
            if os.path.islink(path):
                continue
            handle = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        del dirs
        handle = os.open(current, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
