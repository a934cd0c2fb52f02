"""What changed between two generations' trees (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hakit.snapshot.format import Entry


@dataclass(frozen=True, slots=True)
class TreeDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]  # content, type, mode or symlink target differ

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def _same(old: Entry, new: Entry) -> bool:
    return (
        old.type == new.type
        and old.mode == new.mode
        and [c.hash for c in old.chunks] == [c.hash for c in new.chunks]
        and old.target == new.target
    )


def diff_trees(old: Iterable[Entry], new: Iterable[Entry]) -> TreeDiff:
    before = {entry.path: entry for entry in old}
    after = {entry.path: entry for entry in new}
    return TreeDiff(
        added=tuple(sorted(after.keys() - before.keys())),
        removed=tuple(sorted(before.keys() - after.keys())),
        changed=tuple(
            sorted(
                path
                for path in before.keys() & after.keys()
                if not _same(before[path], after[path])
            )
        ),
    )
