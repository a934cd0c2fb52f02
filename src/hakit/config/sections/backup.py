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
    interval = "24h"                    # the running active backs up this often (default: never)
    stale_after = "48h"                 # alert when the newest backup is older (default: 2 x interval)
    health_check_interval = "1h"        # every node checks the target (default: 1h with an interval)
    drill_interval = "24h"              # a standby's agent runs `hakit backup drill` (default: never)
    drill_scratch = "/srv/scratch"      # where drills restore (default: <cluster.state_dir>/backup/drills)
    keep_last = 7                       # retention, applied by `hakit backup prune` (restic's rules)
    keep_daily = 7
    keep_weekly = 4
    prune_grace = "1h"                  # objects and generations younger are never pruned
    prune_access_key_env = "PRUNE_AWS_ACCESS_KEY_ID"   # prune's own, more privileged credential
    prune_secret_key_env = "PRUNE_AWS_SECRET_ACCESS_KEY"
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from hakit.backup.filestore import FILENAME
from hakit.config.problems import error_at_key
from hakit.config.sections.base import _Section
from hakit.config.values import PositiveDuration, format_duration

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
    # Scheduled backups by the running active's agent (hakit.agent.backups).
    interval: PositiveDuration | None = None  # None: no scheduled backup
    stale_after: PositiveDuration | None = None  # None: 2 x interval
    health_check_interval: PositiveDuration | None = None  # None: 1 h when interval is set
    # Scheduled restore drills (hakit.agent.drills): by the standbys' agents.
    drill_interval: PositiveDuration | None = None  # None: no scheduled drill
    drill_scratch: Path | None = None  # relative to this file; None: in cluster.state_dir
    # Retention and pruning (hakit.backup.prune), with a credential of its own.
    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    prune_grace: PositiveDuration = 3600.0  # longer than any backup takes
    prune_access_key_env: str | None = Field(default=None, pattern=_ENV_NAME)
    prune_secret_key_env: str | None = Field(default=None, pattern=_ENV_NAME)

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
        if (self.prune_access_key_env is None) != (self.prune_secret_key_env is None):
            given = (
                "prune_access_key_env"
                if self.prune_access_key_env is not None
                else "prune_secret_key_env"
            )
            raise error_at_key(
                given,
                "prune_access_key_env and prune_secret_key_env go together; expected both "
                "(prune's own credential) or neither (prune uses access_key_env/secret_key_env)",
            )
        if self.stale_after is not None and self.interval is None:
            raise error_at_key(
                "stale_after",
                "stale_after watches scheduled backups, but interval is not set; expected "
                'interval = "24h" too (or no stale_after)',
            )
        if (
            self.interval is not None
            and self.stale_after is not None
            and self.stale_after <= self.interval
        ):
            raise error_at_key(
                "stale_after",
                f"stale_after {format_duration(self.stale_after)} is not longer than interval "
                f"{format_duration(self.interval)}: every backup would be stale before the next; "
                f"expected more (default: {format_duration(2 * self.interval)})",
            )
        if self.drill_scratch is not None and self.drill_interval is None:
            raise error_at_key(
                "drill_scratch",
                "drill_scratch is where scheduled drills restore, but drill_interval is not "
                'set; expected drill_interval = "24h" too (or no drill_scratch; `hakit backup '
                "drill` takes --scratch)",
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

    @property
    def stale_threshold(self) -> float | None:
        """How old the newest backup may be before an alert (None: not watched)."""
        if self.interval is None:
            return None
        return self.stale_after if self.stale_after is not None else 2 * self.interval

    @property
    def health_every(self) -> float | None:
        """How often each node's agent runs the health check (None: never)."""
        if self.health_check_interval is not None:
            return self.health_check_interval
        return 3600.0 if self.interval is not None else None

    @property
    def retention(self) -> bool:
        return bool(self.keep_last or self.keep_daily or self.keep_weekly)
