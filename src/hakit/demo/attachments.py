"""Attachment files in the home directory (``home/attachments/<record id>``).

A file is written under ``home/tmp`` first, fsynced, then renamed into place
and the directory fsynced: a crash leaves either no file or a whole one, never
a half-written attachment with a row pointing at it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ATTACHMENTS = "attachments"
_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredFile:
    relative_path: str  # relative to the home directory, as stored in the database
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    """One file of the attachments directory, as an integrity check sees it."""

    sha256: str
    mtime: float  # seconds since the epoch: an orphan's age is measured from it


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Attachments:
    def __init__(self, home: Path) -> None:
        self.home = home.absolute()
        self.directory = self.home / ATTACHMENTS
        self.incoming = self.home / "tmp"  # outside attachments/: never seen as an orphan

    def prepare(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path_of(self, relative_path: str) -> Path:
        return self.home / relative_path

    def write(self, name: str, chunks: Iterable[bytes]) -> StoredFile:
        """Stream ``chunks`` into ``attachments/<name>`` durably; returns its hash."""
        self.prepare()  # the home may have been swapped in by a snapshot restore
        partial = self.incoming / f"{name}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(partial, "wb") as handle:
                for chunk in chunks:
                    handle.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.directory / name)
        finally:
            partial.unlink(missing_ok=True)
        _fsync_directory(self.directory)
        return StoredFile(f"{ATTACHMENTS}/{name}", digest.hexdigest(), size)

    def remove(self, relative_path: str) -> None:
        self.path_of(relative_path).unlink(missing_ok=True)

    def modified_times(self) -> dict[str, float]:
        """Every attachment file (relative path -> mtime, seconds since the epoch)."""
        if not self.directory.is_dir():
            return {}
        times: dict[str, float] = {}
        for entry in os.scandir(self.directory):
            try:
                if entry.is_file(follow_symlinks=False):
                    times[f"{ATTACHMENTS}/{entry.name}"] = entry.stat(
                        follow_symlinks=False
                    ).st_mtime
            except FileNotFoundError:
                continue  # removed since the directory was read: not there any more
        return times

    def inventory(self) -> dict[str, AttachmentFile]:
        """Every attachment file (relative path -> sha256 and mtime)."""
        files: dict[str, AttachmentFile] = {}
        for relative_path, mtime in self.modified_times().items():
            try:
                sha256 = file_sha256(self.path_of(relative_path))
            except FileNotFoundError:
                continue  # removed since it was listed
            files[relative_path] = AttachmentFile(sha256, mtime)
        return files
