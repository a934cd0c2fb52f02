"""Backups to S3 over real HTTP (moto's server): the CLI round trip, only missing objects
sent, conditional puts, multipart uploads, versioning, an interrupted backup."""

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
from hakit.snapshot.format import MiB, SnapshotError
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.s3store import S3Location, S3Store
from hakit.snapshot.verify import verify_generation
from tests.integration.backup.conftest import Site, env, make_site
from tests.integration.backup.motoserver import MotoServer
from tests.integration.snapshot.conftest import LIMITS, rows_of, tree_of


def test_cli_round_trip(tmp_path: Path, moto: MotoServer) -> None:
    site = make_site(tmp_path, moto)
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

    # moto's root credential may read and delete: Jira's warning.
    result = runner.invoke(app, ["backup", "check", *config, "--node", "node1"], env=env())
    assert result.exit_code == 0, result.output
    assert "WARNING: the backup credential can read backups: to increase security, use " in (
        result.output.replace("\n", " ")
    )
    result = runner.invoke(app, ["backup", "check", *config, "--strict"], env=env())
    assert result.exit_code == 1

    # Objects in the bucket: the health check's were deleted; the repository's under the prefix.
    keys = [item["Key"] for item in moto.client().list_objects_v2(Bucket=site.bucket)["Contents"]]
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


def test_only_missing_objects_are_sent(tmp_path: Path, moto: MotoServer) -> None:
    site = make_site(tmp_path, moto, versioning=True)
    store, calls = open_store(site)
    first = backup(site, store)
    store.close()
    puts_first = calls["PutObject"]
    # The repository's objects, and the capture marker and its .done (hakit.snapshot.s3store).
    assert puts_first == store.stats.objects_put + 2 and store.stats.objects_put > 5

    (site.home / "attachments" / "a007").write_bytes(os.urandom(700))  # one small file
    store, calls = open_store(site)
    second = backup(site, store)
    store.close()
    # The database's chunks (the file is unchanged: same blobs), one pack, one manifest;
    # the capture marker and its .done.
    assert calls["PutObject"] == 2 + 2, calls
    assert store.stats.objects_present == 0
    assert "ListObjectsV2" in calls or calls["GetObject"] >= 1  # the previous manifest
    assert store.list_manifests() == [first, second]

    # Versioning on: nothing was ever overwritten (one version per key).
    versions = moto.client().list_object_versions(Bucket=site.bucket)["Versions"]
    assert len(versions) == len({version["Key"] for version in versions})
    assert verify_generation(store, second).ok


def test_a_lost_record_costs_no_overwrite(tmp_path: Path, moto: MotoServer) -> None:
    site = make_site(tmp_path, moto, versioning=True)
    store, _ = open_store(site)
    backup(site, store)
    store.close()
    (store.state / "keys").unlink()
    store, calls = open_store(site)  # read access: the record is rebuilt from a LIST
    backup(site, store)
    assert calls["ListObjectsV2"] >= 2  # the manifests, then the record
    assert calls["PutObject"] == 1  # the manifest: nothing else changed
    listed = moto.client().list_objects_v2(Bucket=site.bucket, Prefix="backups/hakit/")
    assert store.record.known() == {
        item["Key"].removeprefix("backups/hakit/") for item in listed["Contents"]
    }
    # A conditional put of an existing key is refused by S3 (412): counted, not written.
    key = sorted(key for key in store.record.known() if key.startswith("packs/"))[0]
    fresh = S3Store(store.client, store.location, tmp_path / "empty-state", write_only=True)
    assert fresh.put_if_absent(key, store.get(key)) is True  # queued: the record had no entry
    fresh.flush()
    assert (fresh.stats.objects_put, fresh.stats.objects_present) == (0, 1)
    assert key in fresh.record
    versions = moto.client().list_object_versions(Bucket=site.bucket)["Versions"]
    assert len(versions) == len({version["Key"] for version in versions})
    fresh.close()
    store.close()


def test_large_objects_go_up_in_concurrent_parts(tmp_path: Path, moto: MotoServer) -> None:
    site = make_site(tmp_path, moto)
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
    # Again with a fresh record: the completion is conditional too, nothing replaced.
    again = S3Store(base.client, location, tmp_path / "state-big-2", write_only=True)
    again.put_if_absent("blobs/aa/big", os.urandom(12 * MiB))
    again.flush()
    assert again.stats.objects_present == 1 and store.get("blobs/aa/big") == data
    for one in (store, again, base):
        one.close()


def test_an_interrupted_backup_leaves_no_generation(tmp_path: Path, own_moto: MotoServer) -> None:
    site = make_site(tmp_path, own_moto)
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
            own_moto.pause()  # SIGSTOP: requests are accepted, never answered

    store, _ = open_store(site, Timeouts(connect=1.0, read=1.0, attempts=1))
    try:
        with pytest.raises(SnapshotError, match="could not write"):
            backup(site, store, on_read=stop_the_server)
    finally:
        own_moto.resume()
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
