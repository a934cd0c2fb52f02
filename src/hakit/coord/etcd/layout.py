"""Where a cluster's keys live in etcd and how requests to etcd's JSON gateway spell them.

Everything of a cluster lives under ``<prefix>/<cluster>/`` (``P``); the key names
are those the package docstring lists (hakit.coord.etcd). The gateway takes and
gives keys and values base64-encoded and leaves zero fields out of its answers:
``KV.parse`` reads one key as etcd answered it; ``put``, ``delete``, ``get`` and
``unchanged`` build the requests and compares of a transaction.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from hakit.coord.base import Event

EVENT_DIGITS = 20


def b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def range_end(prefix: str) -> str:
    """The end of the key range of everything under ``prefix`` (base64)."""
    data = bytearray(prefix.encode())
    data[-1] += 1
    return b64(bytes(data))


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Layout:
    """The key names of one cluster: ``P`` is ``<prefix>/<cluster>/``."""

    def __init__(self, prefix: str, cluster: str) -> None:
        if not cluster or "/" in cluster:
            raise ValueError(f"a cluster name without '/' is needed, got {cluster!r}")
        self.prefix = f"{prefix}/{cluster}/"

    def key(self, name: str) -> str:
        return self.prefix + name

    @property
    def identity(self) -> str:
        return self.key("identity")

    @property
    def epoch(self) -> str:
        return self.key("epoch")

    @property
    def leader(self) -> str:
        return self.key("leader")

    @property
    def alive(self) -> str:
        return self.key("leader/alive")

    def node(self, name: str) -> str:
        return self.key("nodes/" + name)

    def event(self, event_id: int) -> str:
        return self.key(f"events/{event_id:0{EVENT_DIGITS}d}")

    def state(self, key: str) -> str:
        return self.key("state/" + key)


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd answered it (the gateway leaves zero fields out)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KV:
        return cls(
            unb64(raw["key"]).decode(),
            unb64(raw.get("value", "")),
            int(raw.get("create_revision", 0)),
            int(raw.get("mod_revision", 0)),
            int(raw.get("lease", 0)),
        )

    def json(self) -> dict[str, Any]:
        value = json.loads(self.value)
        return value if isinstance(value, dict) else {}


def put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def delete(key: str, end: str | None = None) -> dict[str, Any]:
    request = {"key": b64(key)}
    if end is not None:
        request["range_end"] = end
    return {"request_delete_range": request}


def get(key: str, **extra: Any) -> dict[str, Any]:
    return {"request_range": {"key": b64(key), **extra}}


def unchanged(key: str, kv: KV | None) -> dict[str, Any]:
    """A compare: ``key`` is as read (same mod_revision), or still absent."""
    if kv is None:
        return {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
    return {
        "key": b64(key),
        "result": "EQUAL",
        "target": "MOD",
        "mod_revision": kv.mod_revision,
    }


def same_create(key: str, create_revision: int) -> dict[str, Any]:
    """A compare: ``key`` is the one created at ``create_revision``."""
    return {
        "key": b64(key),
        "result": "EQUAL",
        "target": "CREATE",
        "create_revision": create_revision,
    }


def parse_event(kv: KV) -> Event:
    doc = kv.json()
    event_id = int(kv.key.rsplit("/", 1)[1])
    data = doc.get("data")
    return Event(
        event_id,
        float(doc.get("time", 0.0)),
        str(doc.get("node", "")),
        str(doc.get("kind", "")),
        str(doc.get("reason", "")),
        int(doc.get("epoch", 0)),
        str(doc.get("actor", "")),
        data if isinstance(data, dict) else {},
    )
