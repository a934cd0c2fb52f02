"""``[cluster]`` and ``[[nodes]]``: the cluster's name, mode and state, and its nodes."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from hakit.config.sections.app import AppConfig
from hakit.config.sections.base import _NODE_NAME, _ROUTE, _Section
from hakit.config.values import Mode, Storage


class ClusterConfig(_Section):
    name: str = Field(default="hakit", min_length=1)
    mode: Mode = Mode.COLD_STANDBY
    storage: Storage = Storage.SHARED
    # Coordination database, per-node app logs and pid files live here.
    # Relative paths are resolved against the config file's directory.
    state_dir: Path = Path("hakit-state")


class NodeConfig(_Section):
    name: str = Field(pattern=_NODE_NAME, description='the node\'s name, e.g. "node1"')
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(ge=1, le=65535, description="the TCP port the node's app listens on")
    route: str = Field(default="", pattern=_ROUTE)  # default: the node name
    admin_port: int | None = Field(default=None, ge=1, le=65535)  # the agent's admin API
    # Tags such as "nofailover"; `nofailover = true` says the same. Such a node never
    # becomes active (a reporting replica, a node in another site...).
    tags: tuple[str, ...] = ()
    nofailover: bool = False
    # Replicated storage: this node's own home and database (default: [app]'s), see
    # hakit.config.sections.replication.
    home: Path | None = None
    database_url: str | None = None

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str | None) -> str | None:
        return None if value is None else AppConfig.supported_database(value)

    @property
    def route_name(self) -> str:
        return self.route or self.name

    @property
    def no_failover(self) -> bool:
        """This node never takes the leader lease (``nofailover`` flag or tag)."""
        return self.nofailover or "nofailover" in self.tags
