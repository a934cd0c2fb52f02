"""Client-side encryption of a repository: ``EncryptedStore(inner, key)`` wraps any ``Store``.

The design, and why:

- **One master key**, 32 random bytes (``openssl rand -base64 32``), given as
  base64 in a file or an environment variable. Three subkeys are derived from
  it with HKDF-SHA256 (RFC 5869; no salt: the master key is already uniformly
  random), each for one job, so no key serves two purposes: ``names`` (HMAC
  key of the object names), ``data`` (AES-256-GCM key of the contents) and
  ``check`` (the key id, below).
- **Names leak no content hash.** The format names objects by the SHA-256 of
  their plaintext (hakit.snapshot.format): in the clear that would let anyone
  who can list the bucket test whether it holds a given file. Here the stored
  name of ``blobs/ab/<sha256>`` is ``blobs/<n[:2]>/<n>`` with ``n =
  HMAC-SHA256(names, "blobs/ab/<sha256>")`` (packs likewise): still a pure
  function of the content, so deduplication works as before within one key,
  and a reader who knows the plaintext hash (from the manifest) finds the
  object without any index; without the key it is a random-looking name.
  Manifests keep their names (``manifests/<generation>.json``: a time and a
  random id, no content).
- **Contents: AES-256-GCM** with a fresh random 96-bit nonce per object (random
  nonces are safe for far more than 2^32 objects under one key, more than a
  repository holds). An object is ``MAGIC | key id (8) | nonce (12) |
  ciphertext+tag``. The associated data is ``MAGIC | key id | the object's
  logical name``: an object moved or copied to another name does not decrypt,
  so an attacker who can write to the bucket cannot swap one blob for another;
  a flipped bit anywhere fails the GCM tag. After decryption the reader still
  checks the plaintext against its SHA-256 (hakit.snapshot.reader).
- **The manifest is encrypted too** (it names every file and its hash).
- **A ``config`` object** (plaintext JSON) records that the repository is
  encrypted, with which scheme, and the **key id**: the first 8 bytes of
  HMAC-SHA256(check, "hakit key id"), which tells keys apart and reveals
  nothing of the data key. ``open_repository`` reads it before anything is
  written and fails clearly: an encrypted repository opened without a key
  ("is encrypted: set the key"), with another key ("wrong key: key id A, the
  configured key's B") or a plaintext repository opened with a key ("is not
  encrypted"). Each encrypted object carries the key id too, so one written
  under another key is reported as such, not as tampering.
- **Write-only mode.** ``put_if_absent`` needs no read: the name is computed,
  the object encrypted and put if absent. The config is checked from a local
  copy in the node's state directory (like the newest manifest's), kept when
  the node created or first opened the repository with read access; a
  write-only node that never saw the repository cannot check its key, so it
  trusts it: a wrong one there writes a generation the right key reports as
  "encrypted with another key" at verify or drill, and touches nothing that
  exists.
- **No rotation in place**: objects are immutable (write-only, Object Lock).
  To change the key, start a new repository (another prefix or directory) and
  let retention expire the old one. Lose the key and the backups are lost:
  nothing here can decrypt them.

Pruning needs the stored names of the objects the kept manifests reference:
``EncryptedStore.stored_key`` maps a logical key (``hakit.snapshot.format.object_key``)
to it; listing the bucket yields only stored names, which cannot be mapped back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hakit.snapshot.format import FORMAT, SnapshotError, manifest_key
from hakit.snapshot.store import RetainsTreeCopies, Store

KEY_BYTES = 32
NONCE_BYTES = 12
KEY_ID_BYTES = 8
MAGIC = b"HKE1"
HEADER = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
SCHEME = "aes-256-gcm+hmac-sha256-names/hkdf-sha256"
CONFIG_KEY = "config"
HASHED_PARTS = (
    "blobs",
    "packs",
    "trees",
)  # whose names are content hashes, stored under HMAC names


@dataclass(frozen=True, slots=True)
class RepositoryKey:
    """The subkeys of one master key (never the master key itself)."""

    names: bytes
    data: bytes
    key_id: str  # hex

    @classmethod
    def derive(cls, master: bytes) -> RepositoryKey:
        if len(master) != KEY_BYTES:
            raise SnapshotError(
                f"an encryption key must be {KEY_BYTES} bytes (base64 of them), not {len(master)}"
            )

        def subkey(purpose: str, length: int = KEY_BYTES) -> bytes:
            info = f"{FORMAT} {purpose}".encode()
            return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(
                master
            )

        check = subkey("check")
        key_id = hmac.new(check, b"hakit key id", hashlib.sha256).digest()[:KEY_ID_BYTES]
        return cls(subkey("names"), subkey("data"), key_id.hex())


def new_master_key() -> str:
    """A fresh master key, base64 (what the key file or variable holds)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def parse_master_key(text: str, where: str) -> bytes:
    try:
        master = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SnapshotError(
            f"{where} is not base64; expected {KEY_BYTES} random bytes in base64 "
            "(openssl rand -base64 32)"
        ) from None
    if len(master) != KEY_BYTES:
        raise SnapshotError(
            f"{where} holds {len(master)} bytes; expected {KEY_BYTES} (openssl rand -base64 32)"
        )
    return master


