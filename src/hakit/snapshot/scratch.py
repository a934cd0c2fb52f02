"""Scratch directories that do not outlive their process, even a killed one.

A capture copies the database into a scratch directory before reading it; a drill
restores a whole generation into one. Python's temporary directories are removed when
the block ends, but not when the process is killed, and hakit kills captures on
purpose: the agent SIGKILLs a capture the moment its node stops being the active one
(hakit.agent.snapshots), and a capture dies with its agent. Each of those left a copy
of the database in /tmp, as large as the database.

So each scratch directory holds a lock file its process keeps locked (``flock``) for
as long as the directory is in use; the kernel drops the lock when the process ends,
however it ends. Making a scratch directory first removes those of the same parent
whose lock is free: their process is gone. A lock, not the PID in the name (kept there
for people): a PID may be reused, and another container sharing /tmp has its own PIDs.
A directory without its lock file is never removed: one being made, or one kept on
purpose (``release``: a drill's ``--keep``).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PREFIX = "hakit-scratch-"  # <PREFIX><purpose>-<pid>-<random>
LOCK = ".hakit-scratch.lock"


@contextmanager
def scratch_directory(purpose: str, parent: Path | None = None) -> Iterator[Path]:
    """A new directory (mode 0700) in ``parent`` (default: the temporary directory),
    locked while the block runs and removed when it ends; the leftovers of killed
    processes in ``parent`` are removed first."""
    where = parent if parent is not None else Path(tempfile.gettempdir())
    sweep(where)
    path, fd = _locked_directory(purpose, where)
    try:
        yield path
    finally:
        try:
            if (path / LOCK).exists():  # not released: still ours to remove
                shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def release(path: Path) -> None:
    """Keep ``path`` (a scratch directory) after its block ends: no sweep removes it."""
    (path / LOCK).unlink(missing_ok=True)


def sweep(parent: Path) -> list[Path]:
    """Remove the scratch directories in ``parent`` whose process is gone; those removed."""
    removed: list[Path] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        path = parent / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            continue
        try:
            fd = os.open(path / LOCK, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # being made, or kept (released)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process runs
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def _locked_directory(purpose: str, parent: Path) -> tuple[Path, int]:
    while True:
        path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{purpose}-{os.getpid()}-", dir=parent))
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A sweep in another process may have taken the lock between the open and the
        # flock, found it free and removed the directory: then make another.
        try:
            if os.stat(path / LOCK).st_ino == os.fstat(fd).st_ino:
                return path, fd
        except FileNotFoundError:
            pass
        os.close(fd)
