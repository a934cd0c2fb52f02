"""``[coordination.zookeeper]``: the config table of the ZooKeeper backend."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hakit.coord import keys

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_TRIM_EVERY = 100


class ZooKeeperAuth(BaseModel):
    """``[coordination.zookeeper.auth]``: credentials added to the session. With them,
    the znodes hakit creates are readable and writable by those credentials only
    (ZooKeeper's ``auth`` ACL): give every agent, router and operator the same."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str = "digest"
    credential: str  # digest: "user:password"


class ZooKeeperSection(BaseModel):
    """``[coordination.zookeeper]``: this backend's own part of the config.

    ``hosts``: the ensemble's ``host:port`` addresses; ``prefix``: the znode under
    which each cluster has its own (``<prefix>/<cluster>``); ``cluster``: that
    znode's name, default ``cluster.name``; ``session_timeout`` (seconds): the
    ZooKeeper session's, at least ``lease_ttl`` (the server may clamp it to its
    ``minSessionTimeout``..``maxSessionTimeout``); ``timeout`` (seconds): the
    longest one call waits before it raises, below ``lease_ttl``; ``auth``: optional credentials.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    hosts: list[str] = Field(default_factory=lambda: ["127.0.0.1:2181"], min_length=1)
    prefix: str = "/hakit"
    cluster: str | None = None
    session_timeout: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=2.0, gt=0)
    auth: ZooKeeperAuth | None = None

    @field_validator("prefix")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        parts = value.split("/")
        if not value.startswith("/") or (value != "/" and "" in parts[1:]):
            raise ValueError(
                f"{json.dumps(value)} is not a znode path; expected an absolute path without a "
                'trailing "/", e.g. "/hakit"'
            )
        return value

    @field_validator("cluster")
    @classmethod
    def _one_name(cls, value: str | None) -> str | None:
        if value is not None:
            keys.prefix(value)  # raises ValueError for "" or a name with "/"
        return value


def cluster_root(prefix: str, cluster: str) -> str:
    """``/hakit`` and ``c1`` -> ``/hakit/c1``."""
    keys.prefix(cluster)
    return prefix.rstrip("/") + "/" + cluster
