"""Large buffers: given back to the system when freed, except while a restore reuses them.

Backups and restores pass multi-megabyte buffers (4 MiB chunks, 16 MiB packs,
HTTP bodies) between threads. glibc's malloc serves a block above its mmap
threshold (128 KiB at first) by mmap and returns it on free, but raises that
threshold to the size of each such block freed (up to 32 MiB): from then on the
buffers come from the heaps of the threads' arenas, and a freed one stays
there, fragmented, counted in the RSS. Measured on an S3 full backup of 20,000
files and 2 GB: 272 MB peak RSS with the default, 240 MB with the threshold
fixed at 1 MiB (which also stops its adjustment); no measurable change in time
(an mmap and its page faults per buffer are small next to hashing and sending
its megabytes). ``return_large_buffers`` fixes it there, process-wide, once.

A restore is the exception (``reusing_large_buffers``, around its fetches): it
receives every byte of a generation into a new buffer, and a new mmap is a page
fault per 4 KiB touched: 548,000 faults for a 2 GiB restore, a third of its
system time. While one runs, blocks up to ``REUSE_THRESHOLD`` come from the
arenas and a freed one is kept for the next (the trim threshold raised too, or
glibc would give the top of the heap back at once); after the last one ends,
the thresholds are as before and ``malloc_trim`` gives the kept memory back.
Measured on a 2 GiB restore into tmpfs: system time 3.3 s -> 2.3 s, peak RSS
207 MB -> 253 MB with 8 fetching threads. Each thread's arena keeps the buffers
it freed, so what is kept grows with the threads (glibc makes up to 8 arenas
per core): with 100 (Jira's default ``<max-concurrency>``) the same restore
peaked at 384-409 MB, against 212 MB without reuse. So buffers are reused only
by a fetch of at most ``REUSE_MAX_THREADS`` threads (``reuses_buffers``); with
more, each is returned as before. Either way the fetch budget, not the size of
the home, bounds the buffers alive at once. The setting is the process's while
it lasts, so other threads' freed buffers are kept too: backups, drills and
restores by hand run in processes of their own (hakit.agent.backup_job, the
CLI), and a standby's apply runs in the agent serialised with its pulls
(hakit.agent.replication), beside threads that make no large buffers.

glibc only (elsewhere, and when libc cannot be loaded, nothing changes).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Iterator

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024  # blocks from this size up: their own mmap, unmapped on free
TRIM_THRESHOLD = 128 * 1024  # glibc's default: free memory above this at the top: returned
REUSE_THRESHOLD = 32 * 1024 * 1024  # during a restore (glibc's highest: HEAP_MAX_SIZE / 2)
REUSE_TRIM_THRESHOLD = 512 * 1024 * 1024
REUSE_MAX_THREADS = 8  # fetching threads up to which freed buffers are kept (above)

_lock = threading.Lock()
_done = False
_reusing = 0  # restores running


def _libc() -> tuple[Callable[[int, int], int], Callable[[int], int]] | None:
    try:
        libc = ctypes.CDLL(None)
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    return mallopt, malloc_trim


_LIBC = _libc()


def return_large_buffers() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD`` (once); True when it was set."""
    global _done
    with _lock:
        if _done:
            return True
        if _LIBC is None:  # pragma: no cover - not glibc
            return False
        _done = _LIBC[0](M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        return _done


def reuses_buffers(threads: int) -> bool:
    """Whether a fetch on ``threads`` threads keeps its freed buffers (above)."""
    return threads <= REUSE_MAX_THREADS


@contextlib.contextmanager
def reusing_large_buffers() -> Iterator[None]:
    """Within: freed large buffers kept for the next one (a restore's fetches)."""
    global _reusing, _done
    with _lock:
        _reusing += 1
        if _reusing == 1 and _LIBC is not None:
            _LIBC[0](M_TRIM_THRESHOLD, REUSE_TRIM_THRESHOLD)
            _LIBC[0](M_MMAP_THRESHOLD, REUSE_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _reusing -= 1
            if _reusing == 0 and _LIBC is not None:
                _done = _LIBC[0](M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                _LIBC[0](M_TRIM_THRESHOLD, TRIM_THRESHOLD)
                _LIBC[1](0)  # what the restore kept, given back
