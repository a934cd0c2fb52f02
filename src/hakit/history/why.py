"""``hakit why``: from the event history, why the last failover did or did not happen.

A pure function over the coordination store's events (oldest first) returning
lines: a headline, then a short timeline. It reads what the agents recorded:

- who held the lease under which epoch: every event an agent records carries
  the epoch it acts under, so the first event with a new epoch marks a new
  active node (a *term*);
- why a term ended: the old active's ``failover`` event (it stepped down, the
  cause is in its reason or in the alert just before), a ``lease`` event (lost
  the lease and fenced itself, or released it on shutdown), an operator's
  action, or nothing at all (the node was lost with its agent);
- the alerts that did not end in a failover (a restart, a database outage, a
  failed start, manual intervention): the policy words each reason, this
  module only arranges them;
- fencing (``fence`` events, recorded by the promoting node with the epoch it
  promotes under in ``data["epoch"]``, ``data["result"]`` ok / failed /
  skipped / not-needed / not-configured): a successful fence is part of the
  failover's story; a failed ``fence_command`` blocks the promotion, which is
  an incident of its own ("not failed over ...: fence_command for node1
  failed (exit 1), promotion waits").

While the cluster is paused, the history alone cannot tell the outage: agents
record only what they *would* have done. ``explain`` then also takes the
cluster as it is now (``ClusterNow``: the pause, the lease, the node records)
and says first that the cluster is paused (since when, by whom, why), what is
wrong now (no node RUNNING, no lease, a node whose agent went silent) and what
was held back. ``node_condition`` decides what a node record says now: a record
older than the lease TTL is a lost node, whatever it last claimed (``hakit
status`` shows nodes with it too).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.supervisor.leftovers import UNCLEAN_END

RESTART_KINDS = frozenset({"crash", "oom", "hang", "error"})
_FAILURE_KINDS = {*RESTART_KINDS, "failed-start"}

_LOST_LEASE = re.compile(r"lost the leader lease \(epoch (\d+)")
_SHUTDOWN = "released the lease on shutdown"
_STEP_DOWN_TAIL = re.compile(r"[:;] (stopping it, then )?stepping down so a standby takes over.*$")
_NTH_FAILURE = re.compile(r"(\d+)(?:st|nd|rd|th) failure within")
_RESTART_BUDGET = re.compile(r"restart (\d+) of (\d+) within ([^\s;)]+)")
_RETRY = re.compile(r"retry (\d+) of (\d+)")
_FAILED_STARTS = re.compile(r"(\d+) failed starts in a row \(restart_attempts = (\d+)\)")
_NOT_FAILING_OVER = re.compile(r"not failing over: ([^;]*)")
_NO_FAILOVER_BECAUSE = re.compile(r" and ((?:restart-only mode|this node is a standby)[^;:]*)")
_FORCE_HINT = "force with `hakit failover --force`"


@dataclass(frozen=True, slots=True)
class Term:
    """One node's time as the active node under one epoch."""

    node: str
    epoch: int
    index: int  # position of its first event in the history
    time: float


@dataclass(frozen=True, slots=True)
class Incident:
    time: float  # when it began: what ``--at`` selects by
    lines: tuple[str, ...]  # headline first, then indented timeline lines
    failover: bool  # the active role moved to another node


class _Clock:
    """Times as HH:MM:SS, with the date when the history spans several days."""

    def __init__(self, events: Sequence[Event], tz: tzinfo | None) -> None:
        self.tz = tz
        days = {datetime.fromtimestamp(e.time, tz).date() for e in events}
        self.pattern = "%Y-%m-%d %H:%M:%S" if len(days) > 1 else "%H:%M:%S"

    def __call__(self, seconds: float) -> str:
        return datetime.fromtimestamp(seconds, self.tz).strftime(self.pattern)

    def line(self, event: Event, text: str | None = None) -> str:
        return f"  {self(event.time)}  {text if text is not None else event.reason}"


# --- the public function ----------------------------------------------------------


