"""Backups to S3 over real HTTP, each test against moto's server and ``rclone serve s3``
(the ``s3`` fixtures): the CLI round trip, only missing objects sent (incremental),
conditional puts and what replaces them where the store ignores If-None-Match (rclone),
multipart uploads, an interrupted backup. Versioning is checked on moto only: rclone has
none."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hakit.backup.stores import Timeouts, s3_client, s3_store
from hakit.backup.target import S3Target, resolve_target
from hakit.cli import app
from hakit.config import load_config
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import MiB, SnapshotError, decode_manifest, manifest_key
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.s3store import S3Location, S3Store
from hakit.snapshot.verify import verify_generation
from tests.integration.backup.conftest import Site, env, make_site
from tests.integration.snapshot.conftest import LIMITS, rows_of, tree_of
from tests.support.s3servers import S3Server


def test_cli_round_trip(tmp_path: Path, s3: S3Server) -> None:
    site = make_site(tmp_path, s3)
    runner = CliRunner()
    config = ["-c", str(site.config)]

    result = runner.invoke(app, ["backup", "create", *config, "--node", "node1"], env=env())
    assert result.exit_code == 0, result.output
    assert f"in s3://{site.bucket}/backups/hakit/" in result.output
    assert "44 files read" in result.output  # make_home's 43 and filestore-config.xml

    result = runner.invoke(app, ["backup", "list", *config], env=env())
    assert result.exit_code == 0, result.output
    assert "node1" in result.output and "sqlite" in result.output

    result = runner.invoke(app, ["backup", "verify", *config], env=env())
    assert result.exit_code == 0, result.output
    assert ": ok," in result.output

    into = tmp_path / "restored"
    result = runner.invoke(app, ["backup", "restore", *config, "--into", str(into)], env=env())
    assert result.exit_code == 0, result.output
    assert tree_of(into / "home") == tree_of(site.home)
    assert rows_of(into / "database" / "app.db") == rows_of(site.database)

    # The servers' one credential may read and delete: Jira's warning.
    result = runner.invoke(app, ["backup", "check", *config, "--node", "node1"], env=env())
    assert result.exit_code == 0, result.output
    assert "WARNING: the backup credential can read backups: to increase security, use " in (
        result.output.replace("\n", " ")
    )
    result = runner.invoke(app, ["backup", "check", *config, "--strict"], env=env())
    assert result.exit_code == 1

    # Objects in the bucket: the health check's were deleted; the repository's under the prefix.
    keys = [item["Key"] for item in s3.client().list_objects_v2(Bucket=site.bucket)["Contents"]]
    assert all(key.startswith("backups/hakit/") for key in keys)


def counting(client: Any) -> Counter[str]:
    """The S3 operations ``client`` sends, by name (boto3's event hooks)."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.s3", count)
    return calls


def open_store(site: Site, timeouts: Timeouts | None = None) -> tuple[S3Store, Counter[str]]:
    target = resolve_target(load_config(site.config))
    assert isinstance(target, S3Target)
    client = s3_client(target, env(), timeouts or Timeouts())
    return s3_store(target, client), counting(client)


def backup(site: Site, store: S3Store, **options: Any) -> str:
    cfg = load_config(site.config)
    report = create_snapshot(
        store,
        CaptureOptions(
            home=cfg.app.home, database_url=cfg.app.database_url, limits=LIMITS, **options
        ),
    )
    return report.manifest.generation


def test_only_missing_objects_are_sent(tmp_path: Path, s3: S3Server) -> None:
    site = make_site(tmp_path, s3, versioning=s3.versioning)
    store, calls = open_store(site)
    first = backup(site, store)
    store.close()
    assert store.conditional is s3.conditional_writes  # the probe (hakit.snapshot.s3store)
    puts_first = calls["PutObject"]
    # The repository's objects, and the capture marker, its probe and its .done.
    assert puts_first == store.stats.objects_put + 3 and store.stats.objects_put > 5
    # Without conditional writes every put is checked first (a HEAD), with them none is.
    assert calls["HeadObject"] == (0 if s3.conditional_writes else puts_first - 3)

    (site.home / "attachments" / "a007").write_bytes(os.urandom(700))  # one small file
    store, calls = open_store(site)
    second = backup(site, store)
    store.close()
    # One pack (the new file), one tree pack (the changed directories' trees), one manifest
    # (the database's chunks are the same blobs); the capture marker, its probe and its .done.
    assert len(new_tree_packs(store, first, second)) == 1
    assert calls["PutObject"] == 2 + 1 + 3, calls
    assert store.stats.objects_present == 0
    assert "ListObjectsV2" in calls or calls["GetObject"] >= 1  # the previous manifest
    assert store.list_manifests() == [first, second]
    assert verify_generation(store, second).ok
    if s3.versioning:  # nothing was ever overwritten (one version per key)
        versions = s3.client().list_object_versions(Bucket=site.bucket)["Versions"]
        assert len(versions) == len({version["Key"] for version in versions})


def new_tree_packs(store: S3Store, older: str, newer: str) -> set[str]:
    """The tree packs of generation ``newer`` that ``older`` did not use (one at most:
    a capture puts the trees it writes in one pack)."""
    trees = {g: decode_manifest(store.get(manifest_key(g))).trees for g in (older, newer)}
    return {tree.pack for tree in trees[newer]} - {tree.pack for tree in trees[older]}


def test_a_lost_record_costs_no_overwrite(tmp_path: Path, s3: S3Server) -> None:
    site = make_site(tmp_path, s3, versioning=s3.versioning)
    store, _ = open_store(site)
    backup(site, store)
    store.close()
    (store.state / "keys").unlink()
    store, calls = open_store(site)  # read access: the record is rebuilt from a LIST
    backup(site, store)
    assert calls["ListObjectsV2"] >= 2  # the manifests, then the record
    # The manifest and the trees that differ (files written within two seconds of a capture
    # are racily clean: their directories are read again), the capture marker, its probe
    # and its .done; no blob or pack.
    first, second = store.list_manifests()
    assert calls["PutObject"] == 1 + len(new_tree_packs(store, first, second)) + 3
    listed = s3.client().list_objects_v2(Bucket=site.bucket, Prefix="backups/hakit/")
    # The record: rebuilt from the LIST, and the manifest added; not this capture's marker.
    keys = {item["Key"].removeprefix("backups/hakit/") for item in listed["Contents"]}
    missing = keys - store.record.known()
    assert store.record.known() <= keys and len(missing) == 2, missing
    assert all(key.startswith("captures/") for key in missing)
    # A put of an existing key (other bytes, so an overwrite would show) is refused by S3
    # (412), or where the store ignores If-None-Match found by a HEAD: counted, not written.
    key = sorted(key for key in store.record.known() if key.startswith("packs/"))[0]
    stored = store.get(key)
    fresh = S3Store(store.client, store.location, tmp_path / "empty-state")
    assert fresh.put_if_absent(key, b"other bytes") is True  # queued: the record had no entry
    fresh.flush()
    assert (fresh.stats.objects_put, fresh.stats.objects_present) == (0, 1)
    assert key in fresh.record and store.get(key) == stored
    fresh.close()
    # Write-only: a 412; a store without conditional writes cannot be checked without
    # reading, so nothing is written and the error says why.
    blind = S3Store(store.client, store.location, tmp_path / "blind-state", write_only=True)
    if s3.conditional_writes:
        blind.put_if_absent(key, b"other bytes")
        blind.flush()
        assert (blind.stats.objects_put, blind.stats.objects_present) == (0, 1)
    else:
        with pytest.raises(SnapshotError, match="does not honour conditional writes"):
            blind.put_if_absent(key, b"other bytes")
        assert blind.stats.objects_put == 0
    assert store.get(key) == stored
    blind.close()
    if s3.versioning:
        versions = s3.client().list_object_versions(Bucket=site.bucket)["Versions"]
        assert len(versions) == len({version["Key"] for version in versions})
    store.close()


def stored_objects(s3: S3Server, site: Site) -> dict[str, tuple[str, object]]:
    """The repository's objects but the capture markers: key -> (ETag, LastModified), which
    an overwrite changes, even with the same bytes."""
    listed = s3.client().list_objects_v2(Bucket=site.bucket, Prefix="backups/hakit/")
    return {
        item["Key"]: (item["ETag"], item["LastModified"])
        for item in listed["Contents"]
        if "/captures/" not in item["Key"]
    }


def test_write_only_backups_need_conditional_writes(tmp_path: Path, s3: S3Server) -> None:
    """``hakit backup create`` in write-only mode: stored where the store honours
    If-None-Match; refused, nothing overwritten, where it does not (rclone)."""
    site = make_site(tmp_path, s3)
    runner = CliRunner()
    config = ["-c", str(site.config)]
    result = runner.invoke(app, ["backup", "create", *config], env=env())
    assert result.exit_code == 0, result.output
    before = stored_objects(s3, site)

    site.configure(write_only=True)
    (site.root / "state").rename(site.root / "state-lost")  # a node without a record
    (site.home / "attachments" / "a001").write_bytes(os.urandom(900))
    result = runner.invoke(app, ["backup", "create", *config], env=env())
    after = stored_objects(s3, site)
    assert {key: after[key] for key in before} == before  # nothing overwritten
    manifests = [key for key in after if "/manifests/" in key]
    if s3.conditional_writes:
        assert result.exit_code == 0, result.output
        assert len(manifests) == 2
    else:
        assert result.exit_code == 1, result.output
        assert "does not honour conditional writes" in result.output.replace("\n", " ")
        assert "no generation written" in result.output
        assert after.keys() == before.keys() and len(manifests) == 1


def test_large_objects_go_up_in_concurrent_parts(tmp_path: Path, s3: S3Server) -> None:
    site = make_site(tmp_path, s3)
    base, calls = open_store(site)
    location = S3Location(
        base.location.bucket,
        "big",
        max_concurrency=4,
        multipart_threshold=6 * MiB,
        part_size=5 * MiB,
    )
    store = S3Store(base.client, location, tmp_path / "state-big")
    data = os.urandom(12 * MiB)
    assert store.put_if_absent("blobs/aa/big", data)
    store.flush()
    assert calls["CreateMultipartUpload"] == 1 and calls["UploadPart"] == 3
    assert calls["CompleteMultipartUpload"] == 1 and store.stats.parts_put == 3
    assert store.get("blobs/aa/big") == data
    # Again with a fresh record: the completion is conditional too (or, where the store
    # ignores If-None-Match, the HEAD before finds it): nothing replaced.
    again = S3Store(base.client, location, tmp_path / "state-big-2")
    again.put_if_absent("blobs/aa/big", os.urandom(12 * MiB))
    again.flush()
    assert again.stats.objects_present == 1 and store.get("blobs/aa/big") == data
    assert calls["CompleteMultipartUpload"] == (2 if s3.conditional_writes else 1)
    for one in (store, again, base):
        one.close()


def test_an_interrupted_backup_leaves_no_generation(tmp_path: Path, own_s3: S3Server) -> None:
    site = make_site(tmp_path, own_s3)
    store, _ = open_store(site)
    first = backup(site, store)
    store.close()
    for index in range(30):  # new files, so the next backup has objects to send
        (site.home / "attachments" / f"new{index:02d}").write_bytes(os.urandom(20_000))

    reads = 0

    def stop_the_server(path: Path, attempt: int) -> None:
        nonlocal reads
        reads += 1
        if reads == 10:
            own_s3.pause()  # SIGSTOP: requests are accepted, never answered

    store, _ = open_store(site, Timeouts(connect=1.0, read=1.0, attempts=1))
    try:
        with pytest.raises(SnapshotError, match="could not write"):
            backup(site, store, on_read=stop_the_server)
    finally:
        own_s3.resume()
        store.close()

    store, _ = open_store(site)
    assert store.list_manifests() == [first]  # the interrupted one never became visible
    second = backup(site, store)
    store.close()
    assert store.list_manifests() == [first, second]
    report = verify_generation(store, second)
    assert report.ok, report.problems
    into = tmp_path / "restored"
    restore_generation(store, second, into)
    assert tree_of(into / "home") == tree_of(site.home)
