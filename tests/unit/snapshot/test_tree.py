"""What changed between two trees."""

from __future__ import annotations

from hakit.snapshot.format import FILE, SYMLINK, ChunkRef, Entry
from hakit.snapshot.tree import diff_trees


def _file(path: str, digest: str, mode: int = 0o644) -> Entry:
    return Entry(path, FILE, mode, size=1, mtime_ns=1, chunks=(ChunkRef(digest * 64, 1),))


def test_added_removed_changed() -> None:
    old = [_file("same", "a"), _file("edited", "b"), _file("gone", "c"), _file("chmod", "d")]
    new = [
        _file("same", "a"),
        _file("edited", "e"),
        _file("new", "f"),
        _file("chmod", "d", 0o600),
        Entry("link", SYMLINK, 0o777, target="same"),
    ]
    diff = diff_trees(old, new)
    assert diff.added == ("link", "new")
    assert diff.removed == ("gone",)
    assert diff.changed == ("chmod", "edited")
    assert not diff.empty


def test_only_times_differ_no_change() -> None:
    old = _file("f", "a")
    new = Entry("f", FILE, 0o644, size=1, mtime_ns=99, chunks=old.chunks)
    assert diff_trees([old], [new]).empty