def explain(
    events: Sequence[Event],
    at: float | None = None,
    tz: tzinfo | None = None,
    current: ClusterNow | None = None,
) -> list[str]:
    """Why the last failover (before ``at``, if given) did or did not happen.

    ``at`` counts whole seconds, as they are shown: 12:03:10 includes 12:03:10.9.
    ``tz`` is for the times shown (None: local time). ``current`` is the cluster as
    read now: while it is paused (and no ``at`` is asked), the pause and today's
    outage come first, the history's explanation after.
    """
    history = sorted(events, key=lambda e: e.id)
    clock = _Clock(history, tz)
    if current is not None and current.paused is not None and at is None:
        lines = explain_pause(history, current, tz)
        past = explain(history, tz=tz)
        return [*lines, f"from the history: {past[0]}", *past[1:]]
    if not history:
        return ["no events recorded yet: has an agent of this cluster run?"]
    limit = math.inf if at is None else (at if at % 1 else at + 1)
    incidents = [i for i in _incidents(history, clock) if i.time < limit]
    if not incidents:
        return [_quiet(history, limit, at, clock)]
    last = incidents[-1]
    lines = list(last.lines)
    earlier = [i for i in incidents if i.failover]
    if not last.failover and earlier:
        lines.append(f"last failover before that: {earlier[-1].lines[0]}")
    return lines


def parse_at(text: str, now: float, tz: tzinfo | None = None) -> float:
    """``--at``: "12:03", "12:03:10", "2026-11-22 12:03:10" (ISO) or Unix seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    today = datetime.fromtimestamp(now, tz)
    try:
        if re.fullmatch(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?", text):
            parts = [float(p) for p in text.split(":")] + [0.0]
            hour, minute, second = int(parts[0]), int(parts[1]), parts[2]
            moment = today.replace(hour=hour, minute=minute, second=0, microsecond=0)
            return moment.timestamp() + second
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=today.tzinfo)).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time; expected HH:MM[:SS] (today), "
            '"YYYY-MM-DD HH:MM[:SS]" or Unix seconds'
        ) from None


# --- the cluster as it is now ---------------------------------------------------------

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
    """
    if record is None:
        return NodeCondition("unknown", "-", False, None, "dim")
    age = max(0.0, now - record.updated_at)
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
        f"the cluster is paused since {when} ({_span(now.time - since)} ago) by {by} "
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
    held = [e for e in history if e.kind == "paused" and e.time >= since]
    if held:
        clock = _Clock(history, tz)
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
            f"lost: its agent has not reported for {_span(age)} (more than lease_ttl "
            f"{now.lease_ttl:g}s); it last said {record.role}, app {record.app_state}"
        )
    if condition.role == "stopped":
        return f"stopped: its agent shut down {_span(age)} ago"
    return f"{condition.role}, app {condition.state} (reported {age:.1f}s ago)"


def _span(seconds: float) -> str:
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


# --- reading the history -------------------------------------------------------------


def terms(history: Sequence[Event]) -> list[Term]:
    """Who was active under which epoch, in order (epochs only grow)."""
    found: list[Term] = []
    highest = 0
    for index, event in enumerate(history):
        if event.epoch > highest and event.node:
            highest = event.epoch
            found.append(Term(event.node, event.epoch, index, event.time))
    return found


def _incidents(history: Sequence[Event], clock: _Clock) -> list[Incident]:
    found: list[Incident] = []
    used: set[int] = set()  # the events that ended a term a takeover explains
    all_terms = terms(history)
    for prev, term in zip(all_terms, all_terms[1:], strict=False):
        found.append(_takeover(history, prev, term, used, clock))
    found += _blocked_promotions(history, all_terms, clock)
    for index, event in enumerate(history):
        if index in used:
            continue
        incident = _alert(history, index, clock) if event.kind == "alert" else None
        incident = incident or _orphan_end(history, index, clock)
        if incident is not None:
            found.append(incident)
    return sorted(found, key=lambda i: i.time)


def _end_of_term(history: Sequence[Event], prev: Term, term: Term) -> int | None:
    """The index of the event in which ``prev``'s node gave up its term, if it recorded one."""
    for index in range(prev.index, len(history)):
        event = history[index]
        if index > term.index and event.time > term.time + 60:
            break  # the old node's word would come at once, not a minute later
        if event.node != prev.node:
            if _operator_move(event) and index < term.index:
                return index  # a switchover / forced failover: the operator's own event
            continue
        lost = _LOST_LEASE.search(event.reason)
        if event.kind == "failover" and event.epoch == prev.epoch:
            return index
        if lost is not None and int(lost.group(1)) == prev.epoch:
            return index  # a "stop" (app killed), or a "lease" record when no app ran
        if event.kind == "lease" and _SHUTDOWN in event.reason and event.epoch == prev.epoch:
            return index
    return None


