"""The home scan: each directory's children lstat'ed, cut into parts, each part's stats digested.

An incremental capture asks of every part of every directory (hakit.snapshot.trees)
whether it is what one of the directory's previous trees recorded. Answering takes
an lstat of every path of the home, as rsync makes, and a digest of each part's
stats: most of the time of a capture when little changed. The scan does that work,
one directory at a time (``list_directory``), in the order the walk takes them:
sorted, depth first, a directory before its children (``scan_home``). The walk
(hakit.snapshot.walk) then only looks again at the parts that changed.

It runs ahead of the walk in a helper process (hakit.snapshot.scanahead), so the
lstats take the machine's second core, as rsync's sender and receiver do. So this
module imports nothing beyond the few parts of the standard library it needs (not
even typing: its annotations are the type checker's alone): the helper is
``python -I -S scan.py``, started in ~10 ms, and speaks on its pipes:

- stdin: one message, sent once the database was captured (an attachment written
  after that must not be listed before it: hakit.snapshot.capture): the home, the
  pin directory's name, the paths left out;
- stdout: one record per directory, then its end. A record is a 4-byte big-endian
  length and a ``marshal`` (version 2) of a ``Listing``.

A helper that stops early (killed, an error) leaves the walk to list the rest
itself, the same way: the helper makes no decision the walk could not make.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys
import zlib

# hashlib's own blake2b, without the OpenSSL bindings hashlib loads first (3 ms of the
# helper's start, measured with -X importtime).
from _blake2 import blake2b

TYPE_CHECKING = False  # typing's own costs the helper 6 ms to import (the checker knows it)
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import IO, Any

# The entry types, as a manifest records them (hakit.snapshot.format takes them from
# here: the helper must digest rows exactly as the format writes entries).
FILE = "f"
DIRECTORY = "d"
SYMLINK = "l"

GIT_NAMES = frozenset(("HEAD", "objects", "refs"))  # a directory without all three is no git one

# A part ends after a name whose CRC-32 has these bits all set (1 in 8 names)...
PART_MASK = 0x7
PART_MAX = 64  # ...or at this many entries (a run of names that never ends one)

Row = tuple[str, str, int, int, int, int, int, str]
# One directory of the home as the scan found it, a plain tuple (marshal's; named
# in hakit.snapshot.scanahead.Listing): its path in the home ("" for the home
# itself); whether it is a git directory (walked by the walk alone, refs before
# objects: no children listed); its children kept (files, directories, symlinks),
# sorted; their types, one character each (FILE, DIRECTORY, SYMLINK); where each
# part ends (``part_ranges``); each part's ``stats_digest``.
Record = tuple[str, bool, list[str], str, list[int], list[str]]

MARSHAL_VERSION = 2  # no back-references: equal values give equal bytes
LENGTH = 4


def is_git_dir(path: str) -> bool:
    """A git directory: a ``.git`` or a bare repository (HEAD, objects/ and refs/)."""
    try:
        return (
            stat.S_ISREG(os.stat(f"{path}/HEAD").st_mode)
            and stat.S_ISDIR(os.stat(f"{path}/objects").st_mode)
            and stat.S_ISDIR(os.stat(f"{path}/refs").st_mode)
        )
    except (FileNotFoundError, NotADirectoryError):
        return False


def part_ranges(names: Sequence[str]) -> list[tuple[int, int]]:
    """The parts of a directory whose entries (in order) are ``names``: (start, end) index
    ranges covering them all, none empty (none for no names)."""
    ranges: list[tuple[int, int]] = []
    start = 0
    crc32 = zlib.crc32
    # The names' bytes as the file system has them (os.fsencode's, without its calls).
    ends = [crc32(name.encode("utf-8", "surrogateescape")) & PART_MASK for name in names]
    for index, end in enumerate(ends):
        if end == PART_MASK or index + 1 - start >= PART_MAX:
            ranges.append((start, index + 1))
            start = index + 1
    if start < len(names):
        ranges.append((start, len(names)))
    return ranges


def stat_row(path: str, kind: str, st: os.stat_result, target: str = "") -> Row:
    """What an entry of ``kind`` records of ``st`` (besides its chunks), as ``Entry.encode``
    writes it: a directory's inode, size and ctime, and a file's target, are left at 0."""
    if kind == FILE:
        return (
            path,
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
            st.st_ctime_ns,
            "",
        )
    if kind == DIRECTORY:
        return (path, kind, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns, 0, 0, "")
    return (path, SYMLINK, stat.S_IMODE(st.st_mode), 0, 0, 0, 0, target)


def stats_digest(rows: Sequence[Row]) -> str:
    """A digest of a directory's rows, in order. marshal (version 2: no back-references,
    so equal rows give equal bytes) is the cheapest exact serialisation of tuples of
    ints and strings; a different Python's marshal could only make digests differ,
    which costs one directory read again, never a wrong reuse."""
    return blake2b(marshal.dumps(list(rows), MARSHAL_VERSION), digest_size=16).hexdigest()


def list_directory(path: str, relative: str, pins: str, exclude: frozenset[str]) -> Record:
    """The listing of the directory ``path`` (``relative`` in the home): its children but
    ``pins`` (in the home itself) and the paths in ``exclude``; sockets, FIFOs and devices
    (not an app's data) are left out, and so is a child removed meanwhile."""
    try:
        found = os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return (relative, False, [], "", [], [])  # removed (or replaced) meanwhile
    if GIT_NAMES.issubset(found) and is_git_dir(path):
        return (relative, True, [], "", [], [])
    found.sort()
    prefix = f"{relative}/" if relative else ""
    names: list[str] = []
    kinds: list[str] = []
    rows: list[Row] = []
    # lstat by name relative to the directory's descriptor: the kernel does not walk
    # the home's path again for each child (~10 % of the lstats' time, measured).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return (relative, False, [], "", [], [])
    lstat = os.stat
    try:
        for name in found:
            child = prefix + name
            if (not relative and name == pins) or (exclude and child in exclude):
                continue
            try:
                st = lstat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            mode = st.st_mode
            target = ""
            if stat.S_ISREG(mode):
                kind = FILE
            elif stat.S_ISDIR(mode):
                kind = DIRECTORY
            elif stat.S_ISLNK(mode):
                try:
                    target = os.readlink(name, dir_fd=fd)
                except FileNotFoundError:
                    continue
                kind = SYMLINK
            else:
                continue
            names.append(name)
            kinds.append(kind)
            rows.append(stat_row(child, kind, st, target))
    finally:
        os.close(fd)
    parts = part_ranges(names)
    return (
        relative,
        False,
        names,
        "".join(kinds),
        [end for _, end in parts],
        [stats_digest(rows[start:end]) for start, end in parts],
    )


def scan_home(home: str, pins: str, exclude: frozenset[str]) -> Iterator[Record]:
    """Every directory's listing, in the walk's order; a git directory's without its
    contents (the walk walks it alone)."""
    stack = [(home, "")]
    while stack:
        path, relative = stack.pop()
        listing = list_directory(path, relative, pins, exclude)
        yield listing
        prefix = f"{relative}/" if relative else ""
        names, kinds = listing[2], listing[3]
        # Pushed last first: the first subdirectory is taken next (depth first).
        for index in range(len(kinds) - 1, -1, -1):
            if kinds[index] == DIRECTORY:
                stack.append((f"{path}/{names[index]}", prefix + names[index]))


def encode_record(value: Any) -> bytes:
    data = marshal.dumps(value, MARSHAL_VERSION)
    return len(data).to_bytes(LENGTH, "big") + data


def read_record(stream: IO[bytes]) -> Any:
    """The next record of ``stream`` (a marshal value); None at its end (or when it
    broke off)."""
    head = stream.read(LENGTH)
    if len(head) < LENGTH:
        return None
    size = int.from_bytes(head, "big")
    data = stream.read(size)
    if len(data) < size:
        return None
    return marshal.loads(data)


def main() -> int:
    """The helper: the message, then every listing."""
    out = sys.stdout.buffer
    message = read_record(sys.stdin.buffer)
    if message is None:
        return 0  # the capture ended before its walk (a failed database capture)
    home: str
    pins: str
    exclude: list[str]
    home, pins, exclude = message
    try:
        for listing in scan_home(home, pins, frozenset(exclude)):
            out.write(encode_record(listing))
            out.flush()  # the walk waits for each directory's
    except BrokenPipeError:
        return 0  # the walk stopped reading: the capture failed or ended
    return 0


if __name__ == "__main__":
    sys.exit(main())
