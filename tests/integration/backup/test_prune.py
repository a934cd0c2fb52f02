"""``hakit backup prune`` over real HTTP (moto's server, and rclone serve s3 where no IAM or
versioning is needed) and on a directory: retention, each
node's newest kept, a backup running while prune sweeps loses nothing, encrypted repositories,
and prune's own credential (IAM enforced)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hakit.backup.prune import prune_backups
from hakit.backup.stores import close_store, open_store, s3_client, s3_store
from hakit.backup.target import S3Target, resolve_target
from hakit.cli import app
from hakit.config import load_config
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import Limits
from hakit.snapshot.prune import referenced_keys
from hakit.snapshot.restore import restore_generation
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import Store
from hakit.snapshot.trees import load_manifest
from hakit.snapshot.verify import verify_generation
from tests.integration.backup.conftest import Site, env, make_site
from tests.integration.backup.test_s3_encryption import encrypt, keyed
from tests.integration.backup.test_write_only import LIST, user
from tests.integration.snapshot.conftest import tree_of
from tests.support.s3servers import S3Server
from tests.support.waiting import wait_until

PREFIX = "backups/hakit/"
EXTRA = "extra.bin"  # a file in the first generation only: its blobs are what prune removes
# Two chunks, two blobs of their own: a file of up to one chunk would go into a pack with
# the files that stay (hakit.snapshot.format.Limits), and the pack would stay with them.
EXTRA_SIZE = 2 * Limits().chunk_size


def run(site: Site, keys: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, ["backup", *args, "-c", str(site.config)], env=keys)
    result.text = " ".join(result.output.split())
    return result


def objects(moto: S3Server, site: Site, under: str = "") -> set[str]:
    found: set[str] = set()
    paginator = moto.client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=site.bucket, Prefix=PREFIX + under):
        found |= {item["Key"].removeprefix(PREFIX) for item in page.get("Contents", ())}
    return found


def data_objects(moto: S3Server, site: Site) -> set[str]:
    return (
        objects(moto, site, "blobs/")
        | objects(moto, site, "packs/")
        | objects(moto, site, "trees/")
    )


def references(store: Store, generation: str) -> set[str]:
    return referenced_keys([load_manifest(store, generation)])


def three_generations(site: Site, keys: dict[str, str]) -> None:
    """node1 with EXTRA, node2 without, node1 without."""
    (site.home / EXTRA).write_bytes(os.urandom(EXTRA_SIZE))
    for node in ("node1", "node2", "node1"):
        result = run(site, keys, "create", "--node", node)
        assert result.exit_code == 0, result.output
        (site.home / EXTRA).unlink(missing_ok=True)


def test_prune_on_s3_keeps_each_nodes_newest(tmp_path: Path, s3: S3Server) -> None:
    site = make_site(tmp_path, s3, versioning=s3.versioning)
    three_generations(site, env())
    before = data_objects(s3, site)
    generations = sorted(objects(s3, site, "manifests/"))

    result = run(site, env(), "prune", "--keep-last", "1", "--grace", "0", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "would remove 1 generations and 2 objects" in result.text, result.output
    assert data_objects(s3, site) == before

    markers = objects(s3, site, "captures/")
    assert markers  # the first backup's (the others put nothing new)
    result = run(site, env(), "prune", "--keep-last", "1", "--grace", "0")
    assert result.exit_code == 0, result.output
    assert "removed 1 generations and 2 objects" in result.text, result.output
    assert "a node's newest" in result.text  # node2's, beyond keep_last
    assert sorted(objects(s3, site, "manifests/")) == generations[1:]
    assert len(before - data_objects(s3, site)) == 2  # EXTRA's blobs
    assert objects(s3, site, "captures/") == set()  # the old markers swept too
    if s3.versioning:  # a delete marker, the bytes kept as a noncurrent version
        versions = s3.client().list_object_versions(Bucket=site.bucket)
        assert len(versions.get("DeleteMarkers", [])) == 1 + 2 + len(markers)  # manifest, blobs

    assert ": ok," in run(site, env(), "verify").text
    into = tmp_path / "restored"
    assert run(site, env(), "restore", "--into", str(into)).exit_code == 0
    assert tree_of(into / "home") == tree_of(site.home)


def test_a_backup_running_during_prune_loses_nothing(tmp_path: Path, s3: S3Server) -> None:
    """The race prune's grace period alone cannot cover on S3: a backup finds an old,
    unreferenced object present (412, or a HEAD where the store ignores If-None-Match; its
    LastModified left old) and relies on it; prune runs before that backup's manifest. The
    backup's capture marker holds the sweep off."""
    site = make_site(tmp_path, s3)
    target = resolve_target(load_config(site.config))
    assert isinstance(target, S3Target)
    grace = 8.0  # longer than this test's backups take; short enough to wait out
    (site.home / EXTRA).write_bytes(os.urandom(EXTRA_SIZE))
    extra = (site.home / EXTRA).read_bytes()
    assert run(site, env(), "create", "--node", "node1").exit_code == 0
    (site.home / EXTRA).unlink()
    assert run(site, env(), "create", "--node", "node1").exit_code == 0
    reader = open_store(target, reading=True, environ=env())
    first, second = reader.list_manifests()
    only_first = references(reader, first) - references(reader, second)
    # EXTRA's blobs: referenced by the first generation only (its trees are in the tree
    # pack the next generations still use for their unchanged directories)
    assert len(only_first) == 2
    close_store(reader)
    settled = time.time()
    wait_until(lambda: time.time() > settled + grace + 1, grace + 5, "the objects to age")

    # EXTRA comes back: the next backup's put of its blob is answered 412.
    (site.home / EXTRA).write_bytes(extra)
    client = s3_client(target, env())
    store = s3_store(target, client)
    reports: list[Any] = []

    def prune_before_the_manifest(params: dict[str, Any], **_: Any) -> None:
        if "/manifests/" in params["Key"] and not reports:
            reports.append(
                prune_backups(target, RetentionPolicy(keep_last=1), grace=grace, environ=env())
            )

    client.meta.events.register("provide-client-params.s3.PutObject", prune_before_the_manifest)
    cfg = load_config(site.config)
    report = create_snapshot(
        store, CaptureOptions(home=site.home, database_url=cfg.app.database_url, node="node1")
    )
    store.close()
    # EXTRA's blobs found there, not rewritten (and trees re-put unchanged: files written
    # within two seconds of a capture are racily clean, read again); the HEAD below checks.
    assert store.stats.objects_present >= 2

    (pruned,) = reports
    assert pruned.prune.removed_generations == (first,)  # retention went ahead
    assert len(pruned.open_captures) == 1
    blob = next(key for key in only_first if key.startswith("blobs/"))
    head = s3.client().head_object(Bucket=site.bucket, Key=PREFIX + blob)
    assert head["LastModified"].timestamp() < settled  # old: only the marker kept it
    reader = open_store(target, reading=True, environ=env())
    try:
        third = report.manifest.generation
        assert reader.list_manifests() == [second, third]
        assert blob in references(reader, third)
        verified = verify_generation(reader, third)
        assert verified.ok, verified.problems
        restored = restore_generation(reader, third, tmp_path / "restored")
        assert (restored.into / "home" / EXTRA).read_bytes() == extra
    finally:
        close_store(reader)


