"""A PostgreSQL data directory as one archive in a generation, and back.

A physical base backup (``hakit.snapshot.basebackup``) is a whole data
directory; a generation stores one database file, so the directory is stored as
one tar archive (``pack_data_directory``, members in sorted order: regular files
and directories only) and chunked like any other file. ``unpack_data_directory``
makes a NEW data directory from the archive's bytes, streamed chunk by chunk
(every chunk already checked against its hash by the reader), refusing any
member that is not a plain file or directory or whose path leaves the
directory; directories are made ``0700`` and files ``0600`` (PostgreSQL
refuses a data directory others can read), each file fsynced. It then checks the
result: ``PG_VERSION`` and ``backup_label`` are there (a base backup, not a
stopped server's copy), and, when PostgreSQL's own ``pg_verifybackup`` of the
backup's major version is installed, every file against the backup's
``backup_manifest`` (sizes, checksums) and the WAL it needs. The live data
directory is never a target: hakit does not manage the server, and putting a
restored data directory in place means stopping that server (README).
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from hakit.snapshot.format import SnapshotError
from hakit.snapshot.postgres import run_program

DIRECTORY_MODE = 0o700  # PostgreSQL requires 0700 (or 0750 with group access)
FILE_MODE = 0o600
VERIFY_TIMEOUT = 3600.0  # seconds for pg_verifybackup: bounded, generous


def pg_program_of(name: str, major: int) -> str | None:
    """``name`` of PostgreSQL ``major`` (the backup's: a server and pg_verifybackup read only
    their own version's files and WAL); None when that version is not installed."""
    found = glob.glob(f"/usr/lib/postgresql/{major}/bin/{name}")
    if found:
        return found[0]
    path = shutil.which(name)
    if path is None:
        return None
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    version = done.stdout.rsplit(" ", 1)[-1].strip()
    return path if version.split(".")[0] == str(major) else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- packing (capture) ------------------------------------------------------------------


def _members(root: Path) -> Iterator[Path]:
    """Every path under ``root``, parents before children, in sorted order."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(directory)
        if here != root:
            yield here
        for name in sorted(files):
            yield here / name


def pack_data_directory(root: Path, archive: Path) -> None:
    """Write the data directory ``root`` (a base backup, in the capture's scratch directory)
    into the new tar file ``archive``."""

    def anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
        # Ownership is the restoring host's business (the postgres user there).
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    with tarfile.open(archive, "x", format=tarfile.PAX_FORMAT) as tar:
        for path in _members(root):
            mode = path.lstat().st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise SnapshotError(
                    f"the base backup holds {path.relative_to(root)}, neither a file nor a "
                    "directory (a tablespace link?): not supported"
                )
            tar.add(path, path.relative_to(root).as_posix(), recursive=False, filter=anonymous)


# --- unpacking (restore) ----------------------------------------------------------------


class _ChunkStream:
    """A read-only file object over the archive's chunks, in order (tarfile's stream mode)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._current = memoryview(b"")  # what is left of the chunk being read
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        parts: list[memoryview] = []
        wanted = size
        while wanted != 0:
            if not self._current:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._current = memoryview(chunk)
            take = len(self._current) if wanted < 0 else min(wanted, len(self._current))
            parts.append(self._current[:take])
            self._current = self._current[take:]
            wanted = wanted - take if wanted > 0 else wanted
        data = b"".join(parts)
        self.read_bytes += len(data)
        return data


def _member_path(root: Path, name: str) -> Path:
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or ".." in parts or "" in parts or parts == ["."]:
        raise SnapshotError(f"the base backup's archive names an unsafe path {name!r}")
    return root.joinpath(*parts)


def _unpack(chunks: Iterable[bytes], root: Path) -> int:
    stream = _ChunkStream(chunks)
    root.mkdir(mode=DIRECTORY_MODE)
    directories = [root]
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                path = _member_path(root, member.name)
                if member.isdir():
                    path.mkdir(mode=DIRECTORY_MODE)
                    directories.append(path)
                elif member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    with open(path, "xb") as handle:
                        shutil.copyfileobj(source, handle, 1024 * 1024)
                        handle.flush()
                        os.fsync(handle.fileno())
                    os.chmod(path, FILE_MODE)
                else:
                    raise SnapshotError(
                        f"the base backup's archive holds {member.name!r}, neither a file nor "
                        "a directory"
                    )
        stream.read()  # the archive's end padding: every chunk is read, so every hash checked
    except tarfile.TarError as error:
        raise SnapshotError(f"the base backup's archive cannot be read: {error}") from None
    except FileExistsError as error:
        raise SnapshotError(f"the base backup's archive names {error.filename} twice") from None
    for directory in reversed(directories):
        _fsync(directory)
    return stream.read_bytes


def verify_data_directory(root: Path, major: int, what: str) -> str:
    """``root`` is a base backup that ``pg_verifybackup`` (of PostgreSQL ``major``) accepts;
    what was checked, in a few words. Raises naming ``what`` and the tool's complaint."""
    for name in ("PG_VERSION", "backup_label", "global/pg_control"):
        if not (root / name).is_file():
            raise SnapshotError(f"{what} is not a base backup: it has no {name}")
    program = pg_program_of("pg_verifybackup", major)
    if program is None:
        return f"not verified by pg_verifybackup (PostgreSQL {major}'s is not installed)"
    run_program(
        [program, "--quiet", str(root)],
        dict(os.environ, LC_ALL="C"),
        f"pg_verifybackup of {what}",
        VERIFY_TIMEOUT,
    )
    return "pg_verifybackup: every file and the WAL match its backup_manifest"


def unpack_data_directory(chunks: Iterable[bytes], root: Path, major: int) -> int:
    """Make the NEW data directory ``root`` from the archive's chunks and check it; the
    bytes read. A failure raises (the caller removes what was made)."""
    if root.exists():
        raise SnapshotError(f"{root} exists: a data directory is restored into a new one")
    read = _unpack(chunks, root)
    verify_data_directory(root, major, f"the restored data directory {root}")
    return read
