"""The cluster as it is now, for what the history cannot say (``hakit why`` while the
cluster is paused, ``hakit status``): what a node's record says now, and the pause.

A node record older than the lease TTL is a lost node, whatever it last claimed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.history.kinds import EventKind
from hakit.history.reading import Clock

SERVING_STATES = frozenset({"RUNNING", "FIRST_RUN"})
_FAILING_STATES = frozenset({"ERROR", "DOWN", "TIMEOUT", "NOT_DEPLOYED"})
_WAITING_STATES = frozenset({"STARTING", "STOPPING", "MAINTENANCE"})


@dataclass(frozen=True, slots=True)
class NodeCondition:
    """What a node's record says now: its own words, unless its agent went silent."""

    role: str  # "active", "standby", "stopped" (agent shut down), "lost", "unknown" (never)
    state: str  # the app state it reported; "unknown" when lost, "-" when never reported
    lost: bool  # the record is older than the lease TTL: the agent is dead, frozen or cut off
    age: float | None  # seconds since the record was written (None: never)
    style: str  # Rich style for the role and state ("" for plain)


def node_condition(record: NodeRecord | None, now: float, ttl: float) -> NodeCondition:
    """The role and app state to show for ``record`` at ``now``.

    A live agent rewrites its record every ``renew_interval`` (well under the
    lease TTL), so a record older than ``ttl`` is a lost node: a killed agent's
    last words ("active", "RUNNING") stay in the store and would otherwise be
    shown as the truth. A record its agent wrote on shutdown ("stopped") is not lost.

    The record's age is the store's (``NodeRecord.age``, by the store's clock at the
    read), never ``now`` (the reader's clock) against ``updated_at`` (the publisher's):
    hosts need not share a clock. ``now`` is the time the records were read, kept for
    the callers' sake.
    """
    if record is None:
        return NodeCondition("unknown", "-", False, None, "dim")
    age = max(0.0, record.age)
    if record.role == "stopped":
        return NodeCondition("stopped", record.app_state or "-", False, age, "dim")
    if age > ttl:
        return NodeCondition("lost", "unknown", True, age, "bold red")
    state = record.app_state or "-"
    if state in _FAILING_STATES:
        style = "red"
    elif state in _WAITING_STATES:
        style = "yellow"
    elif state in SERVING_STATES and record.role == "active":
        style = "green"
    else:
        style = ""
    return NodeCondition(record.role or "unknown", state, False, age, style)


@dataclass(frozen=True, slots=True)
class ClusterNow:
    """The cluster as read at ``time``, for what the history cannot say."""

    time: float
    lease_ttl: float
    nodes: tuple[str, ...]  # the configured nodes, in config order
    records: Mapping[str, NodeRecord] = field(default_factory=dict)
    lease: Lease | None = None  # as stored (may be expired)
    paused: Mapping[str, Any] | None = None  # the stored pause while paused, else None
    active_active: bool = False  # every node serves; no lease decides who


def explain_pause(history: Sequence[Event], now: ClusterNow, tz: tzinfo | None) -> list[str]:
    """The paused cluster: since when, by whom and why; what is wrong now; what was held."""
    paused = now.paused or {}
    since = float(paused.get("at") or now.time)
    when = datetime.fromtimestamp(since, tz).strftime("%Y-%m-%d %H:%M:%S")
    by = paused.get("actor") or "an operator"
    reason = paused.get("reason") or "no reason given"
    lines = [
        f"the cluster is paused since {when} ({span(now.time - since)} ago) by {by} "
        f"({reason}): agents keep monitoring and reporting but take no action (no restart, "
        "no failover, no start) until `hakit resume`"
    ]
    conditions = {
        name: node_condition(now.records.get(name), now.time, now.lease_ttl) for name in now.nodes
    }
    problems = _problems(now, conditions, tz)
    if problems:
        lines.append("now: " + "; ".join(problems))
    else:
        lines.append("now: nothing looks wrong (the pause holds back only what would be needed)")
    lines += [f"  {name}: {_node_words(name, conditions[name], now)}" for name in now.nodes]
    held = [e for e in history if e.kind == EventKind.PAUSED and e.time >= since]
    if held:
        clock = Clock(history, tz)
        lines.append(f"held back since the pause ({len(held)}; the last per node):")
        last: dict[str, Event] = {}
        for event in held:
            last[event.node] = event
        lines += [clock.line(e) for e in sorted(last.values(), key=lambda e: e.id)]
    if problems:
        lines.append(
            "  nothing changes until someone acts: fix it by hand, or `hakit resume -r WHY` "
            "and the agents act on it"
        )
    return lines


def _problems(
    now: ClusterNow, conditions: Mapping[str, NodeCondition], tz: tzinfo | None
) -> list[str]:
    """What is wrong now, most important first (empty: nothing)."""
    found = []
    serving = [n for n, c in conditions.items() if not c.lost and c.state in SERVING_STATES]
    if not serving:
        found.append("no node is RUNNING")
    if not now.active_active:  # the other modes serve from the lease holder only
        found += _lease_problems(now.lease, conditions, now.time, tz)
    lost = [n for n, c in conditions.items() if c.lost]
    if lost:
        found.append(f"lost: {', '.join(lost)}")
    return found


def _lease_problems(
    lease: Lease | None, conditions: Mapping[str, NodeCondition], now: float, tz: tzinfo | None
) -> list[str]:
    if lease is None:
        return ["no node has ever held the leader lease"]
    if not lease.valid:
        expired = datetime.fromtimestamp(lease.expires_at, tz).strftime("%Y-%m-%d %H:%M:%S")
        return [
            f"no node holds the leader lease ({lease.holder}'s of epoch {lease.epoch} "
            f"expired at {expired})"
        ]
    holds = f"{lease.holder} holds the leader lease (epoch {lease.epoch})"
    holder = conditions.get(lease.holder)
    if holder is not None and holder.lost:
        return [f"{holds} but its agent is silent"]
    if holder is not None and holder.state not in SERVING_STATES:
        return [f"{holds} but its app is {holder.state}"]
    return []


def _node_words(name: str, condition: NodeCondition, now: ClusterNow) -> str:
    age = condition.age
    record = now.records.get(name)
    if age is None or record is None:
        return "no agent has reported"
    if condition.lost:
        return (
            f"lost: its agent has not reported for {span(age)} (more than lease_ttl "
            f"{now.lease_ttl:g}s); it last said {record.role}, app {record.app_state}"
        )
    if condition.role == "stopped":
        return f"stopped: its agent shut down {span(age)} ago"
    return f"{condition.role}, app {condition.state} (reported {age:.1f}s ago)"


def span(seconds: float) -> str:
    """A duration in words a human reads at a glance: 42s, 5m 3s, 2h 3m, 3d 4h."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