def _takeover(
    history: Sequence[Event], prev: Term, term: Term, used: set[int], clock: _Clock
) -> Incident:
    end = _end_of_term(history, prev, term)
    if end is not None and end > term.index and not _operator_move(history[end]):
        # Its word came after the takeover: it was frozen or cut off while its lease ran
        # out, and fenced itself on coming back (told as such below).
        end = None
    old, new = prev.node, term.node
    epochs = f"(epoch {prev.epoch} → {term.epoch})"
    timeline: list[tuple[float, str]] = []  # (when, line), told in time order
    started, since = term.time, "the takeover"
    if end is None and old == new:
        cause = f"its lease of epoch {prev.epoch} lapsed"
    elif end is None:
        cause = _silent_end(history, term.index, old)
        heard = [e for e in history[prev.index : term.index] if e.node == old]
        if heard:
            last = heard[-1]
            timeline.append((last.time, clock.line(last, f"last heard from {old}: {last.reason}")))
    else:
        used.add(end)
        cause, detail, started = _cause(history, prev, end, clock)
        timeline += detail
        since = f"{old} gave up" if old != new else "it lost the lease"
        if _operator_move(history[end]):
            since = "the operator's command"
    fences, fenced = _fence_story(history, prev, term, clock)
    timeline += fences
    timeline += _woke_and_fenced(history, prev, term, end, used, clock)
    timeline.append((term.time, clock.line(history[term.index])))
    timeline += _outcome(history, term, started, since, clock)
    lines = [line for _, line in sorted(timeline, key=lambda entry: entry[0])]
    if old == new:
        headline = (
            f"no failover at {clock(term.time)}: {new} took the lease again {epochs} after {cause}"
        )
        return Incident(started, (headline, *lines), failover=False)
    verb = "handed over to" if end is not None and _planned(history[end]) else "failed over to"
    headline = f"{old} {verb} {new} at {clock(term.time)} {epochs}: {cause}{fenced}"
    return Incident(started, (headline, *lines), failover=True)


def _silent_end(history: Sequence[Event], takeover: int, old: str) -> str:
    """Why ``old``'s lease expired without a word: what its next agent found on starting
    (hakit.supervisor.leftovers: the pid file its predecessor left) tells an agent's death on a host
    that stayed up from the loss of the whole node."""
    came_back = next(
        (
            event
            for event in history[takeover:]
            if event.node == old and event.kind == "agent" and event.data.get(UNCLEAN_END)
        ),
        None,
    )
    if came_back is None:
        return (
            f"{old}'s lease expired without a word from its agent: the node was lost "
            "(agent and app gone together), its agent died, or it was cut off from the "
            "coordination store (no agent has come back on it yet to tell)"
        )
    pid = came_back.data.get("previous_agent_pid")
    agent = f"its agent (pid {pid})" if isinstance(pid, int) else "its agent"
    if came_back.data.get("rebooted"):
        return (
            f"{old} was lost: its host went down with {agent} and app (it restarted since), "
            "so the lease expired"
        )
    return (
        f"{agent} on {old} died (killed or crashed) while the host stayed up; the app's "
        "shim stopped the app with it, and the lease expired"
    )


# --- fencing -----------------------------------------------------------------------------


def _fence_epoch(event: Event) -> int:
    """The epoch a ``fence`` event's promotion was for (0: unknown)."""
    value = event.data.get("epoch", 0)
    return value if isinstance(value, int) else 0


def _command_failed(event: Event) -> bool:
    """A fence_command that failed: the promotion did not happen. (A failure to end the
    database sessions also says "failed", but ran no command and blocks nothing.)"""
    return (
        event.kind == "fence" and event.data.get("result") == "failed" and "command" in event.data
    )


def _command_summary(event: Event) -> str:
    """The fence command's own account, as hakit.fencing.fence recorded it ("exited 0 after 0.3 s",
    "did not finish within fence_timeout 10 s (killed)"); empty if none was recorded."""
    summary = event.data.get("summary")
    return summary if isinstance(summary, str) else ""


