"""Reading the event history for ``hakit why``: who was active when (terms), and the
facts the events carry, from their ``data`` (hakit.history.kinds and hakit.history.facts
name the keys).

Events recorded by an older hakit say some facts only in their sentence: the cause of
a lease loss, a shutdown or a step-down (before ``data["cause"]``), the restart
budget, the failed starts, why no failover, whether the app served (before
``data["what"]`` and ``data["serving"]``). For those (a stored history from an older
hakit) the sentence is still read, as it always was; each such reading is marked
"recorded without". An event that carries the fact is read from its data alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from hakit.coord.base import Event
from hakit.history.facts import (
    DATA_LOSS_WINDOW,
    FAILED_STARTS,
    FAILURE,
    FAILURE_WINDOW,
    FORCED,
    GENERATION,
    NO_FAILOVER,
    RESTART,
    RESTART_ATTEMPTS,
    RETRY,
    SERVING,
    WHAT,
    human_duration,
    ordinal,
)
from hakit.history.kinds import CAUSE, FAILURE_KINDS, LOST_EPOCH, EventCause, EventKind

# The sentences of events recorded without data["cause"] (an older hakit's history).
_LOST_LEASE = re.compile(r"lost the leader lease \(epoch (\d+)")
_SHUTDOWN = "released the lease on shutdown"
_STEPPING_DOWN = "stepping down"
# The sentences of events recorded without data["what"] (an older hakit's history).
_STEP_DOWN_TAIL = re.compile(r"[:;] (stopping it, then )?stepping down so a standby takes over.*$")
_NTH_FAILURE = re.compile(
    r"(\d+)(?:st|nd|rd|th) failure within ([^\s;)]+)(?: \(restart_attempts = (\d+)\))?"
)
_RESTART_BUDGET = re.compile(r"restart (\d+) of (\d+) within ([^\s;)]+)")
_RETRY = re.compile(r"retry (\d+) of (\d+)")
_FAILED_STARTS = re.compile(r"(\d+) failed starts in a row \(restart_attempts = (\d+)\)")
_NOT_FAILING_OVER = re.compile(r"not failing over: ([^;]*)")
_NO_FAILOVER_BECAUSE = re.compile(r" and ((?:restart-only mode|this node is a standby)[^;:]*)")
# ... and without data["serving"].
_ALREADY_RUNNING = "already running"
_SERVING_STATE = re.compile(r"RUNNING|FIRST_RUN")


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


@dataclass(frozen=True, slots=True)
class Budget:
    """How much of the restart budget an alert had used, as it recorded it."""

    used: int  # restart n, retry k, the nth failure or k failed starts in a row
    attempts: int  # failover.restart_attempts
    window: str  # failover.failure_window in words ("5m"); "" where it does not count


# --- what an event says ---------------------------------------------------------------


def _has_facts(event: Event) -> bool:
    """Recorded by a hakit that puts a failure's facts in ``data`` (data["what"])."""
    return WHAT in event.data


def _number(event: Event, key: str) -> int | None:
    value = event.data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _budget(event: Event, key: str, windowed: bool) -> Budget | None:
    used, attempts = _number(event, key), _number(event, RESTART_ATTEMPTS)
    window = event.data.get(FAILURE_WINDOW)
    if used is None or attempts is None:
        return None
    if not windowed:
        return Budget(used, attempts, "")
    if not isinstance(window, int | float) or isinstance(window, bool):
        return None
    return Budget(used, attempts, human_duration(window))


def what(event: Event) -> str:
    """What went wrong, in words, without what was done about it."""
    words = event.data.get(WHAT)
    if isinstance(words, str):
        return words
    return event.reason.split("; ")[0]  # recorded without data["what"]


def restart(event: Event) -> Budget | None:
    """A failure alert's restart: n of restart_attempts within failure_window."""
    if _has_facts(event):
        return _budget(event, RESTART, windowed=True)
    found = _RESTART_BUDGET.search(event.reason)  # recorded without data["what"]
    return Budget(int(found[1]), int(found[2]), found[3]) if found else None


