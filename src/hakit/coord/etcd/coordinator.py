"""``EtcdCoordinator``: the Coordinator protocol on an etcd v3 cluster, and its opener.

It puts together the parts of the package (see hakit.coord.etcd): the HTTP
transport, the identity guard, the lease steps, the records, events and state,
and the watch behind the change token.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.coord.etcd.identity import Guard
from hakit.coord.etcd.layout import Layout, b64, get, range_end
from hakit.coord.etcd.leases import LeaseState, LeaseSteps
from hakit.coord.etcd.records import Records
from hakit.coord.etcd.section import EtcdSection
from hakit.coord.etcd.transport import Transport
from hakit.coord.etcd.watch import Watch
from hakit.coord.memory import make_private_dir, memory_file

TTL_THREADS = 4  # lease_and_nodes asks the TTLs of this many etcd leases at once
FIRST_WATCH_WAIT = 0.25  # at most this long (and a quarter of the timeout) for the first watch


class EtcdCoordinator:
    """The ``Coordinator`` protocol on an etcd v3 cluster (see hakit.coord.etcd).

    ``clock``: this process's wall clock, only for the displayed ``expires_at``
    and ``NodeRecord`` display fields, never for a decision. ``memory_path``,
    ``create`` and ``config`` as for hakit.coord.sqlite.SqliteCoordinator.
    """

    def __init__(
        self,
        section: EtcdSection,
        *,
        cluster: str,
        clock: Callable[[], float] = time.time,
        memory_path: Path | None = None,
        create: bool = True,
        config: str | None = None,
    ) -> None:
        layout = Layout(section.prefix, cluster)
        self.section = section
        self.cluster = cluster
        self.prefix = layout.prefix
        self._transport = Transport(section, self.where, self._wrote)
        self._guard = Guard(
            self._transport,
            layout,
            clock=clock,
            memory_path=Path(memory_path) if memory_path is not None else None,
            create=create,
            config=config or "CONFIG",
        )
        self._leases = LeaseSteps(self._transport, self._guard, layout, clock)
        self._records = Records(self._transport, self._guard, layout)
        self._watch = Watch(self._transport, self.prefix)
        self._pool: ThreadPoolExecutor | None = None  # lease_and_nodes' TTL questions
        self._pool_pid = os.getpid()

    @property
    def where(self) -> str:
        return f"etcd {','.join(self.section.endpoints)} under {self.prefix}"

    def _wrote(self, revision: int) -> None:
        self._watch.wrote(revision)

    # --- identity -------------------------------------------------------------

    @property
    def identity(self) -> str | None:
        return self._guard.identity

    @property
    def highest_epoch(self) -> int:
        return self._guard.seen_epoch

    # --- the leader lease (hakit.coord.etcd.leases) --------------------------

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        return self._leases.acquire_or_renew(node, ttl)

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        return self._leases.renew_epoch(node, epoch, ttl)

    def take_over(self, node: str, ttl: float) -> Lease:
        return self._leases.take_over(node, ttl)

    def release(self, node: str, epoch: int) -> bool:
        return self._leases.release(node, epoch)

    def current_lease(self) -> Lease | None:
        return self._leases.current_lease()

    def last_epoch(self) -> int:
        return self._leases.last_epoch()

    # --- records, events, state (hakit.coord.etcd.records) --------------------

    def lease_and_nodes(self) -> tuple[Lease | None, Sequence[NodeRecord]]:
        """``current_lease()`` and ``nodes()`` at one revision, in two round trips instead
        of 2 + the records (a cluster view: the router's read after each change): one
        transaction reads the lease keys and the records, then the server's TTLs of their
        etcd leases are asked at once, one thread each (``TTL_THREADS`` at most)."""
        doing = "read the lease and the node records"
        keys = self._leases.keys

        def step(deadline: float) -> tuple[Lease | None, list[NodeRecord]]:
            epoch, leader, alive, found = self._guard.read(
                deadline, doing, get(keys.leader), get(keys.alive), self._records.nodes_range()
            )
            state = LeaseState(
                epoch[0] if epoch else None,
                leader[0] if leader else None,
                alive[0] if alive else None,
            )
            wanted = {kv.lease for kv in found if kv.lease}
            if state.leader is not None and state.valid:
                wanted.add(state.leader_lease)
            ttls = self._ttls(sorted(wanted), deadline, doing)
            lease_left = ttls.get(state.leader_lease, (-1, 0))[0] if state.valid else None
            return self._leases.lease_of(state, lease_left), self._records.records_of(found, ttls)

        return self._guard.run(doing, step)

    def _ttls(self, leases: list[int], deadline: float, doing: str) -> dict[int, tuple[int, int]]:
        """(TTL left, granted TTL) of each etcd lease, asked concurrently."""
        if len(leases) <= 1:
            return {lease: self._transport.ttl_left(lease, deadline, doing) for lease in leases}
        pool = self._pool
        if pool is None or self._pool_pid != os.getpid():  # none yet, or the parent's
            pool = self._pool = ThreadPoolExecutor(TTL_THREADS, thread_name_prefix="etcd-ttl")
            self._pool_pid = os.getpid()
        asked = [pool.submit(self._transport.ttl_left, lease, deadline, doing) for lease in leases]
        return {lease: future.result() for lease, future in zip(leases, asked, strict=True)}

    def publish_node(self, record: NodeRecord) -> None:
        self._records.publish_node(record)

    def nodes(self) -> Sequence[NodeRecord]:
        return self._records.nodes()

    def append_event(self, event: Event) -> Event:
        return self._records.append_event(event)

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        return self._records.events(after_id, limit)

    def recent_events(self, limit: int) -> Sequence[Event]:
        return self._records.recent_events(limit)

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        self._records.set_state(key, value, ttl=ttl)

    def get_state(self, key: str) -> dict[str, Any] | None:
        return self._records.get_state(key)

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        return self._records.clear_state(key, if_value)

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        return self._records.cluster_state()

    # --- the change token (hakit.coord.etcd.watch) ---------------------------

    def data_version(self, *, wait: bool = True) -> Hashable | None:
        """A token that changes with any write under the cluster's prefix (a lease
        renewal and a lease expiry included), kept by a watch (hakit.coord.etcd.watch):
        no request per call while the watch runs. ``wait=False`` (the router's event
        loop): the token, or None while no watch is established. ``wait=True``: the
        first call waits briefly for the watch to be made; without one, the store's
        newest revision under the prefix is read (within the timeout)."""
        if not wait:
            self._watch.start()
            return self._watch.token()
        token = self._watch.wait_synced(min(FIRST_WATCH_WAIT, self.section.timeout / 4))
        if token is not None:
            return token
        return self._guard.run("read the data version", self._read_version)

    def wait_change(self, token: Hashable | None, timeout: float) -> Hashable | None:
        """Block until the token differs from ``token`` (at most ``timeout`` seconds);
        the token then (None: no watch). For a reader that would rather be woken
        than poll."""
        self._watch.start()
        return self._watch.wait_change(token, timeout)

    def _read_version(self, deadline: float) -> Hashable:
        answer = self._transport.post(
            "/kv/range",
            {
                "key": b64(self.prefix),
                "range_end": range_end(self.prefix),
                "keys_only": True,
                "sort_order": "DESCEND",
                "sort_target": "MOD",
                "limit": 1,
            },
            deadline,
            "read the data version",
        )
        kvs = answer.get("kvs", [])
        newest = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        # A deletion changes no remaining key: the count tells it.
        return "read", newest, int(answer.get("count", 0))

    # --- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Stop the watch and close this object's HTTP connections (a later call opens
        new ones; the watch stays stopped). Leases are left to run out (a closed agent's
        lease expires; its record outlives it by ``record_ttl``)."""
        self._watch.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        self._transport.close()

    def __enter__(self) -> EtcdCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_etcd(
    section: EtcdSection,
    *,
    state_dir: Path,
    config: str | None,
    create: bool,
    node: str | None,
    cluster: str = "hakit",
) -> EtcdCoordinator:
    """The opener hakit.coord.registry names (see hakit.coord.factory.open_coordinator)."""
    memory = None
    if node is not None:
        make_private_dir(state_dir)
        memory = memory_file(state_dir, node)
    return EtcdCoordinator(
        section, cluster=cluster, memory_path=memory, create=create, config=config
    )
