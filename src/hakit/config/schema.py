"""hakit.toml's schema: ``Config``, and the sections it puts together.

The section models live in hakit.config.sections (one module per part);
``[coordination]`` and ``[admin]`` are here, with ``Config``.

Field names here are the TOML keys. Checks within one section live in the
models (so a section built in Python is coherent too); checks across sections
(node count per mode, unique names/routes/ports, router address) live in
hakit.config.check, run by the loader (hakit.config.loader), so tests may build
small configs in Python freely. The value types the fields use (durations,
sizes, commands, the enums) are in hakit.config.values.

Example (see examples/ for complete files)::

    [cluster]
    name = "demo"
    mode = "cold-standby"
    storage = "shared"
    state_dir = "/var/lib/hakit"

    [app]
    start = ["python", "-m", "hakit.demo", "--port", "{port}"]
    home = "/srv/app/home"
    database_url = "sqlite:////srv/app/app.db"

    [[nodes]]
    name = "node1"
    host = "127.0.0.1"
    port = 8101
    route = "n1"
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator

from hakit.config.problems import error_at_key
from hakit.config.sections.app import AppConfig, FailoverConfig, HealthConfig
from hakit.config.sections.backup import BackupConfig
from hakit.config.sections.base import _Section
from hakit.config.sections.cluster import ClusterConfig, NodeConfig
from hakit.config.sections.notify import NotifyConfig
from hakit.config.sections.replication import ReplicationConfig
from hakit.config.sections.router import RouterConfig, TcpProxyConfig
from hakit.config.sections.snapshot import SnapshotConfig
from hakit.config.values import PositiveDuration, format_duration
from hakit.coord.etcd import EtcdSection
from hakit.coord.registry import names as backend_names
from hakit.coord.sqlite import SqliteSection, store_path
from hakit.coord.zookeeper import ZooKeeperSection


class CoordinationConfig(_Section):
    """``[coordination]``: the lease timers, which backend (hakit.coord.registry), and
    each backend's own table (``[coordination.sqlite]``, its model in the backend's
    module). A table for a backend that is not selected is ignored."""

    backend: str = "sqlite"  # a name in hakit.coord.registry.BACKENDS
    path: Path | None = None  # the older spelling of [coordination.sqlite] path
    lease_ttl: PositiveDuration = 3.0  # leader lease time to live
    renew_interval: PositiveDuration = 1.0  # must be well below lease_ttl
    # Failsafe mode (Patroni's failsafe_mode): while the store is unreachable the active
    # keeps serving as long as every other node's agent confirms, over the admin API, that
    # it is not promoting (hakit.policy.failsafe). Off: the active fences at its deadline.
    failsafe: bool = False
    sqlite: SqliteSection = SqliteSection()
    etcd: EtcdSection = EtcdSection()  # [coordination.etcd] (hakit.coord.etcd)
    zookeeper: ZooKeeperSection = ZooKeeperSection()

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        known = backend_names()
        expected = (
            json.dumps(known[0])
            if len(known) == 1
            else "one of " + ", ".join(json.dumps(name) for name in known)
        )
        if value in known:
            return value
        raise ValueError(f"{json.dumps(value)} is not a backend; expected {expected}")

    @model_validator(mode="after")
    def _one_sqlite_path(self) -> CoordinationConfig:
        if self.path is not None and self.sqlite.path is not None:
            raise error_at_key(
                "path",
                "given twice, here and in [coordination.sqlite]; expected only "
                "[coordination.sqlite] path",
            )
        return self

    @model_validator(mode="after")
    def _zookeeper_session_outlasts_the_lease(self) -> CoordinationConfig:
        # A ZooKeeper lease ends with its holder's session (hakit.coord.zookeeper).
        if self.backend == "zookeeper" and self.zookeeper.session_timeout < self.lease_ttl:
            raise error_at_key(
                "zookeeper",
                f"session_timeout {format_duration(self.zookeeper.session_timeout)} is shorter "
                f"than lease_ttl {format_duration(self.lease_ttl)}; expected session_timeout >= "
                "lease_ttl (a lease is bound to its holder's ZooKeeper session)",
            )
        if self.backend == "zookeeper" and self.zookeeper.timeout >= self.lease_ttl:
            raise error_at_key(
                "zookeeper",
                f"timeout {format_duration(self.zookeeper.timeout)} is not shorter than "
                f"lease_ttl {format_duration(self.lease_ttl)}; expected timeout < lease_ttl "
                "(a call that fails must say so within a lease TTL)",
            )
        return self

    def section(self, backend: str) -> BaseModel:
        """Backend ``backend``'s table, as its opener takes it."""
        if backend == "sqlite" and self.sqlite.path is None and self.path is not None:
            return self.sqlite.model_copy(update={"path": self.path})
        found = getattr(self, backend)
        assert isinstance(found, BaseModel)
        return found

    @model_validator(mode="after")
    def _renewal_fits_in_lease(self) -> CoordinationConfig:
        # The agent renews every renew_interval; if one renewal is lost (a slow
        # disk, a busy machine) the next one must still land before the lease
        # expires, or the active node fences itself for nothing.
        if self.renew_interval * 2 >= self.lease_ttl:
            raise error_at_key(
                "renew_interval",
                f"{format_duration(self.renew_interval)} is too close to lease_ttl "
                f"{format_duration(self.lease_ttl)}; expected renew_interval * 2 < lease_ttl "
                '(e.g. renew_interval = "1s" with lease_ttl = "3s") so that the lease '
                "survives one missed renewal",
            )
        return self


