"""Where backups go: an S3 filestore (filestore-config.xml's ``backups``) or a directory.

``choose_target`` decides (pure: the parsed file and ``[backup]`` in, a target
out); ``resolve_target`` reads the file first. No file, or no ``backups``
association in it, means a local directory, as Jira falls back to its
``<sharedhome>/export``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from hakit.backup.filestore import ParseResult, S3Filestore, read_filestore_config
from hakit.config.schema import Config
from hakit.config.sections.backup import BackupConfig
from hakit.errors import ConfigError


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where the repository's encryption key is (hakit.snapshot.crypto); neither: none."""

    file: Path | None = None
    env: str | None = None

    @property
    def configured(self) -> bool:
        return self.file is not None or self.env is not None


@dataclass(frozen=True, slots=True)
class LocalTarget:
    directory: Path
    filestore_config: Path  # where filestore-config.xml was looked for
    encryption: KeySource = KeySource()

    def describe(self) -> str:
        return f"directory {self.directory}" + (", encrypted" if self.encryption.configured else "")


@dataclass(frozen=True, slots=True)
class S3Target:
    filestore: S3Filestore
    filestore_config: Path
    prefix: str
    write_only: bool
    access_key_env: str | None
    secret_key_env: str | None
    state: Path  # this node's record of stored keys (hakit.snapshot.s3store)
    encryption: KeySource = KeySource()

    def describe(self) -> str:
        store = self.filestore
        where = f" via {store.endpoint}" if store.endpoint else ""
        mode = ", write-only" if self.write_only else ""
        mode += ", encrypted" if self.encryption.configured else ""
        return (
            f"s3://{store.bucket}/{self.prefix}/ ({store.region}{where}{mode}; "
            f'<s3-filestore id="{store.id}"> in {self.filestore_config})'
        )


BackupTarget = LocalTarget | S3Target


def record_directory(state_dir: Path, store: S3Filestore, prefix: str) -> Path:
    """One record per bucket, endpoint and prefix, under the node's state directory."""
    digest = hashlib.sha256(f"{store.endpoint}|{store.bucket}|{prefix}".encode()).hexdigest()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", store.bucket)
    return state_dir / "backup" / f"{name}-{digest[:12]}"


def choose_target(
    parsed: ParseResult | None, backup: BackupConfig, home: Path, state_dir: Path
) -> BackupTarget:
    xml = backup.filestore_path(home)
    if parsed is not None and parsed.problems:
        raise ConfigError(parsed.lines(xml))
    store = parsed.config.backups() if parsed is not None and parsed.config else None
    encryption = KeySource(backup.encryption_key_file, backup.encryption_key_env)
    if store is None:
        return LocalTarget(backup.directory_path(home), xml, encryption)
    return S3Target(
        filestore=store,
        filestore_config=xml,
        prefix=backup.prefix,
        write_only=backup.write_only,
        access_key_env=backup.access_key_env,
        secret_key_env=backup.secret_key_env,
        state=record_directory(state_dir, store, backup.prefix),
        encryption=encryption,
    )


def resolve_target(cfg: Config) -> BackupTarget:
    parsed = read_filestore_config(cfg.backup.filestore_path(cfg.app.home))
    return choose_target(parsed, cfg.backup, cfg.app.home, cfg.cluster.state_dir)
