"""The znodes' documents: JSON as read and written, and what one read answers.

The znode names are those the package docstring lists (hakit.coord.zookeeper);
each holds one JSON document (``dump``, ``load``), read with its stat (``Node``).
``Conflict``: a write transaction lost a race (hakit.coord.zookeeper.identity).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kazoo.protocol.states import ZnodeStat


@dataclass(frozen=True, slots=True)
class Node:
    """A znode as read: its JSON document and its stat."""

    doc: Any
    stat: ZnodeStat


class Conflict(Exception):
    """A transaction lost a race: read again and decide again."""


def dump(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def load(data: bytes) -> Any:
    return json.loads(data) if data else None


def fresh_store(
    identity: dict[str, Any], last_epoch: int, leader: dict[str, Any]
) -> list[tuple[str, bytes]]:
    """The znodes of a new store under its root (name, data), in the order they are made:
    the identity, the epoch counter at ``last_epoch``, the lease as stored (``{}``: free)."""
    return [
        ("identity", dump(identity)),
        ("epoch", dump({"last_epoch": last_epoch})),
        ("leader", dump(leader)),
        ("clock", b""),
        ("nodes", b""),
        ("events", b""),
        ("state", dump({"entries": {}})),
    ]


def same(a: Any, b: Any) -> bool:
    return dump(a) == dump(b)


def last_epoch_in(node: Node | None) -> int:
    doc = node.doc if node is not None else None
    return int(doc.get("last_epoch", 0)) if isinstance(doc, dict) else 0


def event_id_of(name: str) -> int:
    """``e-0000000041`` -> 42: the server's sequence number (from 0) + 1."""
    return int(name.rsplit("-", 1)[1]) + 1


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
