"""The restore's durability step and its heap setting: errors surface, settings hold."""

from __future__ import annotations

import errno
import os
import resource
from pathlib import Path

import pytest

from hakit.snapshot.heap import (
    REUSE_MAX_THREADS,
    return_large_buffers,
    reuses_buffers,
    reusing_large_buffers,
)
from hakit.snapshot.restoretree import make_durable, open_for_sync


def test_make_durable_syncs_and_reports_a_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"data")
    fd = open_for_sync(tmp_path)
    try:
        make_durable(tmp_path, fd)  # no error: written back
    finally:
        os.close(fd)
    with pytest.raises(OSError) as failed:
        make_durable(tmp_path, fd)  # closed: the failure is raised, never ignored
    assert failed.value.errno == errno.EBADF and str(tmp_path) in str(failed.value)


def test_large_buffers_are_returned_on_glibc() -> None:
    if os.confstr("CS_GNU_LIBC_VERSION") is None:  # pragma: no cover
        pytest.skip("glibc only")
    assert return_large_buffers() is True
    assert return_large_buffers() is True  # once; again is a no-op


def _faults_allocating(times: int, size: int) -> int:
    """Minor page faults of this process while ``times`` buffers of ``size`` bytes are made
    (every page written, as a received body is) and freed, one after the other."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(times):
        buffer = bytearray(size)  # zeroed: each page written
        del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_a_restore_reuses_freed_large_buffers_and_gives_them_back_after() -> None:
    if os.confstr("CS_GNU_LIBC_VERSION") is None:  # pragma: no cover
        pytest.skip("glibc only")
    size, times = 16 << 20, 8
    pages = size // os.sysconf("SC_PAGE_SIZE")
    assert return_large_buffers() is True
    assert _faults_allocating(times, size) >= times * pages * 0.9  # a new mmap each
    with reusing_large_buffers():
        assert _faults_allocating(times, size) < 2 * pages  # the first one's pages, reused
    assert _faults_allocating(times, size) >= times * pages * 0.9  # as before


def test_only_a_fetch_on_few_threads_keeps_its_buffers() -> None:
    # Each thread's arena keeps what it freed: with many threads that adds up.
    assert reuses_buffers(1) and reuses_buffers(REUSE_MAX_THREADS)
    assert not reuses_buffers(REUSE_MAX_THREADS + 1) and not reuses_buffers(100)
