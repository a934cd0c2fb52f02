"""History events for people and programs: one readable line (demo output, ``hakit
events``, ``hakit status``), one JSON object (``--json``), and the choice of events
``hakit events`` shows (``--since``, ``--node``, ``--kind``). Pure functions."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable
from datetime import datetime, tzinfo
from typing import Any

from rich.markup import escape

from hakit.coord.base import Event
from hakit.history.kinds import EventKind

# Rich markup colour per event kind: failures stand out, routine lines stay quiet.
KIND_STYLE: dict[str, str] = {
    EventKind.ALERT: "bold red",
    EventKind.FAILOVER: "bold magenta",
    EventKind.LEASE: "cyan",
    EventKind.START: "green",
    EventKind.STOP: "yellow",
    EventKind.DETECTED: "red",
    EventKind.INTERNAL: "bold red",
}

CLUSTER = "cluster"  # how an event about no node in particular (node "") is shown and selected

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "w": 604_800.0}
_RELATIVE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def iso_time(seconds: float, tz: tzinfo | None = None) -> str:
    """``seconds`` as ISO 8601 with date, milliseconds and UTC offset (None: local time)."""
    moment = datetime.fromtimestamp(seconds, tz)
    return (moment if tz is not None else moment.astimezone()).isoformat(timespec="milliseconds")


def format_event(
    event: Event, *, markup: bool = False, date: bool = False, tz: tzinfo | None = None
) -> str:
    """One line: time, node, epoch, kind, reason. ``date``: the time as ISO 8601 with the
    date and UTC offset (a history spans days); else HH:MM:SS.mmm (a live stream)."""
    if date:
        clock = iso_time(event.time, tz)
    else:
        moment = datetime.fromtimestamp(event.time, tz)
        clock = moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"
    node = event.node or CLUSTER
    epoch = f" epoch {event.epoch}" if event.epoch else ""
    kind = f"{event.kind:<9}"
    reason = event.reason
    if markup:
        style = KIND_STYLE.get(event.kind, "white")
        kind = f"[{style}]{kind}[/{style}]"
        reason = escape(reason)
    return f"{clock} {node:<8}{epoch:<9} {kind} {reason}"


def event_record(event: Event, tz: tzinfo | None = None) -> dict[str, Any]:
    """The event as one JSON object: ``time`` ISO 8601, ``timestamp`` Unix seconds."""
    return {
        "id": event.id,
        "time": iso_time(event.time, tz),
        "timestamp": event.time,
        "node": event.node,
        "kind": event.kind,
        "reason": event.reason,
        "epoch": event.epoch,
        "actor": event.actor,
        "data": event.data,
    }


def parse_since(text: str, now: float, tz: tzinfo | None = None) -> float:
    """``--since``: a time ago ("10m", "2h", "1h30m", "90s", "1d") or a moment: ISO 8601
    ("2026-11-22T12:03:10", "2026-11-22 12:03", with or without an offset; local time
    without), "HH:MM[:SS]" (today) or Unix seconds."""
    from hakit.history.why import parse_at

    compact = text.strip().replace(" ", "")
    if _RELATIVE.fullmatch(compact):
        ago = sum(float(n) * _UNITS[unit] for n, unit in _RELATIVE_PART.findall(compact))
        return now - ago
    try:
        return parse_at(text, now, tz)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a time ago (10m, 2h, 1d) nor a moment "
            '(ISO 8601 such as 2026-11-22T12:03:10 or "2026-11-22 12:03", HH:MM[:SS] today, '
            "or Unix seconds)"
        ) from None


def select_events(
    events: Iterable[Event],
    *,
    since: float | None = None,
    nodes: Collection[str] = (),
    kinds: Collection[str] = (),
) -> list[Event]:
    """The events at or after ``since``, about one of ``nodes`` ("cluster" selects the
    events about no node) and of one of ``kinds``; an empty filter selects all."""
    wanted_nodes = {"" if name == CLUSTER else name for name in nodes}
    wanted_kinds = set(kinds)
    low = since if since is not None and math.isfinite(since) else -math.inf
    return [
        event
        for event in events
        if event.time >= low
        and (not wanted_nodes or event.node in wanted_nodes)
        and (not wanted_kinds or event.kind in wanted_kinds)
    ]