def _command_words(event: Event) -> str:
    """How a fence command failed, short: "exit 1", "did not finish within ..."."""
    code = event.data.get("returncode")
    if isinstance(code, int) and code > 0:
        return f"exit {code}"
    if isinstance(code, int) and code < 0:
        return f"killed by signal {-code}"
    return _command_summary(event) or "see its output in the fence log"


def _fence_story(
    history: Sequence[Event], prev: Term, term: Term, clock: _Clock
) -> tuple[list[tuple[float, str]], str]:
    """The fencing before ``term``'s promotion: timeline lines and a headline suffix.

    Fence events carry the epoch they were for: ``term``'s own (the fencing that let
    it promote) and, before it, attempts under epochs that were given back because
    their fence_command failed (the promotion waited).
    """
    mine: list[Event] = []
    failed: list[Event] = []
    for event in history[prev.index :]:
        if event.time > term.time + 60:
            break  # fencing comes just before (a forced takeover: just after) the new term
        if event.kind != "fence" or not prev.epoch < _fence_epoch(event) <= term.epoch:
            continue
        if _command_failed(event) and _fence_epoch(event) < term.epoch:
            failed.append(event)
        elif event.node == term.node and _fence_epoch(event) == term.epoch:
            mine.append(event)
    lines = []
    if failed:
        first, last = failed[0], failed[-1]
        lines.append((first.time, clock.line(first)))
        if len(failed) > 1:
            lines.append(
                (
                    last.time,
                    f"  {clock(last.time)}  {len(failed)} fence attempts failed since "
                    f"{clock(first.time)} (last: {_command_words(last)}): the promotion waited",
                )
            )
    lines += [(event.time, clock.line(event)) for event in mine]
    suffix = ""
    for event in mine:
        target, result = event.data.get("target", "?"), event.data.get("result")
        if result == "ok" and "command" in event.data:
            summary = _command_summary(event)
            how = f" (the fence command {summary})" if summary else ""
            suffix += f"; {target} fenced first{how}"
        elif result == "skipped":
            suffix += f"; {target} not fenced: the operator forced the promotion"
    return lines, suffix


def _woke_and_fenced(
    history: Sequence[Event],
    prev: Term,
    term: Term,
    end: int | None,
    used: set[int],
    clock: _Clock,
) -> list[tuple[float, str]]:
    """The old node coming back after the takeover and fencing itself (frozen, then woke)."""
    for index in range(term.index + 1, len(history)):
        event = history[index]
        if event.time > term.time + 60:
            break
        lost = _LOST_LEASE.search(event.reason)
        if (
            index != end
            and event.node == prev.node
            and event.kind in ("stop", "lease")
            and lost is not None
            and int(lost.group(1)) == prev.epoch
        ):
            used.add(index)  # not a lost lease nobody followed: this takeover explains it
            words = event.reason.split("; ")[0]
            return [(event.time, clock.line(event, f"{words}; it killed its app (self-fencing)"))]
    return []


def _blocked_promotions(
    history: Sequence[Event], all_terms: Sequence[Term], clock: _Clock
) -> list[Incident]:
    """A failed fence_command: the standby did not promote. One incident per run of
    failures of one node fencing another, until the next term begins."""
    runs: dict[tuple[str, str, int], list[Event]] = {}
    for index, event in enumerate(history):
        if _command_failed(event):
            following = next((t.index for t in all_terms if t.index > index), -1)
            key = (event.node, str(event.data.get("target", "?")), following)
            runs.setdefault(key, []).append(event)
    found = []
    for (node, target, following), failures in runs.items():
        first, last = failures[0], failures[-1]
        when = clock(first.time)
        failed = f"fence_command for {target} failed ({_command_words(first)})"
        lines = [clock.line(first)]
        if len(failures) > 1:
            lines.append(
                f"  {clock(last.time)}  {len(failures)} fence attempts failed since {when} "
                f"(last: {_command_words(last)})"
            )
        if following < 0:
            headline = (
                f"not failed over at {when}: {failed}, promotion of {node} waits; {_FORCE_HINT}"
            )
            lines.append(
                f"  no node promotes until the fence command succeeds or {target}'s agent "
                "comes back and stands down (it fences itself)"
            )
        else:
            then = history[following]
            outcome = (
                f"promotion of {node} waited until {clock(then.time)}"
                if then.node == node
                else f"{node} did not promote ({then.node} took the lease at {clock(then.time)})"
            )
            headline = f"not failed over at {when}: {failed}, {outcome}"
            lines.append(clock.line(then))
        found.append(Incident(first.time, (headline, *lines), failover=False))
    return found


