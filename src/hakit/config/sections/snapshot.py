"""``[snapshot]``: scheduled captures by the active node's agent, and retention.

::

    [snapshot]
    directory = "/srv/snapshots"   # the repository (a local directory; relative: to this file)
    interval = "1h"                # the active node's agent captures this often (default: never)
    keep_last = 24                 # retention, applied after each scheduled capture and
    keep_daily = 7                 # by `hakit snapshot prune` (restic's --keep-* rules)
    keep_weekly = 4
    prune_grace = "1h"             # objects and generations younger are never pruned
    postgres_method = "dump"       # PostgreSQL: "dump" (pg_dump of one snapshot) or
                                   # "basebackup" (pg_basebackup: the whole cluster, physical);
                                   # for snapshots, backups and the agent's captures alike
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from hakit.config.problems import error_at_key
from hakit.config.sections.base import _Section
from hakit.config.values import PositiveDuration, format_duration
from hakit.snapshot.database import DUMP, POSTGRES_METHODS


class SnapshotConfig(_Section):
    directory: Path | None = None
    interval: PositiveDuration | None = None  # None: no scheduled capture
    keep_last: int = Field(default=0, ge=0)
    keep_daily: int = Field(default=0, ge=0)
    keep_weekly: int = Field(default=0, ge=0)
    # Longer than any capture takes (hakit.snapshot.prune says why).
    prune_grace: PositiveDuration = 3600.0
    # How a PostgreSQL database is captured (hakit.snapshot.database).
    postgres_method: str = DUMP

    @field_validator("postgres_method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value in POSTGRES_METHODS:
            return value
        expected = " or ".join(f'"{method}"' for method in POSTGRES_METHODS)
        raise ValueError(f'"{value}" is not a capture method; expected {expected}')

    @property
    def retention(self) -> bool:
        """Some keep_* is set: prune after each scheduled capture."""
        return bool(self.keep_last or self.keep_daily or self.keep_weekly)

    def describe(self) -> str | None:
        """One line for ``hakit config check`` (None: no [snapshot] directory)."""
        if self.directory is None:
            return None
        when = (
            f"the running active captures every {format_duration(self.interval)}"
            if self.interval is not None
            else "no scheduled capture (no interval)"
        )
        keep = ", ".join(
            f"{name} {count}"
            for name, count in (
                ("keep_last", self.keep_last),
                ("keep_daily", self.keep_daily),
                ("keep_weekly", self.keep_weekly),
            )
            if count
        )
        retention = f"then prunes ({keep})" if keep else "no retention (no keep_*)"
        return f"snapshots: into {self.directory}; {when}; {retention}"

    @model_validator(mode="after")
    def _schedule_needs_a_directory(self) -> SnapshotConfig:
        if self.interval is not None and self.directory is None:
            raise error_at_key(
                "interval",
                f"captures every {format_duration(self.interval)} need a repository, but "
                'directory is not set; expected directory = "/srv/snapshots" too (or no interval)',
            )
        return self
