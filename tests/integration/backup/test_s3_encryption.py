"""Encrypted backups to S3 over real HTTP: the round trip and the drill, object names that are
not the plaintext's SHA-256, keys refused before anything is written (moto's server and rclone
serve s3), and write-only mode with IAM enforced (moto): a PutObject-only credential backs up,
a read-only one drills."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hakit.backup.stores import close_store, open_store
from hakit.backup.target import resolve_target
from hakit.cli import app
from hakit.config import load_config
from hakit.snapshot.crypto import EncryptedStore
from hakit.snapshot.trees import load_manifest
from tests.integration.backup.conftest import CONFIG, Site, env, make_site
from tests.integration.backup.test_write_only import LIST, user
from tests.integration.snapshot.conftest import rows_of, tree_of
from tests.support.s3servers import S3Server

KEY_ENV = "TEST_BACKUP_ENCRYPTION_KEY"


def encrypt(site: Site, write_only: bool = False) -> None:
    text = CONFIG.format(write_only=str(write_only).lower())
    site.config.write_text(
        text.replace("[backup]\n", f'[backup]\nencryption_key_env = "{KEY_ENV}"\n')
    )


def keyed(keys: dict[str, str], master: bytes | None) -> dict[str, str]:
    return keys | ({} if master is None else {KEY_ENV: base64.b64encode(master).decode()})


def run(site: Site, keys: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(app, ["backup", *args, "-c", str(site.config)], env=keys)
    result.text = " ".join(result.output.split())
    return result


def bucket_keys(server: S3Server, site: Site) -> list[str]:
    """Every object's key; with versioning, one per version (an overwrite shows twice)."""
    client = server.client()
    if server.versioning:
        versions = client.list_object_versions(Bucket=site.bucket).get("Versions", [])
        return sorted(version["Key"] for version in versions)
    listed = client.list_objects_v2(Bucket=site.bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def plaintext_hashes(site: Site, keys: dict[str, str]) -> set[str]:
    store = open_store(resolve_target(load_config(site.config)), reading=True, environ=keys)
    try:
        assert isinstance(store, EncryptedStore)
        found: set[str] = set()
        for generation in store.list_manifests():
            manifest = load_manifest(store, generation)
            found |= {tree.hash for tree in manifest.trees}
            for ref in manifest.chunk_refs():
                found |= {ref.hash} | ({ref.pack} if ref.pack else set())
        return found
    finally:
        close_store(store)


def test_encrypted_s3_round_trip_and_refusals(tmp_path: Path, s3: S3Server) -> None:
    site = make_site(tmp_path, s3, versioning=s3.versioning)
    encrypt(site)
    master = os.urandom(32)
    keys = keyed(env(), master)

    result = run(site, keys, "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    assert "write-only" not in result.text and ", encrypted;" in result.text
    result = run(site, keys, "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    assert "0 blobs and 0 packs new; 1 objects uploaded" in result.text  # the manifest

    stored = bucket_keys(s3, site)
    assert "backups/hakit/config" in stored
    hashes = plaintext_hashes(site, keys)
    names = {key.rsplit("/", 1)[-1] for key in stored if key.startswith("backups/hakit/")}
    assert len(hashes) > 10 and not names & hashes
    body = s3.client().get_object(Bucket=site.bucket, Key=stored[-1])["Body"].read()
    assert body.startswith(b"HKE1")

    assert ": ok," in run(site, keys, "verify").text
    into = tmp_path / "restored"
    result = run(site, keys, "restore", "--into", str(into))
    assert result.exit_code == 0, result.output
    assert tree_of(into / "home") == tree_of(site.home)
    assert rows_of(into / "database" / "app.db") == rows_of(site.database)
    result = run(site, keys, "drill")
    assert result.exit_code == 0 and "drill passed" in result.text, result.output

    for command in ("create", "verify", "drill"):
        result = run(site, keyed(env(), os.urandom(32)), command)
        assert result.exit_code == 1, (command, result.output)
        assert "wrong key for the repository" in result.text, (command, result.output)
    site.configure()  # no key
    for command in ("create", "verify", "drill"):
        result = run(site, env(), command)
        assert result.exit_code == 1 and "is encrypted" in result.text, (command, result.output)
    assert bucket_keys(s3, site) == stored  # nothing added, nothing overwritten (versioning)


def test_write_only_with_encryption(tmp_path: Path, own_moto: S3Server) -> None:
    site = make_site(tmp_path, own_moto, versioning=True)
    encrypt(site, write_only=True)
    master = os.urandom(32)
    writer = keyed(user(own_moto, "writer", ["s3:PutObject"], site.bucket), master)
    reader = keyed(user(own_moto, "reader", ["s3:GetObject", *LIST], site.bucket), master)
    own_moto.enforce_iam()

    result = run(site, writer, "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    assert "write-only, encrypted" in result.text
    (site.home / "attachments" / "a003").write_bytes(os.urandom(900))
    result = run(site, writer, "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    # One pack, the tree of its directory, the manifest: no read needed.
    assert "3 objects uploaded" in result.text

    # The drill needs read access only: a credential that may not write passes it.
    result = run(site, reader, "drill")
    assert result.exit_code == 0 and "drill passed" in result.text, result.output
    result = run(site, reader, "verify")
    assert result.exit_code == 0 and ": ok," in result.text, result.output

    # The writer's key is checked against its local copy of the config: nothing is sent.
    stored = bucket_keys_as(own_moto, site, reader)
    other = keyed(writer, os.urandom(32))
    result = run(site, other, "create")
    assert result.exit_code == 1 and "wrong key for the repository" in result.text, result.output
    site.configure(write_only=True)  # no key
    result = run(site, writer, "create")
    assert result.exit_code == 1 and "is encrypted (key id" in result.text, result.output
    assert bucket_keys_as(own_moto, site, reader) == stored


def bucket_keys_as(moto: S3Server, site: Site, keys: dict[str, str]) -> list[str]:
    client = moto.client(
        aws_access_key_id=keys["TEST_BACKUP_KEY_ID"],
        aws_secret_access_key=keys["TEST_BACKUP_SECRET"],
    )
    listed = client.list_objects_v2(Bucket=site.bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)