def test_prune_of_an_encrypted_repository(tmp_path: Path, moto: S3Server) -> None:
    site = make_site(tmp_path, moto)
    encrypt(site)
    keys = keyed(env(), os.urandom(32))
    three_generations(site, keys)
    before = data_objects(moto, site)

    result = run(site, env(), "prune", "--keep-last", "1", "--grace", "0")  # the key unset
    assert result.exit_code == 1 and "which is not set" in result.text, result.output
    site.configure()  # no key configured: the manifests cannot be read, nothing is swept
    result = run(site, env(), "prune", "--keep-last", "1", "--grace", "0")
    assert result.exit_code == 1 and "is encrypted" in result.text, result.output
    assert data_objects(moto, site) == before
    encrypt(site)

    result = run(site, keys, "prune", "--keep-last", "1", "--grace", "0")
    assert result.exit_code == 0, result.output
    assert "removed 1 generations and 2 objects" in result.text, result.output
    assert len(before - data_objects(moto, site)) == 2
    assert ": ok," in run(site, keys, "verify").text
    result = run(site, keys, "drill")
    assert result.exit_code == 0 and "drill passed" in result.text, result.output


def test_prune_with_its_own_credential(tmp_path: Path, own_moto: S3Server) -> None:
    site = make_site(tmp_path, own_moto)
    site.configure(write_only=True)
    text = site.config.read_text().replace(
        "[backup]\n",
        '[backup]\nprune_access_key_env = "PRUNE_KEY_ID"\nprune_secret_key_env = "PRUNE_SECRET"\n',
    )
    site.config.write_text(text)
    writer = user(own_moto, "writer", ["s3:PutObject"], site.bucket)
    # AWS authorizes HeadObject as s3:GetObject; moto checks its own name.
    actions = ["s3:GetObject", "s3:HeadObject", "s3:DeleteObject", *LIST]
    pruner = user(own_moto, "pruner", actions, site.bucket)
    keys = writer | {
        "PRUNE_KEY_ID": pruner["TEST_BACKUP_KEY_ID"],
        "PRUNE_SECRET": pruner["TEST_BACKUP_SECRET"],
    }
    own_moto.enforce_iam()
    three_generations(site, keys)

    # The writer's credential, named on the command line: refused, with the way out.
    result = run(
        site,
        keys,
        "prune",
        "--keep-last",
        "1",
        "--grace",
        "0",
        "--access-key-env",
        "TEST_BACKUP_KEY_ID",
        "--secret-key-env",
        "TEST_BACKUP_SECRET",
    )
    assert result.exit_code == 1, result.output
    assert "access denied" in result.text and "nothing more was removed" in result.text

    result = run(site, keys, "prune", "--keep-last", "1", "--grace", "0")
    assert result.exit_code == 0, result.output
    assert "removed 1 generations and 2 objects" in result.text, result.output


