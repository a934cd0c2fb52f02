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
(``check_every``). A report older than ``STALE_REPORTS`` publishing periods is
*stale*: that router is down or cut off from the store, and says nothing.

Three decisions read the reports, all pure (the caller passes ``now``, wall-clock
seconds, the clock the store's times use):

- :func:`judge_holder`: a standby about to take over an EXPIRED lease asks
  whether its holder is dead. Death needs both silences: the lease expired AND no
  fresh router got an answer from the node after its last renewal (plus one and
  a half renewal intervals: a node that died just after renewing may have
  answered a check in between). When a router still gets answers, the holder's
  agent is stalled, not dead: the standby defers, up to the detection patience
  (``health.timeout``) after the expiry; past it, the lease alone decides (an
  agent that crashed alone must not keep the cluster unsupervised for ever). With
  no fresh report at all (no router, or every router down) the lease alone
  decides, as without a data path. When the reports are too old to tell (written
  before the expiry, no check since the renewal) the standby waits for the next
  one: at most one publishing period.
- :func:`path_lost`: the active node's agent sees its own app RUNNING but every
  fresh router has failed to reach it for the detection patience (the ``fall``
  and ``health.timeout`` rules of hakit.policy.rules.streak_is_failure; failures from
  before its app answered locally, while it started or the node was frozen, count only
  once the routers keep failing for the patience after that) while some
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
STALE_REPORTS = 3  # a report older than this many publishing periods is stale
FORGET_AFTER = 3600.0  # seconds without a report after which a router's report is removed
RENEWAL_SLACK = 1.5  # renewal intervals after the last renewal an answer proves a stall
# Agent states in which a node cannot take over a handover (hakit.operator.commands refuses
# them too).
NOT_READY = frozenset({"INIT", "MANUAL", "FENCED", "STEPPING_DOWN"})


def clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


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
        )


@dataclass(frozen=True, slots=True)
class PathReport:
    router: str
    at: float  # wall time the report was written
    every: float  # the router publishes at least this often
    check_every: float  # longest gap between two completed checks of an answering node
    nodes: Mapping[str, Sight]

    def fresh(self, now: float) -> bool:
        return now - self.at <= STALE_REPORTS * self.every

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
    """The reports (key, stored value, report) of routers silent for ``after`` seconds:
    to remove.

    A router that stops removes its own report; one that crashed, or was taken out
    of service with its host, leaves it behind for ever. Stale reports already say
    nothing (:meth:`PathReport.fresh`); removing them after an hour keeps the
    cluster state to the routers that exist. The value is returned so the removal
    can be a compare-and-delete: a router that came back and published meanwhile
    keeps its new report. Malformed reports cannot be dated and are left alone.
    """
    return [stored for stored in _stored_reports(state) if now - stored[2].at >= after]


# --- a drain: requests still in flight to a node ------------------------------------------


def in_flight(
    node: str, reports: Iterable[PathReport], now: float, fresh_within: float
) -> tuple[int, list[str]]:
    """(requests in flight to ``node``, the routers a drain of ``node`` still waits for).

    Counts the reports written within ``fresh_within`` seconds of ``now`` (wall clock)
    that know ``node``. A router is still busy while it has requests in flight to
    ``node``, or while it does not yet report ``node`` as draining: until then it may
    still send it new users, so a count of 0 from it proves nothing. The drain is
    over when no router is busy; with no fresh report at all (no router running)
    there is nothing to wait for: (0, []). Routers in report order.
    """
    total, busy = 0, []
    for report in reports:
        if now - report.at > fresh_within:
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


def judge_holder(
    lease: Lease | None,
    reports: Iterable[PathReport],
    now: float,
    *,
    ttl: float,
    renew: float,
    patience: float,
) -> HolderVerdict:
    """Is the holder of the expired ``lease`` dead (take over) or only its agent stalled?"""
    if lease is None or lease.valid:
        return HolderVerdict(True)  # released, never held, or valid: the store decides
    holder, expired = lease.holder, -lease.remaining  # the store's judgement at the read
    seeing = [r for r in fresh_reports(reports, now) if holder in r.nodes]
    if not seeing:
        return HolderVerdict(True, f"no fresh router report on {holder}: the lease alone decides")
    after = lease.expires_at - ttl + RENEWAL_SLACK * renew
    answers = [
        (report, sight)
        for report in seeing
        if (sight := report.nodes[holder]).answered_at is not None and sight.answered_at >= after
    ]
    if answers:
        report, sight = max(answers, key=lambda pair: pair[1].answered_at or 0.0)
        assert sight.answered_at is not None
        ago = max(0.0, now - sight.answered_at)
        heard = (
            f"lease of {holder} (epoch {lease.epoch}) expired {expired:.1f} s ago but router "
            f"{report.router} got an answer from it {ago:.1f} s ago"
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
    if any(
        report.at < lease.expires_at and report.nodes[holder].failure is None for report in seeing
    ):
        # Written before the expiry with no answer since the renewal and no failure either:
        # too old to tell; the next report (one publishing period) will.
        return HolderVerdict(False)
    routers = ", ".join(report.router for report in seeing)
    return HolderVerdict(
        True,
        f"lease of {holder} (epoch {lease.epoch}) expired {expired:.1f} s ago and no router "
        f"({routers}) got an answer from it since {clock(after)}: the node is dead or cut off",
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
        if streak is None or not streak_is_failure(streak, fall, patience, now):
            return None  # this router still reaches me (or has not given up yet)
        assert sight is not None
        if answering_since is not None and streak.first_at < answering_since:
            if sight.checked_at is None or sight.checked_at < answering_since:
                return None  # no check of this router has failed since the app answers here
            if now - answering_since < patience:
                return None  # failing since the app answers here, but not for the patience
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
