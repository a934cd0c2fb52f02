"""The lifeline between an agent and its app's shim (hakit.supervisor.shim): messages and the
deadline rule.

The app is started by a small parent of its own, the shim, which holds one end of a
socket pair whose other end only the agent holds. The kernel closes the agent's end
whatever ends the agent (``kill -9``, the OOM killer, a crash), so the shim learns of
the agent's death at once, without any timer, and kills the app before the lease can
expire. While the agent lives, it sends the lease deadline each time it renews: the
shim, a separate process, kills the app at that deadline even when the agent is
frozen (SIGSTOP, a stuck thread) and cannot do it itself.

One line per message, words separated by a space; the vocabulary is defined here
once and both sides use these functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

# agent -> shim
ARM: Final = "arm"  # arm <deadline>: kill the app at this CLOCK_MONOTONIC time unless re-armed
DISARM: Final = "disarm"  # no lease to guard (standby, or stopping on purpose)
KILL: Final = "kill"  # kill the app and everything it started, now
STOPPING: Final = "stopping"  # a graceful stop: what the main process leaves may finish first
# shim -> agent
STARTED: Final = "started"  # started <pid>: the app runs as pid (leader of its own group)
FAILED: Final = "failed"  # failed <json message>: the command could not be executed
LEFT: Final = "left"  # left <json>: the app's main process ended, these processes were left
FENCED: Final = "fenced"  # fenced <json reason>: the shim killed the app at the lease deadline


def encode(kind: str, payload: Any = None) -> bytes:
    """One message as a line; ``payload`` is a number or JSON-able value."""
    if payload is None:
        return f"{kind}\n".encode()
    if isinstance(payload, int | float) and not isinstance(payload, bool):
        return f"{kind} {payload!r}\n".encode()
    return f"{kind} {json.dumps(payload, separators=(',', ':'))}\n".encode()


def decode(line: bytes) -> tuple[str, Any]:
    """(kind, payload) of one line; payload None when there is none. ValueError if malformed."""
    text = line.decode("utf-8").strip()
    kind, _, rest = text.partition(" ")
    if not kind:
        raise ValueError("empty lifeline message")
    if not rest:
        return kind, None
    return kind, json.loads(rest)


@dataclass(slots=True)
class Inbox:
    """Bytes as they arrive on the lifeline, out as whole messages (a malformed line is
    skipped: the other side is hakit's own, and one bad line must not stop the rest)."""

    pending: bytes = b""

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        self.pending += data
        messages = []
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            try:
                messages.append(decode(line))
            except ValueError:
                continue
        return messages


@dataclass(slots=True)
class DeadlineKeeper:
    """When must the app be killed? Fed the monotonic time of each of the keeper's own ticks.

    - it ran at the deadline (its ticks are regular): kill, now;
    - it did not run at the deadline either (a gap in its own ticks longer than
      ``threshold`` spans the deadline: the whole machine was frozen, not only the
      agent): the agent decides first on waking (it renews the lease when nobody took
      over, and re-arms); kill only if it has done neither within ``grace`` after
      waking.

    Pure: no clock, no process; the shim and the agent's watchdog thread drive it.
    """

    threshold: float
    grace: float
    deadline: float | None = None
    grace_until: float | None = None
    last: float | None = None

    def arm(self, deadline: float) -> None:
        if deadline != self.deadline:
            self.grace_until = None
        self.deadline = deadline

    def disarm(self) -> None:
        self.deadline = None
        self.grace_until = None

    def step(self, now: float) -> float | None:
        """One tick at ``now``: how late the deadline is when the app must die now, else None."""
        last, self.last = self.last, now
        deadline = self.deadline
        if deadline is None or now < deadline:
            return None
        frozen = last is not None and now - last > self.threshold and last < deadline
        if self.grace_until is None and frozen:
            # Frozen across the deadline ourselves: the agent decides first.
            self.grace_until = now + self.grace
        if self.grace_until is not None and now < self.grace_until:
            return None
        self.deadline = None
        return now - deadline

    def wait_hint(self, now: float, period: float) -> float:
        """How long the keeper may sleep before its next tick (never past the deadline)."""
        nearest = [period]
        if self.deadline is not None:
            nearest.append(self.deadline - now)
        if self.grace_until is not None:
            nearest.append(self.grace_until - now)
        return max(0.0, min(nearest))