def test_prune_of_a_directory(tmp_path: Path) -> None:
    site = Site(tmp_path, "unused", None)  # type: ignore[arg-type]
    from tests.integration.snapshot.conftest import make_database, make_home

    make_home(site.home)
    make_database(site.database)
    site.configure()
    three_generations(site, {})
    repository = site.home / "export" / "hakit-backups"
    before = {path for path in repository.rglob("*") if path.is_file()}
    result = run(site, {}, "prune", "--keep-last", "1", "--grace", "0")
    assert result.exit_code == 0, result.output
    assert "removed 1 generations and 2 objects" in result.text, result.output
    after = {path for path in repository.rglob("*") if path.is_file()}
    assert len(before - after) == 3  # a manifest, EXTRA's blobs
    assert ": ok," in run(site, {}, "verify").text


def test_an_object_pruned_from_under_a_write_only_nodes_record_is_sent_again(
    tmp_path: Path, moto: S3Server
) -> None:
    """A write-only node's record of stored keys still names an object prune removed: its
    next backup must not take the record's word for it."""
    site = make_site(tmp_path, moto)
    site.configure(write_only=True)
    extra = os.urandom(EXTRA_SIZE)
    (site.home / EXTRA).write_bytes(extra)
    assert run(site, env(), "create", "--node", "node1").exit_code == 0
    (site.home / EXTRA).unlink()
    assert run(site, env(), "create", "--node", "node1").exit_code == 0
    before = data_objects(moto, site)
    result = run(site, env(), "prune", "--keep-last", "1", "--grace", "0")
    assert result.exit_code == 0 and "removed 1 generations and 2 objects" in result.text
    gone = before - data_objects(moto, site)
    assert len(gone) == 2
    target = resolve_target(load_config(site.config))
    assert isinstance(target, S3Target)
    assert gone <= set((target.state / "keys").read_text().split())  # the record names them

    (site.home / EXTRA).write_bytes(extra)  # back: the same blobs
    result = run(site, env(), "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    assert gone <= data_objects(moto, site)  # sent again
    assert ": ok," in run(site, env(), "verify").text
