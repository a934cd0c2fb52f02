"""The operator's side of one node's agent: intents, draining, the routers' lost path.

``OperatorSide`` owns what the operator asked of this node (hakit.operator.intents:
pause, resume, switchover, forced failover; the admin API that writes them,
hakit.operator.admin_api), whether this node is draining (a switchover: the routers
hold new requests meanwhile) and the wait for the routers to finish what they sent
here. From the routers' data-path reports (hakit.health.datapath) it tells the policy
when the routers cannot reach this active node while its app answers here (PathLost ->
a ``path-loss`` handover), and, on the active node, removes the reports of routers
silent for an hour (crashed, or gone with their host).

The agent's operator loop (hakit.agent.agent) reads the intents every renewal and
calls ``feed_intents``, ``watch_path`` and ``forget_silent_routers``; the agent carries
the policy's Drain, TakeLease, RequestHandover and EndHandover actions out here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hakit.agent.lease import LeaseKeeper, Wake
from hakit.agent.storeio import StoreIO
from hakit.config import Config, NodeConfig
from hakit.coord.base import REINIT_HOLDER, Coordinator, Lease, NodeRecord
from hakit.coord.keys import HANDOVER
from hakit.errors import CoordinationError
from hakit.fencing.fence import FenceNeed, Fencer, agent_id_of
from hakit.health.datapath import (
    PathLoss,
    PathReport,
    forgotten_reports,
    handover_candidates,
    in_flight,
    path_lost,
    reports_in,
)
from hakit.history.kinds import EventKind
from hakit.operator.commands import OperatorError, perform
from hakit.operator.intents import IntentWatcher, expired_words, request_path_loss
from hakit.policy import (
    Boot,
    Drain,
    EndHandover,
    PathLost,
    Paused,
    Policy,
    PolicyEvent,
    PolicyState,
    RequestHandover,
    Role,
    TakeLease,
)

log = logging.getLogger("hakit.agent")

# While draining, how often the routers' reports are read (they publish at once when a
# draining node's last request ends).
DRAIN_POLL = 0.05

Intents = tuple[Mapping[str, dict[str, Any]], Lease | None]

_HANDOVER_KINDS = {kind.value: kind for kind in (EventKind.FAILOVER, EventKind.PATH_LOSS)}


def handover_kind(intent: Mapping[str, Any]) -> EventKind:
    """What the history calls a handover intent's events: its ``kind`` (a forced failover,
    a path-loss handover), a switchover otherwise."""
    return _HANDOVER_KINDS.get(str(intent.get("kind")), EventKind.SWITCHOVER)


class OperatorSide:
    """The operator's intents and the routers' view of this node (see the module's docstring).

    ``record(kind, reason, *, epoch=None, data=None, actor="")`` writes the history (the
    agent's), ``publish()`` this node's record; ``answering_since()`` is the wall time
    since which the app has answered /status here without a break, None while it does not.
    """

    def __init__(
        self,
        cfg: Config,
        node: NodeConfig,
        coordinator: Coordinator,
        store: StoreIO,
        policy: Policy,
        lease: LeaseKeeper,
        fencer: Fencer,
        events: asyncio.Queue[PolicyEvent | Wake],
        *,
        monotonic: Callable[[], float],
        record: Callable[..., None],
        publish: Callable[[], None],
        answering_since: Callable[[], float | None],
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.coordinator = coordinator
        self.store = store
        self.policy = policy
        self.lease = lease
        self.fencer = fencer
        self.events = events
        self.monotonic = monotonic
        self._record = record
        self._publish = publish
        self._answering_since = answering_since
        # Operator commands (hakit.operator.intents) and cold starts.
        self.intents = IntentWatcher()
        self.draining = False  # switching over: the router holds new requests meanwhile
        self._admin_api: Any = None  # hakit.operator.admin_api.AdminApi while serving
        # Replicated storage: this node's snapshot repository, served read-only.
        self.served_repository: Path | None = None
        # Failsafe mode's answer to an active's POST /failsafe (hakit.agent.failsafe).
        self.failsafe_answer: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]] | None = None

    # --- the operator's intents (hakit.operator: intents, admin_api) -----------------------

    async def read_intents(self) -> Intents | None:
        """The cluster state and the lease; None when the store cannot be read (nothing
        changed as far as this agent can tell: it keeps what it knew).

        The lease is the one the lease loop read or renewed within the last renewal
        interval when there is one (counted down since: hakit.agent.lease.SeenLease), so
        that a node does not read the same lease twice per renewal; the intents only ask
        whether it is vacant (a pause's LeaseVacant), which a renewal-old answer tells
        with at most a renewal's delay. Read otherwise (paused: the lease loop does not
        read).
        """
        now = self.monotonic()
        seen = self.lease.seen_within(now, self.cfg.coordination.renew_interval)

        def read() -> Intents:
            state = self.coordinator.cluster_state()
            if seen is not None:
                return state, seen.at(self.monotonic())
            return state, self.coordinator.current_lease()

        try:
            return await self.store.call(read, what="read the operator's intents")
        except CoordinationError as error:
            log.warning("could not read the operator's intents: %s", error)
            return None

    async def feed_intents(
        self, read: Intents | None, now: float, boot: Boot | None = None
    ) -> None:
        """Queue the policy events for what the operator changed (``boot``: after a pause,
        before the rest, which only a booted policy can take)."""
        events, expired = self.intents.observe(*read, now) if read is not None else ([], None)
        if boot is not None:
            first = [event for event in events if isinstance(event, Paused)]
            events = [*first, boot, *(event for event in events if event not in first)]
        for event in events:
            self.events.put_nowait(event)
        if expired is not None:
            try:
                cleared = await self.store.call(self.coordinator.clear_state, HANDOVER, expired)
            except CoordinationError as error:
                log.warning("could not clear an expired handover: %s", error)
                return
            if cleared:  # one agent wins the compare-and-delete and says so
                self._record(handover_kind(expired), expired_words(expired, self.cfg))

    async def start_admin_api(self) -> None:
        if self.node.admin_port is None:
            return
        from hakit.errors import HakitError
        from hakit.operator.admin_api import AdminApi, load_token

        try:
            token = load_token(self.cfg)
            if token is None:
                raise HakitError("[admin] has no token or token_file")
            api = AdminApi(token, self._admin_perform, repository=self.served_repository)
            await api.start(self.node.host, self.node.admin_port)
        except HakitError as error:
            self._record(EventKind.INTERNAL, f"admin API of {self.node.name} not served: {error}")
            return
        self._admin_api = api

    async def close_admin_api(self) -> None:
        if self._admin_api is not None:
            await self._admin_api.close()

    async def _admin_perform(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        if operation == "failsafe":
            # Answered by this agent itself, not through the store (it may be unreachable).
            if self.failsafe_answer is None:
                raise OperatorError(f"failsafe mode is off on {self.node.name}")
            return await self.failsafe_answer(params)
        return await self.store.call(
            perform, self.coordinator, self.cfg, operation, params, time.time()
        )

    async def take_lease_by_force(self, action: TakeLease) -> None:
        """Forced failover: the lease moves here under a new epoch; the lease loop then
        renews it and promotes (after fencing the old holder, hakit.fencing.fence)."""
        ttl, reason, actor = self.cfg.coordination.lease_ttl, action.reason, action.actor
        promised = self.policy.failsafe_hold(self.monotonic())
        if promised is not None:
            # Failsafe mode: an active may still serve on this node's word (hakit.policy.failsafe).
            self._record(
                EventKind.FAILOVER,
                f"{reason}: not taking the lease yet: {promised}",
                epoch=0,
                actor=actor,
            )
            return
        try:
            before, holder = await self.store.call(_lease_and_holder, self.coordinator)
            lease = await self.store.call(self.coordinator.take_over, self.node.name, ttl)
        except CoordinationError as error:
            self._record(
                EventKind.FAILOVER,
                f"{reason}: could not take the lease: {error}",
                epoch=0,
                actor=actor,
            )
            return
        intent = self.intents.handover or {}
        if before is not None and before.holder not in (self.node.name, REINIT_HOLDER):
            if intent.get("force"):
                self.fencer.skip_next = True
            why = f"the operator forced a failover away from its lease of epoch {before.epoch}"
            # The holder's agent instance: once that very agent publishes a record that no
            # longer claims the epoch, it has killed its app (hakit.fencing.fence.stood_down)
            # and no fencing is needed. Unknown, a live old active whose app answers again
            # as a warm standby could never be told from one that did not fence itself.
            self.fencer.pending[before.holder] = FenceNeed(
                before.holder, before.epoch, time.time(), why, agent_id_of(holder, before.epoch)
            )
        self._record(
            EventKind.FAILOVER,
            f"{reason}: took epoch {lease.epoch}",
            epoch=lease.epoch,
            actor=actor,
        )

    async def end_handover(self, action: EndHandover) -> None:
        intent = self.intents.handover
        if intent is None:
            return
        # Not awaited: the store runs it before the record below and before any later read.
        self.store.submit(
            "clear the handover intent", self.coordinator.clear_state, HANDOVER, intent
        )
        self._record(handover_kind(intent), action.reason, actor=action.actor)

    # --- draining -----------------------------------------------------------------------

    async def drain(self, action: Drain) -> None:
        """Take no new requests (the routers hold them), and wait for the ones in flight."""
        self._record(EventKind.DRAIN, action.reason, actor=action.actor)
        self.draining = True
        self._publish()
        # The store takes the record first; then every live router must see it (no
        # new request reaches the app) and finish what it sent here.
        await self.store.flush(self.lease.timings.flush_bound)
        await self._wait_drained(action.actor)

    async def _wait_drained(self, actor: str) -> None:
        """Until every live router reports this node draining with no request in flight to
        it (hakit.health.datapath.in_flight), bounded by router.drain_timeout; said either way."""
        started = self.monotonic()
        limit = self.cfg.router.drain_timeout
        total, busy = 0, ["?"]
        while True:
            try:
                state = await self.store.call(self.coordinator.cluster_state, what="drain")
            except CoordinationError as error:
                log.warning("could not read the routers' reports while draining: %s", error)
            else:
                # Fresh: still in the store (its TTL, the store's clock; hakit.health.datapath).
                total, busy = in_flight(self.node.name, reports_in(state), time.time())
                if not busy:
                    break
            waited = self.monotonic() - started
            if waited >= limit:
                self._record(
                    EventKind.DRAIN,
                    f"drain_timeout ({limit:g} s) passed with {total} request"
                    f"{'s' if total != 1 else ''} in flight to {self.node.name} at router"
                    f"{'s' if len(busy) != 1 else ''} {', '.join(busy)}: stopping the app anyway",
                    data={"in_flight": total, "routers": busy, "seconds": round(waited, 3)},
                    actor=actor,
                )
                return
            await asyncio.sleep(DRAIN_POLL)
        self._record(
            EventKind.DRAIN,
            f"drained: no router sends new requests to {self.node.name} and none is in "
            f"flight to it ({self.monotonic() - started:.2f} s)",
            data={"in_flight": 0, "seconds": round(self.monotonic() - started, 3)},
            actor=actor,
        )

    # --- the routers' path to this node (hakit.health.datapath) ----------------------------

    async def watch_path(self, state: Mapping[str, dict[str, Any]]) -> None:
        """Active with its app RUNNING here: have the routers lost their path to it? Then
        the policy hears PathLost (it asks for the handover once)."""
        view = self.policy.view()
        if (
            not self.lease.epoch
            or view.role is not Role.ACTIVE
            or view.state is not PolicyState.RUNNING
        ):
            return
        answering_since = self._answering_since()
        if answering_since is None:
            return  # only an app that answers here tells a lost path from a dead app
        reports = reports_in(state)
        if not reports:
            return
        now = time.time()
        # First without the records: with every other node as a candidate (a superset of
        # handover_candidates'), path_lost says None whenever it would with the real ones,
        # and it almost always does (a router still reaches this node). The node records,
        # a read of the store, are needed only when it does not: one read less per
        # renewal on the active node.
        others = [node.name for node in self.cfg.nodes if node.name != self.node.name]
        if self._path_lost(reports, others, now, answering_since) is None:
            return
        try:
            records = await self.store.call(self.coordinator.nodes)
        except CoordinationError as error:
            log.warning("could not read the node records: %s", error)
            return
        now = time.time()
        candidates = handover_candidates(
            self.node.name,
            [(node.name, node.no_failover) for node in self.cfg.nodes],
            {record.node: record for record in records},
            now,
            alive_within=self.lease.timings.candidate_alive_within,
        )
        loss = self._path_lost(reports, candidates, now, answering_since)
        if loss is not None:
            self.events.put_nowait(PathLost(loss.target, loss.reason))

    def _path_lost(
        self,
        reports: list[PathReport],
        candidates: Sequence[str],
        now: float,
        answering_since: float,
    ) -> PathLoss | None:
        return path_lost(
            self.node.name,
            reports,
            candidates,
            now,
            fall=self.cfg.health.fall,
            patience=self.cfg.health.timeout,
            answering_since=answering_since,
        )

    def forget_silent_routers(self, state: Mapping[str, dict[str, Any]]) -> None:
        """Active: remove the reports of older routers silent for an hour (a report with a
        store TTL vanishes by itself; hakit.health.datapath.forgotten_reports).

        One agent is enough (the active one); the removal is a compare-and-delete, so
        a router that published again meanwhile keeps its report."""
        if not self.lease.epoch or self.policy.view().role is not Role.ACTIVE:
            return
        now = time.time()
        for key, value, report in forgotten_reports(state, now):
            self.store.submit(
                f"remove the report of router {report.router}",
                self._forget_router,
                key,
                dict(value),
                f"router {report.router}: report removed, silent for "
                f"{(now - report.at) / 3600:.1f} h",
                key=f"forget {key}",  # asked again each renewal until done: once is enough
            )

    def _forget_router(self, key: str, value: dict[str, Any], words: str) -> None:
        """On the store's thread: compare-and-delete one report, and say so when done."""
        if self.coordinator.clear_state(key, value):
            log.info("%s", words)

    async def request_handover(self, action: RequestHandover) -> None:
        """Write the path-loss handover intent; the policy then hears it like a switchover."""
        try:
            intent = await self.store.call(
                request_path_loss,
                self.coordinator,
                self.cfg,
                self.node.name,
                action.target,
                self.lease.epoch,
                action.reason,
                time.time(),
            )
        except CoordinationError as error:
            log.warning("could not ask for the handover to %s: %s", action.target, error)
            return
        if intent is None:
            self._record(action.kind, f"{action.reason}; not asked: another handover is under way")
            return
        self._record(action.kind, action.reason, data={"target": action.target})
        await self.feed_intents(await self.read_intents(), time.time())


def _lease_and_holder(coordinator: Coordinator) -> tuple[Lease | None, NodeRecord | None]:
    """The lease and its holder's record, read just before a forced takeover (blocking)."""
    lease = coordinator.current_lease()
    if lease is None:
        return None, None
    return lease, next((r for r in coordinator.nodes() if r.node == lease.holder), None)
