"""``hakit why``: from the event history, why the last failover did or did not happen.

A pure function over the coordination store's events (oldest first) returning
lines: a headline, then a short timeline. It reads what the agents recorded:

- who held the lease under which epoch: every event an agent records carries
  the epoch it acts under, so the first event with a new epoch marks a new
  active node (a *term*);
- why a term ended: the old active's ``failover`` event (it stepped down, the
  cause is in its reason or in the alert just before), a ``lease`` event (lost
  the lease and fenced itself, or released it on shutdown: ``data["cause"]``), an
  operator's action, or nothing at all (the node was lost with its agent);
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
was held back.

This module words the incidents; hakit.history.why_fence tells the fencing and
the promotions it blocked, hakit.history.why_failsafe the outages failsafe mode
served through; hakit.history.reading reads the history (terms, the facts events
carry in their data), hakit.history.now tells the cluster as it is now
(``node_condition``, ``explain_pause``; re-exported here).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from datetime import datetime, tzinfo

from hakit.coord.base import Event
from hakit.history.kinds import RESTART_KINDS, AlertKind, EventKind
from hakit.history.now import (
    SERVING_STATES,
    ClusterNow,
    NodeCondition,
    explain_pause,
    node_condition,
)
from hakit.history.reading import (
    Clock,
    Incident,
    Term,
    data_loss_window,
    end_of_term,
    failed_starts,
    failure_alerts,
    lost_epoch,
    no_failover,
    nth_failure,
    operator_move,
    planned,
    restart,
    retry,
    serving,
    shutdown,
    step_down_cause,
    steps_down,
    terms,
    what,
)
from hakit.history.why_failsafe import failsafe_outages
from hakit.history.why_fence import blocked_promotions, fence_story, woke_and_fenced
from hakit.supervisor.leftovers import UNCLEAN_END

__all__ = [
    "SERVING_STATES",
    "ClusterNow",
    "NodeCondition",
    "Term",
    "explain",
    "explain_pause",
    "node_condition",
    "parse_at",
    "terms",
]

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
    clock = Clock(history, tz)
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


# --- the incidents ------------------------------------------------------------------


def _incidents(history: Sequence[Event], clock: Clock) -> list[Incident]:
    found: list[Incident] = []
    used: set[int] = set()  # the events that ended a term a takeover explains
    all_terms = terms(history)
    for prev, term in itertools.pairwise(all_terms):
        found.append(_takeover(history, prev, term, used, clock))
    found += blocked_promotions(history, all_terms, clock)
    found += failsafe_outages(history, all_terms, used, clock)
    for index, event in enumerate(history):
        if index in used:
            continue
        incident = _alert(history, index, clock) if event.kind == EventKind.ALERT else None
        incident = incident or _orphan_end(history, index, clock)
        if incident is not None:
            found.append(incident)
    return sorted(found, key=lambda i: i.time)


def _takeover(
    history: Sequence[Event], prev: Term, term: Term, used: set[int], clock: Clock
) -> Incident:
    end = end_of_term(history, prev, term)
    if end is not None and end > term.index and not operator_move(history[end]):
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
        if operator_move(history[end]):
            since = "the operator's command"
    fences, fenced = fence_story(history, prev, term, clock)
    timeline += fences
    timeline += woke_and_fenced(history, prev, term, end, used, clock)
    timeline.append((term.time, clock.line(history[term.index])))
    timeline += _outcome(history, term, started, since, clock)
    timeline += data_loss_window(history, term, clock)
    lines = [line for _, line in sorted(timeline, key=lambda entry: entry[0])]
    if old == new:
        headline = (
            f"no failover at {clock(term.time)}: {new} took the lease again {epochs} after {cause}"
        )
        return Incident(started, (headline, *lines), failover=False)
    verb = "handed over to" if end is not None and planned(history[end]) else "failed over to"
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
            if event.node == old and event.kind == EventKind.AGENT and event.data.get(UNCLEAN_END)
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


def _cause(
    history: Sequence[Event], prev: Term, end: int, clock: Clock
) -> tuple[str, list[tuple[float, str]], float]:
    """(cause in words, timeline lines, when the end began) for a term its node ended."""
    event = history[end]
    line = [(event.time, clock.line(event))]
    if operator_move(event):
        who = event.actor.partition(":")[2]
        return f"{event.kind} by operator {who}: {event.reason}", line, event.time
    if event.kind == EventKind.LEASE and shutdown(event):
        return f"the agent on {prev.node} was shut down and released the lease", line, event.time
    if lost_epoch(event) is not None:
        return f"{what(event)}; it killed its app (self-fencing)", line, event.time
    # A step-down: the failure that used up the restart budget is in this event's reason
    # (process gone) or in the alert that stopped the app first (process alive).
    failures = failure_alerts(history, prev.node, prev.index, end)
    trigger = next((i for i in reversed(failures) if steps_down(history[i])), None)
    cause_event = history[trigger] if trigger is not None else event
    # Show the failures that counted: the 3rd failure within 5m -> the two before it.
    counted = nth_failure(cause_event) or failed_starts(cause_event)
    keep = counted.used - 1 if counted else 2
    earlier = [i for i in failures if i != trigger][-keep:] if keep > 0 else []
    lines = [(history[i].time, clock.line(history[i])) for i in earlier]
    lines.append((cause_event.time, clock.line(cause_event)))
    if trigger is not None:
        lines.append((event.time, clock.line(event)))
    # The restarts before stay incidents of their own: ``--at`` may ask about one of them.
    return step_down_cause(cause_event), lines, cause_event.time


def _outcome(
    history: Sequence[Event], term: Term, started: float, since: str, clock: Clock
) -> list[tuple[float, str]]:
    """Did the new active serve? Its first RUNNING (or an already running warm standby)."""
    for event in history[term.index :]:
        if event.node != term.node:
            continue
        if event.epoch and event.epoch != term.epoch:
            break
        if event.kind == EventKind.RUNNING or (event.kind == EventKind.PROMOTED and serving(event)):
            took = f" ({event.time - started:.1f}s after {since})"
            return [(event.time, clock.line(event, f"{term.node} serving: {event.reason}{took}"))]
        if event.kind == EventKind.ALERT:
            return [(event.time, clock.line(event))]
    return [(math.inf, f"  {term.node} has not reported RUNNING since")]


def _orphan_end(history: Sequence[Event], index: int, clock: Clock) -> Incident | None:
    """A step-down or lost lease no other node followed (no takeover explained it)."""
    event = history[index]
    # An operator's failover records "failover" events too (asked, took, complete): not a
    # step-down, the takeover they belong to tells them.
    if event.kind == EventKind.FAILOVER and not event.actor.startswith("operator:"):
        headline = (
            f"no failover at {clock(event.time)}: {event.node} stepped down (epoch {event.epoch}) "
            "but no other node has taken the lease since: are the other agents running?"
        )
        return Incident(event.time, (headline, clock.line(event)), failover=False)
    if event.kind in (EventKind.LEASE, EventKind.STOP) and lost_epoch(event) is not None:
        headline = (
            f"no failover at {clock(event.time)}: {what(event)}; "
            "no other node has taken the lease since"
        )
        return Incident(event.time, (headline, clock.line(event)), failover=False)
    return None


# --- alerts that were not a failover ---------------------------------------------------


def _alert(history: Sequence[Event], index: int, clock: Clock) -> Incident | None:
    event = history[index]
    kind = str(event.data.get("alert", ""))
    manual = bool(event.data.get("manual_intervention", False))
    reason = event.reason
    failure = what(event)
    when = clock(event.time)
    if kind in (AlertKind.FAILOVER, AlertKind.FENCE) or steps_down(event):
        return None  # explained with the takeover (or its absence) it belongs to
    lines: list[str]
    if kind == AlertKind.DATABASE:
        nodes = sorted(
            {
                e.node
                for e in history
                if e.kind == EventKind.ALERT
                and e.data.get("alert") == AlertKind.DATABASE
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
        return Incident(event.time, _manual(event, kind, failure, when, clock), failover=False)
    if kind in RESTART_KINDS:
        budget = restart(event)
        words = (
            f" (restart {budget.used} of {budget.attempts} within {budget.window})"
            if budget
            else ""
        )
        headline = (
            f"not failed over at {when}: {failure} → restarted on {event.node} instead{words}"
        )
        lines = [headline, clock.line(event)]
        if budget:
            lines.append(
                f"  hakit fails over only once {budget.attempts} restarts within "
                f"{budget.window} did not help (restart_attempts = {budget.attempts})"
            )
        return Incident(event.time, tuple(lines), failover=False)
    if kind == AlertKind.FAILED_START:
        tried = retry(event)
        again = f" (retry {tried.used} of {tried.attempts})" if tried else ""
        headline = (
            f"not failed over at {when}: {failure} → retrying the start on {event.node}{again}"
        )
        note = (
            "  by default a failed start does not fail over: another node would fail to start"
            ' the same way (failover.on_failed_start = "failover" changes that)'
        )
        return Incident(event.time, (headline, clock.line(event), note), failover=False)
    headline = f"alert at {when} on {event.node}: {reason}"
    return Incident(event.time, (headline,), failover=False)


def _manual(event: Event, kind: str, failure: str, when: str, clock: Clock) -> tuple[str, ...]:
    starts = failed_starts(event)
    if kind == AlertKind.FAILED_START and starts:
        summary = (
            f"app on {event.node} failed to start {starts.used} times "
            f"(restart_attempts = {starts.attempts}); last: {failure}"
        )
    else:
        summary = failure
    why_not = no_failover(event)
    lines = [f"no failover at {when}: {summary} → manual intervention required", clock.line(event)]
    if why_not:
        lines.append(f"  why no failover: {why_not}")
    lines.append(
        f"  hakit has stopped acting on {event.node}: fix the cause, then restart its agent"
    )
    return tuple(lines)


def _recovery(history: Sequence[Event], index: int, clock: Clock) -> list[str]:
    node = history[index].node
    for event in history[index + 1 :]:
        if event.node != node:
            continue
        if event.kind in (EventKind.STATUS, EventKind.RUNNING) and serving(event):
            return [clock.line(event, f"recovered: {event.reason}")]
        if event.kind in (EventKind.ALERT, EventKind.STOP, EventKind.FAILOVER):
            break
    return []


def _quiet(history: Sequence[Event], limit: float, at: float | None, clock: Clock) -> str:
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
