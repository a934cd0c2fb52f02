"""Opening the repository a target names: a ``LocalStore``, or an ``S3Store`` and its client.

The boto3 client honours ``<endpoint-override>`` (path-style addressing, which
every S3-compatible server answers), takes ``<max-concurrency>`` as its
connection pool's size, and its credentials from the environment variables
``[backup] access_key_env`` / ``secret_key_env`` name, else from the AWS chain
(``AWS_ACCESS_KEY_ID``..., ``~/.aws/credentials``, an instance role).

With ``[backup] encryption_key_file`` or ``encryption_key_env`` the store is
wrapped in hakit.snapshot.crypto's ``EncryptedStore``, after the repository's
``config`` object (a write-only S3 node: its local copy beside the record of
stored keys) was checked against the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hakit.backup.target import BackupTarget, LocalTarget, S3Target
from hakit.snapshot.crypto import (
    CONFIG_KEY,
    EncryptedStore,
    load_master_key,
    open_repository,
    stored_config,
)
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.s3store import S3Location, S3Store, error_code
from hakit.snapshot.store import LocalStore, Store, open_local_store


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 10.0
    read: float = 60.0
    attempts: int = 5  # botocore's "standard" retry mode: throttling, 5xx, broken connections


def credentials(target: S3Target, environ: Mapping[str, str]) -> dict[str, str]:
    """The keys from the named variables ({} for the AWS chain)."""
    if target.access_key_env is None or target.secret_key_env is None:
        return {}
    missing = [
        name for name in (target.access_key_env, target.secret_key_env) if name not in environ
    ]
    if missing:
        raise SnapshotError(
            f"[backup] names the environment variable{'s' if len(missing) > 1 else ''} "
            f"{' and '.join(missing)}, which {'are' if len(missing) > 1 else 'is'} not set; "
            "export the backup credential there"
        )
    return {
        "aws_access_key_id": environ[target.access_key_env],
        "aws_secret_access_key": environ[target.secret_key_env],
    }


def _aws(endpoint: str | None) -> bool:
    host = (urlsplit(endpoint).hostname or "") if endpoint else "amazonaws.com"
    return host == "amazonaws.com" or host.endswith(".amazonaws.com")


def s3_client(
    target: S3Target, environ: Mapping[str, str] | None = None, timeouts: Timeouts | None = None
) -> Any:
    import boto3  # only when S3 is used: the CLI starts faster without it
    from botocore.config import Config as BotoConfig

    timeouts = timeouts or Timeouts()
    store = target.filestore
    config = BotoConfig(
        region_name=store.region,
        max_pool_connections=store.max_concurrency,
        connect_timeout=timeouts.connect,
        read_timeout=timeouts.read,
        retries={"mode": "standard", "max_attempts": timeouts.attempts},
        s3={"addressing_style": "path"} if store.endpoint else {},
        # AWS: a checksum on every put (Object Lock buckets require one). Other S3-compatible
        # stores: only where required, as many reject the newer checksum headers.
        request_checksum_calculation="when_supported" if _aws(store.endpoint) else "when_required",
        response_checksum_validation="when_supported" if _aws(store.endpoint) else "when_required",
    )
    session = boto3.session.Session(
        **credentials(target, os.environ if environ is None else environ)
    )
    return session.client("s3", endpoint_url=store.endpoint, config=config)


def s3_store(target: S3Target, client: Any, *, reading: bool = False) -> S3Store:
    """``reading``: for list, verify and restore, which need a credential that may read
    whatever ``write_only`` says (that setting is about what backups may assume)."""
    location = S3Location(
        bucket=target.filestore.bucket,
        prefix=target.prefix,
        max_concurrency=target.filestore.max_concurrency,
    )
    return S3Store(client, location, target.state, write_only=target.write_only and not reading)


def open_store(
    target: BackupTarget,
    *,
    create: bool = False,
    reading: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Store:
    environ = os.environ if environ is None else environ
    master = load_master_key(target.encryption.file, target.encryption.env, environ)
    if isinstance(target, LocalTarget):
        local = open_local_store(target.directory, create=create)
        return open_repository(
            local, master, where=target.describe(), read_config=stored_config(local), create=create
        )
    remote = s3_store(target, s3_client(target, environ), reading=reading)
    try:
        return open_repository(
            remote,
            master,
            where=target.describe(),
            read_config=None if remote.write_only else lambda: _s3_config(remote),
            create=create,
            local_copy=target.state / CONFIG_KEY,
        )
    except BaseException:
        remote.close()
        raise


def _s3_config(store: S3Store) -> bytes | None:
    """The config object, None when absent: one GET (a HEAD would need s3:GetObject too,
    and some servers authorize it apart)."""
    location = store.location
    try:
        answer = store.client.get_object(Bucket=location.bucket, Key=location.key(CONFIG_KEY))
        data: bytes = answer["Body"].read()
    except Exception as error:
        if error_code(error) in ("404", "NoSuchKey"):
            return None
        raise store._error("read", CONFIG_KEY, error) from None  # its wording and hints
    return data


def unwrapped(store: Store) -> Store:
    """The store under an ``EncryptedStore`` (for its statistics), else ``store``."""
    return store.inner if isinstance(store, EncryptedStore) else store


def close_store(store: Store) -> None:
    store = unwrapped(store)
    if isinstance(store, S3Store):
        store.close()
    elif not isinstance(store, LocalStore):  # pragma: no cover
        raise TypeError(store)