MIN_TOKEN_LENGTH = 16  # the admin API's bearer token, in the file or in token_file


class AdminConfig(_Section):
    """The agents' admin API (``nodes.admin_port``): a bearer token guards every endpoint.

    ``token`` in the file, or ``token_file`` naming a file that holds it (first
    line; relative to this file), so the config can be shared without the secret.
    """

    token: str | None = Field(
        default=None,
        min_length=MIN_TOKEN_LENGTH,
        description="a long random secret, such as the output of `openssl rand -hex 32`",
    )
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AdminConfig:
        if self.token is not None and self.token_file is not None:
            raise error_at_key(
                "token_file", "token and token_file are both set; expected one of them"
            )
        return self


class Config(_Section):
    cluster: ClusterConfig = ClusterConfig()
    coordination: CoordinationConfig = CoordinationConfig()
    app: AppConfig = Field(description="an [app] table with start, home and database_url")
    health: HealthConfig = HealthConfig()
    failover: FailoverConfig = FailoverConfig()
    router: RouterConfig = RouterConfig()
    tcp_proxy: tuple[TcpProxyConfig, ...] = ()
    notify: NotifyConfig = NotifyConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    admin: AdminConfig = AdminConfig()
    backup: BackupConfig = BackupConfig()
    replication: ReplicationConfig = ReplicationConfig()
    nodes: tuple[NodeConfig, ...] = Field(
        description="at least one [[nodes]] table with name and port"
    )
    # The file this was loaded from (set by the loader, not a TOML key).
    source: Path | None = Field(default=None, exclude=True)
    # How the loader derived timers from failover.recovery_target (hakit.config.timing), for
    # display.
    derived: tuple[str, ...] = Field(default=(), exclude=True)

    def home_of(self, node: NodeConfig) -> Path:
        """The node's home: its own (replicated storage) or ``[app]``'s."""
        return node.home or self.app.home

    def database_url_of(self, node: NodeConfig) -> str:
        """The node's database: its own (replicated storage) or ``[app]``'s."""
        return self.app.database_url if node.database_url is None else node.database_url

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node named {name!r} in the config (known: {known})")

    @property
    def coordination_path(self) -> Path:
        section = self.coordination.section("sqlite")
        assert isinstance(section, SqliteSection)
        return store_path(section, self.cluster.state_dir)
