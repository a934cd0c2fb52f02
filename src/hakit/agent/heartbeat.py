"""The agent's heartbeat: the lease deadline checked on time, stalls of the agent noticed.

``Heartbeat.run`` wakes at the lease deadline itself (never later than the fixed
50 ms tick it replaced would have seen it) and otherwise every ``QUIET_HEARTBEAT``
(250 ms: far below the 1 s gap that counts as a stall, hakit.agent.stall): a tick
costs CPU (~0.15 ms on the machine this was measured on: 20 ticks a second were a
quarter of an idle agent's budget). After the process was frozen (SIGSTOP, a VM
snapshot) its overdue timer is among the first code to run on waking; the main
loop and the probe and lease loops also check the deadline before they act. Each
tick pings systemd's watchdog (the pings stop when the event loop stops) and asks
the stall detector whether the agent itself was held up; a probe that timed out
across such a stall says nothing about the app (``stalled_timeout``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hakit.agent.lease import LeaseKeeper
from hakit.agent.stall import StallDetector
from hakit.contract import AppState
from hakit.health.probe import Observation
from hakit.history.facts import SERVING
from hakit.history.kinds import EventKind
from hakit.service.sdnotify import ServiceNotifier

QUIET_HEARTBEAT = 0.25  # s between heartbeats while no lease deadline comes sooner

# (kind, reason, data): the agent's history record.
Recorder = Callable[[EventKind, str, dict[str, object]], None]


class Heartbeat:
    """See the module's doc; ``lease`` is set once the agent made its lease keeper (which
    ticks the heartbeat itself)."""

    def __init__(
        self,
        node: str,
        stalls: StallDetector,
        service: ServiceNotifier,
        record: Recorder,
        monotonic: Callable[[], float],
    ) -> None:
        self.node = node
        self.stalls = stalls
        self.service = service
        self.record = record
        self.monotonic = monotonic
        self.lease: LeaseKeeper | None = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.pause())
            if self.lease is not None:
                self.lease.check_deadline()
            self.tick()

    def pause(self) -> float:
        """Until the next heartbeat: the lease deadline when it comes before the quiet
        period; the old short tick once it has passed (the store is being asked on
        waking, or a self-fence is under way)."""
        lease = self.lease
        if lease is None:
            return QUIET_HEARTBEAT
        short = lease.timings.heartbeat
        quiet = max(short, QUIET_HEARTBEAT)
        if not lease.epoch:
            return quiet
        left = lease.lease_deadline - self.monotonic()
        if left <= 0:
            return short
        return min(quiet, left)

    def tick(self) -> None:
        self.service.watchdog(self.monotonic())
        stall = self.stalls.tick(self.monotonic())
        if stall is not None:
            self.record(
                EventKind.STALL,
                f"agent on {self.node} was stalled for {stall.duration:.1f} s (frozen, "
                "swapping or blocked); check failures overlapping the stall are not counted",
                {"seconds": round(stall.duration, 3)},
            )

    def stalled_timeout(self, observation: Observation, started: float) -> bool:
        """True (and recorded) for a TIMEOUT whose probe overlapped a stall of this agent."""
        if self.lease is not None:
            self.lease.check_deadline()
        self.tick()
        stall = self.stalls.during(started, self.monotonic())
        if observation.state is not AppState.TIMEOUT or stall is None:
            return False
        self.record(
            EventKind.STATUS,
            f"ignored: /status of {self.node} timed out, but the agent was stalled for "
            f"{stall.duration:.1f} s during the probe (the timer fired late, not the app)",
            {SERVING: False},
        )
        return True
