"""The home scan: a directory's listing, the walk's order, and the helper that lists ahead.

The helper is a real process (``python -I -S scan.py``); it is stopped by its PID
when a test kills it. Every comparison is against a walk that lists each
directory itself, on the same home at the same moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hakit.snapshot.format import DIRECTORY, FILE, SYMLINK, Limits
from hakit.snapshot.hashcache import HashCache
from hakit.snapshot.scan import list_directory, part_ranges, scan_home, stat_row, stats_digest
from hakit.snapshot.scanahead import HomeScan
from hakit.snapshot.store import open_local_store
from hakit.snapshot.walk import PIN_DIRECTORY, HomeWalk, WalkedEntry
from hakit.snapshot.writer import BlobWriter

UNDECODABLE = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: passed through the helper's pipe too
HELPER_WAIT = 60.0  # s: bounded wait for a helper process to end on its own


def _home(root: Path) -> Path:
    home = root / "home"
    for directory in ("a/b", "a/c", "d", "repo.git/objects", "repo.git/refs/heads"):
        (home / directory).mkdir(parents=True)
    for i in range(40):
        (home / "a" / f"file-{i:02d}").write_bytes(b"x" * i)
    (home / "a" / "b" / "deep").write_text("deep")
    (home / "d" / "f").write_text("f")
    (home / "d" / UNDECODABLE).write_text("a name that is not UTF-8")
    (home / "link").symlink_to("d/f")
    os.mkfifo(home / "d" / "fifo")  # not an app's data: left out
    (home / "repo.git" / "HEAD").write_text("ref: refs/heads/main\n")
    (home / "skip").mkdir()
    (home / "skip" / "inside").write_text("left out")
    (home / PIN_DIRECTORY).mkdir()
    return home


def _entries(walk: HomeWalk) -> list[tuple[str, str, int, int, str]]:
    def row(entry: WalkedEntry) -> tuple[str, str, int, int, str]:
        return (entry.path, entry.type, entry.st.st_ino, entry.st.st_mtime_ns, entry.target)

    return [row(entry) for entry in walk.run()]


def _walk(home: Path, tmp: Path, scan: HomeScan | None = None) -> HomeWalk:
    store = open_local_store(tmp / f"repo-{len(list(tmp.iterdir()))}", create=True)
    writer = BlobWriter(store, Limits(), {})
    return HomeWalk(
        home, writer.add, HashCache(None), Limits(), exclude=frozenset({"skip"}), scan=scan
    )


def test_a_listing_holds_the_children_their_kinds_parts_and_digests(tmp_path: Path) -> None:
    home = _home(tmp_path)
    relative, git, names, kinds, ends, digests = list_directory(
        str(home), "", PIN_DIRECTORY, frozenset({"skip"})
    )
    assert (relative, git) == ("", False)
    assert names == ["a", "d", "link", "repo.git"]  # no pins, nothing excluded
    assert kinds == DIRECTORY * 2 + SYMLINK + DIRECTORY
    rows = [
        stat_row(name, kind, os.lstat(home / name), os.readlink(home / name) if kind == "l" else "")
        for name, kind in zip(names, kinds, strict=True)
    ]
    assert ends == [end for _, end in part_ranges(names)]
    assert digests == [stats_digest(rows[a:b]) for a, b in part_ranges(names)]

    _, _, names, kinds, _, _ = list_directory(str(home / "d"), "d", PIN_DIRECTORY, frozenset())
    assert (names, kinds) == ([UNDECODABLE, "f"], FILE * 2)  # sorted; the FIFO left out

    a = list_directory(str(home / "a"), "a", PIN_DIRECTORY, frozenset())
    assert len(a[2]) == 42 and len(a[4]) == len(part_ranges(a[2])) > 1


def test_a_git_directory_is_listed_without_its_children(tmp_path: Path) -> None:
    home = _home(tmp_path)
    assert list_directory(str(home / "repo.git"), "repo.git", PIN_DIRECTORY, frozenset()) == (
        "repo.git",
        True,
        [],
        "",
        [],
        [],
    )


def test_a_directory_gone_is_listed_empty(tmp_path: Path) -> None:
    assert list_directory(str(tmp_path / "gone"), "gone", PIN_DIRECTORY, frozenset())[2:] == (
        [],
        "",
        [],
        [],
    )


def test_the_scan_takes_directories_in_the_walks_order(tmp_path: Path) -> None:
    home = _home(tmp_path)
    order = [listing[0] for listing in scan_home(str(home), PIN_DIRECTORY, frozenset({"skip"}))]
    assert order == ["", "a", "a/b", "a/c", "d", "repo.git"]  # nothing inside a git directory
    assert order == sorted(order, key=lambda relative: relative.split("/") if relative else [])


def test_the_helper_lists_every_directory_as_the_walk_would(tmp_path: Path) -> None:
    home = _home(tmp_path)
    alone = _walk(home, tmp_path)
    expected = _entries(alone)
    assert alone.stats.listed_here == 6 and alone.stats.listed_ahead == 0

    with HomeScan(str(home), PIN_DIRECTORY, frozenset({"skip"}), helper=True) as scan:
        walk = _walk(home, tmp_path, scan)
        assert _entries(walk) == expected
    assert walk.stats.listed_ahead == 6 and walk.stats.listed_here == 0
    assert "repo.git" in walk.stats.git_repositories
    assert f"d/{UNDECODABLE}" in {path for path, *_ in expected}


def test_the_helper_lists_only_once_told_to(tmp_path: Path) -> None:
    """Started early (beside the database capture), it lists the home as it is when the
    walk begins: a file made after its start is in its listing."""
    home = _home(tmp_path)
    with HomeScan(str(home), PIN_DIRECTORY, frozenset(), helper=True) as scan:
        (home / "d" / "later").write_text("made after the helper started")
        scan.begin()
        listings = [
            scan.listing(str(home / relative), relative)
            for relative in ("", "a", "a/b", "a/c", "d")
        ]
    assert scan.listed_ahead == 5 and scan.listed_here == 0
    assert "later" in listings[-1].names


def _wait_for_the_helper(scan: HomeScan) -> None:
    """The helper's whole scan in the pipe: it ends on its own (a small home fits)."""
    process = scan._process  # the test's view: the helper's process, started by the scan
    assert process is not None
    process.wait(timeout=HELPER_WAIT)
    assert process.returncode == 0