def _planned(event: Event) -> bool:
    """A handover rather than a failover: a shutdown or an operator's switchover."""
    return _SHUTDOWN in event.reason or (_operator_move(event) and event.kind == "switchover")


def _operator_move(event: Event) -> bool:
    return event.actor.startswith("operator:") and event.kind in ("switchover", "failover")


def _cause(
    history: Sequence[Event], prev: Term, end: int, clock: _Clock
) -> tuple[str, list[tuple[float, str]], float]:
    """(cause in words, timeline lines, when the end began) for a term its node ended."""
    event = history[end]
    line = [(event.time, clock.line(event))]
    if _operator_move(event):
        who = event.actor.partition(":")[2]
        return f"{event.kind} by operator {who}: {event.reason}", line, event.time
    if event.kind == "lease" and _SHUTDOWN in event.reason:
        return f"the agent on {prev.node} was shut down and released the lease", line, event.time
    if _LOST_LEASE.search(event.reason):
        cause = event.reason.split("; ")[0]
        return f"{cause}; it killed its app (self-fencing)", line, event.time
    # A step-down: the failure that used up the restart budget is in this event's reason
    # (process gone) or in the alert that stopped the app first (process alive).
    failures = _failures(history, prev.node, prev.index, end)
    trigger = next((i for i in reversed(failures) if "stepping down" in history[i].reason), None)
    cause_event = history[trigger] if trigger is not None else event
    # Show the failures that counted: "3rd failure within 5m" -> the two before it.
    counted = _NTH_FAILURE.search(cause_event.reason)
    keep = int(counted.group(1)) - 1 if counted else 2
    earlier = [i for i in failures if i != trigger][-keep:] if keep > 0 else []
    lines = [(history[i].time, clock.line(history[i])) for i in earlier]
    lines.append((cause_event.time, clock.line(cause_event)))
    if trigger is not None:
        lines.append((event.time, clock.line(event)))
    # The restarts before stay incidents of their own: ``--at`` may ask about one of them.
    return _STEP_DOWN_TAIL.sub("", cause_event.reason), lines, cause_event.time


def _failures(history: Sequence[Event], node: str, start: int, stop: int) -> list[int]:
    """Indexes of ``node``'s failure alerts (crash, hang, failed start...) in [start, stop)."""
    return [
        i
        for i in range(start, stop)
        if history[i].kind == "alert"
        and history[i].node == node
        and history[i].data.get("alert") in _FAILURE_KINDS
    ]


def _outcome(
    history: Sequence[Event], term: Term, started: float, since: str, clock: _Clock
) -> list[tuple[float, str]]:
    """Did the new active serve? Its first RUNNING (or an already running warm standby)."""
    for event in history[term.index :]:
        if event.node != term.node:
            continue
        if event.epoch and event.epoch != term.epoch:
            break
        if event.kind == "running" or "already running" in event.reason:
            took = f" ({event.time - started:.1f}s after {since})"
            return [(event.time, clock.line(event, f"{term.node} serving: {event.reason}{took}"))]
        if event.kind == "alert":
            return [(event.time, clock.line(event))]
    return [(math.inf, f"  {term.node} has not reported RUNNING since")]


def _orphan_end(history: Sequence[Event], index: int, clock: _Clock) -> Incident | None:
    """A step-down or lost lease no other node followed (no takeover explained it)."""
    event = history[index]
    # An operator's failover records "failover" events too (asked, took, complete): not a
    # step-down, the takeover they belong to tells them.
    if event.kind == "failover" and not event.actor.startswith("operator:"):
        headline = (
            f"no failover at {clock(event.time)}: {event.node} stepped down (epoch {event.epoch}) "
            "but no other node has taken the lease since: are the other agents running?"
        )
        return Incident(event.time, (headline, clock.line(event)), failover=False)
    if event.kind in ("lease", "stop") and _LOST_LEASE.search(event.reason):
        headline = (
            f"no failover at {clock(event.time)}: {event.reason.split('; ')[0]}; "
            "no other node has taken the lease since"
        )
        return Incident(event.time, (headline, clock.line(event)), failover=False)
    return None


