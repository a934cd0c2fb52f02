"""Node records, the event history and the cluster state, each on its own keys.

- ``P/nodes/<node>``: a node record, attached to a record lease refreshed at each
  publish (``record_ttl``): a dead agent's record vanishes; its age is the
  lease's granted TTL minus the TTL left, both the server's (whole seconds);
- ``P/events/<id, 20 digits>`` and ``P/event_id``: ids from a counter incremented
  in the same transaction as the event is stored, the oldest beyond
  ``max_events`` deleted in that transaction;
- ``P/state/<key>``: a value with a ttl is attached to an etcd lease of that TTL
  (the server forgets it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hakit.coord.base import Event, NodeRecord
from hakit.coord.etcd.identity import Guard, Retry
from hakit.coord.etcd.layout import (
    KV,
    Layout,
    b64,
    delete,
    dumps,
    get,
    parse_event,
    put,
    range_end,
    unchanged,
)
from hakit.coord.etcd.transport import Refused, Transport


class Records:
    """The Coordinator's calls on node records, events and state."""

    def __init__(self, transport: Transport, guard: Guard, layout: Layout) -> None:
        self._t = transport
        self._guard = guard
        self._keys = layout
        self._record_leases: dict[str, int] = {}  # node -> the record lease this object keeps

    # --- node records ---------------------------------------------------------

    def publish_node(self, record: NodeRecord) -> None:
        doing = f"publish the record of {record.node}"
        doc = {
            "node": record.node,
            "role": record.role,
            "app_state": record.app_state,
            "epoch": record.epoch,
            "updated_at": record.updated_at,
            "detail": record.detail,
        }
        text = dumps(doc)
        section = self._t.section

        def step(deadline: float) -> None:
            if self._guard.identity_rev == 0:
                self._guard.read(deadline, doing)
            lease = self._record_leases.get(record.node, 0)
            if not lease or self._t.keepalive(lease, deadline, doing) <= 0:
                lease, _ = self._t.grant(section.record_ttl, deadline, doing)
                self._record_leases[record.node] = lease
            key = self._keys.node(record.node)
            try:
                won, _, _ = self._t.txn(
                    [self._guard.trusted()], [put(key, text, lease)], None, deadline, doing
                )
            except Refused as error:
                if "lease not found" in str(error):
                    self._record_leases.pop(record.node, None)
                    raise Retry from None
                raise
            if not won:
                self._guard.read(deadline, doing)  # raises StoreReplacedError when replaced
                raise Retry

        self._guard.run(doing, step)

    def nodes(self) -> Sequence[NodeRecord]:
        doing = "read the node records"

        def step(deadline: float) -> list[NodeRecord]:
            _, found = self._guard.read(deadline, doing, self.nodes_range())
            ttls = {
                kv.lease: self._t.ttl_left(kv.lease, deadline, doing) for kv in found if kv.lease
            }
            return self.records_of(found, ttls)

        return self._guard.run(doing, step)

    def nodes_range(self) -> dict[str, Any]:
        """The range request of every node record."""
        start = self._keys.node("")
        return get(start, range_end=range_end(start), sort_order="ASCEND")

    def records_of(self, found: list[KV], ttls: dict[int, tuple[int, int]]) -> list[NodeRecord]:
        """The node records read (``found``); ``ttls``: (TTL left, granted TTL) by the
        server of each record's etcd lease (its age: how long since its last publish)."""
        start = self._keys.node("")
        records = []
        for kv in found:
            age = 0.0
            if kv.lease:
                left, granted = ttls.get(kv.lease, (-1, 0))
                if left < 0:
                    continue  # it vanished meanwhile
                age = float(max(0, granted - left))
            doc = kv.json()
            detail = doc.get("detail")
            records.append(
                NodeRecord(
                    str(doc.get("node", kv.key[len(start) :])),
                    str(doc.get("role", "")),
                    str(doc.get("app_state", "")),
                    int(doc.get("epoch", 0)),
                    float(doc.get("updated_at", 0.0)),
                    detail if isinstance(detail, dict) else {},
                    age,
                )
            )
        return sorted(records, key=lambda r: r.node)

    # --- event history --------------------------------------------------------

    def append_event(self, event: Event) -> Event:
        doing = f"append a {event.kind} event"
        counter_key = self._keys.key("event_id")
        max_events = self._t.section.max_events

        def step(deadline: float) -> Event:
            _, counter = self._guard.read(deadline, doing, get(counter_key))
            last = int(counter[0].value or b"0") if counter else 0
            event_id = last + 1
            doc = {
                "time": event.time,
                "node": event.node,
                "kind": event.kind,
                "reason": event.reason,
                "epoch": event.epoch,
                "actor": event.actor,
                "data": event.data,
            }
            success = [
                put(counter_key, str(event_id)),
                put(self._keys.event(event_id), dumps(doc)),
            ]
            oldest_kept = event_id - max_events + 1
            if oldest_kept > 1:
                # Everything below the oldest kept id (ids never repeat: a key range).
                success.append(
                    delete(self._keys.key("events/"), b64(self._keys.event(oldest_kept)))
                )
            won, _, _ = self._t.txn(
                [self._guard.trusted(), unchanged(counter_key, counter[0] if counter else None)],
                success,
                None,
                deadline,
                doing,
            )
            if not won:
                raise Retry
            return Event(
                event_id,
                event.time,
                event.node,
                event.kind,
                event.reason,
                event.epoch,
                event.actor,
                dict(event.data),
            )

        return self._guard.run(doing, step)

    def _events(self, doing: str, **range_args: Any) -> list[Event]:
        def step(deadline: float) -> list[Event]:
            _, found = self._guard.read(deadline, doing, {"request_range": range_args})
            return [parse_event(kv) for kv in found]

        return self._guard.run(doing, step)

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        if limit <= 0:
            return []
        start = self._keys.event(max(after_id, 0) + 1)
        return self._events(
            "read the event history",
            key=b64(start),
            range_end=range_end(self._keys.key("events/")),
            limit=limit,
            sort_order="ASCEND",
            sort_target="KEY",
        )

    def recent_events(self, limit: int) -> Sequence[Event]:
        if limit <= 0:
            return []
        start = self._keys.key("events/")
        found = self._events(
            "read the event history",
            key=b64(start),
            range_end=range_end(start),
            limit=limit,
            sort_order="DESCEND",
            sort_target="KEY",
        )
        return list(reversed(found))

    # --- cluster state --------------------------------------------------------

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"state ttl must be positive, got {ttl}")
        doing = f"store the cluster state {key!r}"
        text = dumps(value)
        name = self._keys.state(key)

        def step(deadline: float) -> None:
            _, old = self._guard.read(deadline, doing, get(name))
            lease = self._t.grant(ttl, deadline, doing)[0] if ttl is not None else 0
            won, _, _ = self._t.txn(
                [self._guard.trusted(), unchanged(name, old[0] if old else None)],
                [put(name, text, lease)],
                None,
                deadline,
                doing,
            )
            if not won:
                if lease:
                    self._t.revoke(lease, deadline)
                raise Retry
            if old and old[0].lease:
                self._t.revoke(old[0].lease, deadline)  # the replaced value's own lease

        self._guard.run(doing, step)

    def get_state(self, key: str) -> dict[str, Any] | None:
        doing = f"read the cluster state {key!r}"

        def step(deadline: float) -> dict[str, Any] | None:
            _, found = self._guard.read(deadline, doing, get(self._keys.state(key)))
            return found[0].json() if found else None

        return self._guard.run(doing, step)

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        doing = f"clear the cluster state {key!r}"
        name = self._keys.state(key)

        def step(deadline: float) -> bool:
            _, found = self._guard.read(deadline, doing, get(name))
            if not found:
                return False
            if if_value is not None and found[0].json() != if_value:
                return False
            won, _, _ = self._t.txn(
                [self._guard.trusted(), unchanged(name, found[0])],
                [delete(name)],
                None,
                deadline,
                doing,
            )
            if not won:
                raise Retry
            if found[0].lease:
                self._t.revoke(found[0].lease, deadline)
            return True

        return self._guard.run(doing, step)

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        doing = "read the cluster state"
        start = self._keys.state("")

        def step(deadline: float) -> dict[str, dict[str, Any]]:
            _, found = self._guard.read(deadline, doing, get(start, range_end=range_end(start)))
            return {kv.key[len(start) :]: kv.json() for kv in found}

        return self._guard.run(doing, step)
