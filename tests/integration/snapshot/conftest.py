"""Builders of the snapshot tests: a home with real files, a real SQLite database, tree reading."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from hakit.snapshot.format import Limits

# Small limits so that tests exercise chunks and packs with small files.
LIMITS = Limits(chunk_size=64 * 1024, small_file=8 * 1024, pack_size=64 * 1024)


def make_home(home: Path) -> None:
    (home / "attachments").mkdir(parents=True)
    (home / "config").mkdir()
    for index in range(40):
        (home / "attachments" / f"a{index:03d}").write_bytes(os.urandom(100 + index * 50))
    (home / "config" / "app.properties").write_text("key=value\n")
    os.chmod(home / "config" / "app.properties", 0o600)
    (home / "bin.dat").write_bytes(os.urandom(300 * 1024))  # 5 chunks
    os.chmod(home / "bin.dat", 0o751)
    (home / "empty").write_bytes(b"")
    (home / "current").symlink_to("config/app.properties")
    (home / "logs").mkdir()
    os.chmod(home / "logs", 0o700)


def make_database(path: Path, rows: int = 200) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE records (id INTEGER PRIMARY KEY, title TEXT, body BLOB)")
        connection.executemany(
            "INSERT INTO records (title, body) VALUES (?, ?)",
            [(f"record {i}", os.urandom(200)) for i in range(rows)],
        )
    connection.close()


def rows_of(path: Path) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        (check,) = connection.execute("PRAGMA integrity_check").fetchone()
        assert check == "ok"
        return list(connection.execute("SELECT id, title, body FROM records ORDER BY id"))
    finally:
        connection.close()


def tree_of(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every path under ``root``: (kind, permission bits, bytes or link target)."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            st = os.lstat(path)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                found[relative] = ("l", 0, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[relative] = ("d", mode, b"")
            else:
                found[relative] = ("f", mode, path.read_bytes())
    return found


def object_files(repo: Path) -> set[str]:
    return {
        path.relative_to(repo).as_posix()
        for part in ("blobs", "packs", "trees")
        for path in (repo / part).rglob("*")
        if path.is_file()
    }


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(home, database, repository) of a small app."""
    home = tmp_path / "site" / "home"
    make_home(home)
    database = tmp_path / "site" / "app.db"
    make_database(database)
    return home, database, tmp_path / "repo"
