"""The leader lease: each step one read, then one transaction conditioned on it.

``P/leader`` holds the lease as stored (holder, epoch, revision, the etcd lease
id, ``expires_at`` by the writer's clock for display); ``P/leader/alive``,
attached to the etcd lease, is the server's judgement that it is valid. Every
write compares the ``mod_revision`` (or absence) of ``P/epoch``, ``P/leader``,
``P/leader/alive`` and the identity key as read; a transaction that lost a race
is retried from a fresh read (``Retry``). A grant of a new holder increments
``P/epoch`` in that same transaction, so an epoch is never handed out twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hakit.coord.base import Lease
from hakit.coord.etcd.identity import Guard, Retry
from hakit.coord.etcd.layout import KV, Layout, delete, dumps, get, put, unchanged
from hakit.coord.etcd.transport import Refused, Transport


@dataclass(frozen=True, slots=True)
class LeaseState:
    """The lease keys as one read answered them."""

    epoch: KV | None  # P/epoch
    leader: KV | None  # P/leader
    alive: KV | None  # P/leader/alive

    @property
    def last_epoch(self) -> int:
        return int(self.epoch.value or b"0") if self.epoch is not None else 0

    @property
    def stored(self) -> dict[str, Any]:
        return self.leader.json() if self.leader is not None else {}

    @property
    def holder(self) -> str | None:
        holder = self.stored.get("holder")
        return str(holder) if holder is not None else None

    @property
    def stored_epoch(self) -> int:
        return int(self.stored.get("epoch", 0))

    @property
    def leader_lease(self) -> int:
        return int(self.stored.get("lease", 0))

    @property
    def valid(self) -> bool:
        """The server's judgement: the alive key of the stored grant still exists."""
        return (
            self.leader is not None
            and self.alive is not None
            and self.alive.lease == self.leader_lease
            and self.alive.value == str(self.stored_epoch).encode()
        )


