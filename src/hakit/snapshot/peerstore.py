"""A peer node's repository, read over its agent's admin API; pulling what a store lacks.

In replicated storage (``[cluster] storage = "replicated"``) every agent keeps a
repository of its own (a ``LocalStore``) and serves it READ-ONLY on its admin API
(hakit.operator.admin_api), with the same bearer token as the other endpoints:

==========  ==========================  ===========================================
GET         /snapshot/manifests         ``{"generations": [oldest, ..., newest]}``
GET, HEAD   /snapshot/objects/<key>     the object's bytes (``blobs/..``, ``packs/..``,
                                        ``manifests/<generation>.json``), streamed
==========  ==========================  ===========================================

A key is checked against the repository format's shapes (``check_key``) before
any path is built from it: a SHA-256 in lower-case hex under its two-character
directory, or a generation id; nothing else (no ``..``, no ``%``, no absolute
path) reaches the file system. Nothing on this API writes.

``PeerStore`` is the reading side of the ``Store`` protocol over HTTP. A
standby pulls a generation with ``pull_generation``: every object it lacks,
each checked against its name as it arrives, then the manifest LAST, so a
generation appears in the standby's repository only once all of it is there
(an interrupted pull leaves unreferenced objects, never a half generation).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import httpx

from hakit.snapshot.format import (
    SnapshotError,
    decode_manifest,
    manifest_key,
    tree_key,
)
from hakit.snapshot.store import LocalStore, Store
from hakit.snapshot.trees import with_entries

MANIFESTS_PATH = "/snapshot/manifests"
OBJECTS_PATH = "/snapshot/objects/"
# No object of the format is larger than a pack (Limits.pack_size, 16 MiB) or a chunk
# (4 MiB) by much; a bigger answer is refused before it is read into memory.
MAX_OBJECT = 256 * 1024 * 1024
# A manifest lists every path of the home: large homes make large manifests.
MAX_MANIFEST = 1024 * 1024 * 1024

_HASHED = re.compile(r"(blobs|packs|trees)/([0-9a-f]{2})/([0-9a-f]{64})")
GENERATION = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}Z-[0-9a-f]{8}")
_MANIFEST = re.compile(r"manifests/(" + GENERATION.pattern + r")\.json")


def check_key(key: str) -> str:
    """``key`` when it is an object key of the format, else a SnapshotError."""
    hashed = _HASHED.fullmatch(key)
    if hashed is not None and hashed.group(3).startswith(hashed.group(2)):
        return key
    if _MANIFEST.fullmatch(key) is not None:
        return key
    raise SnapshotError(
        f"invalid object key {key[:120]!r}: expected blobs/<xx>/<sha256>, packs/<xx>/<sha256>, "
        "trees/<xx>/<sha256> or manifests/<generation>.json"
    )


def check_generation(generation: str) -> str:
    if GENERATION.fullmatch(generation) is None:
        raise SnapshotError(f"invalid generation id {generation[:80]!r}")
    return generation


def check_object(key: str, data: bytes) -> None:
    """A blob's, pack's or tree's bytes must hash to its name (a manifest is checked by
    decoding)."""
    hashed = _HASHED.fullmatch(key)
    if hashed is not None and hashlib.sha256(data).hexdigest() != hashed.group(3):
        raise SnapshotError(f"object {key} from the peer is corrupt: its SHA-256 is not its name")


@dataclass
class PeerStore:
    """A peer's repository, read through its admin API (``base``: ``http://host:port``)."""

    base: str
    token: str
    timeout: float = 30.0
    client: httpx.Client | None = None  # shared connections; one per call when None

    def _request(self, method: str, path: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            if self.client is not None:
                return self.client.request(
                    method, self.base + path, headers=headers, timeout=self.timeout
                )
            return httpx.request(method, self.base + path, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as error:
            raise SnapshotError(
                f"the peer {self.base} did not answer {method} {path}: "
                f"{type(error).__name__}: {error or 'no answer'}"
            ) from None

    @staticmethod
    def _refused(response: httpx.Response, what: str) -> SnapshotError:
        try:
            message = str(response.json().get("error", ""))
        except ValueError:
            message = response.text.strip()[:200]
        return SnapshotError(f"the peer refused {what}: HTTP {response.status_code}: {message}")

    def has(self, key: str) -> bool:
        response = self._request("HEAD", OBJECTS_PATH + check_key(key))
        if response.status_code == 404:
            return False
        if response.status_code != 200:
            raise self._refused(response, f"HEAD {key}")
        return True

    def get(self, key: str) -> bytes:
        check_key(key)
        limit = MAX_MANIFEST if key.startswith("manifests/") else MAX_OBJECT
        headers = {"Authorization": f"Bearer {self.token}"}
        url = self.base + OBJECTS_PATH + key
        try:
            client = self.client or httpx.Client()
            try:
                with client.stream("GET", url, headers=headers, timeout=self.timeout) as response:
                    if response.status_code != 200:
                        response.read()
                        if response.status_code == 404:
                            raise SnapshotError(
                                f"object {key} is missing from the peer {self.base}"
                            )
                        raise self._refused(response, f"GET {key}")
                    length = int(response.headers.get("content-length", "-1"))
                    if length < 0 or length > limit:
                        raise SnapshotError(
                            f"the peer answered {key} with Content-Length {length} "
                            f"(at most {limit} expected)"
                        )
                    data = bytearray()
                    for part in response.iter_bytes():
                        data += part
                        if len(data) > length:
                            break
            finally:
                if self.client is None:
                    client.close()
        except httpx.HTTPError as error:
            raise SnapshotError(
                f"reading {key} from the peer {self.base} failed: {type(error).__name__}: {error}"
            ) from None
        if len(data) != length:
            raise SnapshotError(
                f"the peer sent {len(data)} bytes of {key}, announced {length}: cut short"
            )
        return bytes(data)

    def list_manifests(self) -> list[str]:
        response = self._request("GET", MANIFESTS_PATH)
        if response.status_code != 200:
            raise self._refused(response, "the list of generations")
        try:
            generations = response.json()["generations"]
            return sorted(check_generation(str(name)) for name in generations)
        except (ValueError, KeyError, TypeError):
            raise SnapshotError(
                f"the peer {self.base} sent a malformed list of generations"
            ) from None

    def put_if_absent(self, key: str, data: bytes) -> bool:
        raise SnapshotError(f"the peer {self.base}'s repository is read-only")

    def put_manifest(self, generation: str, data: bytes) -> None:
        raise SnapshotError(f"the peer {self.base}'s repository is read-only")


@dataclass(frozen=True, slots=True)
class PullReport:
    generation: str
    objects: int  # objects the generation needs
    copied: int  # of which were missing here and copied
    bytes: int  # bytes copied
    already: bool = False  # the generation was here already


def _present(target: Store, key: str) -> bool:
    """Whether ``target`` holds ``key``; a local repository's object found there gets
    its time refreshed (prune's grace period then covers it, as for a capture that
    finds an object present: hakit.snapshot.prune), so a prune beside the pull (the
    agent's, or ``hakit snapshot prune`` by hand) cannot take it from under it."""
    if isinstance(target, LocalStore):
        return target.refresh(key)
    return target.has(key)


def pull_generation(source: Store, target: Store, generation: str) -> PullReport:
    """Copy ``generation`` from ``source`` into ``target``: the objects it lacks, each
    checked, then the manifest last (its put is the generation's appearance)."""
    key = manifest_key(check_generation(generation))
    if target.has(key):
        return PullReport(generation, 0, 0, 0, already=True)
    data = source.get(key)
    manifest = decode_manifest(data)
    if manifest.generation != generation:
        raise SnapshotError(
            f"the manifest {key} of the peer names generation {manifest.generation}"
        )
    copied = copied_bytes = 0

    def copy(keys: list[str]) -> None:
        nonlocal copied, copied_bytes
        for needed in keys:
            check_key(needed)  # a manifest naming a non-key is refused, not requested
            if _present(target, needed):
                continue
            blob = source.get(needed)
            check_object(needed, blob)
            if target.put_if_absent(needed, blob):
                copied += 1
                copied_bytes += len(blob)

    # Its tree packs first (checked), read back here for the chunks they name; the
    # manifest last.
    copy(list(dict.fromkeys(tree_key(tree.pack) for tree in manifest.trees)))
    keys = with_entries(target, manifest).object_keys()
    copy(keys)
    if not target.has(key):
        target.put_manifest(generation, data)
    return PullReport(generation, len(keys), copied, copied_bytes)


@dataclass(frozen=True, slots=True)
class ServedObject:
    """An object of a local repository opened for serving: its open file and size."""

    fd: int
    size: int


def open_served_object(root: Path, key: str) -> ServedObject | None:
    """Open ``root/key`` for reading (None when absent); ``key`` must pass ``check_key``.

    Opened without following a symlink, and only a regular file is served."""
    path = root / check_key(key)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise SnapshotError(f"cannot read {key}: {error.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return ServedObject(fd, st.st_size)
