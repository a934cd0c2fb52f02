"""Readable one-line rendering of history events (demo output, ``hakit events``)."""

from __future__ import annotations

import time

from rich.markup import escape

from hakit.coord.base import Event

# Rich markup colour per event kind: failures stand out, routine lines stay quiet.
KIND_STYLE = {
    "alert": "bold red",
    "failover": "bold magenta",
    "lease": "cyan",
    "start": "green",
    "stop": "yellow",
    "detected": "red",
    "internal": "bold red",
}


def format_event(event: Event, *, markup: bool = False) -> str:
    clock = time.strftime("%H:%M:%S", time.localtime(event.time))
    millis = int((event.time % 1) * 1000)
    node = event.node or "cluster"
    epoch = f" epoch {event.epoch}" if event.epoch else ""
    kind = f"{event.kind:<9}"
    reason = event.reason
    if markup:
        style = KIND_STYLE.get(event.kind, "white")
        kind = f"[{style}]{kind}[/{style}]"
        reason = escape(reason)
    return f"{clock}.{millis:03d} {node:<8}{epoch:<9} {kind} {reason}"
