"""The peer store: a real admin API serving a real repository, read over real HTTP.

A standby pulls a generation (only what it lacks, the manifest last), every
object checked; the API refuses a wrong token, keys outside the format's shapes
(no path traversal) and writes; a large object is streamed whole.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from hakit.operator.admin_api import STREAM_PIECE, AdminApi
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import Limits, SnapshotError, manifest_key
from hakit.snapshot.peerstore import PeerStore, check_key, pull_generation
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.store import LocalStore, open_local_store
from hakit.snapshot.trees import load_manifest
from hakit.snapshot.verify import verify_generation
from tests.integration.snapshot.conftest import LIMITS, object_files, rows_of, tree_of

TOKEN = "0123456789abcdef-admin-token"


class Served:
    """A real AdminApi in a thread of its own, serving ``repository``."""

    def __init__(self, repository: Path | None) -> None:
        self.loop = asyncio.new_event_loop()

        async def perform(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
            return {"ok": True}

        self.api = AdminApi(TOKEN, perform, repository=repository)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        host, port = asyncio.run_coroutine_threadsafe(
            self.api.start("127.0.0.1", 0), self.loop
        ).result(10)
        self.base = f"http://{host}:{port}"
        self.port = port

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.api.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def raw(self, request: bytes) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as connection:
            connection.sendall(request)
            data = b""
            while chunk := connection.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), body


@pytest.fixture
def active(site: tuple[Path, Path, Path]) -> Iterator[tuple[Served, LocalStore, Path, Path]]:
    home, database, repo = site
    store = open_local_store(repo, create=True)
    served = Served(repo)
    try:
        yield served, store, home, database
    finally:
        served.close()


def _capture(store: LocalStore, home: Path, database: Path, limits: Limits = LIMITS) -> str:
    options = CaptureOptions(
        home=home, database_url=f"sqlite:///{database}", node="n1", epoch=4, limits=limits
    )
    return create_snapshot(store, options).manifest.generation


def test_standby_pulls_only_what_it_lacks_manifest_last(
    active: tuple[Served, LocalStore, Path, Path], tmp_path: Path
) -> None:
    served, store, home, database = active
    first = _capture(store, home, database)
    peer = PeerStore(served.base, TOKEN)
    assert peer.list_manifests() == [first]
    standby = open_local_store(tmp_path / "standby", create=True)

    report = pull_generation(peer, standby, first)

    assert report.copied == report.objects > 0
    assert standby.list_manifests() == [first]
    assert object_files(tmp_path / "standby") == object_files(store.root)
    assert verify_generation(standby, first).ok
    restored = restore_generation(standby, first, tmp_path / "restored")
    assert tree_of(restored.into / "home") == tree_of(home)
    assert restored.database is not None and rows_of(restored.database) == rows_of(database)

    # One file changed: the next pull moves its pack and the database's changed chunks only.
    (home / "attachments" / "a003").write_bytes(b"changed")
    second = _capture(store, home, database)
    again = pull_generation(peer, standby, second)
    assert 0 < again.copied < again.objects
    assert standby.list_manifests() == [first, second]
    assert pull_generation(peer, standby, second).already


def test_a_pull_refreshes_what_it_relies_on_so_a_prune_beside_it_keeps_it(
    active: tuple[Served, LocalStore, Path, Path], tmp_path: Path
) -> None:
    """Objects a pull finds already here are not written, but their times are refreshed:
    a prune with a grace period (the agent's, or one run by hand) keeps them."""
    served, store, home, database = active
    first = _capture(store, home, database)
    peer = PeerStore(served.base, TOKEN)
    standby = open_local_store(tmp_path / "standby", create=True)
    pull_generation(peer, standby, first)
    old = 1_000_000_000  # 2001: far older than any grace period
    for name in object_files(standby.root):
        os.utime(standby.root / name, (old, old))
    (home / "attachments" / "a003").write_bytes(b"changed")
    second = _capture(store, home, database)

    report = pull_generation(peer, standby, second)

    reused = {
        name for name in object_files(standby.root) if (standby.root / name).stat().st_mtime == old
    }
    assert report.copied < report.objects  # most were found here, not copied
    # Every object the second generation names is young now, found or copied.
    needed = set(load_manifest(standby, second).object_keys())
    assert needed <= object_files(standby.root) and not needed & reused


def test_a_large_object_is_streamed_whole(
    active: tuple[Served, LocalStore, Path, Path], tmp_path: Path
) -> None:
    served, store, home, database = active
    big = os.urandom(3 * STREAM_PIECE + 12345)
    (home / "big.bin").write_bytes(big)
    limits = Limits(chunk_size=len(big) + 1, small_file=8 * 1024, pack_size=64 * 1024)
    generation = _capture(store, home, database, limits)
    standby = open_local_store(tmp_path / "standby", create=True)
    pull_generation(PeerStore(served.base, TOKEN), standby, generation)
    restored = restore_generation(standby, generation, tmp_path / "restored")
    assert (restored.into / "home" / "big.bin").read_bytes() == big


def test_a_corrupt_object_on_the_peer_leaves_no_generation_here(
    active: tuple[Served, LocalStore, Path, Path], tmp_path: Path
) -> None:
    served, store, home, database = active
    generation = _capture(store, home, database)
    victim = sorted(object_files(store.root))[0]
    path = store.root / victim
    os.chmod(path, 0o600)
    path.write_bytes(b"flipped" + path.read_bytes()[7:])
    standby = open_local_store(tmp_path / "standby", create=True)
    with pytest.raises(SnapshotError, match="corrupt"):
        pull_generation(PeerStore(served.base, TOKEN), standby, generation)
    assert standby.list_manifests() == []
    assert not standby.has(manifest_key(generation))


def test_wrong_token_and_missing_objects_are_clear_errors(
    active: tuple[Served, LocalStore, Path, Path],
) -> None:
    served, store, home, database = active
    _capture(store, home, database)
    with pytest.raises(SnapshotError, match="HTTP 401"):
        PeerStore(served.base, "x" * 32).list_manifests()
    peer = PeerStore(served.base, TOKEN)
    absent = "blobs/ab/ab" + "0" * 62
    assert not peer.has(absent)
    with pytest.raises(SnapshotError, match="missing from the peer"):
        peer.get(absent)
    with pytest.raises(SnapshotError, match="read-only"):
        peer.put_if_absent(absent, b"")


@pytest.mark.parametrize(
    "path",
    [
        "/snapshot/objects/../../../etc/passwd",
        "/snapshot/objects/blobs/ab/../../manifests",
        "/snapshot/objects/%2e%2e/%2e%2e/etc/passwd",
        "/snapshot/objects//etc/passwd",
        "/snapshot/objects/blobs/cd/ab" + "0" * 62,  # the directory is not the hash's
        "/snapshot/objects/manifests/../tmp/x.json",
        "/snapshot/objects/tmp/x",
        "/snapshot/objects/blobs/AB/AB" + "0" * 62,
    ],
)
def test_keys_outside_the_format_are_refused_before_any_path_is_built(
    active: tuple[Served, LocalStore, Path, Path], path: str
) -> None:
    served = active[0]
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    status, body = served.raw(request.encode())
    assert status == 400, body
    assert b"invalid object key" in body
    with pytest.raises(SnapshotError, match="invalid object key"):
        check_key(path.removeprefix("/snapshot/objects/"))


def test_the_repository_is_read_only_and_needs_the_token(
    active: tuple[Served, LocalStore, Path, Path],
) -> None:
    served = active[0]
    key = "blobs/ab/ab" + "0" * 62
    status, _ = served.raw(
        f"PUT /snapshot/objects/{key} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Length: 0\r\n\r\n".encode()
    )
    assert status == 405
    status, _ = served.raw(b"GET /snapshot/manifests HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 401


def test_a_node_without_a_repository_serves_none(tmp_path: Path) -> None:
    served = Served(None)
    try:
        status, body = served.raw(
            f"GET /snapshot/manifests HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
    finally:
        served.close()
    assert status == 404 and b"no snapshot repository" in body
