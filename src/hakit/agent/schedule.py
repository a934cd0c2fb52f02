"""What the agent's job schedules share: snapshots (hakit.agent.snapshots), backups and
health checks (hakit.agent.backups), restore drills (hakit.agent.drills).

Each is a task beside the agent's other loops that looks every ``tick`` at the node's
epoch as the running active (``active()``, 0 when it is not) and runs its jobs in
processes of their own (hakit.agent.jobs). ``JobSchedule`` holds the loop (a job's
bug is recorded and the schedule goes on: it must not end the agent and its app),
the record of a job killed midway, and a run of failures alerted once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hakit.agent.jobs import Finished, JobProcess
from hakit.config import Config
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import Alert

log = logging.getLogger("hakit.agent.schedule")

MAX_TICK = 1.0  # how often the schedule (and, during a job, the node's role) is looked at

Record = Callable[..., None]  # Agent._record(kind, reason, *, epoch=, data=)
Raise = Callable[[Alert], Awaitable[None]]  # Agent._execute


def tick_for(*intervals: float | None) -> float:
    """A quarter of the shortest interval set, at most ``MAX_TICK`` (none set: ``MAX_TICK``)."""
    shortest = min((every for every in intervals if every), default=None)
    return MAX_TICK if shortest is None else min(MAX_TICK, shortest / 4)


def check_due(now: float, every: float | None, last: float | None) -> bool:
    """Whether a periodic job (a health check, a drill) is due: never run, ``every`` since
    ``last`` started, or ``last`` more than ``every`` in the future (the clock was set back)."""
    if every is None:
        return False
    return last is None or now - last >= every or last - now > every


class JobSchedule:
    """The loop and the bookkeeping; a subclass says what a ``turn`` does, its jobs'
    ``command``, and the ``intervals`` its tick follows. (A subclass's own state is
    class attributes with immutable defaults, set on the instance as it changes.)"""

    label = "job"  # "scheduled <label>" in the history
    command: tuple[str, ...] = ()  # the job process's (hakit.agent.jobs)
    process_name = "job"  # "the <process_name> process ended with code ..."

    def __init__(
        self,
        cfg: Config,
        node: str,
        *,
        active: Callable[[], int],
        record: Record,
        alert: Raise,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.active = active
        self.record = record
        self.alert = alert
        self.clock = clock
        self.tick = tick_for(*self.intervals())
        self.runner = JobProcess(self.command, self.process_name)
        self.failures = 0  # consecutive

    def intervals(self) -> tuple[float | None, ...]:
        return ()

    @property
    def enabled(self) -> bool:
        return True

    async def turn(self, epoch: int) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """The schedule; when not ``enabled``, waits forever (the agent cancels it)."""
        if not self.enabled:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.tick)
            epoch = self.active()
            try:
                await self.turn(epoch)
            except Exception as error:  # a job's bug must not end the agent (and its app)
                log.exception("scheduled %s", self.label)
                self.record(
                    EventKind.INTERNAL,
                    f"scheduled {self.label}: unexpected {error!r}; the schedule goes on",
                    epoch=epoch,
                )

    def record_abandoned(
        self, kind: EventKind, finished: Finished, epoch: int, leaves: str
    ) -> None:
        """A job killed midway (``finished.abandoned`` says why): recorded, not alerted
        (what made it stop, a failover say, is alerted on its own)."""
        self.record(
            kind,
            f"scheduled {self.label} abandoned after {finished.seconds:.1f} s: "
            f"{finished.abandoned}; its process was killed ({leaves})",
            epoch=epoch,
            data={"abandoned": True, "seconds": round(finished.seconds, 3)},
        )

    async def failed(
        self,
        kind: EventKind,
        reason: str,
        epoch: int,
        alert: AlertKind,
        data: dict[str, Any],
    ) -> None:
        """One more failure in a run: recorded each time, alerted the first time (the
        history has the rest)."""
        self.failures += 1
        self.record(kind, reason, epoch=epoch, data={**data, "failures": self.failures})
        if self.failures == 1:
            await self.alert(Alert(alert, reason, data=data))