def test_the_walk_takes_the_home_as_it_is_when_the_helper_listed_it_before(
    tmp_path: Path,
) -> None:
    """The home changed after the helper listed it: a directory gone (its listing is
    dropped), a file replaced by a directory (the walk lists it itself), a directory
    made in one already listed (not in this generation, as a file made behind a walk
    that went by). Otherwise the entries are those of a walk listing everything itself,
    each taken as it is now."""
    home = _home(tmp_path)
    with HomeScan(str(home), PIN_DIRECTORY, frozenset({"skip"}), helper=True) as scan:
        scan.begin()
        _wait_for_the_helper(scan)
        for name in ("deep",):
            (home / "a" / "b" / name).unlink()
        (home / "a" / "b").rmdir()  # gone
        (home / "a" / "new" / "sub").mkdir(parents=True)  # new, with a subdirectory
        (home / "a" / "new" / "sub" / "g").write_text("g")
        (home / "d" / "f").unlink()
        (home / "d" / "f").mkdir()  # a file replaced by a directory
        (home / "d" / "f" / "h").write_text("h")
        walk = _walk(home, tmp_path, scan)
        entries = _entries(walk)
    now = [entry for entry in _entries(_walk(home, tmp_path)) if not entry[0].startswith("a/new")]
    assert entries == now
    paths = {path for path, *_ in entries}
    assert "d/f/h" in paths and not {"a/b", "a/b/deep"} & paths
    assert walk.stats.listed_here == 1  # d/f
    assert walk.stats.listed_ahead == 5  # "", a, a/c, d, repo.git (a/b's dropped)


def test_a_helper_killed_midway_leaves_the_rest_to_the_walk(tmp_path: Path) -> None:
    home = _home(tmp_path)
    expected = _entries(_walk(home, tmp_path))
    with HomeScan(str(home), PIN_DIRECTORY, frozenset({"skip"}), helper=True) as scan:
        process = scan._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)  # the helper this scan started, by its PID
        process.wait(timeout=HELPER_WAIT)
        walk = _walk(home, tmp_path, scan)
        assert _entries(walk) == expected
    assert walk.stats.listed_here == 6 and walk.stats.listed_ahead == 0


def test_no_helper_lists_everything_in_the_walk(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with HomeScan(str(home), PIN_DIRECTORY, frozenset({"skip"}), helper=False) as scan:
        walk = _walk(home, tmp_path, scan)
        _entries(walk)
    assert walk.stats.listed_here == 6 and walk.stats.listed_ahead == 0


def test_the_helper_imports_nothing_but_the_standard_library() -> None:
    """It runs as ``python -I -S scan.py``: no hakit, no site-packages on its path."""
    import hakit.snapshot.scan as scan_module

    done = subprocess.run(
        [sys.executable, "-I", "-S", scan_module.__file__],
        input=b"",
        capture_output=True,
        timeout=HELPER_WAIT,
        check=False,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