def load_master_key(
    key_file: Path | None, key_env: str | None, environ: Mapping[str, str]
) -> bytes | None:
    """The master key from ``[backup] encryption_key_file`` or ``encryption_key_env``; None
    when neither is set. A key file others may read is refused, as ssh refuses such keys."""
    if key_file is not None:
        try:
            mode = stat.S_IMODE(os.stat(key_file).st_mode)
            text = key_file.read_text()
        except OSError as error:
            raise SnapshotError(
                f"cannot read the encryption key file {key_file}: {error.strerror}"
            ) from None
        if mode & 0o077:
            raise SnapshotError(
                f"the encryption key file {key_file} may be read by others (mode {mode:04o}); "
                f"chmod 600 {key_file}"
            )
        return parse_master_key(text, f"the encryption key file {key_file}")
    if key_env is not None:
        if key_env not in environ:
            raise SnapshotError(
                f"[backup] encryption_key_env names {key_env}, which is not set; export the "
                "repository's key there"
            )
        return parse_master_key(environ[key_env], f"the environment variable {key_env}")
    return None


# --- the config object ----------------------------------------------------------


def config_document(key: RepositoryKey | None) -> bytes:
    document: dict[str, str] = {"format": FORMAT, "encryption": "none"}
    if key is not None:
        document |= {"encryption": SCHEME, "key_id": key.key_id}
    return json.dumps(document, sort_keys=True).encode() + b"\n"


def parse_config(data: bytes, where: str) -> dict[str, str]:
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not a hakit repository config")
        return {str(k): str(v) for k, v in raw.items()}
    except ValueError as error:
        raise SnapshotError(f"the repository config {where} cannot be read: {error}") from None


def check_config(config: dict[str, str], key: RepositoryKey | None, where: str) -> None:
    """Refuse a key that does not fit the repository (pure)."""
    encryption = config.get("encryption", "none")
    if encryption == "none":
        if key is not None:
            raise SnapshotError(
                f"the repository {where} is not encrypted, but an encryption key is "
                "configured; encrypted backups need a new repository (another prefix or "
                "directory), or remove encryption_key_file / encryption_key_env"
            )
        return
    if encryption != SCHEME:
        raise SnapshotError(f"the repository {where} uses encryption {encryption!r}, unknown here")
    if key is None:
        raise SnapshotError(
            f"the repository {where} is encrypted (key id {config.get('key_id')}): set "
            "[backup] encryption_key_file or encryption_key_env to its key"
        )
    if config.get("key_id") != key.key_id:
        raise SnapshotError(
            f"wrong key for the repository {where}: it is encrypted with key id "
            f"{config.get('key_id')}, the configured key's id is {key.key_id}"
        )


# --- the wrapping store -----------------------------------------------------------


