"""Tell a pause of the agent itself from a failure of the app.

When the agent's own process does not run for a while (its VM frozen for a
snapshot, SIGSTOP, heavy swapping, a blocking call in the event loop), every
probe in flight at that time ends in a TIMEOUT: the timer fired late, not the
app. Counting those as failures would restart (or fail over) a healthy app.

The agent ticks a heartbeat (every ``heartbeat`` of hakit.config.derived, at most
50 ms) and feeds the monotonic time of each tick (and of each probe's end) to a
:class:`StallDetector`. A gap longer than ``threshold`` between two consecutive
ticks is a stall of the agent. A check failure whose probe overlapped a stall is not counted.

Pure: no clock reads. The caller passes ``now`` (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

STALL_THRESHOLD = 1.0  # a gap longer than this between two ticks is a stall
KEEP = 600.0  # stalls older than this (by their end) are forgotten


@dataclass(frozen=True, slots=True)
class Stall:
    """The agent did not run between ``start`` (last tick before) and ``end`` (first tick after)."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start

    def overlaps(self, start: float, end: float) -> bool:
        """True when the interval [start, end] (e.g. one probe) overlaps this stall."""
        return self.start < end and start < self.end


class StallDetector:
    """Remembers the recent stalls seen between ticks; every input is a monotonic time."""

    def __init__(self, threshold: float = STALL_THRESHOLD, keep: float = KEEP) -> None:
        if threshold <= 0:
            raise ValueError(f"stall threshold must be positive, got {threshold}")
        self.threshold = threshold
        self.keep = keep
        self._last: float | None = None
        self._stalls: list[Stall] = []

    @property
    def stalls(self) -> tuple[Stall, ...]:
        return tuple(self._stalls)

    def tick(self, now: float) -> Stall | None:
        """One sign of life at ``now``; the stall it ends, if the gap since the last was too long.

        Times that go backwards (a caller that read the clock before another
        caller's tick) are ignored: they say nothing new.
        """
        last = self._last
        if last is not None and now <= last:
            return None
        self._last = now
        self._stalls = [s for s in self._stalls if now - s.end < self.keep]
        if last is None or now - last <= self.threshold:
            return None
        stall = Stall(last, now)
        self._stalls.append(stall)
        return stall

    def during(self, start: float, end: float) -> Stall | None:
        """The longest remembered stall that overlaps [start, end]; None if there is none."""
        overlapping = [s for s in self._stalls if s.overlaps(start, end)]
        return max(overlapping, key=lambda s: s.duration, default=None)
