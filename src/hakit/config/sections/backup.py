"""``[backup]``: where backups go (Jira's filestore-config.xml, or a directory) and how.

Example::

    [backup]
    filestore_config = "/srv/app/home/filestore-config.xml"  # default: <app.home>/filestore-config.xml
    directory = "/srv/backups"          # without an S3 "backups" association; default <app.home>/export/hakit-backups
    access_key_env = "BACKUP_AWS_ACCESS_KEY_ID"      # default: the AWS chain (AWS_ACCESS_KEY_ID, ~/.aws, roles)
    secret_key_env = "BACKUP_AWS_SECRET_ACCESS_KEY"
    write_only = true                   # the credential may only PutObject
    encryption_key_file = "/etc/hakit/backup.key"    # or encryption_key_env = "HAKIT_BACKUP_KEY":
                                        # 32 random bytes, base64 (openssl rand -base64 32)
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from hakit.backup.filestore import FILENAME
from hakit.config.problems import error_at_key
from hakit.config.sections.base import _Section

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
DEFAULT_PREFIX = "backups/hakit"
DEFAULT_DIRECTORY = Path("export") / "hakit-backups"  # in the app's home, as Jira's export/


class BackupConfig(_Section):
    filestore_config: Path | None = None  # relative to this file
    directory: Path | None = None  # relative to this file
    prefix: str = Field(default=DEFAULT_PREFIX, min_length=1)  # the repository's keys in the bucket
    access_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    secret_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    write_only: bool = False
    # Client-side encryption (hakit.snapshot.crypto): the repository's master key, base64.
    encryption_key_file: Path | None = None  # relative to this file; mode 0600
    encryption_key_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        parts = value.strip("/").split("/")
        if any(part in ("", ".", "..") for part in parts) or not re.fullmatch(
            r"[A-Za-z0-9_.\-/]+", value
        ):
            raise ValueError(
                f'{value!r} is not a key prefix; expected e.g. "backups/hakit" (letters, '
                "digits, '_', '.', '-' and '/')"
            )
        if parts[0] == "backups" and len(parts) > 1 and parts[1] == "Healthcheck":
            raise ValueError("backups/Healthcheck is the health check's; expected another prefix")
        return value.strip("/")

    @model_validator(mode="after")
    def _both_keys(self) -> BackupConfig:
        if (self.access_key_env is None) != (self.secret_key_env is None):
            given = "access_key_env" if self.access_key_env is not None else "secret_key_env"
            raise error_at_key(
                given,
                "access_key_env and secret_key_env go together; expected both (the names "
                "of the environment variables holding the keys) or neither (the AWS chain)",
            )
        if self.encryption_key_file is not None and self.encryption_key_env is not None:
            raise error_at_key(
                "encryption_key_env",
                "encryption_key_file and encryption_key_env both name the key; expected one",
            )
        return self

    def filestore_path(self, home: Path) -> Path:
        """Where filestore-config.xml is read: the key, else the app's home (Jira's local home)."""
        return self.filestore_config or home / FILENAME

    def directory_path(self, home: Path) -> Path:
        """The local repository when no S3 filestore is associated with backups."""
        return self.directory or home / DEFAULT_DIRECTORY
