"""Client-side encryption: subkeys, names, AES-GCM objects, the config object and key loading."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from hakit.snapshot.crypto import (
    CONFIG_KEY,
    EncryptedStore,
    RepositoryKey,
    check_config,
    config_document,
    load_master_key,
    new_master_key,
    open_repository,
    parse_config,
    stored_config,
)
from hakit.snapshot.format import SnapshotError, blob_key, manifest_key, pack_key
from hakit.snapshot.store import LocalStore, open_local_store

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


def store(tmp_path: Path, master: bytes = KEY) -> tuple[LocalStore, EncryptedStore]:
    inner = open_local_store(tmp_path / "repo", create=True)
    return inner, EncryptedStore(inner, RepositoryKey.derive(master), "test repository")


def test_subkeys_are_derived_per_purpose_and_the_key_id_tells_keys_apart() -> None:
    key = RepositoryKey.derive(KEY)
    assert key == RepositoryKey.derive(KEY)  # deterministic: dedup across runs
    assert len({key.names, key.data, KEY}) == 3
    assert len(bytes.fromhex(key.key_id)) == 8
    assert RepositoryKey.derive(OTHER).key_id != key.key_id
    with pytest.raises(SnapshotError, match="must be 32 bytes"):
        RepositoryKey.derive(KEY[:16])
    assert len(base64.b64decode(new_master_key())) == 32


def test_round_trip_with_names_that_are_not_the_plaintext_hash(tmp_path: Path) -> None:
    inner, encrypted = store(tmp_path)
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    assert encrypted.put_if_absent(blob_key(digest), data)
    assert not encrypted.put_if_absent(blob_key(digest), data)  # dedup within one key
    assert encrypted.has(blob_key(digest)) and not inner.has(blob_key(digest))
    assert encrypted.get(blob_key(digest)) == data
    stored = encrypted.stored_key(blob_key(digest))
    assert stored.startswith("blobs/") and digest not in stored
    assert encrypted.stored_key(pack_key(digest)).startswith("packs/")
    assert encrypted.stored_key(pack_key(digest)) != encrypted.stored_key(blob_key(digest))
    ciphertext = inner.get(stored)
    assert data not in ciphertext and len(ciphertext) == len(data) + 4 + 8 + 12 + 16
    # Another key names the same content elsewhere: nothing to correlate across keys.
    _, other = store(tmp_path / "other", OTHER)
    assert other.stored_key(blob_key(digest)) != stored

    encrypted.put_manifest("g1", b'{"manifest": 1}')
    assert encrypted.list_manifests() == ["g1"]
    assert encrypted.get(manifest_key("g1")) == b'{"manifest": 1}'
    assert b"manifest" not in inner.get(manifest_key("g1"))


def test_every_kind_of_damage_is_named(tmp_path: Path) -> None:
    inner, encrypted = store(tmp_path)
    a, b = b"a" * 100, b"b" * 100
    key_a, key_b = (blob_key(hashlib.sha256(x).hexdigest()) for x in (a, b))
    encrypted.put_if_absent(key_a, a)
    encrypted.put_if_absent(key_b, b)
    path_a = inner.root / encrypted.stored_key(key_a)
    path_b = inner.root / encrypted.stored_key(key_b)

    flipped = bytearray(path_a.read_bytes())
    flipped[-20] ^= 1
    path_a.write_bytes(bytes(flipped))
    with pytest.raises(SnapshotError, match="fails authentication"):
        encrypted.get(key_a)
    path_a.write_bytes(path_b.read_bytes())  # a valid object, under another name
    with pytest.raises(SnapshotError, match="fails authentication"):
        encrypted.get(key_a)
    path_a.write_bytes(a)  # plaintext where ciphertext belongs
    with pytest.raises(SnapshotError, match="is not encrypted"):
        encrypted.get(key_a)
    path_a.write_bytes(EncryptedStore(inner, RepositoryKey.derive(OTHER)).seal(key_a, a))
    with pytest.raises(SnapshotError, match="encrypted with another key"):
        encrypted.get(key_a)


def test_the_config_refuses_keys_that_do_not_fit() -> None:
    key = RepositoryKey.derive(KEY)
    encrypted = parse_config(config_document(key), "x")
    check_config(encrypted, key, "R")
    with pytest.raises(SnapshotError, match="wrong key for the repository R"):
        check_config(encrypted, RepositoryKey.derive(OTHER), "R")
    with pytest.raises(SnapshotError, match=r"R is encrypted .*set \[backup\] encryption_key"):
        check_config(encrypted, None, "R")
    plain = parse_config(config_document(None), "x")
    check_config(plain, None, "R")
    with pytest.raises(SnapshotError, match="R is not encrypted"):
        check_config(plain, key, "R")
    with pytest.raises(SnapshotError, match="cannot be read"):
        parse_config(b"{}", "x")


def test_open_repository_checks_before_writing(tmp_path: Path) -> None:
    inner = open_local_store(tmp_path / "repo", create=True)
    opened = open_repository(inner, KEY, where="R", read_config=stored_config(inner), create=True)
    assert isinstance(opened, EncryptedStore) and inner.has(CONFIG_KEY)
    opened.put_manifest("g1", b"{}")
    before = sorted(p.name for p in (tmp_path / "repo").rglob("*"))
    with pytest.raises(SnapshotError, match="wrong key"):
        open_repository(inner, OTHER, where="R", read_config=stored_config(inner), create=True)
    with pytest.raises(SnapshotError, match="is encrypted"):
        open_repository(inner, None, where="R", read_config=stored_config(inner), create=True)
    assert sorted(p.name for p in (tmp_path / "repo").rglob("*")) == before

    plain = open_local_store(tmp_path / "plain", create=True)
    assert open_repository(plain, None, where="P", read_config=stored_config(plain)) is plain
    plain.put_manifest("g1", b"{}")
    with pytest.raises(SnapshotError, match="P is not encrypted"):
        open_repository(plain, KEY, where="P", read_config=stored_config(plain), create=True)
    assert not plain.has(CONFIG_KEY)


def test_write_only_checks_the_local_copy_of_the_config(tmp_path: Path) -> None:
    inner = open_local_store(tmp_path / "repo", create=True)
    copy = tmp_path / "state" / "config"
    open_repository(inner, KEY, where="R", read_config=None, create=True, local_copy=copy)
    assert copy.read_bytes() == inner.get(CONFIG_KEY)
    with pytest.raises(SnapshotError, match="wrong key"):
        open_repository(inner, OTHER, where="R", read_config=None, create=True, local_copy=copy)
    with pytest.raises(SnapshotError, match="is encrypted"):
        open_repository(inner, None, where="R", read_config=None, create=True, local_copy=copy)


def test_the_key_from_a_file_or_the_environment(tmp_path: Path) -> None:
    text = base64.b64encode(KEY).decode()
    key_file = tmp_path / "backup.key"
    key_file.write_text(text + "\n")
    key_file.chmod(0o600)
    assert load_master_key(key_file, None, {}) == KEY
    assert load_master_key(None, "K", {"K": text}) == KEY
    assert load_master_key(None, None, {}) is None
    key_file.chmod(0o644)
    with pytest.raises(SnapshotError, match=r"may be read by others .*chmod 600"):
        load_master_key(key_file, None, {})
    with pytest.raises(SnapshotError, match="cannot read the encryption key file"):
        load_master_key(tmp_path / "missing.key", None, {})
    with pytest.raises(SnapshotError, match="K, which is not set"):
        load_master_key(None, "K", {})
    with pytest.raises(SnapshotError, match="is not base64"):
        load_master_key(None, "K", {"K": "not base64!"})
    with pytest.raises(SnapshotError, match="holds 16 bytes; expected 32"):
        load_master_key(None, "K", {"K": base64.b64encode(KEY[:16]).decode()})
