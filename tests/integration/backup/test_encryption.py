"""Encrypted backups to a directory through the CLI: the round trip (create, list, verify,
restore, drill), names that are not the plaintext's SHA-256, dedup within one key, a wrong
key or none refused before anything is written, a plaintext repository refused with a key,
and a tampered object caught by AES-GCM."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hakit.backup.drill import record_path
from hakit.cli import app
from hakit.snapshot.crypto import EncryptedStore, RepositoryKey
from hakit.snapshot.format import decode_manifest, manifest_key
from hakit.snapshot.store import open_local_store
from tests.integration.backup.appsite import AppSite, make_app_site
from tests.integration.snapshot.conftest import tree_of

ENV = {"COLUMNS": "200"}


def run(site: AppSite, *args: str) -> Any:
    result = CliRunner().invoke(app, ["backup", *args, "-c", str(site.config)], env=ENV)
    result.text = " ".join(result.output.split())  # whatever the terminal's wrapping
    return result


def key_file(path: Path, master: bytes) -> Path:
    path.write_text(base64.b64encode(master).decode() + "\n")
    path.chmod(0o600)
    return path


def repository_files(site: AppSite) -> dict[str, bytes]:
    return {
        path.relative_to(site.repository).as_posix(): path.read_bytes()
        for path in site.repository.rglob("*")
        if path.is_file() and "tmp" not in path.relative_to(site.repository).parts
    }


def plaintext_hashes(site: AppSite, master: bytes) -> set[str]:
    """Every SHA-256 the manifests name (chunks and packs), and every home file's."""
    inner = open_local_store(site.repository)
    store = EncryptedStore(inner, RepositoryKey.derive(master))
    found = {
        hashlib.sha256(path.read_bytes()).hexdigest()
        for path in site.home.rglob("*")
        if path.is_file()
    }
    for generation in store.list_manifests():
        manifest = decode_manifest(store.get(manifest_key(generation)))
        for ref in manifest.chunk_refs():
            found.add(ref.hash)
            if ref.pack is not None:
                found.add(ref.pack)
    return found


def test_encrypted_round_trip_with_names_that_leak_no_hash(tmp_path: Path) -> None:
    master = os.urandom(32)
    key = key_file(tmp_path / "backup.key", master)
    site = make_app_site(tmp_path, f'encryption_key_file = "{key.name}"')

    result = run(site, "create")
    assert result.exit_code == 0, result.output
    assert f"in directory {site.repository}, encrypted" in result.text
    (site.home / "config" / "app.properties").write_text("key=other value\n")
    result = run(site, "create")
    assert result.exit_code == 0, result.output
    assert "0 blobs and 1 packs new" in result.text  # only the changed file's pack

    files = repository_files(site)
    hashes = plaintext_hashes(site, master)
    names = {name.rsplit("/", 1)[-1] for name in files}
    assert len(hashes) > 10 and not names & hashes
    assert files["config"].startswith(b"{") and b"key_id" in files["config"]
    for name, data in files.items():
        if name != "config":
            assert data.startswith(b"HKE1"), name
            assert b"records" not in data and b"app.properties" not in data, name

    result = run(site, "list")
    assert result.exit_code == 0 and result.output.count("sqlite") == 2, result.output
    result = run(site, "verify")
    assert result.exit_code == 0 and ": ok," in result.output, result.output
    into = tmp_path / "restored"
    result = run(site, "restore", "--into", str(into))
    assert result.exit_code == 0, result.output
    assert tree_of(into / "home") == tree_of(site.home)
    assert rows_of_records(into / "database" / "app.db") == rows_of_records(site.database)
    result = run(site, "drill")
    assert result.exit_code == 0 and "drill passed" in result.output, result.output


def rows_of_records(path: Path) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return list(connection.execute("SELECT * FROM records ORDER BY id"))
    finally:
        connection.close()


def test_a_wrong_key_or_none_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    key = key_file(tmp_path / "backup.key", os.urandom(32))
    site = make_app_site(tmp_path, f'encryption_key_file = "{key.name}"')
    assert run(site, "create").exit_code == 0
    before = repository_files(site)

    key_file(tmp_path / "other.key", os.urandom(32))
    site.configure('encryption_key_file = "other.key"')
    for command in (["create"], ["list"], ["verify"], ["drill"]):
        result = run(site, *command)
        assert result.exit_code == 1, (command, result.output)
        assert "wrong key for the repository" in result.text, (command, result.output)
        assert "it is encrypted with key id" in result.text
    record = json.loads(record_path(tmp_path / "state").read_text())  # the drill's, failed
    assert record["ok"] is False and record["checks"][0]["name"] == "repository"

    site.configure()
    for command in (["create"], ["verify"], ["restore", "--into", str(tmp_path / "r")]):
        result = run(site, *command)
        assert result.exit_code == 1, (command, result.output)
        assert "is encrypted (key id " in result.text, (command, result.output)
        assert "set [backup] encryption_key_file or encryption_key_env" in result.text
    assert repository_files(site) == before
    assert not (tmp_path / "r").exists()


def test_a_plaintext_repository_is_refused_with_a_key(tmp_path: Path) -> None:
    site = make_app_site(tmp_path)
    assert run(site, "create").exit_code == 0
    before = repository_files(site)
    key_file(tmp_path / "backup.key", os.urandom(32))
    site.configure('encryption_key_file = "backup.key"')
    result = run(site, "create")
    assert result.exit_code == 1
    assert "is not encrypted, but an encryption key is configured" in result.text
    assert repository_files(site) == before


def test_tampered_ciphertext_is_detected(tmp_path: Path) -> None:
    master = os.urandom(32)
    key_file(tmp_path / "backup.key", master)
    site = make_app_site(tmp_path, 'encryption_key_file = "backup.key"')
    assert run(site, "create").exit_code == 0
    pack = next(path for path in (site.repository / "packs").rglob("*") if path.is_file())
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0x01
    pack.chmod(0o600)
    pack.write_bytes(bytes(data))

    result = run(site, "verify")
    assert result.exit_code == 1
    assert "fails authentication (AES-GCM): corrupt, tampered with" in result.text
    result = run(site, "drill")
    assert result.exit_code == 1 and "FAIL restore: object packs/" in result.text
