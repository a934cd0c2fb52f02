"""Scheduled restore drills (``[backup] drill_interval``): ``hakit backup drill`` by the agent.

- **Who: the standbys**, never the running active (unless the cluster has a single
  node, which is both). A drill only reads the backups, but it restores the whole
  newest generation and checks it: disk and CPU work the active's app would feel,
  and on a standby it proves what a failover's restore needs, that a node other
  than the one that took the backups can read them (its credential, its key) and
  restore them. So every standby drills, each for itself; a write-only active
  (which may not read) could not drill anyway. A standby is a node that holds no
  lease once its agent has run a cold start's election (``settle``: before, any
  node may yet become the active); one that takes the lease while a drill runs
  kills it by PID (``drill_due``, ``drills_here``), as a backup is killed when its
  node stops being the active.
- **When**: every ``drill_interval`` (``check_due``, pure), counted from the last
  drill's start as recorded in ``<state_dir>/backup/last-drill.json``, so a
  restarted agent keeps the rhythm; a drill still running after an interval is
  stuck and killed. A target that holds no generation yet (a new cluster before
  its first backup) is nothing to drill: no event, tried again an interval later
  (a missing backup is ``stale_after``'s alert, on the active).
- **Where**: in a directory of this agent's own, ``<state_dir>/backup/drills``, or
  with ``drill_scratch`` (a larger disk, say) ``<drill_scratch>/hakit-drills-<node>-<digest
  of the state directory>``, which the agent clears after each drill: a drill killed
  midway leaves no restored copy behind. (Not the system's temporary directory: often a
  small tmpfs, and shared by every agent on the host, whose drills one agent's clearing
  would remove.)
- **Told**: each drill is recorded, ``backup-drill`` (passed, with its recovery
  point: the generation and how old it was) or ``backup-drill-failed`` (the failed
  checks); the first failure of a run raises a ``backup`` alert through
  ``[notify]``, and the first pass after failures another ("restore drills pass
  again"). The job keeps the result in last-drill.json, which ``hakit backup list``
  shows on this node.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hakit.agent.backup_job import COMMAND, DRILL, BackupJob
from hakit.agent.jobs import Finished
from hakit.agent.schedule import JobSchedule, check_due
from hakit.backup.drill import format_age, load_record, record_path
from hakit.config import format_duration
from hakit.config.derived import derived_timings
from hakit.config.sections.backup import BackupConfig
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import Alert
from hakit.snapshot.scratch import sweep

log = logging.getLogger("hakit.agent.drills")

# --- decisions (pure) ---------------------------------------------------------


def drills_here(epoch: int, alone: bool) -> bool:
    """A node drills unless it holds the lease (``epoch``) in a cluster of more than one
    node (``alone``: the only node drills, as there is no standby)."""
    return alone or not epoch


def drill_due(
    now: float,
    *,
    every: float | None,
    last: float | None,
    since: float,
    settle: float,
    epoch: int,
    alone: bool,
) -> bool:
    """Whether to start a drill now: on a node that drills (``drills_here``), once its
    agent has run ``settle`` seconds since ``since`` (a cold start's election is over: a
    node that is to be the active holds the lease by then), every ``every`` after the
    ``last`` one started (``check_due``)."""
    if not drills_here(epoch, alone) or now - since < settle:
        return False
    return check_due(now, every, last)


def drill_summary(data: Mapping[str, Any]) -> str:
    """The drilled generation and its recovery point, from a drill's record."""
    generation, taken, finished = (
        data.get("generation"),
        data.get("taken_ns"),
        data.get("finished_ns"),
    )
    if not generation or not isinstance(taken, int) or not isinstance(finished, int):
        return "no generation drilled"
    age = format_age(max(0.0, (finished - taken) / 1e9))
    checks = data.get("checks")
    count = len(checks) if isinstance(checks, list) else 0
    return f"generation {generation} (recovery point: taken {age} before the drill), {count} checks"


# --- I/O ----------------------------------------------------------------------


def clear_scratch(scratch: Path) -> None:
    """Remove the restored copies drills left in ``scratch`` (a drill killed midway) at
    once, not at the next drill: the scratch directories whose process is gone
    (hakit.snapshot.scratch.sweep), nothing else."""
    sweep(scratch)


def last_drill_start(state_dir: Path) -> float | None:
    """When the last drill recorded on this node started (None: none recorded)."""
    record = load_record(record_path(state_dir))
    started = None if record is None else record.get("started_ns")
    return started / 1e9 if isinstance(started, int) else None


