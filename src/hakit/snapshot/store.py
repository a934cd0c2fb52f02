"""Where a repository's objects live: the ``Store`` protocol and a local directory.

A store knows keys (``blobs/..``, ``packs/..``, ``manifests/..``, see
hakit.snapshot.format) and bytes, nothing of their meaning. Writing is "put if
absent" only: an object, once there, is never replaced, so the same store works
on write-only, versioned or object-locked storage (S3, next step).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Protocol

from hakit.snapshot.format import SnapshotError, manifest_key


class Store(Protocol):
    def has(self, key: str) -> bool: ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` durably unless the key exists; True when written."""
        ...

    def get(self, key: str) -> bytes: ...

    def list_manifests(self) -> list[str]:
        """The generations with a manifest, oldest first."""
        ...

    def put_manifest(self, generation: str, data: bytes) -> None:
        """The generation's manifest, in one atomic step; an existing one is an error."""
        ...


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """A repository in a local directory: each object written to a temporary file,
    fsynced, then hard-linked to its name (which fails if it exists: never an
    overwrite) and the directory fsynced."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written = 0  # objects written by this instance (counted for tests and reports)

    def create(self) -> LocalStore:
        for part in ("blobs", "packs", "manifests", "tmp"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        return self

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise SnapshotError(f"invalid object key {key!r}")
        return self.root / key

    def has(self, key: str) -> bool:
        return self._path(key).exists()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if path.exists():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.root / "tmp" / f"{path.name}.{secrets.token_hex(6)}"
        temporary.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False  # written meanwhile by someone else: same name, same bytes
            _fsync_directory(path.parent)
        finally:
            temporary.unlink(missing_ok=True)
        self.written += 1
        return True

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"object {key} is missing from {self.root}") from None

    def list_manifests(self) -> list[str]:
        directory = self.root / "manifests"
        if not directory.is_dir():
            return []
        return sorted(
            name.removesuffix(".json") for name in os.listdir(directory) if name.endswith(".json")
        )

    def put_manifest(self, generation: str, data: bytes) -> None:
        if not self.put_if_absent(manifest_key(generation), data):
            raise SnapshotError(f"generation {generation} already exists in {self.root}")


def open_local_store(root: Path, create: bool = False) -> LocalStore:
    store = LocalStore(root)
    if create:
        return store.create()
    if not (root / "manifests").is_dir():
        raise SnapshotError(f"{root} is not a snapshot repository (no manifests/ directory)")
    return store