def nth_failure(event: Event) -> Budget | None:
    """A failure alert past its restarts: the nth failure within failure_window."""
    if _has_facts(event):
        return _budget(event, FAILURE, windowed=True) if restart(event) is None else None
    found = _NTH_FAILURE.search(event.reason)  # recorded without data["what"]
    return Budget(int(found[1]), int(found[3] or 0), found[2]) if found else None


def retry(event: Event) -> Budget | None:
    """A failed start being retried: retry k of restart_attempts."""
    if _has_facts(event):
        return _budget(event, RETRY, windowed=False)
    found = _RETRY.search(event.reason)  # recorded without data["what"]
    return Budget(int(found[1]), int(found[2]), "") if found else None


def failed_starts(event: Event) -> Budget | None:
    """Failed starts that used up the retries: k in a row (restart_attempts)."""
    if _has_facts(event):
        return _budget(event, FAILED_STARTS, windowed=False)
    found = _FAILED_STARTS.search(event.reason)  # recorded without data["what"]
    return Budget(int(found[1]), int(found[2]), "") if found else None


def no_failover(event: Event) -> str | None:
    """Why a node that needs a human did not fail over, in words (None: not said)."""
    if _has_facts(event):
        words = event.data.get(NO_FAILOVER)
        return words if isinstance(words, str) else None
    # recorded without data["what"]
    found = _NOT_FAILING_OVER.search(event.reason) or _NO_FAILOVER_BECAUSE.search(event.reason)
    return found[1] if found else None


def step_down_cause(event: Event) -> str:
    """The failure a node stepped down after, in words: what went wrong and how many
    times (without "stepping down so a standby takes over")."""
    if not _has_facts(event):
        return _STEP_DOWN_TAIL.sub("", event.reason)  # recorded without data["what"]
    words = what(event)
    failures, starts = nth_failure(event), failed_starts(event)
    if failures is not None:
        return (
            f"{words}; {ordinal(failures.used)} failure within {failures.window} "
            f"(restart_attempts = {failures.attempts})"
        )
    if starts is not None:
        return (
            f"{words}; {starts.used} failed starts in a row (restart_attempts = {starts.attempts})"
        )
    return words


def serving(event: Event) -> bool:
    """The app served, as this event records: its first RUNNING / FIRST_RUN after a start,
    a status back to serving, or a promotion onto an app already running (a warm standby)."""
    if SERVING in event.data:
        return bool(event.data[SERVING])
    # recorded without data["serving"]
    if event.kind == EventKind.PROMOTED:
        return _ALREADY_RUNNING in event.reason
    if event.kind in (EventKind.STATUS, EventKind.RUNNING):
        return _SERVING_STATE.search(event.reason) is not None
    return False


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


def data_loss_window(history: Sequence[Event], term: Term, clock: Clock) -> list[tuple[float, str]]:
    """Replicated storage: the data-loss window the new active recorded as it promoted
    (a ``replication`` event of its epoch with ``data_loss_window``), in words."""
    for event in history[term.index :]:
        if event.epoch != term.epoch or event.node != term.node:
            continue
        if event.kind != EventKind.REPLICATION or DATA_LOSS_WINDOW not in event.data:
            continue
        window = event.data[DATA_LOSS_WINDOW]
        forced = " (forced by the operator)" if event.data.get(FORCED) else ""
        if isinstance(window, int | float) and window > 0:
            words = (
                f"data-loss window: {human_duration(float(window))}{forced}: {term.node} started "
                f"from generation {event.data.get(GENERATION)}; writes acknowledged by the old "
                "active during that time before its loss are not in it (replicated storage)"
            )
        elif window is None:
            words = f"data-loss window unknown{forced}: {term.node} held no replicated copy"
        else:
            words = f"data-loss window: none: {term.node} held the newest data itself"
        return [(event.time, clock.line(event, words))]
    return []
