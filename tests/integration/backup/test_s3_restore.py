"""Restore and verify from S3 (moto's server over real HTTP) at the store's concurrency: a
corrupt object among many and a server that stops answering mid-way replace nothing."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from hakit.backup.stores import Timeouts
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.reader import plan_fetches, read_concurrency
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.verify import read_manifest, verify_generation
from tests.integration.backup.conftest import Site, make_site
from tests.integration.backup.test_s3_backup import backup, open_store
from tests.integration.snapshot.conftest import rows_of, tree_of
from tests.support.s3servers import S3Server


def _many_objects(site: Site) -> None:
    for index in range(30):  # a blob each with the tests' limits
        (site.home / "attachments" / f"big{index:02d}").write_bytes(os.urandom(20_000 + index))


def _leftovers(directory: Path) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def test_a_corrupt_object_among_many_is_found_and_replaces_nothing(
    tmp_path: Path, moto: S3Server
) -> None:
    site = make_site(tmp_path / "site", moto)
    _many_objects(site)
    store, _ = open_store(site)
    backup(site, store)
    assert read_concurrency(store) == 8  # the filestore's <max-concurrency>
    fetches = plan_fetches(read_manifest(store, None).chunk_refs())
    blobs = [fetch.key for fetch in fetches if fetch.key.startswith("blobs/")]
    assert len(blobs) > 20
    victim = blobs[len(blobs) // 2]
    client = moto.client()
    key = store.location.key(victim)
    data = bytearray(client.get_object(Bucket=site.bucket, Key=key)["Body"].read())
    data[5] ^= 0x01
    client.put_object(Bucket=site.bucket, Key=key, Body=bytes(data))

    report = verify_generation(store)
    assert report.problems == (f"object {victim} is corrupt: its SHA-256 is not its name",)
    assert report.objects == len(fetches)

    before, rows = tree_of(site.home), rows_of(site.database)
    into = tmp_path / "out" / "restored"
    with pytest.raises(SnapshotError, match="is corrupt"):
        restore_generation(store, None, into, [site.home, site.database])
    store.close()
    assert not into.exists() and _leftovers(into.parent) == []
    assert tree_of(site.home) == before and rows_of(site.database) == rows


def test_a_server_that_stops_answering_mid_restore_replaces_nothing(
    tmp_path: Path, own_moto: S3Server
) -> None:
    site = make_site(tmp_path / "site", own_moto)
    _many_objects(site)
    store, _ = open_store(site)
    backup(site, store)
    store.close()

    fetched = 0
    lock = threading.Lock()

    def stop_the_server(key: str) -> None:
        nonlocal fetched
        with lock:
            fetched += 1
            if fetched == 10:
                own_moto.pause()  # SIGSTOP: requests are accepted, never answered

    store, _ = open_store(site, Timeouts(connect=1.0, read=1.0, attempts=1))
    into = tmp_path / "out" / "restored"
    try:
        with pytest.raises(SnapshotError, match="could not read"):
            restore_generation(store, None, into, [site.home], on_fetch=stop_the_server)
    finally:
        own_moto.resume()
        store.close()
    assert not into.exists() and _leftovers(into.parent) == []

    store, _ = open_store(site)  # the server answers again: the same restore succeeds
    report = restore_generation(store, None, into, [site.home])
    store.close()
    assert tree_of(into / "home") == tree_of(site.home)
    assert report.database is not None and rows_of(report.database) == rows_of(site.database)