class DrillSchedule(JobSchedule):
    """``await schedule.run()`` beside the agent's other loops (waits forever when off)."""

    label = "restore drill"
    command = COMMAND
    process_name = "drill"
    last: float | None = None  # when the last drill started
    since: float | None = None  # when this schedule first ran (its agent's start)
    _read = False  # ``last`` read from the record, a crashed agent's restored copy removed

    @property
    def section(self) -> BackupConfig:
        return self.cfg.backup

    def intervals(self) -> tuple[float | None, ...]:
        return (self.section.drill_interval,)

    @property
    def enabled(self) -> bool:
        return self.section.drill_interval is not None and self.cfg.source is not None

    @property
    def alone(self) -> bool:
        return len(self.cfg.nodes) == 1

    @property
    def settle(self) -> float:
        """A cold start's election: the last active's head start (``boot_grace``), and one
        lease TTL to take the lease."""
        return derived_timings(self.cfg).boot_grace + self.cfg.coordination.lease_ttl

    @property
    def scratch(self) -> Path:
        """This agent's own directory for its drills (cleared after each, so no other
        agent's may be it: another cluster's node of the same name shares the host's
        directories, hence the state directory's digest)."""
        state = self.cfg.cluster.state_dir
        if self.section.drill_scratch is None:
            return state / "backup" / "drills"
        digest = hashlib.sha256(str(state).encode()).hexdigest()[:8]
        return self.section.drill_scratch / f"hakit-drills-{self.node}-{digest}"

    def job(self) -> BackupJob:
        assert self.cfg.source is not None
        return BackupJob(
            kind=DRILL, config=str(self.cfg.source), node=self.node, scratch=str(self.scratch)
        )

    async def turn(self, epoch: int) -> None:
        if self.since is None:
            self.since = self.clock()
        if not self._read:
            self._read = True
            self.last = await asyncio.to_thread(last_drill_start, self.cfg.cluster.state_dir)
            await asyncio.to_thread(clear_scratch, self.scratch)  # a crashed agent's
        due = drill_due(
            self.clock(),
            every=self.section.drill_interval,
            last=self.last,
            since=self.since,
            settle=self.settle,
            epoch=epoch,
            alone=self.alone,
        )
        if due:
            self.last = self.clock()
            await self.drill(epoch)

    def _became_active(self) -> str:
        epoch = self.active()
        if drills_here(epoch, self.alone):
            return ""
        return f"{self.node} took the lease (epoch {epoch}): no drill beside the active's app"

    async def drill(self, epoch: int) -> None:
        try:
            finished = await self.runner.run(
                self.job().encode(), self.tick, self._became_active, self.section.drill_interval
            )
        except OSError as error:
            await self._failed(epoch, f"the drill process could not start: {error}", {})
            return
        finally:
            await asyncio.to_thread(clear_scratch, self.scratch)
        await self._report(epoch, finished)

    async def _report(self, epoch: int, finished: Finished) -> None:
        if finished.abandoned:
            self.record_abandoned(
                EventKind.BACKUP_DRILL_FAILED,
                finished,
                epoch,
                "the repository is untouched: a drill only reads; its restored copy removed",
            )
            return
        outcome = finished.outcome
        data: dict[str, Any] = dict(outcome.data)
        if outcome.ok and data.get("empty"):
            log.info("no backup to drill yet; the next try in an interval")
            return
        target = data.get("target", "the backup target")
        if not outcome.ok:
            await self._failed(epoch, outcome.error, data)
            return
        again = self.failures > 0
        self.failures = 0
        reason = (
            f"restore drill of {target} passed in {finished.seconds:.1f} s: "
            f"{drill_summary(data)}"
            + ("; restore drills pass again" if again else "")
            + f"; next in {format_duration(self.section.drill_interval or 0)}"
        )
        self.record(EventKind.BACKUP_DRILL, reason, epoch=epoch, data=data)
        if again:
            await self.alert(Alert(AlertKind.BACKUP, reason, data={"drill": "passed"}))

    async def _failed(self, epoch: int, error: str, data: dict[str, Any]) -> None:
        """``data``: the drill's record, when it ran to a verdict."""
        target = data.get("target", "the backup target")
        summary = f" ({drill_summary(data)})" if data else ""
        await self.failed(
            EventKind.BACKUP_DRILL_FAILED,
            f"restore drill of {target} failed: {error}{summary}",
            epoch,
            AlertKind.BACKUP,
            {**data, "error": error, "drill": "failed"},
        )
