"""The files of a restored generation as the restore left them: what the next apply may link.

A standby restores every generation beside its home (hakit.snapshot.apply). Most of
a home does not change from one generation to the next, and restoring it all again
cost a whole copy of the home in time and in disk at every interval. So a
standby's restore records, beside the generation it wrote (``LEDGER``), each file:
its content (the digest of its chunk list: ``content_key``), mode and mtime as the
manifest has them, and the inode and size it was left with. The next generation's
restore hard-links a file from the generation the home points to instead of
writing it (``LinkSource.link``) when its entry has the same content, mode and
mtime and the file is still that inode with that size and mtime.

Not the ctime: linking and unlinking a file's other names (this restore's links,
the prune of an older generation) move it. What keeps the files of a generation as
restored is that nothing writes a standby's generations but its restores while the
app is stopped, and that the agent marks a generation before it starts the app on
it (hakit.snapshot.apply.mark_app_started): a marked generation is never linked
from, and a generation prepared with links to one marked since is dropped, not
swapped in. Once the app runs on a generation, the older ones sharing its files
are no longer copies of their moment (a file the app changes in place changes in
them too): they are not restore points (the repository's generations are). An
edit by hand in a standby's generation that keeps a file's size and puts its mtime
back is not seen (as rsync's quick check would not see it): a standby's home is
hakit's to write.

A missing or unreadable ledger (a generation restored before ledgers, the node's
adopted home) links nothing: every file is restored.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path

from hakit.snapshot.format import FILE, ChunkRef, Entry

LEDGER = "RESTORED-FILES.json"  # in a generation's directory, beside its RESTORED.json
FORMAT = "hakit-restored-files/1"
APP_STARTED = "APP-STARTED"  # in a generation's directory: the app was started on it

# path -> [inode, size, mtime_ns, mode, content]
Record = list[int | str]


def content_key(chunks: Sequence[ChunkRef]) -> str:
    """The content of a file, as its chunks' hashes and sizes name it."""
    text = ",".join(f"{chunk.hash}:{chunk.size}" for chunk in chunks)
    return blake2b(text.encode(), digest_size=16).hexdigest()


def record_files(home: Path, entries: Iterable[Entry]) -> dict[str, Record]:
    """The ledger of ``home`` (just restored): each file entry's stat as it is now."""
    files: dict[str, Record] = {}
    root = str(home)  # paths as strings: pathlib's cost more than the lstat (measured)
    for entry in entries:
        if entry.type != FILE:
            continue
        st = os.lstat(f"{root}/{entry.path}")
        files[entry.path] = [
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            entry.mode,
            content_key(entry.chunks),
        ]
    return files


def write_ledger(directory: Path, files: dict[str, Record]) -> None:
    """Written before the generation is made durable and renamed: part of it."""
    (directory / LEDGER).write_text(
        json.dumps({"format": FORMAT, "files": files}, separators=(",", ":"))
    )


def load_ledger(directory: Path) -> dict[str, Record] | None:
    """The ledger of the generation ``directory``; None when it has none it can trust."""
    try:
        document = json.loads((directory / LEDGER).read_text())
        if document.get("format") != FORMAT or not isinstance(document.get("files"), dict):
            return None
        files: dict[str, Record] = document["files"]
        return files
    except (OSError, ValueError, AttributeError):
        return None


@dataclass(slots=True)
class LinkSource:
    """The generation the home points to: its files, and what its ledger says of them."""

    generation: str
    home: Path  # the generation's home directory (not the home's link)
    files: dict[str, Record]
    linked: int = 0
    _root: str = field(init=False)

    def __post_init__(self) -> None:
        # Paths as strings: pathlib's cost more than the lstat and the link (measured:
        # 0.6 s of 1.7 s for 20,000 files).
        self._root = str(self.home)

    def link(self, entry: Entry, path: Path) -> bool:
        """``path`` made a hard link to the same file of this generation, when that file
        is what ``entry`` records and still as restored; False otherwise (the caller
        restores it)."""
        recorded = self.files.get(entry.path)
        if recorded is None or len(recorded) != 5:
            return False
        inode, size, mtime_ns, mode, content = recorded
        if (size, mtime_ns, mode) != (entry.size, entry.mtime_ns, entry.mode):
            return False
        if content != content_key(entry.chunks):
            return False
        source = f"{self._root}/{entry.path}"
        try:
            st = os.lstat(source)
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            return False
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (inode, size, mtime_ns):
            return False  # written, renamed over or changed since it was restored
        try:
            os.link(source, path, follow_symlinks=False)
        except OSError:
            return False  # another file system, too many links: restored instead
        if os.lstat(path).st_ino != inode:  # pragma: no cover - replaced between lstat and link
            os.unlink(path)
            return False
        self.linked += 1
        return True
