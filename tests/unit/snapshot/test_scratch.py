"""Scratch directories (hakit.snapshot.scratch) with real processes: removed when their
block ends; a killed process's left until the next one is made, and then removed; a
running process's, a released one and anything else in the parent never touched."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hakit.snapshot.postgres import client_environment, parse_postgres_url
from hakit.snapshot.scratch import LOCK, PREFIX, release, scratch_directory, sweep

# A process that makes a scratch directory in argv[1], says where, and waits for a line
# (then, with argv[2] == "release", keeps the directory as it leaves the block).
HOLDER = """
import sys
from pathlib import Path
from hakit.snapshot.scratch import release, scratch_directory
with scratch_directory("held", Path(sys.argv[1])) as path:
    print(path, flush=True)
    sys.stdin.readline()
    if sys.argv[2] == "release":
        release(path)
"""


@contextmanager
def holder(parent: Path, then: str = "remove") -> Iterator[tuple[subprocess.Popen[str], Path]]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(parent), then],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert process.stdout is not None
        yield process, Path(process.stdout.readline().strip())
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_scratch_directory_lives_as_long_as_its_block(tmp_path: Path) -> None:
    with scratch_directory("copy", tmp_path) as path:
        assert path.parent == tmp_path and path.name.startswith(f"{PREFIX}copy-{os.getpid()}-")
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
        (path / "data").write_bytes(b"x" * 1000)
    assert not path.exists()
    with pytest.raises(RuntimeError), scratch_directory("copy", tmp_path) as path:
        raise RuntimeError("the capture failed")
    assert not path.exists()


def test_a_killed_process_leaves_its_directory_to_the_next_one(tmp_path: Path) -> None:
    with holder(tmp_path) as (killed, left):
        (left / "app.db").write_bytes(b"a copy of the database")
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    assert (left / "app.db").exists()  # no block ended: nothing removed it
    with scratch_directory("copy", tmp_path) as path:
        assert not left.exists()
        assert list(tmp_path.iterdir()) == [path]
    assert list(tmp_path.iterdir()) == []


def test_a_running_process_keeps_its_directory(tmp_path: Path) -> None:
    with holder(tmp_path) as (running, held):
        assert sweep(tmp_path) == []
        with scratch_directory("copy", tmp_path):
            assert held.is_dir()
        assert held.is_dir() and (held / LOCK).exists()
        assert running.stdin is not None
        running.stdin.write("\n")
        running.stdin.flush()
        assert running.wait(timeout=30) == 0
    assert not held.exists()  # its own block removed it


def test_a_released_directory_is_kept(tmp_path: Path) -> None:
    with holder(tmp_path, "release") as (process, kept):
        assert process.stdin is not None
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    assert kept.is_dir() and not (kept / LOCK).exists()
    assert sweep(tmp_path) == []
    with scratch_directory("copy", tmp_path) as path:
        release(path)
    assert kept.is_dir() and path.is_dir()


def test_nothing_else_in_the_parent_is_touched(tmp_path: Path) -> None:
    unlocked = tmp_path / f"{PREFIX}copy-1-abcdefgh"  # no lock file: being made
    unlocked.mkdir()
    (tmp_path / f"{PREFIX}file").write_text("a file, not a directory")
    other = tmp_path / "hakit-drill-xyz"
    other.mkdir()
    (other / LOCK).touch()  # a lock file, but not a scratch directory's name
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / LOCK).touch()
    (tmp_path / f"{PREFIX}copy-2-link").symlink_to(target)
    before = sorted(tmp_path.iterdir())
    assert sweep(tmp_path) == []
    assert sorted(tmp_path.iterdir()) == before and (target / LOCK).exists()


def test_the_postgresql_passfile_lives_in_a_scratch_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the process's temp directory
    connection = parse_postgres_url("postgresql://app:se:cr\\et@127.0.0.1:5432/app")
    with client_environment(connection) as env:
        passfile = Path(env["PGPASSFILE"])
        assert passfile.parent.parent == tmp_path
        assert passfile.parent.name.startswith(f"{PREFIX}pgpass-")
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert passfile.read_text() == "*:*:*:*:se\\:cr\\\\et\n"
        assert "se:cr" not in " ".join(env.values())
    assert list(tmp_path.iterdir()) == []
