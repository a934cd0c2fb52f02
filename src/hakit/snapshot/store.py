"""Where a repository's objects live: the ``Store`` protocol and a local directory.

A store knows keys (``blobs/..``, ``packs/..``, ``manifests/..``, see
hakit.snapshot.format) and bytes, nothing of their meaning. Writing is "put if
absent" only: an object, once there, is never replaced, so the same store works
on write-only, versioned or object-locked storage (S3, next step).

Deleting is another protocol, ``SupportsDelete``: only pruning
(hakit.snapshot.prune) needs it, and it is meant for a separate, more privileged
credential; capture, verify and restore take a plain ``Store``, so normal
operation never can delete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from hakit.snapshot.format import MiB, SnapshotError, manifest_key

WRITE_PIECE = MiB


class Store(Protocol):
    def has(self, key: str) -> bool: ...

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` durably unless the key exists; True when written.

        When the key exists, a store that also supports delete must keep a prune
        running meanwhile from sweeping it: a capture that finds an object already
        there relies on it without writing it (hakit.snapshot.prune). ``LocalStore``
        makes the object count as new for the grace period (its modification time set
        to now); ``S3Store``, which cannot refresh an object without overwriting or
        reading it, has each capture leave a marker that holds prune's deletions back
        until the capture's manifest is written (hakit.snapshot.s3store)."""
        ...

    def get(self, key: str) -> bytes: ...

    def list_manifests(self) -> list[str]:
        """The generations with a manifest, oldest first."""
        ...

    def put_manifest(self, generation: str, data: bytes) -> None:
        """The generation's manifest, in one atomic step; an existing one is an error."""
        ...


@runtime_checkable
class RetainsTreeCopies(Protocol):
    """A store that keeps local copies of the tree packs it put (a write-only S3 store:
    hakit.snapshot.s3store); told after each capture which ones the newest generation
    uses, it drops the others."""

    def retain_tree_copies(self, keys: Collection[str]) -> None: ...


@runtime_checkable
class ReadsRanges(Protocol):
    """A store that reads part of an object without the rest (a local repository: one
    tree of a tree pack, hakit.snapshot.trees.tree_reader)."""

    def get_range(self, key: str, offset: int, size: int) -> bytes: ...


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int
    modified_ns: int  # when it was last written (a file's mtime, S3's LastModified)


