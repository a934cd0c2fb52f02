"""A site shaped like the sample app for drill and encryption tests: attachments in the home,
a ``records`` table naming them with their SHA-256 (SQLite), a bare git repository with
history, and a hakit.toml whose backups go to a directory outside the home."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.integration.snapshot.test_git import GIT_ENV, git

CONFIG = """
[cluster]
mode = "restart-only"
state_dir = "state"
[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"
[backup]
directory = "backups"
{backup}
[[nodes]]
name = "node1"
port = 18101
"""

RECORDS = 12


@dataclass
class AppSite:
    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def database(self) -> Path:
        return self.root / "app.db"

    @property
    def config(self) -> Path:
        return self.root / "hakit.toml"

    @property
    def repository(self) -> Path:
        return self.root / "backups"

    @property
    def git_dir(self) -> Path:
        return self.home / "repositories" / "project.git"

    def configure(self, backup: str = "") -> None:
        self.config.write_text(CONFIG.format(backup=backup))

    def fingerprint(self) -> dict[str, tuple[int, int, str]]:
        """Every path of the live home and the database: (mode, mtime_ns, content hash)."""
        found: dict[str, tuple[int, int, str]] = {}
        paths = [self.database, *sorted(self.home.rglob("*"))]
        for path in paths:
            st = os.lstat(path)
            digest = ""
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path)] = (st.st_mode, st.st_mtime_ns, digest)
        return found


def add_record(site: AppSite, index: int, data: bytes) -> None:
    """The sample app's order: the file first, then its row."""
    relative = f"attachments/r{index:03d}"
    (site.home / relative).write_bytes(data)
    with sqlite3.connect(site.database) as connection:
        connection.execute(
            "INSERT INTO records (id, title, attachment, sha256, size) VALUES (?, ?, ?, ?, ?)",
            (
                f"r{index:03d}",
                f"record {index}",
                relative,
                hashlib.sha256(data).hexdigest(),
                len(data),
            ),
        )
    connection.close()


def make_app_site(root: Path, backup: str = "") -> AppSite:
    site = AppSite(root)
    (site.home / "attachments").mkdir(parents=True)
    (site.home / "config").mkdir()
    (site.home / "config" / "app.properties").write_text("key=value\n")
    with sqlite3.connect(site.database) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(
            "CREATE TABLE records (id TEXT PRIMARY KEY, title TEXT NOT NULL,"
            " attachment TEXT NOT NULL, sha256 TEXT NOT NULL, size BIGINT NOT NULL)"
        )
    connection.close()
    for index in range(RECORDS):
        add_record(site, index, os.urandom(200 + index * 300))
    (site.home / "attachments" / "orphan.part").write_bytes(b"written during a capture")
    work = root / "work"
    site.git_dir.parent.mkdir(parents=True)
    git(root, "init", "-q", "--bare", "-b", "main", str(site.git_dir))
    git(root, "init", "-q", "-b", "main", str(work))
    for index in range(5):
        (work / f"file{index}.txt").write_text(f"change {index}\n" * (index + 1))
        git(work, "add", "-A")
        git(work, "commit", "-q", "-m", f"commit {index}")
    git(work, "push", "-q", str(site.git_dir), "main")
    site.configure(backup)
    return site


def loose_objects(git_dir: Path) -> list[Path]:
    return sorted(
        path
        for path in (git_dir / "objects").glob("??/*")
        if path.is_file() and len(path.parent.name) == 2
    )


def fsck(git_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", f"--git-dir={git_dir}", "fsck", "--full"],
        env=GIT_ENV,
        capture_output=True,
        text=True,
        check=False,
    )