class LeaseSteps:
    """The Coordinator's lease calls (see hakit.coord.base.Coordinator)."""

    def __init__(
        self, transport: Transport, guard: Guard, layout: Layout, clock: Callable[[], float]
    ) -> None:
        self._t = transport
        self._guard = guard
        self._keys = layout
        self._clock = clock

    @property
    def keys(self) -> Layout:
        return self._keys

    def _state(self, deadline: float, doing: str) -> LeaseState:
        epoch, leader, alive = self._guard.read(
            deadline, doing, get(self._keys.leader), get(self._keys.alive)
        )
        return LeaseState(
            epoch[0] if epoch else None,
            leader[0] if leader else None,
            alive[0] if alive else None,
        )

    def _write(
        self,
        state: LeaseState,
        lease: Lease,
        etcd_lease: int,
        ttl: float,
        deadline: float,
        doing: str,
        *,
        new_epoch: bool,
    ) -> None:
        """Store ``lease`` in one transaction conditioned on ``state`` as read."""
        doc = {
            "holder": lease.holder,
            "epoch": lease.epoch,
            "revision": lease.revision,
            "expires_at": lease.expires_at,
            "ttl": ttl,
            "lease": etcd_lease,
        }
        success = [
            put(self._keys.leader, dumps(doc)),
            put(self._keys.alive, str(lease.epoch), etcd_lease),
        ]
        if new_epoch:
            success.append(put(self._keys.epoch, str(lease.epoch)))
        compare = [
            self._guard.trusted(),
            unchanged(self._keys.epoch, state.epoch),
            unchanged(self._keys.leader, state.leader),
            unchanged(self._keys.alive, state.alive),
        ]
        try:
            won, _, _ = self._t.txn(compare, success, None, deadline, doing)
        except Refused as error:
            if "lease not found" in str(error):
                raise Retry from None  # the etcd lease ran out meanwhile
            raise
        if not won:
            raise Retry

    def _grant_new_epoch(
        self, state: LeaseState, node: str, ttl: float, deadline: float, doing: str
    ) -> Lease:
        newest = max(state.last_epoch, state.stored_epoch)
        etcd_lease, _ = self._t.grant(ttl, deadline, doing)
        now = self._clock()
        lease = Lease(node, newest + 1, now + ttl, ttl, 1)
        try:
            self._write(state, lease, etcd_lease, ttl, deadline, doing, new_epoch=True)
        except BaseException:
            self._t.revoke(etcd_lease, deadline)
            raise
        if state.leader is not None and state.leader_lease and state.alive is not None:
            # take_over: the old one is attached to nothing
            self._t.revoke(state.leader_lease, deadline)
        self._guard.saw(lease.epoch)
        return lease

    def _extend(self, state: LeaseState, ttl: float, deadline: float, doing: str) -> Lease:
        """Extend the stored lease under its epoch (revision + 1): the same etcd lease when
        it is alive and of the same length, else a new one."""
        assert state.leader is not None
        doc = state.leader.json()
        etcd_lease = state.leader_lease
        fresh = False
        if state.valid and math.ceil(float(doc.get("ttl", 0))) == math.ceil(ttl):
            if self._t.keepalive(etcd_lease, deadline, doing) <= 0:
                raise Retry  # it ran out just now: read again
        else:
            etcd_lease, _ = self._t.grant(ttl, deadline, doing)
            fresh = True
        now = self._clock()
        lease = Lease(
            str(doc["holder"]), int(doc["epoch"]), now + ttl, ttl, int(doc.get("revision", 0)) + 1
        )
        try:
            self._write(state, lease, etcd_lease, ttl, deadline, doing, new_epoch=False)
        except BaseException:
            if fresh:
                self._t.revoke(etcd_lease, deadline)
            raise
        if fresh and state.alive is not None:
            self._t.revoke(state.leader_lease, deadline)
        self._guard.saw(lease.epoch)
        return lease

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        doing = f"take or renew the lease for {node}"

        def step(deadline: float) -> Lease | None:
            state = self._state(deadline, doing)
            if state.valid:
                if state.holder != node:
                    return None
                return self._extend(state, ttl, deadline, doing)
            return self._grant_new_epoch(state, node, ttl, deadline, doing)

        return self._guard.run(doing, step)

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        doing = f"renew the lease of {node} under epoch {epoch}"

        def step(deadline: float) -> Lease | None:
            state = self._state(deadline, doing)
            if state.leader is None or state.holder != node or state.stored_epoch != epoch:
                return None
            if state.last_epoch > epoch:
                return None  # a later epoch was handed out (never the case while stored)
            return self._extend(state, ttl, deadline, doing)

        return self._guard.run(doing, step)

    def take_over(self, node: str, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        doing = f"hand the lease to {node}"

        def step(deadline: float) -> Lease:
            state = self._state(deadline, doing)
            return self._grant_new_epoch(state, node, ttl, deadline, doing)

        return self._guard.run(doing, step)

    def release(self, node: str, epoch: int) -> bool:
        doing = f"release the lease of {node}"

        def step(deadline: float) -> bool:
            state = self._state(deadline, doing)
            if state.leader is None or state.holder != node or state.stored_epoch != epoch:
                return False
            won, _, _ = self._t.txn(
                [self._guard.trusted(), unchanged(self._keys.leader, state.leader)],
                [delete(self._keys.leader), delete(self._keys.alive)],
                None,
                deadline,
                doing,
            )
            if not won:
                raise Retry
            if state.leader_lease:
                self._t.revoke(state.leader_lease, deadline)
            return True

        return self._guard.run(doing, step)

    def current_lease(self) -> Lease | None:
        doing = "read the lease"

        def step(deadline: float) -> Lease | None:
            state = self._state(deadline, doing)
            left = None
            if state.leader is not None and state.valid:
                left, _ = self._t.ttl_left(state.leader_lease, deadline, doing)
            return self.lease_of(state, left)

        return self._guard.run(doing, step)

    def lease_of(self, state: LeaseState, left: int | None) -> Lease | None:
        """The stored lease as read (``state``), ``left``: the seconds its etcd lease had
        left by the server (None, or < 0: not asked, or gone)."""
        if state.leader is None:
            return None
        doc = state.leader.json()
        expires_at = float(doc.get("expires_at", 0.0))
        remaining = min(0.0, expires_at - self._clock())
        if state.valid and left is not None and left >= 0:
            remaining = float(left)
        self._guard.saw(state.stored_epoch)
        return Lease(
            str(doc["holder"]),
            int(doc["epoch"]),
            expires_at,
            remaining,
            int(doc.get("revision", 0)),
        )

    def last_epoch(self) -> int:
        doing = "read the last epoch"

        def step(deadline: float) -> int:
            (epoch,) = self._guard.read(deadline, doing)
            return int(epoch[0].value or b"0") if epoch else 0

        return self._guard.run(doing, step)