class SupportsDelete(Protocol):
    """What pruning needs beyond ``Store``: listing with times, and deleting."""

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix`` (e.g. "blobs/"), in no order."""
        ...

    def delete(self, key: str, modified_before_ns: int | None = None) -> bool:
        """Remove ``key`` durably (once this returns, a crash does not bring it back);
        True when removed, False when it was missing. With ``modified_before_ns``, only
        if it was last modified before then: an object a capture refreshed meanwhile
        (``put_if_absent`` on an existing key) stays. The check and the removal are
        one step where the store allows it (LocalStore: by a rename); elsewhere the
        window between them must be as short as one request."""
        ...


class PrunableStore(Store, SupportsDelete, Protocol):
    """A store prune can work on."""


BACKGROUND_PREFIXES = ("blobs/", "packs/")  # what LocalStore writes in the background


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:WRITE_PIECE]) :]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore:
    """A repository in a local directory: each object written to a temporary file,
    fsynced, then hard-linked to its name (which fails if it exists: never an
    overwrite) and the directory fsynced.

    Within ``writing_behind`` (a capture's), blobs and packs are written so by a few
    background threads, so the capture reads and hashes the next file while the disk
    takes the last ones (their fsyncs overlap too); the bytes queued are bounded
    (``max_in_flight``). ``put_manifest`` first waits for all of them (``flush``): a
    manifest becomes visible only after every object it names is durable under its
    name. A background write that failed (a full disk) is raised by the next put and
    by ``flush``, so no manifest follows it. Outside it, and always for manifests and
    anything else (an encrypted repository's ``config``), a put is durable when it
    returns."""

    def __init__(self, root: Path, *, writers: int = 4, max_in_flight: int = 32 * MiB) -> None:
        self.root = root
        self.written = 0  # objects written by this instance (counted for tests and reports)
        self.writers = writers
        self.max_in_flight = max_in_flight
        self._behind = False  # within writing_behind
        self._room = threading.Condition()  # guards every field below
        self._queued: dict[str, bytes] = {}  # key -> bytes handed to a writer, not yet named
        self._in_flight = 0
        self._pending: list[Future[None]] = []
        self._failure: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = None

    def create(self) -> LocalStore:
        for part in ("blobs", "packs", "manifests", "tmp"):
            (self.root / part).mkdir(parents=True, exist_ok=True)
        return self

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise SnapshotError(f"invalid object key {key!r}")
        return self.root / key

    def has(self, key: str) -> bool:
        with self._room:
            if key in self._queued:
                return True
        return self._path(key).exists()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        if not (self._behind and key.startswith(BACKGROUND_PREFIXES)):
            return self._write(path, data)
        with self._room:
            self._raise_failure()
            if key in self._queued:
                return False  # queued by this capture already: same name, same bytes
        if self._refresh(path):
            return False
        with self._room:
            # Bounded: every queued write ends (written or failed) and makes room.
            while self._in_flight and self._in_flight + len(data) > self.max_in_flight:
                self._room.wait()
            self._raise_failure()
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.writers, thread_name_prefix="store-write")
            self._queued[key] = data
            self._in_flight += len(data)
            self._pending = [future for future in self._pending if not future.done()]
            self._pending.append(self._pool.submit(self._background, key, path, data))
        return True

    @contextlib.contextmanager
    def writing_behind(self) -> Iterator[None]:
        """Blobs and packs put within are written in the background (see the class).
        Leaving normally flushes (raising a write's failure); leaving by an exception
        waits for the writes under way, whose failure that exception supersedes."""
        self._behind = True
        failed = True
        try:
            yield
            failed = False
        finally:
            self._behind = False
            try:
                self.flush()
            except Exception:
                if not failed:
                    raise
            finally:
                with self._room:
                    self._failure = None

    def flush(self) -> None:
        """Wait for every queued write; raise the first failure. Once this returns,
        every object put is durable under its name."""
        with self._room:
            pending, self._pending = self._pending, []
            pool, self._pool = self._pool, None
        wait(pending)
        if pool is not None:
            pool.shutdown(wait=True)  # no threads left idle between captures
        with self._room:
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _background(self, key: str, path: Path, data: bytes) -> None:
        try:
            if self._failure is None:
                self._write(path, data)
        except BaseException as error:
            with self._room:
                if self._failure is None:
                    self._failure = error
            raise
        finally:
            with self._room:
                del self._queued[key]
                self._in_flight -= len(data)
                self._room.notify_all()

    def _write(self, path: Path, data: bytes) -> bool:
        """``data`` durable under ``path`` unless it exists; True when written."""
        if self._refresh(path):
            return False
        created = not path.parent.is_dir()
        if created:
            path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.root / "tmp" / f"{path.name}.{secrets.token_hex(6)}"
        temporary.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(temporary, path)
            except FileExistsError:
                # written meanwhile by someone else: same name, same bytes
                self._refresh(path)
                return False
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(path.parent)
        if created:
            _fsync_directory(path.parent.parent)  # the new directory's own name
        with self._room:
            self.written += 1
        return True

    def refresh(self, key: str) -> bool:
        """Whether ``key`` is here, its time refreshed when it is: a copy that relies on
        an object without writing it (a pull, hakit.snapshot.peerstore) keeps it safe
        from a prune for the grace period, as ``put_if_absent`` does for a capture."""
        with self._room:
            if key in self._queued:
                return True
        return self._refresh(self._path(key))

    @staticmethod
    def _refresh(path: Path) -> bool:
        """An existing object's mtime set to now (prune's grace period then covers it);
        False when it does not exist."""
        try:
            os.utime(path)
        except FileNotFoundError:
            return False
        return True

    def get(self, key: str) -> bytes:
        with self._room:
            queued = self._queued.get(key)
        if queued is not None:
            return queued
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"object {key} is missing from {self.root}") from None

    def get_range(self, key: str, offset: int, size: int) -> bytes:
        """``size`` bytes of ``key`` from ``offset``: one tree of a tree pack, without the
        pack (the hash cache reads a few trees of each of several packs)."""
        with self._room:
            queued = self._queued.get(key)
        if queued is not None:
            return queued[offset : offset + size]
        try:
            fd = os.open(self._path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SnapshotError(f"object {key} is missing from {self.root}") from None
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def list_manifests(self) -> list[str]:
        directory = self.root / "manifests"
        if not directory.is_dir():
            return []
        return sorted(
            name.removesuffix(".json") for name in os.listdir(directory) if name.endswith(".json")
        )

    def put_manifest(self, generation: str, data: bytes) -> None:
        self.flush()  # every object durable under its name first
        if not self.put_if_absent(manifest_key(generation), data):
            raise SnapshotError(f"generation {generation} already exists in {self.root}")

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        top = prefix.split("/", 1)[0]
        for directory, _dirs, files in os.walk(self._path(top)):
            for name in files:
                path = Path(directory, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # deleted meanwhile (a temporary file linked into place)
                yield StoredObject(key, st.st_size, st.st_mtime_ns)

    def delete(self, key: str, modified_before_ns: int | None = None) -> bool:
        path = self._path(key)
        if modified_before_ns is None:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            _fsync_directory(path.parent)
            return True
        # Moved aside first, then judged by its time: a capture refreshing the object
        # before the move is seen here (it is put back); one after it finds the key
        # missing and writes the object again. Never a refreshed object deleted.
        aside = self.root / "tmp" / f"{path.name}.deleting.{secrets.token_hex(6)}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        try:
            if os.stat(aside).st_mtime_ns >= modified_before_ns:
                # FileExistsError: written again meanwhile, same name, same bytes
                with contextlib.suppress(FileExistsError):
                    os.link(aside, path)
                return False
            return True
        finally:
            aside.unlink(missing_ok=True)
            _fsync_directory(path.parent)
            _fsync_directory(aside.parent)


def open_local_store(root: Path, create: bool = False) -> LocalStore:
    store = LocalStore(root)
    if create:
        return store.create()
    if not (root / "manifests").is_dir():
        raise SnapshotError(f"{root} is not a snapshot repository (no manifests/ directory)")
    return store
