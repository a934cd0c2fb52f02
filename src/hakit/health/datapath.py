"""The data path: what the routers see of each node, and what it means (docs/architecture.md,
"Failures and what is done about them": the routers lose their path to the active).

A node's agent proves it lives by renewing its lease; its app proves it serves by
answering the routers. Each router publishes a small report in the coordination
store's cluster state, under ``router/<name>`` (hakit.router.pathreport), about
every configured node:

- ``answered_at``: wall time the last check that got an answer was sent (any HTTP
  answer: the app is alive, whatever it says);
- ``checked_at``: wall time the last check completed;
- ``failure``: None when the last check answered, else ``refused`` (the host
  answered: connection refused or closed) or ``silent`` (timeout, unreachable);
  ``failing_since`` / ``failures``: when that streak began and how long it is;

- ``in_flight``: requests the router has sent (or is sending) to the node whose
  response has not ended yet (WebSocket and other upgraded tunnels not counted);
  ``draining``: the router sees the node draining (its record or its /status
  says so: no new users go there);

plus the report's own time ``at``, how often the router publishes (``every``) and
the longest gap between two completed checks of an answering node
(``check_every``). The wall times (``at``, ``answered_at``, ``checked_at``,
``failing_since``) are the router's clock: they are only ever compared with each
other, never with the reader's clock or the store's (hosts need not share a clock).

What the router's view of the store showed of the lease is stamped in (:class:`LeaseSeen`:
epoch, revision, the validity left and how long that revision had been shown, all
judged by the store or measured on the router's clock): on the report, as of
``at``, and on each sight, as of when its last answered check was sent
(``answered_lease``).

Freshness is the store's judgement: a router publishes its report with a store TTL
of ``STALE_REPORTS`` publishing periods (``report_ttl``) and ``expiring: true``; the
store forgets it once the router has stopped publishing that long (it is down or cut
off), so a report the store still returns is fresh. A report an older router wrote
without TTL (no ``expiring``) is judged the old way, its ``at`` against the reader's
clock, and its answers against the lease's times: such routers only ever served the
embedded store, on the store's machine or one sharing its file system, and the old
way keeps what they see counting (in particular, that an old holder's app still
answers) while routers are upgraded one by one. Such a report is also removed after
``FORGET_AFTER`` of silence (:func:`forgotten_reports`): nothing else removes it.

Three decisions read the reports, all pure (``now`` is the reader's wall clock, used
only for the old routers' reports and the reader's own durations):

- :func:`judge_holder`: a standby about to take over an EXPIRED lease asks
  whether its holder is dead. Death needs both silences: the lease expired AND no
  fresh router got an answer from the node after its last renewal (plus one and
  a half renewal intervals: a node that died just after renewing may have
  answered a check in between). "After" is read from the stamps, not from clocks:
  an answer to a check sent while the router's view showed the holder's epoch at the
  lease's last revision for at least that long, or showed it expired (or a later
  revision: the holder renewed since). When a router still gets answers, the holder's
  agent is stalled, not dead: the standby defers, up to the detection patience
  (``health.timeout``) after the expiry; past it, the lease alone decides (an
  agent that crashed alone must not keep the cluster unsupervised for ever). With
  no fresh report at all (no router, or every router down) the lease alone
  decides, as without a data path. When the reports are too old to tell (the
  router's view did not show the lease expired yet and its last check of the holder
  answered) the standby waits for the next one: about one publishing period, and
  never past the patience.
- :func:`path_lost`: the active node's agent sees its own app RUNNING but every
  fresh router has failed to reach it for the detection patience (the ``fall``
  and ``health.timeout`` rules of hakit.policy.rules.streak_is_failure, on the
  router's clock; failures from before its app answered locally, while it started or
  the node was frozen, count only once the routers keep failing for the patience
  after that: how long ago a check failed is a duration on the router's clock plus
  at most a report's TTL, against how long the app has answered on the agent's) while some
  standby answers those routers (or refuses: its host is reachable). It then
  hands over to that standby (a ``path-loss`` handover, hakit.operator.intents). When the
  routers reach no standby either, their own network is the problem: nothing
  happens.
- :func:`in_flight`: a node draining for a switchover waits until every fresh
  router has seen its drain and has no request left in flight to it, then stops
  its app (bounded by ``router.drain_timeout``).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hakit.contract import AppState
from hakit.coord.base import Lease, NodeRecord
from hakit.coord.keys import is_router_report
from hakit.policy.rules import Streak, streak_is_failure

ANSWERED, REFUSED, SILENT = "answered", "refused", "silent"
STALE_REPORTS = 3  # a report older than this many publishing periods is stale (its TTL)
FORGET_AFTER = 3600.0  # seconds of silence after which an old router's report is removed
RENEWAL_SLACK = 1.5  # renewal intervals after the last renewal an answer proves a stall
# Agent states in which a node cannot take over a handover (hakit.operator.commands refuses
# them too).
NOT_READY = frozenset({"INIT", "MANUAL", "FENCED", "STEPPING_DOWN"})


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def report_ttl(every: float) -> float:
    """The store TTL a router publishes its report with: ``STALE_REPORTS`` periods."""
    return STALE_REPORTS * every


@dataclass(frozen=True, slots=True)
class LeaseSeen:
    """What a router's view of the store showed of the lease at one moment, in terms
    that need no shared clock: the lease's ``epoch`` and ``revision``, the seconds of
    validity ``left`` (the store's judgement at the read less the time elapsed since
    on the router's clock; <= 0: expired, or no lease) and for how many seconds the
    view had shown that epoch and revision (``shown``, the router's clock: a lower
    bound of the time since that grant or renewal)."""

    epoch: int = 0
    revision: int = 0
    left: float = 0.0
    shown: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "revision": self.revision,
            "left": self.left,
            "shown": self.shown,
        }

    @classmethod
    def from_json(cls, raw: object) -> LeaseSeen | None:
        if not isinstance(raw, Mapping):
            return None
        try:
            return cls(
                int(raw.get("epoch") or 0),
                int(raw.get("revision") or 0),
                float(raw.get("left") or 0.0),
                float(raw.get("shown") or 0.0),
            )
        except (TypeError, ValueError):
            return None


def lease_seen(lease: Lease | None, left: float, shown: float) -> LeaseSeen:
    """The stamp for a router's view showing ``lease`` with ``left`` seconds of validity,
    that epoch and revision shown for ``shown`` seconds (no lease: epoch 0, expired)."""
    if lease is None:
        return LeaseSeen()
    return LeaseSeen(lease.epoch, lease.revision, left, max(0.0, shown))


# --- the reports ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sight:
    """One router's view of one node (see the module doc)."""

    answered_at: float | None = None
    checked_at: float | None = None
    failure: str | None = None  # None (answered), REFUSED or SILENT
    failing_since: float | None = None
    failures: int = 0
    detail: str = ""
    in_flight: int = 0  # requests in flight from this router to the node now
    draining: bool = False  # this router sees the node draining
    # The router's view of the lease when the last answered check was sent (None: an
    # older router's report, or never answered).
    answered_lease: LeaseSeen | None = None

    @property
    def reachable(self) -> bool:
        """The last check reached the node's host (the app answered, or the host refused)."""
        return self.checked_at is not None and self.failure in (None, REFUSED)

    def as_json(self) -> dict[str, Any]:
        return {
            "answered_at": self.answered_at,
            "checked_at": self.checked_at,
            "failure": self.failure,
            "failing_since": self.failing_since,
            "failures": self.failures,
            "detail": self.detail,
            "in_flight": self.in_flight,
            "draining": self.draining,
            "answered_lease": (
                self.answered_lease.as_json() if self.answered_lease is not None else None
            ),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Sight:
        failure = raw.get("failure")
        return cls(
            _number(raw.get("answered_at")),
            _number(raw.get("checked_at")),
            failure if failure in (REFUSED, SILENT) else None,
            _number(raw.get("failing_since")),
            int(raw.get("failures") or 0),
            str(raw.get("detail") or ""),
            int(raw.get("in_flight") or 0),
            raw.get("draining") is True,
            LeaseSeen.from_json(raw.get("answered_lease")),
        )


@dataclass(frozen=True, slots=True)
class PathReport:
    router: str
    at: float  # the router's wall time when the report was written
    every: float  # the router publishes at least this often
    check_every: float  # longest gap between two completed checks of an answering node
    nodes: Mapping[str, Sight]
    lease: LeaseSeen | None = None  # the router's view of the lease at ``at``
    # Published with a store TTL (report_ttl): present in the store means fresh. False: an
    # older router's report, judged on its ``at`` (see the module doc).
    expiring: bool = False

    def fresh(self, now: float) -> bool:
        """Says something about the present. A report with a store TTL the store returned
        is fresh (the store's clock judged it); an older router's report is fresh when
        written within ``STALE_REPORTS`` periods of the reader's ``now``."""
        if self.expiring:
            return True
        return now - self.at <= report_ttl(self.every)

    def sees_now(self, node: str) -> Sight | None:
        """``node``'s sight if its last check is recent enough to speak for the present."""
        sight = self.nodes.get(node)
        if sight is None or sight.checked_at is None:
            return None
        if self.at - sight.checked_at > 2 * self.check_every + self.every:
            return None
        return sight

    def as_json(self) -> dict[str, Any]:
        return {
            "router": self.router,
            "at": self.at,
            "every": self.every,
            "check_every": self.check_every,
            "nodes": {name: sight.as_json() for name, sight in sorted(self.nodes.items())},
            "lease": self.lease.as_json() if self.lease is not None else None,
            "expiring": self.expiring,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PathReport:
        nodes = raw.get("nodes")
        return cls(
            str(raw["router"]),
            float(raw["at"]),
            float(raw["every"]),
            float(raw.get("check_every") or raw["every"]),
            {
                str(name): Sight.from_json(sight)
                for name, sight in (nodes.items() if isinstance(nodes, dict) else ())
                if isinstance(sight, dict)
            },
            LeaseSeen.from_json(raw.get("lease")),
            raw.get("expiring") is True,
        )


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _stored_reports(
    state: Mapping[str, Mapping[str, Any]],
) -> Iterator[tuple[str, Mapping[str, Any], PathReport]]:
    """(key, stored value, report) of each router's report, by key; malformed ones skipped."""
    for key, value in sorted(state.items()):
        if not is_router_report(key):
            continue
        try:
            yield key, value, PathReport.from_json(value)
        except (KeyError, TypeError, ValueError):
            continue


def reports_in(state: Mapping[str, Mapping[str, Any]]) -> list[PathReport]:
    """The routers' reports in the cluster state (malformed ones are skipped)."""
    return [report for _, _, report in _stored_reports(state)]


def fresh_reports(reports: Iterable[PathReport], now: float) -> list[PathReport]:
    return [report for report in reports if report.fresh(now)]


def forgotten_reports(
    state: Mapping[str, Mapping[str, Any]], now: float, after: float = FORGET_AFTER
) -> list[tuple[str, Mapping[str, Any], PathReport]]:
    """The reports (key, stored value, report) of older routers silent for ``after``
    seconds: to remove.

    A report with a store TTL (``expiring``) vanishes by itself once its router stops
    publishing, by the store's clock: it is never returned. An older router's report
    has no TTL: a router that crashed, or was taken out of service with its host,
    leaves it behind for ever. Stale reports already say nothing
    (:meth:`PathReport.fresh`); removing them after an hour keeps the cluster state to
    the routers that exist. The value is returned so the removal can be a
    compare-and-delete: a router that came back and published meanwhile keeps its new
    report. Malformed reports cannot be dated and are left alone.
    """
    return [
        stored
        for stored in _stored_reports(state)
        if not stored[2].expiring and now - stored[2].at >= after
    ]


# --- a drain: requests still in flight to a node ------------------------------------------


def in_flight(node: str, reports: Iterable[PathReport], now: float) -> tuple[int, list[str]]:
    """(requests in flight to ``node``, the routers a drain of ``node`` still waits for).

    Counts the fresh reports (:meth:`PathReport.fresh`: present in the store, or an
    older router's written within ``STALE_REPORTS`` periods of ``now``) that know ``node``. A router is still busy while it has requests in flight to
    ``node``, or while it does not yet report ``node`` as draining: until then it may
    still send it new users, so a count of 0 from it proves nothing. The drain is
    over when no router is busy; with no fresh report at all (no router running)
    there is nothing to wait for: (0, []). Routers in report order.
    """
    total, busy = 0, []
    for report in reports:
        if not report.fresh(now):
            continue
        sight = report.nodes.get(node)
        if sight is None:
            continue
        total += max(0, sight.in_flight)
        if sight.in_flight > 0 or not sight.draining:
            busy.append(report.router)
    return total, busy


# --- a standby about to take over an expired lease ----------------------------------------


@dataclass(frozen=True, slots=True)
class HolderVerdict:
    """May a standby take over the lease now? ``reason``: one sentence (empty when there is
    nothing worth recording); ``witness``: the router whose answer defers the takeover."""

    take_over: bool
    reason: str = ""
    witness: str | None = None


def heard_after_renewal(
    report: PathReport, sight: Sight, lease: Lease, *, ttl: float, renew: float
) -> bool:
    """``sight`` (of ``lease``'s holder, in ``report``) answered after the lease's last
    renewal plus ``RENEWAL_SLACK`` renewal intervals, or after the lease expired.

    Read from the stamp of the answered check (the router's view of the store when it
    was sent), never by comparing the router's ``answered_at`` with the store's lease
    times: the holder's epoch at a later revision (it renewed since this lease was
    read), or at this revision shown expired or shown for the slack already. An older
    router's report (no stamps) is judged the old way, ``answered_at`` against the
    renewal time derived from ``expires_at`` (they shared the store's machine)."""
    if sight.answered_at is None:
        return False
    if not report.expiring:
        return sight.answered_at >= lease.expires_at - ttl + RENEWAL_SLACK * renew
    seen = sight.answered_lease
    if seen is None or seen.epoch != lease.epoch:
        return False
    if seen.revision != lease.revision:
        return seen.revision > lease.revision
    return seen.left <= 0 or seen.shown >= RENEWAL_SLACK * renew


def too_old_to_tell(report: PathReport, sight: Sight, lease: Lease) -> bool:
    """``report`` cannot tell yet whether ``lease``'s holder outlived it: its last check of
    the holder answered, but the report predates the expiry (its router's view did not
    show the lease expired yet; an older router's: written before ``expires_at``)."""
    if sight.failure is not None:
        return False
    if not report.expiring:
        return report.at < lease.expires_at
    seen = report.lease
    if seen is None or seen.epoch < lease.epoch:
        return True
    return seen.epoch == lease.epoch and (seen.revision < lease.revision or seen.left > 0)


def judge_holder(
    lease: Lease | None,
    reports: Iterable[PathReport],
    now: float,
    *,
    ttl: float,
    renew: float,
    patience: float,
) -> HolderVerdict:
    """Is the holder of the expired ``lease`` dead (take over) or only its agent stalled?

    ``now``: the reader's wall clock, for older routers' reports only (see the module
    doc); ``lease`` as the store answered it (``remaining``: its judgement)."""
    if lease is None or lease.valid:
        return HolderVerdict(True)  # released, never held, or valid: the store decides
    holder, expired = lease.holder, -lease.remaining  # the store's judgement at the read
    seeing = [r for r in fresh_reports(reports, now) if holder in r.nodes]
    if not seeing:
        return HolderVerdict(True, f"no fresh router report on {holder}: the lease alone decides")
    answers = [
        (report, sight)
        for report in seeing
        if heard_after_renewal(report, sight := report.nodes[holder], lease, ttl=ttl, renew=renew)
    ]
    if answers:
        # The router that heard it last before its own report (one clock's difference).
        report, sight = min(answers, key=lambda pair: pair[0].at - (pair[1].answered_at or 0.0))
        assert sight.answered_at is not None
        before = max(0.0, report.at - sight.answered_at)
        heard = (
            f"lease of {holder} (epoch {lease.epoch}) expired {expired:.1f} s ago but router "
            f"{report.router} got an answer from it after its last renewal "
            f"({before:.1f} s before its last report)"
        )
        if expired >= patience:
            return HolderVerdict(
                True,
                f"{heard}; its agent has been silent longer than the detection patience "
                f"({patience:g} s): taking over on the lease alone",
                report.router,
            )
        return HolderVerdict(
            False, f"{heard}: an agent stall, not a death; not taking over", report.router
        )
    if any(too_old_to_tell(report, report.nodes[holder], lease) for report in seeing):
        # No answer since the renewal and no failure either, from before the expiry:
        # too old to tell; the next report (one publishing period) will. Bounded by the
        # patience, as a stall is.
        if expired < patience:
            return HolderVerdict(False)
        return HolderVerdict(
            True,
            f"lease of {holder} (epoch {lease.epoch}) expired {expired:.1f} s ago and no router "
            f"report since tells whether it answers, past the detection patience "
            f"({patience:g} s): taking over on the lease alone",
        )
    routers = ", ".join(report.router for report in seeing)
    return HolderVerdict(
        True,
        f"lease of {holder} (epoch {lease.epoch}) expired {expired:.1f} s ago and no router "
        f"({routers}) got an answer from it since {RENEWAL_SLACK:g} renewal intervals after "
        "its last renewal: the node is dead or cut off",
    )


# --- the active node's path from the routers ----------------------------------------------


@dataclass(frozen=True, slots=True)
class PathLoss:
    target: str  # the standby to hand over to
    reason: str  # one sentence naming the routers and times
    routers: tuple[str, ...]


def _streak(sight: Sight) -> Streak | None:
    if sight.failure is None or sight.failing_since is None:
        return None
    state = AppState.DOWN if sight.failure == REFUSED else AppState.TIMEOUT
    return Streak(state, sight.failures, sight.failing_since)


def path_lost(
    me: str,
    reports: Iterable[PathReport],
    candidates: Sequence[str],
    now: float,
    *,
    fall: int,
    patience: float,
    answering_since: float | None = None,
) -> PathLoss | None:
    """Should ``me`` (active, its app RUNNING locally) hand over to a standby the routers reach?

    ``candidates``: standbys able to take over, in preference order (handover_candidates).
    ``answering_since``: wall time since which the app has answered locally without a
    break (None: unknown, the routers' streaks alone decide). A router's failures from
    before then say nothing about the path: the app was not up yet (refused while it
    started, e.g. after a promotion) or this node was frozen (silent). Such a streak
    counts only once a check failed after that time and the patience has passed since.
    """
    fresh = fresh_reports(reports, now)
    if not fresh:
        return None  # no router speaks: nothing to go on
    lost = []
    for report in fresh:
        sight = report.nodes.get(me)
        streak = _streak(sight) if sight is not None else None
        # A streak's span is measured on its router's clock, up to its report (an older
        # router's report: up to the reader's now, the old way).
        at = report.at if report.expiring else now
        if streak is None or not streak_is_failure(streak, fall, patience, at):
            return None  # this router still reaches me (or has not given up yet)
        assert sight is not None
        if answering_since is not None and not _failing_since_answering(
            report, sight, streak, now, answering_since, patience
        ):
            return None
        lost.append((report, sight))
    for target in candidates:
        if all(
            (sight := report.sees_now(target)) is not None and sight.reachable for report in fresh
        ):
            break
    else:
        return None  # the routers reach no standby either: their own network is the problem
    words = "; ".join(
        f"router {report.router} has not reached {me} since {clock(sight.failing_since or now)} "
        f"({sight.failures} {sight.failure} checks in a row; last: {sight.detail})"
        for report, sight in lost
    )
    return PathLoss(
        target,
        f"{words}; the app on {me} answers locally and {target} is reachable from "
        f"{'that router' if len(fresh) == 1 else 'those routers'}: handing over to {target}",
        tuple(report.router for report, _ in lost),
    )


def _failing_since_answering(
    report: PathReport,
    sight: Sight,
    streak: Streak,
    now: float,
    answering_since: float,
    patience: float,
) -> bool:
    """The router's failing streak counts although the app answers here since
    ``answering_since`` (the agent's clock): it began after that, or a check failed after
    that and the app has answered for the patience.

    With a stamped report the times are compared as durations: how long before its
    report the router saw the streak begin and the last check fail (its clock), plus at
    most the report's TTL (how old a report the store still returns can be), against
    how long the app has answered (the agent's clock). When it cannot tell, the streak
    began before (no handover: the safe side)."""
    if not report.expiring:  # an older router's report: its times against the agent's
        if streak.first_at >= answering_since:
            return True
        if sight.checked_at is None or sight.checked_at < answering_since:
            return False  # no check of this router has failed since the app answers here
        return now - answering_since >= patience
    answering_for = now - answering_since
    slack = report_ttl(report.every)
    if report.at - streak.first_at + slack < answering_for:
        return True  # the streak surely began after the app answered here
    if sight.checked_at is None or report.at - sight.checked_at + slack >= answering_for:
        return False  # no check surely failed since the app answers here
    return answering_for >= patience  # failing since then, for the patience


def handover_candidates(
    me: str,
    nodes: Sequence[tuple[str, bool]],
    records: Mapping[str, NodeRecord],
    now: float,
    *,
    alive_within: float,
) -> list[str]:
    """Standbys that could take a handover now, in config order.

    ``nodes``: (name, nofailover) of every configured node. A candidate's agent
    published within ``alive_within`` seconds and is not in a state that refuses a
    handover (the same ones hakit.operator.commands refuses).
    """
    found = []
    for name, no_failover in nodes:
        record = records.get(name)
        if name == me or no_failover or record is None:
            continue
        if record.role != "standby" or record.age > alive_within:  # the store's clock
            continue
        if str(record.detail.get("policy", "")) in NOT_READY:
            continue
        found.append(name)
    return found