# --- alerts that were not a failover ---------------------------------------------------


def _alert(history: Sequence[Event], index: int, clock: _Clock) -> Incident | None:
    event = history[index]
    kind = str(event.data.get("alert", ""))
    manual = bool(event.data.get("manual_intervention", False))
    reason = event.reason
    what = reason.split("; ")[0]
    when = clock(event.time)
    if kind in ("failover", "fence") or "stepping down" in reason:
        return None  # explained with the takeover (or its absence) it belongs to
    lines: list[str]
    if kind == "database":
        nodes = sorted(
            {
                e.node
                for e in history
                if e.kind == "alert"
                and e.data.get("alert") == "database"
                and abs(e.time - event.time) < 60
            }
        )
        lines = [
            f"not failed over at {when}: database unreachable from {' and '.join(nodes)} "
            "→ database outage, alert sent",
            clock.line(event),
            "  a database outage is never a reason to restart or fail over: a standby "
            "would fail the same way",
        ]
        lines += _recovery(history, index, clock)
        return Incident(event.time, tuple(lines), failover=False)
    if manual:
        return Incident(event.time, _manual(event, kind, what, when, clock), failover=False)
    if kind in RESTART_KINDS:
        budget = _RESTART_BUDGET.search(reason)
        restart = f" ({budget.group(0)})" if budget else ""
        headline = f"not failed over at {when}: {what} → restarted on {event.node} instead{restart}"
        lines = [headline, clock.line(event)]
        if budget:
            lines.append(
                f"  hakit fails over only once {budget.group(2)} restarts within "
                f"{budget.group(3)} did not help (restart_attempts = {budget.group(2)})"
            )
        return Incident(event.time, tuple(lines), failover=False)
    if kind == "failed-start":
        retry = _RETRY.search(reason)
        again = f" ({retry.group(0)})" if retry else ""
        headline = f"not failed over at {when}: {what} → retrying the start on {event.node}{again}"
        note = (
            "  by default a failed start does not fail over: another node would fail to start"
            ' the same way (failover.on_failed_start = "failover" changes that)'
        )
        return Incident(event.time, (headline, clock.line(event), note), failover=False)
    headline = f"alert at {when} on {event.node}: {reason}"
    return Incident(event.time, (headline,), failover=False)


def _manual(event: Event, kind: str, what: str, when: str, clock: _Clock) -> tuple[str, ...]:
    starts = _FAILED_STARTS.search(event.reason)
    if kind == "failed-start" and starts:
        summary = (
            f"app on {event.node} failed to start {starts.group(1)} times "
            f"(restart_attempts = {starts.group(2)}); last: {what}"
        )
    else:
        summary = what
    why_not = _NOT_FAILING_OVER.search(event.reason) or _NO_FAILOVER_BECAUSE.search(event.reason)
    lines = [f"no failover at {when}: {summary} → manual intervention required", clock.line(event)]
    if why_not:
        lines.append(f"  why no failover: {why_not.group(1)}")
    lines.append(
        f"  hakit has stopped acting on {event.node}: fix the cause, then restart its agent"
    )
    return tuple(lines)


def _recovery(history: Sequence[Event], index: int, clock: _Clock) -> list[str]:
    node = history[index].node
    for event in history[index + 1 :]:
        if event.node != node:
            continue
        if event.kind in ("status", "running") and re.search(r"RUNNING|FIRST_RUN", event.reason):
            return [clock.line(event, f"recovered: {event.reason}")]
        if event.kind in ("alert", "stop", "failover"):
            break
    return []


def _quiet(history: Sequence[Event], limit: float, at: float | None, clock: _Clock) -> str:
    seen = [e for e in history if e.time < limit]
    if not seen and at is not None:
        return f"no events at or before {clock(at)}"
    found = terms(seen)
    span = f"{clock(seen[0].time)} to {clock(seen[-1].time)}"
    if not found:
        return f"no failover and no alert from {span}; no node has been active"
    term = found[-1]
    return (
        f"no failover and no alert from {span}; {term.node} active since "
        f"{clock(term.time)} (epoch {term.epoch})"
    )
