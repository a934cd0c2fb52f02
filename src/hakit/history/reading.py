"""Reading the event history for ``hakit why``: who was active when (terms), and the
facts the events carry, from their ``data`` (hakit.history.kinds names the keys).

Events recorded before hakit put the cause of a lease loss, a shutdown or a step-down
in ``data["cause"]`` say it only in their sentence: for those (a stored history from
an older hakit) the sentence is still read, as it always was. An event that carries a
cause is read from its data alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from hakit.coord.base import Event
from hakit.history.kinds import CAUSE, FAILURE_KINDS, LOST_EPOCH, EventCause, EventKind

# The sentences of events recorded without data["cause"] (an older hakit's history).
_LOST_LEASE = re.compile(r"lost the leader lease \(epoch (\d+)")
_SHUTDOWN = "released the lease on shutdown"
_STEPPING_DOWN = "stepping down"


@dataclass(frozen=True, slots=True)
class Term:
    """One node's time as the active node under one epoch."""

    node: str
    epoch: int
    index: int  # position of its first event in the history
    time: float


@dataclass(frozen=True, slots=True)
class Incident:
    """One story ``hakit why`` tells: a failover, or why one did not happen."""

    time: float  # when it began: what ``--at`` selects by
    lines: tuple[str, ...]  # headline first, then indented timeline lines
    failover: bool  # the active role moved to another node


class Clock:
    """Times as HH:MM:SS, with the date when the history spans several days."""

    def __init__(self, events: Sequence[Event], tz: tzinfo | None) -> None:
        self.tz = tz
        days = {datetime.fromtimestamp(e.time, tz).date() for e in events}
        self.pattern = "%Y-%m-%d %H:%M:%S" if len(days) > 1 else "%H:%M:%S"

    def __call__(self, seconds: float) -> str:
        return datetime.fromtimestamp(seconds, self.tz).strftime(self.pattern)

    def line(self, event: Event, text: str | None = None) -> str:
        return f"  {self(event.time)}  {text if text is not None else event.reason}"


def terms(history: Sequence[Event]) -> list[Term]:
    """Who was active under which epoch, in order (epochs only grow)."""
    found: list[Term] = []
    highest = 0
    for index, event in enumerate(history):
        if event.epoch > highest and event.node:
            highest = event.epoch
            found.append(Term(event.node, event.epoch, index, event.time))
    return found


# --- what an event says ---------------------------------------------------------------


def lost_epoch(event: Event) -> int | None:
    """The epoch whose lease ``event``'s node lost (it fenced itself), or None."""
    if CAUSE in event.data:
        epoch = event.data.get(LOST_EPOCH)
        lost = event.data[CAUSE] == EventCause.LEASE_LOST and isinstance(epoch, int)
        return epoch if lost else None
    found = _LOST_LEASE.search(event.reason)  # recorded without data["cause"]
    return int(found.group(1)) if found else None


def shutdown(event: Event) -> bool:
    """The agent released the lease (or stopped its app) because it was shut down."""
    if CAUSE in event.data:
        return bool(event.data[CAUSE] == EventCause.SHUTDOWN)
    return _SHUTDOWN in event.reason  # recorded without data["cause"]


def steps_down(event: Event) -> bool:
    """An alert after which its node steps down (its restarts are used up)."""
    if CAUSE in event.data:
        return bool(event.data[CAUSE] == EventCause.STEP_DOWN)
    return _STEPPING_DOWN in event.reason  # recorded without data["cause"]


def planned(event: Event) -> bool:
    """A handover rather than a failover: a shutdown or an operator's switchover."""
    return shutdown(event) or (operator_move(event) and event.kind == EventKind.SWITCHOVER)


def operator_move(event: Event) -> bool:
    return event.actor.startswith("operator:") and event.kind in (
        EventKind.SWITCHOVER,
        EventKind.FAILOVER,
    )


def failure_alerts(history: Sequence[Event], node: str, start: int, stop: int) -> list[int]:
    """Indexes of ``node``'s failure alerts (crash, hang, failed start...) in [start, stop)."""
    return [
        i
        for i in range(start, stop)
        if history[i].kind == EventKind.ALERT
        and history[i].node == node
        and history[i].data.get("alert") in FAILURE_KINDS
    ]


def end_of_term(history: Sequence[Event], prev: Term, term: Term) -> int | None:
    """The index of the event in which ``prev``'s node gave up its term, if it recorded one."""
    for index in range(prev.index, len(history)):
        event = history[index]
        if index > term.index and event.time > term.time + 60:
            break  # the old node's word would come at once, not a minute later
        if event.node != prev.node:
            if operator_move(event) and index < term.index:
                return index  # a switchover / forced failover: the operator's own event
            continue
        if event.kind == EventKind.FAILOVER and event.epoch == prev.epoch:
            return index
        if lost_epoch(event) == prev.epoch:
            return index  # a "stop" (app killed), or a "lease" record when no app ran
        if event.kind == EventKind.LEASE and shutdown(event) and event.epoch == prev.epoch:
            return index
    return None


# --- fencing -----------------------------------------------------------------------------


def fence_epoch(event: Event) -> int:
    """The epoch a ``fence`` event's promotion was for (0: unknown)."""
    value = event.data.get("epoch", 0)
    return value if isinstance(value, int) else 0


def command_failed(event: Event) -> bool:
    """A fence_command that failed: the promotion did not happen. (A failure to end the
    database sessions also says "failed", but ran no command and blocks nothing.)"""
    return (
        event.kind == EventKind.FENCE
        and event.data.get("result") == "failed"
        and "command" in event.data
    )


def command_summary(event: Event) -> str:
    """The fence command's own account, as hakit.fencing.fence recorded it ("exited 0 after 0.3 s",
    "did not finish within fence_timeout 10 s (killed)"); empty if none was recorded."""
    summary = event.data.get("summary")
    return summary if isinstance(summary, str) else ""


def command_words(event: Event) -> str:
    """How a fence command failed, short: "exit 1", "did not finish within ..."."""
    code = event.data.get("returncode")
    if isinstance(code, int) and code > 0:
        return f"exit {code}"
    if isinstance(code, int) and code < 0:
        return f"killed by signal {-code}"
    return command_summary(event) or "see its output in the fence log"
