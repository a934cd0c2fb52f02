"""``hakit why`` on failsafe mode ([coordination] failsafe, hakit.policy.failsafe).

``failsafe_outages``: the store unreachable with failsafe mode on, one incident
per outage: the active served on the other nodes' confirmations (and renewed its
lease once the store answered), or fenced itself because one did not confirm
(unless another node's takeover followed: that takeover tells it).

Pure, as hakit.history.why that tells the incidents.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hakit.coord.base import Event
from hakit.history.facts import (
    ASKER,
    CONFIRMED,
    FAILSAFE,
    FAILSAFE_FENCED,
    FAILSAFE_RECOVERED,
    FAILSAFE_SERVING,
    MISSING,
    human_duration,
)
from hakit.history.kinds import AlertKind, EventKind
from hakit.history.reading import Clock, Incident, Term, lost_epoch


def _failsafe_case(event: Event) -> str | None:
    if event.kind == EventKind.FAILSAFE:
        case = event.data.get(FAILSAFE)
        return case if isinstance(case, str) else None
    return None


def failsafe_outages(
    history: Sequence[Event], all_terms: Sequence[Term], used: set[int], clock: Clock
) -> list[Incident]:
    """The store unreachable with failsafe mode on: the active served on the other nodes'
    confirmations (and renewed once the store answered), or fenced because one did not
    confirm. A fence followed by another node's takeover (the store answered that node:
    it was unreachable from the active only) is told by the takeover; here only its
    failsafe events are taken out of the other stories."""
    found: list[Incident] = []
    for index, event in enumerate(history):
        if event.kind == EventKind.ALERT and event.data.get("alert") == AlertKind.FAILSAFE:
            used.add(index)  # told with the outage below
    start: int | None = None  # the SERVING event of the outage under way
    for index, event in enumerate(history):
        case = _failsafe_case(event)
        if case == FAILSAFE_SERVING and start is None:
            start = index
        elif case in (FAILSAFE_RECOVERED, FAILSAFE_FENCED):
            first = start if start is not None else index
            start = None
            incident = _failsafe_story(history, all_terms, first, index, used, clock)
            if incident is not None:
                found.append(incident)
    if start is not None:
        incident = _failsafe_story(history, all_terms, start, None, used, clock)
        if incident is not None:
            found.append(incident)
    return found


def _failsafe_story(
    history: Sequence[Event],
    all_terms: Sequence[Term],
    first: int,
    last: int | None,
    used: set[int],
    clock: Clock,
) -> Incident | None:
    """One outage of the store: from ``first`` (serving on confirmations, or the fence at
    once) to ``last`` (recovered or fenced; None: still going as far as the history says)."""
    begin = history[first]
    active, epoch = begin.node, begin.epoch
    end = history[last] if last is not None else None
    until = end.time if end is not None else math.inf
    others = [
        (i, e)
        for i, e in enumerate(history)
        if e.kind == EventKind.FAILSAFE
        and e.node != active
        and e.data.get(ASKER) == active
        and begin.time - 60 <= e.time <= until
    ]
    told: list[Event] = [begin, *(e for _, e in others)]
    when = clock(begin.time)
    confirmed = begin.data.get(CONFIRMED)
    by = ", ".join(str(n) for n in confirmed) if isinstance(confirmed, list) else ""
    served = f" on the confirmations of {by}" if by else " on confirmations"
    if end is not None and last is not None and _failsafe_case(end) == FAILSAFE_FENCED:
        if any(t.index > last and t.node != active for t in all_terms):
            return None  # the takeover that followed tells it (the store answered there)
        if last != first:
            told.append(end)
        for index in range(last + 1, len(history)):
            stop = history[index]
            if stop.node == active and lost_epoch(stop) == epoch:
                used.add(index)  # the lease loss this fence is
                told.append(stop)
                break
        missing = end.data.get(MISSING)
        who = ", ".join(missing) if isinstance(missing, dict) and missing else "a node"
        kept = f"; failsafe mode had kept it serving{served} since {when}" if first != last else ""
        headline = (
            f"no failover at {clock(end.time)}: the coordination store was unreachable from "
            f"{active} (epoch {epoch}) and {who} did not confirm it was not promoting, so "
            f"{active} fenced itself (failsafe mode){kept}; no node promoted"
        )
    elif end is not None:
        told.append(end)
        seconds = end.data.get("seconds")
        took = f" for {human_duration(seconds)}" if isinstance(seconds, (int, float)) else ""
        headline = (
            f"no failover at {when}: the coordination store was unreachable; failsafe mode "
            f"kept {active} serving (epoch {epoch}){served}{took}, no node promoted, and "
            f"{active} renewed its lease once the store answered"
        )
    else:
        headline = (
            f"no failover at {when}: the coordination store is unreachable; failsafe mode "
            f"keeps {active} serving (epoch {epoch}){served}; no node promotes until the "
            "store answers again"
        )
    lines = [clock.line(e) for e in sorted(told, key=lambda e: e.id)]
    return Incident(begin.time, (headline, *lines), failover=False)
