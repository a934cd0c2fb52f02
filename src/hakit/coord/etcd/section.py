"""``[coordination.etcd]``: the config table of the etcd backend."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_MAX_EVENTS = 10_000


class EtcdSection(BaseModel):
    """``[coordination.etcd]``: where the etcd cluster is and how to reach it.

    ``endpoints``: client URLs (``http://host:port`` or ``https://...``), tried in
    turn; ``prefix``: under which ``<prefix>/<cluster.name>/`` holds this cluster;
    ``username``/``password``: etcd's own authentication (both or neither);
    ``ca_cert``, ``cert``, ``key``: absolute paths of PEM files for TLS (``cert``
    and ``key`` together); ``timeout``: seconds any one call may take before it
    fails; ``record_ttl``: seconds a node record outlives its agent's last
    publish; ``max_events``: how many events the history keeps.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:2379"], min_length=1)
    prefix: str = "/hakit"
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = Field(default=2.0, gt=0)
    record_ttl: float = Field(default=600.0, gt=0)
    max_events: int = Field(default=DEFAULT_MAX_EVENTS, ge=1)

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
                raise ValueError(
                    f"{json.dumps(url)} is not an etcd client URL; expected "
                    '"http://host:port" or "https://host:port"'
                )
            if parts.path not in ("", "/"):
                raise ValueError(f"{json.dumps(url)} has a path; expected only scheme://host:port")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(
                f'{json.dumps(value)} is not a key prefix; expected "/name" (e.g. "/hakit"), '
                "starting with '/' and not ending with one"
            )
        return value

    @field_validator("ca_cert", "cert", "key")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{json.dumps(str(value))} is relative; expected an absolute path")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> EtcdSection:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together; expected both or neither")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together; expected both or neither")
        return self
