"""Git repositories in the home: found, and captured refs before objects.

A file-by-file copy can take a repository's objects before a push and its refs
after it: refs naming objects the copy lacks (Bitbucket's warning about rsync).
So a repository (a ``.git`` directory or a bare one) is captured in this order:
``HEAD``, the loose refs (``refs/``), then ``packed-refs`` (``git pack-refs``
writes it before deleting the loose ones, so a ref is never missed), then every
other file that can name objects (the index, reflogs in ``logs/``, ``ORIG_HEAD``...:
git writes the objects before the file naming them), then its objects as they
were right after: every loose object and complete pack is
pinned by a hard link (``pin_objects``) before any is read, so a ``git repack
-a -d`` or ``gc`` deleting them meanwhile takes nothing away; objects written
after the refs were read are not needed by them. Derived files that can name
objects outside that set (commit-graph, multi-pack-index) and lock and
temporary files are left out: git rebuilds them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from hakit.snapshot.format import SnapshotError

REF_PARTS = ("HEAD", "refs", "packed-refs")  # captured first, in this order
_LOOSE_DIR = re.compile(r"[0-9a-f]{2}")
_PACK_SIDECARS = (".idx", ".rev", ".bitmap", ".keep", ".promisor", ".mtimes")
PIN_ATTEMPTS = 20


def skipped(name: str) -> bool:
    """A file of a git directory that is transient or derived (not captured)."""
    return name.endswith(".lock") or name.startswith("tmp_") or name.startswith("incoming-")


def _listing(objects: Path) -> list[str]:
    """The object files to pin, relative to objects/: loose objects first, then the packs
    whose index is complete (a pack without its .idx is still being written)."""
    found: list[str] = []
    for name in sorted(os.listdir(objects)):
        if not _LOOSE_DIR.fullmatch(name):
            continue
        try:
            entries = sorted(os.listdir(objects / name))
        except (FileNotFoundError, NotADirectoryError):
            continue  # emptied by prune-packed: its objects are in a pack, listed below
        found.extend(f"{name}/{entry}" for entry in entries if not skipped(entry))
    pack_dir = objects / "pack"
    names = set(os.listdir(pack_dir)) if pack_dir.is_dir() else set()
    for name in sorted(names):
        if name.endswith(".pack") and f"{name[:-5]}.idx" in names:
            stem = name[:-5]
            found.append(f"pack/{name}")
            found.extend(f"pack/{stem}{ext}" for ext in _PACK_SIDECARS if f"{stem}{ext}" in names)
    return found


def _link_all(objects: Path, names: Iterable[str], pins: Path) -> bool:
    for name in names:
        target = pins / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(objects / name, target)
        except FileNotFoundError:
            return False  # deleted since the listing (packed, repacked): list again
    return True


def pin_objects(git_dir: Path, pins: Path) -> list[str]:
    """Hard-link every loose object and complete pack of ``git_dir`` under ``pins``, all
    present at one listing (listed again until no file vanished before its link).
    Returns their paths relative to objects/."""
    objects = git_dir / "objects"
    for _ in range(PIN_ATTEMPTS):
        if pins.exists():
            _remove_tree(pins)
        pins.mkdir(parents=True)
        names = _listing(objects)
        if _link_all(objects, names, pins):
            return names
    raise SnapshotError(
        f"the objects of the git repository {git_dir} kept being deleted while they were "
        f"pinned ({PIN_ATTEMPTS} attempts): is a gc running in a loop?"
    )


def _remove_tree(path: Path) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)


def remove_pins(pins: Path) -> None:
    if pins.exists():
        _remove_tree(pins)