class EncryptedStore:
    """A ``Store`` whose objects are encrypted and whose content names are keyed hashes."""

    def __init__(self, inner: Store, key: RepositoryKey, where: str = "the repository") -> None:
        self.inner = inner
        self.key = key
        self.where = where
        self._aead = AESGCM(key.data)
        self._key_id = bytes.fromhex(key.key_id)

    def stored_key(self, key: str) -> str:
        """Where the object with logical name ``key`` is stored."""
        part = key.split("/", 1)[0]
        if part not in HASHED_PARTS:
            return key
        name = hmac.new(self.key.names, key.encode(), hashlib.sha256).hexdigest()
        return f"{part}/{name[:2]}/{name}"

    def _aad(self, key: str) -> bytes:
        return MAGIC + self._key_id + key.encode()

    def seal(self, key: str, data: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + self._key_id + nonce + self._aead.encrypt(nonce, data, self._aad(key))

    def open(self, key: str, blob: bytes) -> bytes:
        if blob[: len(MAGIC)] != MAGIC or len(blob) < HEADER:
            raise SnapshotError(
                f"object {key} in {self.where} is not encrypted (or cut short): "
                "was it written without the key?"
            )
        key_id = blob[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES].hex()
        if key_id != self.key.key_id:
            raise SnapshotError(
                f"object {key} in {self.where} is encrypted with another key "
                f"(key id {key_id}; the configured key's is {self.key.key_id})"
            )
        nonce = blob[len(MAGIC) + KEY_ID_BYTES : HEADER]
        try:
            return self._aead.decrypt(nonce, blob[HEADER:], self._aad(key))
        except InvalidTag:
            raise SnapshotError(
                f"object {key} in {self.where} fails authentication (AES-GCM): corrupt, "
                "tampered with, or moved from another name"
            ) from None

    # --- the Store protocol ------------------------------------------------------

    def has(self, key: str) -> bool:
        return self.inner.has(self.stored_key(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        # Sealed even when the object may exist: the inner store decides (and, where
        # prune runs, refreshes an existing object's time), with no read needed.
        return self.inner.put_if_absent(self.stored_key(key), self.seal(key, data))

    def get(self, key: str) -> bytes:
        return self.open(key, self.inner.get(self.stored_key(key)))

    def list_manifests(self) -> list[str]:
        return self.inner.list_manifests()

    def put_manifest(self, generation: str, data: bytes) -> None:
        self.inner.put_manifest(generation, self.seal(manifest_key(generation), data))

    def retain_tree_copies(self, keys: Collection[str]) -> None:
        """The store's local tree copies (hakit.snapshot.s3store) but ``keys``, by the
        names they are stored under."""
        if isinstance(self.inner, RetainsTreeCopies):
            self.inner.retain_tree_copies({self.stored_key(key) for key in keys})


ConfigReader = Callable[[], "bytes | None"]  # the config object's bytes; None when absent


def stored_config(store: Store) -> ConfigReader:
    """Reads the config object of ``store`` by ``has`` then ``get`` (a local directory)."""
    return lambda: store.get(CONFIG_KEY) if store.has(CONFIG_KEY) else None


def open_repository(
    store: Store,
    master: bytes | None,
    *,
    where: str,
    read_config: ConfigReader | None,
    create: bool = False,
    local_copy: Path | None = None,
) -> Store:
    """``store`` as the repository's key requires: wrapped in an ``EncryptedStore`` when
    it is (to be) encrypted, itself when not; a key that does not fit fails here, before
    anything is written. ``read_config`` None: the credential may not read (write-only),
    so ``local_copy`` (the config this node saw, kept in its state directory) is the only
    source. ``create``: a writer, which records the config of a new encrypted repository."""
    key = None if master is None else RepositoryKey.derive(master)
    data: bytes | None = None
    if read_config is not None:
        data = read_config()
    elif local_copy is not None and local_copy.exists():
        data = local_copy.read_bytes()
    if data is not None:
        check_config(parse_config(data, f"in {where}"), key, where)
        if local_copy is not None and not local_copy.exists():
            _keep_copy(local_copy, data)
    elif key is not None:
        if store.list_manifests():  # generations and no config: made without encryption
            check_config({"encryption": "none"}, key, where)
        if create:
            document = config_document(key)
            store.put_if_absent(CONFIG_KEY, document)
            if local_copy is not None:
                _keep_copy(local_copy, document)
    return store if key is None else EncryptedStore(store, key, where)


def _keep_copy(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)
