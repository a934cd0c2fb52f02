"""Scheduled snapshots: the active node's agent captures a generation every
``[snapshot] interval`` into ``[snapshot] directory``, then applies retention when
``keep_*`` is set.

- **Only the active captures**: a node captures while it holds the lease and its
  policy is RUNNING as active (``active_epoch``); a standby never does.
- **Never in the agent's way**: the capture runs in a process of its own
  (hakit.agent.snapshot_job, hakit.agent.jobs) at a lower priority; this task only
  starts it and waits, so the lease loop, the probes and the heartbeat run as usual.
- **Abandoned when the lease goes**: while it waits, this task checks every
  ``tick`` that the node is still active under the epoch the capture started
  with; if not, it kills the capture by PID. A capture killed midway leaves no
  generation (the manifest is written last); a capture's manifest records its epoch.
- **When**: ``capture_due`` (pure) decides, from the last capture's time: the
  newest manifest's in the repository when the node becomes active (so a
  restarted agent or a new active keeps the rhythm instead of capturing at once),
  then each attempt's start here. A failed attempt waits one interval too.
- **Told**: every capture is recorded (``snapshot``, or ``snapshot-failed`` with the
  error); the first failure of a run of failures also raises a ``snapshot`` alert
  through ``[notify]``. An abandoned capture is recorded, not alerted (a failover
  is alerted on its own).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hakit.agent.jobs import Finished
from hakit.agent.schedule import JobSchedule
from hakit.agent.snapshot_job import COMMAND, Job
from hakit.config import format_duration
from hakit.config.sections.snapshot import SnapshotConfig
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import PolicyState, PolicyView, Role
from hakit.snapshot.prune import MANIFESTS
from hakit.snapshot.store import LocalStore

log = logging.getLogger("hakit.agent.snapshots")


NO_GENERATION = "no generation, unless its manifest was already written"


def active_epoch(view: PolicyView, lease_epoch: int) -> int:
    """The epoch this node serves under as the running active, else 0."""
    if lease_epoch and view.role is Role.ACTIVE and view.state is PolicyState.RUNNING:
        return lease_epoch
    return 0


def capture_due(now: float, interval: float | None, last: float | None, *, active: bool) -> bool:
    """Whether to start a capture now (wall-clock seconds). ``last``: when the newest
    capture started (None: never). A ``last`` more than an interval in the future
    (the clock was set back) does not hold captures off until the clock catches up."""
    if interval is None or not active:
        return False
    if last is None:
        return True
    return now - last >= interval or last - now > interval


def no_longer_active(node: str, epoch: int, active: Callable[[], int]) -> Callable[[], str]:
    """A job's ``stop_reason``: why a job started as the running active of ``epoch`` must
    stop ("" while the node still is)."""

    def reason() -> str:
        now_epoch = active()
        if now_epoch == epoch:
            return ""
        return f"{node} is no longer the running active of epoch {epoch}" + (
            f" (now epoch {now_epoch})" if now_epoch else ""
        )

    return reason


def newest_capture_time(directory: Path) -> float | None:
    """When the repository's newest manifest was written (None: no generation yet)."""
    if not (directory / MANIFESTS).is_dir():
        return None
    times = [item.modified_ns for item in LocalStore(directory).list_objects(MANIFESTS)]
    return max(times) / 1e9 if times else None


class SnapshotSchedule(JobSchedule):
    """``await schedule.run()`` beside the agent's other loops (only when ``enabled``)."""

    label = "snapshot"
    command = COMMAND
    process_name = "capture"
    last: float | None = None  # when the newest capture started
    _epoch_seen = 0  # the epoch ``last`` was read from the repository for

    @property
    def section(self) -> SnapshotConfig:
        return self.cfg.snapshot

    def intervals(self) -> tuple[float | None, ...]:
        return (self.section.interval,)

    @property
    def process(self) -> asyncio.subprocess.Process | None:
        """The capture running now."""
        return self.runner.process

    @property
    def enabled(self) -> bool:
        return self.section.interval is not None and self.section.directory is not None

    async def turn(self, epoch: int) -> None:
        if epoch and epoch != self._epoch_seen:
            self._epoch_seen = epoch
            assert self.section.directory is not None
            try:
                stored = await asyncio.to_thread(newest_capture_time, self.section.directory)
            except OSError:
                stored = None  # the capture says what is wrong with the directory
            if stored is not None and (self.last is None or stored > self.last):
                self.last = stored
        if capture_due(self.clock(), self.section.interval, self.last, active=bool(epoch)):
            self.last = self.clock()
            try:
                await self.capture(epoch)
            except OSError as error:
                await self._failed(epoch, f"the capture process could not start: {error}")

    def job(self, epoch: int) -> Job:
        section = self.section
        assert section.directory is not None
        return Job(
            home=str(self.cfg.app.home),
            database_url=self.cfg.app.database_url,
            directory=str(section.directory),
            node=self.node,
            epoch=epoch,
            keep_last=section.keep_last,
            keep_daily=section.keep_daily,
            keep_weekly=section.keep_weekly,
            grace=section.prune_grace,
            postgres_method=section.postgres_method,
        )

    async def capture(self, epoch: int) -> None:
        """One capture in its own process; killed if the node stops being active."""
        finished = await self.runner.run(
            self.job(epoch).encode(), self.tick, no_longer_active(self.node, epoch, self.active)
        )
        if finished.abandoned:
            self.record_abandoned(EventKind.SNAPSHOT_FAILED, finished, epoch, NO_GENERATION)
            return
        await self._report(epoch, finished)

    async def _report(self, epoch: int, finished: Finished) -> None:
        outcome, seconds = finished.outcome, finished.seconds
        directory = self.section.directory
        if not outcome.ok:
            await self._failed(epoch, outcome.error)
            return
        if self.failures:
            log.info("scheduled snapshots work again after %d failures", self.failures)
        self.failures = 0
        data: Mapping[str, Any] = outcome.data
        pruned = data.get("pruned")
        retention = (f"; retention removed {len(pruned)} generations" if pruned else "") + (
            f"; retention failed: {outcome.prune_error}" if outcome.prune_error else ""
        )
        interval = self.section.interval or 0
        self.record(
            EventKind.SNAPSHOT,
            f"generation {outcome.generation} captured into {directory} in {seconds:.1f} s "
            f"({data.get('files', 0)} files, {data.get('files_read', 0)} read, "
            f"{data.get('bytes_written', 0)} bytes written){retention}; next in "
            f"{format_duration(interval)}",
            epoch=epoch,
            data={**data, **({"prune_error": outcome.prune_error} if outcome.prune_error else {})},
        )

    async def _failed(self, epoch: int, error: str) -> None:
        reason = f"scheduled snapshot into {self.section.directory} failed: {error}"
        await self.failed(
            EventKind.SNAPSHOT_FAILED, reason, epoch, AlertKind.SNAPSHOT, {"error": error}
        )
