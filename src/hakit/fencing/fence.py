"""Fencing: make sure an old active node cannot act before a new one starts
(docs/architecture.md, "Fencing").

Three layers, from the node itself outwards:

- Self-fencing (in the agent): an agent that cannot renew its lease SIGKILLs its
  app before the lease's TTL ends; the lease watchdog (hakit.fencing.watchdog) does
  it from a thread of its own, so a main loop that is blocked (on a store that is
  locked or slow, say) cannot keep the app alive past the lease.
- STONITH: a standby that takes over a lease which *expired* (its holder did not
  release it: the holder is frozen, cut off or dead) runs the configured
  ``failover.fence_command`` against the old holder before it starts the app,
  like a Pacemaker fence agent (IPMI, a cloud API's power-off). Promotion waits
  for the command's success; a failure is alerted, the lease is given back and
  the takeover is retried later. A released lease is a clean handover: nothing
  to fence.
- Database sessions (``failover.fence_database_sessions``): on such a takeover the
  old node's sessions are ended (hakit.dbfence). PostgreSQL: ``pg_terminate_backend``
  of those with ``application_name = 'hakit-<node>'`` (the agent sets ``PGAPPNAME``
  in the app's environment so libpq-based apps carry that name). MySQL/MariaDB:
  ``KILL`` of database_url's user's sessions from the old node's address.

The decision (:func:`fence_needs`) is pure; :class:`Fencer` does the I/O, the fence
command itself run by hakit.fencing.command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.config import Config, Storage
from hakit.contract import AppState
from hakit.coord.base import REINIT_HOLDER, Coordinator, Lease, NodeRecord
from hakit.dbfence import application_name as application_name  # re-exported: PGAPPNAME
from hakit.dbfence import fences_sessions, sessions_of, terminate_sessions
from hakit.errors import CoordinationError
from hakit.fencing.command import render_fence_command, run_fence_command
from hakit.health.datapath import PathReport, Sight, reports_in
from hakit.health.probe import StatusProber
from hakit.history.kinds import EventKind

log = logging.getLogger("hakit.fence")

PENDING_KEY = "fence_pending"  # NodeRecord.detail key: nodes this node could not fence yet
AGENT_ID_KEY = "agent_id"  # NodeRecord.detail key: the publishing agent process's instance id
RETRY_MAX = 60.0  # longest wait between two attempts to fence the same node


# --- pure decisions ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FenceNeed:
    """``node`` may still act under ``epoch``, whose lease ended at wall time ``since``
    (this host's clock: the store's durations and this host's readings, never another
    host's time).

    ``agent_id`` identifies the agent process that held it (``AGENT_ID_KEY`` in its
    record), when known: only that very process can prove it fenced itself.
    """

    node: str
    epoch: int
    since: float  # wall-clock seconds, this host's clock
    why: str  # one clause: "its lease of epoch 3 expired at 12:00:01 without being released"
    agent_id: str | None = None

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """As published in the node record; with ``now`` (the publisher's clock) also
        ``ended_ago``, the seconds since the lease ended: what another host reads (its
        ``since`` is this host's clock, kept for older readers)."""
        raw: dict[str, Any] = {
            "epoch": self.epoch,
            "since": self.since,
            "why": self.why,
            "agent": self.agent_id,
        }
        if now is not None:
            raw["ended_ago"] = max(0.0, now - self.since)
        return raw


@dataclass(frozen=True, slots=True)
class Predecessor:
    """What a node about to take the lease saw just before: the stored lease (None when
    released or never held), the highest epoch, and the holder's record at that time."""

    lease: Lease | None
    last_epoch: int
    record: NodeRecord | None = None
    read_at: float = 0.0  # wall-clock seconds


def read_predecessor(
    coordinator: Coordinator, me: str, clock: Callable[[], float] = time.time
) -> Predecessor:
    """Read before asking for the lease (blocking; run it in a thread).

    ``clock``: the reader's wall clock, for ``read_at``. Whether the lease can be
    taken is the store's judgement at the read (``Lease.valid``), no clock compared.
    """
    read_at = clock()
    lease = coordinator.current_lease()
    last_epoch = coordinator.last_epoch()
    record = None
    if lease is not None and lease.holder != me and not lease.valid:
        # It can be taken: remember which agent process held it, to recognise it later.
        record = next((r for r in coordinator.nodes() if r.node == lease.holder), None)
    return Predecessor(lease, last_epoch, record, read_at)


def agent_id_of(record: NodeRecord | None, epoch: int) -> str | None:
    """The agent instance that published ``record`` while acting under ``epoch``."""
    if record is None or record.epoch != epoch:
        return None
    value = record.detail.get(AGENT_ID_KEY)
    return value if isinstance(value, str) else None


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def stood_down(record: NodeRecord | None, need: FenceNeed, read_at: float) -> bool:
    """True when the very agent that held ``need.node``'s lease has run since it ended and
    no longer claims it.

    That agent checks its deadline before it publishes anything and kills its app
    when it is late, so a record of the same agent instance stored after
    ``need.since`` that is not "active under the lost epoch" proves the app is
    gone. A record of another instance (the agent was restarted: the old one's
    app may live on, orphaned) or of an unknown one proves nothing.

    When it was stored is the store's judgement: ``record.age`` seconds before the
    records were read, at ``read_at`` on this host's clock (``need.since``'s clock);
    never the publisher's ``updated_at``, another host's clock.
    """
    if record is None or need.agent_id is None or read_at - record.age <= need.since:
        return False
    if record.detail.get(AGENT_ID_KEY) != need.agent_id:
        return False
    return not (record.role == "active" and record.epoch == need.epoch)


def answered_after_end(report: PathReport, sight: Sight, need: FenceNeed) -> bool:
    """``sight`` (``need.node``'s, in ``report``) answered a check sent after the lease of
    ``need.epoch`` ended: the router's view then showed that epoch expired, or a later
    epoch (stamps, no clock compared). An older router's report: its ``answered_at``
    after ``need.since`` (the old way: such routers shared the store's machine)."""
    if sight.answered_at is None:
        return False
    if not report.expiring:
        return sight.answered_at > need.since
    seen = sight.answered_lease
    if seen is None:
        return False
    return seen.epoch > need.epoch or (seen.epoch == need.epoch and seen.left <= 0)


def _merge(needs: dict[str, FenceNeed], need: FenceNeed) -> None:
    known = needs.get(need.node)
    if known is None or (need.epoch, need.since) > (known.epoch, known.since):
        needs[need.node] = need


def pending_in(record: NodeRecord, read_at: float) -> list[FenceNeed]:
    """The fence needs another node published as not done yet (see ``PENDING_KEY``), their
    ``since`` on this host's clock: ``ended_ago`` before the record was stored (its
    ``age`` before ``read_at``, when the records were read). An older agent published no
    ``ended_ago``: its ``since`` as it is (its clock; such agents shared the store's
    machine)."""
    raw = record.detail.get(PENDING_KEY)
    needs = []
    if isinstance(raw, dict):
        for node, info in raw.items():
            if not isinstance(info, dict):
                continue
            try:
                epoch, since = int(info["epoch"]), float(info["since"])
                ago = info.get("ended_ago")
                if isinstance(ago, int | float):
                    since = read_at - record.age - float(ago)
            except (KeyError, TypeError, ValueError):
                continue
            why = f"{record.node} could not fence it yet ({info.get('why', 'see its events')})"
            agent = info.get("agent")
            needs.append(
                FenceNeed(str(node), epoch, since, why, agent if isinstance(agent, str) else None)
            )
    return needs


def fence_needs(
    me: str,
    before: Predecessor,
    gained: Lease,
    records: Mapping[str, NodeRecord],
    own_pending: Sequence[FenceNeed],
    *,
    read_at: float,
) -> tuple[list[FenceNeed], list[FenceNeed]]:
    """(nodes to fence before ``me`` may act under ``gained``, nodes that no longer need it).

    - a lease of another node that was still stored (not released) ended
      without a clean handover: fence its holder;
    - epochs handed out between ``before`` was read and ``gained``: fence whoever
      published one of them (they held the lease for a moment, then lost it);
    - nodes another node (or ``me``, earlier) could not fence yet stay to fence.

    ``records`` are the node records now, read at ``read_at`` (this host's wall clock,
    taken before the read). A node whose agent has published a record since
    (``stood_down``) is cleared instead: it has run, seen its lease end and killed its
    app.
    """
    needs: dict[str, FenceNeed] = {}
    lease = before.lease
    if lease is not None and lease.holder != me:
        if not lease.valid:
            why = f"its lease of epoch {lease.epoch} expired at {clock(lease.expires_at)} without being released"
        else:
            why = f"its lease of epoch {lease.epoch} ended without a clean release"
        # When it ended, on the reader's clock: the store judged it expired for
        # -remaining seconds at the read (the store's expires_at is another clock).
        since = before.read_at + min(0.0, lease.remaining)
        agent = agent_id_of(before.record, lease.epoch)
        _merge(needs, FenceNeed(lease.holder, lease.epoch, since, why, agent))
    prior = max(before.last_epoch, lease.epoch if lease is not None else 0)
    if gained.epoch > prior + 1:
        for record in records.values():
            if record.node != me and prior < record.epoch < gained.epoch:
                why = f"it held epoch {record.epoch}, which ended while {me} took the lease"
                agent = agent_id_of(record, record.epoch)
                _merge(needs, FenceNeed(record.node, record.epoch, before.read_at, why, agent))
    for record in records.values():
        if record.node != me:
            for need in pending_in(record, read_at):
                _merge(needs, need)
    for need in own_pending:
        _merge(needs, need)
    needs.pop(me, None)
    needs.pop(REINIT_HOLDER, None)  # `hakit init --reinit`'s hold: no node, nothing ran under it
    to_fence = [n for n in needs.values() if not stood_down(records.get(n.node), n, read_at)]
    cleared = [n for n in needs.values() if stood_down(records.get(n.node), n, read_at)]
    return sorted(to_fence, key=lambda n: n.node), sorted(cleared, key=lambda n: n.node)


def takeover_words(before: Predecessor, me: str) -> str:
    """For the promotion of ``me`` after reading ``before``: the clause saying that it
    takes over a lease that EXPIRED without being released (the holder is lost, frozen
    or cut off: a failover, alerted), or "" (a released lease, a cold start, its own)."""
    lease = before.lease
    if lease is None or lease.holder == me or lease.valid:
        return ""
    return (
        f"{lease.holder}'s lease of epoch {lease.epoch} expired at {clock(lease.expires_at)} "
        "without being released (its node is lost, frozen or cut off)"
    )


def retry_delay(failures: int, base: float) -> float:
    """Wait before the next attempt after ``failures`` failed ones in a row (doubling)."""
    return min(RETRY_MAX, base * 2.0 ** max(0, failures - 1))


# --- the agent's side -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """May the agent promote itself under the lease it just took?"""

    ok: bool
    reason: str  # for a refusal: the alert's sentence
    # "fence" alerts that do not block the promotion: a node fenced by the fence command,
    # database sessions that could not be terminated.
    alerts: tuple[str, ...] = ()


Recorder = Callable[[EventKind, str, dict[str, Any]], None]


@dataclass
class Fencer:
    """Decides and runs the fencing that must precede one node's promotion.

    ``record(kind, reason, data)`` writes an event to the history. ``pending``
    (the nodes this node could not fence yet) is published in the node's
    record so any other node about to promote fences them too. ``call(fn, *args)``
    runs a blocking store call off the event loop (the agent's: hakit.agent.storeio, in
    order with its other store I/O).
    """

    cfg: Config
    me: str
    coordinator: Coordinator
    record: Recorder
    log_path: Path
    call: Callable[..., Awaitable[Any]] = asyncio.to_thread
    pending: dict[str, FenceNeed] = field(default_factory=dict)
    skip_next: bool = False  # operator (`hakit failover --force`): promote once without fencing
    failures: int = 0  # failed attempts in a row

    def published(self, now: float | None = None) -> dict[str, Any]:
        """``pending`` as published in the node record (``now``: this host's wall clock)."""
        return {node: need.as_json(now) for node, need in sorted(self.pending.items())}

    def _host(self, node: str) -> str:
        try:
            return self.cfg.node(node).host
        except KeyError:
            return ""

    async def clear_to_promote(self, gained: Lease, before: Predecessor) -> Verdict:
        """Fence what must be fenced before acting under ``gained``; never raises."""
        read_at = time.time()  # before the read: a record's age is then, if anything, larger
        try:
            records = {r.node: r for r in await self.call(self.coordinator.nodes)}
        except CoordinationError as error:
            log.warning("could not read the node records before promoting: %s", error)
            records = {}
        to_fence, cleared = fence_needs(
            self.me, before, gained, records, list(self.pending.values()), read_at=read_at
        )
        for need in cleared:
            self._cleared(need, gained.epoch)
        if not to_fence:
            self.failures = 0
            self.skip_next = False  # a forced promotion is one promotion
            return Verdict(True, "")
        if self.skip_next:
            self.skip_next = False
            for need in to_fence:
                self.pending.pop(need.node, None)
                self.record(
                    EventKind.FENCE,
                    f"not fencing {need.node} ({need.why}): the operator forced the "
                    f"promotion of {self.me} under epoch {gained.epoch}",
                    {"target": need.node, "result": "skipped", "epoch": gained.epoch},
                )
            self.failures = 0
            return Verdict(True, "")
        alerts: list[str] = []
        for need in to_fence:
            refusal = await self._fence_one(need, gained.epoch, alerts)
            if refusal is not None:
                self.failures += 1
                return Verdict(False, refusal)
            alerts += await self._fence_sessions(need, gained.epoch)
        self.failures = 0
        return Verdict(True, "", tuple(alerts))

    def _cleared(self, need: FenceNeed, epoch: int) -> None:
        self.pending.pop(need.node, None)
        self.record(
            EventKind.FENCE,
            f"{need.node} needs no fencing before {self.me} promotes under epoch "
            f"{epoch}: {need.why}, but its agent has run since and does not claim "
            "the lease (it fenced itself)",
            {"target": need.node, "result": "not-needed", "epoch": epoch},
        )

    async def _stood_down_within(self, need: FenceNeed, patience: float) -> bool:
        """Whether the very agent that held ``need``'s lease stands down within
        ``patience`` seconds (hakit.fencing.fence.stood_down), re-reading the records.

        An old active whose agent lives learns at its next renewal that the lease is
        gone and kills its app first: its app answering now is the race with that, not
        a failed self-fence (and in warm standby its app answers again afterwards, as a
        standby). Refusing there would give the lease back and start over."""
        if need.agent_id is None:
            return False  # another instance's record proves nothing: no use waiting
        deadline = time.monotonic() + patience
        pause = self.cfg.coordination.renew_interval / 4
        while True:
            read_at = time.time()
            try:
                records = {r.node: r for r in await self.call(self.coordinator.nodes)}
            except CoordinationError:
                return False
            if stood_down(records.get(need.node), need, read_at):
                return True
            if time.monotonic() + pause > deadline:
                return False
            await asyncio.sleep(pause)

    async def _fence_one(self, need: FenceNeed, epoch: int, alerts: list[str]) -> str | None:
        """Run the fence command against ``need.node``; None on success (its sentence is
        added to ``alerts``: a node was powered off, a human wants to know), else the
        refusal."""
        failover = self.cfg.failover
        before = f"before {self.me} promotes under epoch {epoch}"
        if failover.fence_command is None:
            answer = await self._still_answers(need.node) or await self._routers_heard(need)
            shared = self.cfg.cluster.storage is Storage.SHARED
            if answer is not None and shared:
                # One lease TTL: a live agent renews (and so learns) several times in it.
                if await self._stood_down_within(need, self.cfg.coordination.lease_ttl):
                    self._cleared(need, epoch)
                    return None
                # Self-fencing did not happen (the node's shim is frozen or gone with its
                # agent): promoting now would put two writers on the shared home and
                # database. Safety over availability, as Pacemaker without STONITH.
                self.pending[need.node] = need
                reason = (
                    f"not promoting {self.me} under epoch {epoch}: {need.node}'s app still "
                    f"answers ({answer}) although {need.why}, and no failover.fence_command is "
                    f"configured to stop it; stop it by hand (or configure a fence command), "
                    f"then {self.me} takes over by itself (`hakit failover --force` promotes "
                    "anyway, accepting two writers)"
                )
                self.record(
                    EventKind.FENCE,
                    reason,
                    {"target": need.node, "result": "still-answering", "epoch": epoch},
                )
                return reason
            self.pending.pop(need.node, None)
            self.record(
                EventKind.FENCE,
                f"no failover.fence_command configured: {self.me} promotes under epoch {epoch} "
                f"trusting {need.node} to have fenced itself ({need.why})",
                {"target": need.node, "result": "not-configured", "epoch": epoch},
            )
            return None
        argv = render_fence_command(failover.fence_command, need.node, self._host(need.node))
        self.pending[need.node] = need  # published while in flight: a crash of ours loses nothing
        env = {
            "HAKIT_NODE": self.me,
            "HAKIT_FENCE_NODE": need.node,
            "HAKIT_FENCE_HOST": self._host(need.node),
            "HAKIT_FENCE_EPOCH": str(need.epoch),
            "HAKIT_CONFIG": str(self.cfg.source or ""),
        }
        result = await run_fence_command(argv, failover.fence_timeout, env, self.log_path)
        data = {
            "target": need.node,
            "result": "ok" if result.ok else "failed",
            "epoch": epoch,
            "command": argv,
            "summary": result.summary,  # what `hakit why` tells (it never parses the reason)
            "returncode": result.returncode,
            "seconds": round(result.elapsed, 3),
            "output": result.output,
        }
        if result.ok:
            self.pending.pop(need.node, None)
            reason = f"fenced {need.node} {before} ({need.why}): the fence command {result.summary}"
            self.record(EventKind.FENCE, reason, data)
            alerts.append(reason)
            return None
        output = f"; its output: {result.output.splitlines()[-1]}" if result.output else ""
        reason = (
            f"could not fence {need.node} {before} ({need.why}): the fence command "
            f"{result.summary}{output}; not promoting: {self.me} gives the lease back and "
            "tries again later (`hakit failover --force` promotes without fencing)"
        )
        self.record(EventKind.FENCE, reason, data)
        return reason

    async def _still_answers(self, node: str) -> str | None:
        """How ``node``'s app answers its /status now ("RUNNING", "HTTP 503"...), or None
        when nothing answers there (refused, silent, or the node is unknown): a process
        that answers at all is alive and may write, whatever state it reports."""
        try:
            target = self.cfg.node(node)
        except KeyError:
            return None
        prober = StatusProber(
            self.cfg.app.health, target.host, target.port, self.cfg.health.probe_timeout
        )
        try:
            observation = await prober.probe()
        finally:
            await prober.aclose()
        if observation.state in (AppState.DOWN, AppState.TIMEOUT, AppState.STOPPED):
            return None
        return f"{observation.state} on {target.host}:{target.port}"

    async def _routers_heard(self, need: FenceNeed) -> str | None:
        """A router's fresh report that ``need.node``'s app answered after its lease ended
        (the data path: this node may not reach it, the routers do), in words; else None.

        "After" is the router's stamp (hakit.health.datapath.LeaseSeen): the check was
        sent while its view of the store showed that epoch expired, or a later epoch. An
        older router's report (no stamps): its ``answered_at`` against ``need.since``."""
        try:
            state = await self.call(self.coordinator.cluster_state)
        except CoordinationError:
            return None
        now = time.time()
        for report in reports_in(state):
            sight = report.sees_now(need.node) if report.fresh(now) else None
            if sight is None or sight.failure is not None or sight.answered_at is None:
                continue
            if answered_after_end(report, sight, need):
                before = max(0.0, report.at - sight.answered_at)
                return (
                    f"router {report.router} got an answer from it after its lease ended "
                    f"({before:.1f} s before its last report)"
                )
        return None

    async def _fence_sessions(self, need: FenceNeed, epoch: int) -> list[str]:
        if not self.cfg.failover.fence_database_sessions:
            return []
        url = self.cfg.app.database_url
        if not fences_sessions(url):  # no database (""), or SQLite
            return []
        host = self._host(need.node)
        count, problem = await terminate_sessions(
            url, need.node, host, self.cfg.failover.fence_timeout, self.me
        )
        name = sessions_of(url, need.node, host)
        if problem is None:
            self.record(
                EventKind.FENCE,
                f"terminated {count} database session{'s' if count != 1 else ''} of {need.node} "
                f"({name}) before {self.me} promotes under epoch {epoch}",
                {"target": need.node, "result": "ok", "sessions": count, "epoch": epoch},
            )
            return []
        reason = (
            f"could not terminate the database sessions of {need.node} ({name}): "
            f"{problem}; promoting {self.me} anyway, {need.node} is fenced"
        )
        self.record(
            EventKind.FENCE, reason, {"target": need.node, "result": "failed", "epoch": epoch}
        )
        return [reason]
