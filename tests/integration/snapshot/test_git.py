"""A git repository receiving commits and repacks during capture restores to one passing fsck."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.store import open_local_store
from tests.integration.snapshot.conftest import LIMITS

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
    "HOME": "/nonexistent",
}


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    assert done.returncode == 0, (
        f"git {' '.join(args)} in {cwd}: exit {done.returncode}\n{done.stderr}"
    )
    return done.stdout


def _commit(work: Path, index: int) -> None:
    (work / f"file{index % 7}.txt").write_text(f"change {index}\n" * (index % 50 + 1))
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", f"commit {index}")


def test_commits_and_repacks_during_capture_restore_to_a_sound_repository(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    bare = home / "repositories" / "project.git"
    bare.parent.mkdir(parents=True)
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "init", "-q", "-b", "main", str(work))
    for index in range(20):
        _commit(work, index)
    git(work, "push", "-q", str(bare), "main")
    checkout = home / "checkout"
    git(tmp_path, "clone", "-q", str(bare), str(checkout))

    stop = threading.Event()
    pushes = 0
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            write()
        except BaseException as error:
            errors.append(error)

    def write() -> None:
        nonlocal pushes
        index = 20
        while not stop.is_set():
            _commit(work, index)
            git(work, "push", "-q", str(bare), "main")
            if index % 3 == 0:
                git(bare, "repack", "-a", "-d", "-q")
            git(checkout, "pull", "-q", "--ff-only")
            if index % 4 == 0:
                git(checkout, "repack", "-a", "-d", "-q")
            index += 1
            pushes += 1

    thread = threading.Thread(target=writer)
    thread.start()
    store = open_local_store(tmp_path / "repo", create=True)
    generations = []
    try:
        while len(generations) < 4 or (pushes < 8 and len(generations) < 200):
            report = create_snapshot(store, CaptureOptions(home=home, limits=LIMITS))
            assert sorted(report.walked.git_repositories) == [
                "checkout/.git",
                "repositories/project.git",
            ]
            generations.append(report.manifest.generation)
    finally:
        stop.set()
        thread.join()
    assert not errors and pushes >= 8
    for generation in generations[:: max(1, len(generations) // 6)]:
        restored = restore_generation(store, generation, tmp_path / f"restored-{generation}")
        for repository in ("repositories/project.git", "checkout"):
            path = restored.into / "home" / repository
            git(path, "fsck", "--full", "--strict")
            assert git(path, "rev-parse", "HEAD" if repository == "checkout" else "main")
