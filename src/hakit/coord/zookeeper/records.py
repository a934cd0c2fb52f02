"""Node records, the event history and the cluster state.

- ``nodes/<node>`` (the name quoted): a node record, with the server's time it
  was stored at (its age is judged on the server's clock alone);
- ``events/e-<sequence>``: SEQUENTIAL znodes, the id being the sequence number
  + 1; the oldest beyond ``max_events`` deleted every ``trim_every`` appends;
- ``state``: the whole cluster-state map in one znode, every change a
  compare-and-set of it; an entry with a ttl is dropped once past its expiry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any
from urllib.parse import quote, unquote

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from hakit.coord.base import Event, NodeRecord
from hakit.coord.zookeeper.identity import Guard
from hakit.coord.zookeeper.layout import Conflict, Node, as_dict, dump, event_id_of, load, same
from hakit.errors import CoordinationError


class Records(Guard):
    """The Coordinator's calls on node records, events and cluster state."""

    def _node_path(self, node: str) -> str:
        return self._path("nodes/" + quote(node, safe=""))

    def publish_node(self, record: NodeRecord) -> None:
        path = self._node_path(record.node)
        # A record this object wrote before is overwritten without reading it first (its
        # version is not needed: only its node writes it); gone meanwhile, the write
        # fails and the next attempt reads it. One request less per publish.
        known = path in self._records_written

        def attempt() -> None:
            nonlocal known
            now, found = self._read(zk, [] if known else [path], now=True)
            doc = dump(
                {
                    "role": record.role,
                    "app_state": record.app_state,
                    "epoch": record.epoch,
                    "updated_at": record.updated_at,
                    "detail": record.detail,
                    "stored_at": now,  # the server's clock: ages are judged on it alone
                }
            )
            existing = found.get(path)

            def build(txn: Any) -> None:
                if known:
                    txn.set_data(path, doc, -1)
                elif existing is None:
                    txn.create(path, doc)
                else:
                    txn.set_data(path, doc, existing.stat.version)

            try:
                self._commit(zk, build)
            except Conflict:
                known = False
                raise
            self._records_written.add(path)

        with self._using(f"publish the record of {record.node}") as zk:
            self._until_settled(attempt)

    def nodes(self) -> Sequence[NodeRecord]:
        with self._using("read the node records") as zk:
            now, _ = self._read(zk, [], now=True)
            listing = zk.get_children_async(self._path("nodes"))
            names = sorted(listing.get(timeout=self._left()))
            docs = self._get_many(zk, [f"{self._path('nodes')}/{name}" for name in names])
        records = []
        for name, doc in zip(names, docs, strict=True):
            if isinstance(doc, dict):
                records.append(
                    NodeRecord(
                        unquote(name),
                        str(doc["role"]),
                        str(doc["app_state"]),
                        int(doc["epoch"]),
                        float(doc["updated_at"]),
                        as_dict(doc.get("detail")),
                        max(0.0, now - float(doc["stored_at"])),
                    )
                )
        return sorted(records, key=lambda r: r.node)

    def _get_many(self, zk: KazooClient, paths: Sequence[str]) -> list[Any]:
        """The documents at ``paths`` (None for a znode gone meanwhile), pipelined."""
        pending = [zk.get_async(path) for path in paths]
        docs: list[Any] = []
        for result in pending:
            try:
                docs.append(load(result.get(timeout=self._left())[0]))
            except NoNodeError:
                docs.append(None)
        return docs

    # --- event history ------------------------------------------------------------

    def append_event(self, event: Event) -> Event:
        doc = dump(
            {
                "time": event.time,
                "node": event.node,
                "kind": event.kind,
                "reason": event.reason,
                "epoch": event.epoch,
                "actor": event.actor,
                "data": event.data,
            }
        )

        def attempt() -> int:
            self._read(zk, [], now=False)
            results = self._commit(
                zk, lambda txn: txn.create(self._path("events/e-"), doc, sequence=True)
            )
            return event_id_of(str(results[1]).rsplit("/", 1)[1])

        with self._using(f"append a {event.kind} event") as zk:
            event_id = self._until_settled(attempt)
            if event_id % self._trim_every == 0:
                self._trim(zk)
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

    def _trim(self, zk: KazooClient) -> None:
        """Delete the oldest events beyond ``max_events``."""
        names = sorted(zk.get_children_async(self._path("events")).get(timeout=self._left()))
        pending = [
            zk.delete_async(f"{self._path('events')}/{name}")
            for name in names[: max(0, len(names) - self._max_events)]
        ]
        for result in pending:
            with suppress(NoNodeError):
                result.get(timeout=self._left())

    def _event_names(self, zk: KazooClient) -> list[tuple[int, str]]:
        self._read(zk, [], now=False)
        listing = zk.get_children_async(self._path("events"))
        names = listing.get(timeout=self._left())
        return sorted((event_id_of(name), name) for name in names if name.startswith("e-"))

    def _events_at(self, zk: KazooClient, chosen: Sequence[tuple[int, str]]) -> list[Event]:
        docs = self._get_many(zk, [f"{self._path('events')}/{name}" for _, name in chosen])
        return [
            Event(
                event_id,
                float(doc["time"]),
                str(doc["node"]),
                str(doc["kind"]),
                str(doc["reason"]),
                int(doc["epoch"]),
                str(doc["actor"]),
                as_dict(doc.get("data")),
            )
            for (event_id, _), doc in zip(chosen, docs, strict=True)
            if isinstance(doc, dict)
        ]

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        if limit <= 0:
            return []
        with self._using("read the event history") as zk:
            chosen = [entry for entry in self._event_names(zk) if entry[0] > after_id][:limit]
            return self._events_at(zk, chosen)

    def recent_events(self, limit: int) -> Sequence[Event]:
        if limit <= 0:
            return []
        with self._using("read the event history") as zk:
            return self._events_at(zk, self._event_names(zk)[-limit:])

    # --- cluster state --------------------------------------------------------------

    def _entries(self, found: dict[str, Node | None]) -> tuple[dict[str, Any], Node]:
        state = found[self._path("state")]
        if state is None:
            raise CoordinationError(
                f"coordination store {self.where}: its state znode is missing; the store is "
                f"damaged: run `hakit init --reinit -c {self._config}`"
            )
        doc = state.doc if isinstance(state.doc, dict) else {}
        entries = doc.get("entries")
        return (dict(entries) if isinstance(entries, dict) else {}), state

    @staticmethod
    def _live(entry: Any, now: float) -> bool:
        expires_at = entry.get("expires_at") if isinstance(entry, dict) else None
        return isinstance(entry, dict) and (expires_at is None or float(expires_at) > now)

    def _change_state(
        self, zk: KazooClient, change: Callable[[dict[str, Any], float], bool]
    ) -> bool:
        """Read the state map, apply ``change`` (False: nothing to write), compare-and-set."""

        def attempt() -> bool:
            now, found = self._read(zk, [self._path("state")], now=True)
            entries, state = self._entries(found)
            if not change(entries, now):
                return False
            self._commit(
                zk,
                lambda txn: txn.set_data(
                    self._path("state"), dump({"entries": entries}), state.stat.version
                ),
            )
            return True

        return self._until_settled(attempt)

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"state ttl must be positive, got {ttl}")
        stored = json.loads(json.dumps(value))

        def change(entries: dict[str, Any], now: float) -> bool:
            for name in [k for k, entry in entries.items() if not self._live(entry, now)]:
                del entries[name]  # past their expiry: never read again
            entries[key] = {"value": stored, "expires_at": now + ttl if ttl is not None else None}
            return True

        with self._using(f"store the cluster state {key!r}") as zk:
            self._change_state(zk, change)

    def get_state(self, key: str) -> dict[str, Any] | None:
        return self._read_state(f"read the cluster state {key!r}").get(key)

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        def change(entries: dict[str, Any], now: float) -> bool:
            entry = entries.get(key)
            if not isinstance(entry, dict):
                return False
            if if_value is not None and not same(entry.get("value"), if_value):
                return False
            del entries[key]
            return True

        with self._using(f"clear the cluster state {key!r}") as zk:
            return self._change_state(zk, change)

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        return self._read_state("read the cluster state")

    def _read_state(self, action: str) -> dict[str, dict[str, Any]]:
        with self._using(action) as zk:
            now, found = self._read(zk, [self._path("state")], now=True)
            entries, _ = self._entries(found)
        return {
            key: as_dict(entry.get("value"))
            for key, entry in sorted(entries.items())
            if self._live(entry, now)
        }
