"""Scheduled backups and backup health checks, run by every node's agent.

- **Backups** (``[backup] interval``): the running active backs up to the backup
  target (hakit.backup.target) as ``hakit backup create`` does, with
  hakit.agent.snapshots' machinery and rules: only the running active
  (``active_epoch``), in a process of its own (hakit.agent.backup_job) killed by PID when
  the node stops being the running active of the epoch it started under, never in
  the way of the lease loop. ``capture_due`` decides when, from the newest backup
  this node can see when it becomes active (a directory target: its newest
  manifest; S3: the copy of the newest manifest this node wrote, the only one a
  write-only credential sees), then each attempt's start. Recorded as ``backup``
  or ``backup-failed``; the first failure of a run raises a ``backup`` alert
  through ``[notify]``.
- **Stale backups** (``[backup] stale_after``, default twice the interval): while
  the node is the running active and its newest successful backup (or, none seen,
  its becoming active) is older, a ``backup-stale`` event and a ``backup`` alert,
  once until a backup succeeds again (``stale_age``, pure).
- **Health checks** (``[backup] health_check_interval``; default 1 h when an
  interval is set): every node, active or not, runs Jira's check (write, read and
  delete an object under ``backups/Healthcheck/``, hakit.backup.healthcheck) in the
  job process, killed after ``CHECK_TIMEOUT``. ``health_verdict`` (pure) decides:
  an error is recorded and alerted every time; a warning is recorded when it
  changes and alerted once per agent (the advice does not change hourly); ok is
  recorded when it follows something else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hakit.agent.backup_job import BACKUP, CHECK, COMMAND, BackupJob
from hakit.agent.snapshot_job import Job, Outcome
from hakit.agent.snapshots import STDERR_TAIL, Raise, Record, capture_due, newest_capture_time
from hakit.backup.healthcheck import Status
from hakit.backup.target import BackupTarget, LocalTarget, resolve_target
from hakit.config import Config, format_duration
from hakit.errors import HakitError
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import Alert
from hakit.snapshot.s3store import MANIFEST_COPIES

log = logging.getLogger("hakit.agent.backups")

MAX_TICK = 1.0
CHECK_TIMEOUT = 120.0  # seconds a health check may take before it is killed (an error)


# --- decisions (pure) ---------------------------------------------------------


def stale_age(
    now: float, threshold: float | None, last_success: float | None, active_since: float | None
) -> float | None:
    """How old the newest backup is when that is more than ``threshold``, else None.
    No backup seen: counted from when the node became active (``active_since``; None:
    not active, nothing is watched)."""
    if threshold is None or active_since is None:
        return None
    reference = last_success if last_success is not None else active_since
    age = now - reference
    return age if age > threshold else None


def check_due(now: float, every: float | None, last: float | None) -> bool:
    if every is None:
        return False
    return last is None or now - last >= every or last - now > every


@dataclass(frozen=True, slots=True)
class Verdict:
    record: bool
    alert: bool


def health_verdict(
    status: Status,
    messages: tuple[str, ...],
    previous: tuple[Status, tuple[str, ...]] | None,
    warned: frozenset[tuple[str, ...]],
) -> Verdict:
    """What to do with a health check's result, given the previous one and the warnings
    already alerted."""
    if status is Status.ERROR:
        return Verdict(record=True, alert=True)
    if status is Status.WARNING:
        return Verdict(record=(status, messages) != previous, alert=messages not in warned)
    return Verdict(record=previous is not None and previous[0] is not Status.OK, alert=False)


# --- I/O ----------------------------------------------------------------------


def newest_backup_time(target: BackupTarget) -> float | None:
    """The newest backup this node can see without reading the bucket (above)."""
    if isinstance(target, LocalTarget):
        return newest_capture_time(target.directory)
    copies = target.state / MANIFEST_COPIES
    times = [path.stat().st_mtime for path in copies.glob("*.json")] if copies.is_dir() else []
    return max(times) if times else None


@dataclass(frozen=True, slots=True)
class Finished:
    outcome: Outcome
    seconds: float
    abandoned: str  # why it was killed ("" when it ran to its end)


async def run_job(
    job: BackupJob | Job,
    tick: float,
    stop_reason: Callable[[], str],
    timeout: float | None = None,
    *,
    command: tuple[str, ...] = COMMAND,  # snapshot_job's for a Job (replicated storage)
    what: str = "backup",
) -> Finished:
    """``job`` in its own process; killed when ``stop_reason()`` says why or after ``timeout``."""
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *command,
        "--parent",
        str(os.getpid()),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    talk = asyncio.ensure_future(process.communicate(job.encode()))
    abandoned = ""
    try:
        while not talk.done():
            await asyncio.wait({talk}, timeout=tick)
            if talk.done() or abandoned:
                continue
            abandoned = stop_reason()
            if not abandoned and timeout is not None and time.monotonic() - started > timeout:
                abandoned = f"it took more than {format_duration(timeout)}"
            if abandoned:
                process.kill()
        stdout, stderr = talk.result()
    finally:
        if process.returncode is None:  # cancelled: the agent is stopping
            process.kill()
            talk.cancel()
    seconds = time.monotonic() - started
    return Finished(_outcome(stdout, stderr, process.returncode, what), seconds, abandoned)


def _outcome(stdout: bytes, stderr: bytes, code: int | None, what: str = "backup") -> Outcome:
    lines = stdout.decode(errors="replace").strip().splitlines()
    if lines:
        try:
            return Outcome.decode(lines[-1])
        except (ValueError, KeyError, TypeError):
            pass
    tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
    return Outcome(ok=False, error=f"the {what} process ended with code {code}: {tail}")


class BackupSchedule:
    """``await schedule.run()`` beside the agent's other loops."""

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
        self.section = cfg.backup
        self.cfg = cfg
        self.node = node
        self.active = active
        self.record = record
        self.alert = alert
        self.clock = clock
        shortest = min(
            (every for every in (self.section.interval, self.section.health_every) if every),
            default=MAX_TICK,
        )
        self.tick = min(MAX_TICK, shortest / 4)
        self.last: float | None = None  # the newest backup's (or attempt's) start
        self.last_success: float | None = None
        self.active_since: float | None = None
        self.failures = 0  # consecutive
        self.stale_alerted = False
        self.last_check: float | None = None
        self.previous_check: tuple[Status, tuple[str, ...]] | None = None
        self.warned: frozenset[tuple[str, ...]] = frozenset()
        self._epoch_seen = 0

    @property
    def enabled(self) -> bool:
        wanted = self.section.interval is not None or self.section.health_every is not None
        if wanted and self.cfg.source is None:  # pragma: no cover - the agent loads a file
            log.warning("scheduled backups need the configuration's file; none known")
            return False
        return wanted

    def job(self, kind: str, epoch: int = 0) -> BackupJob:
        assert self.cfg.source is not None
        node = self.cfg.node(self.node)
        return BackupJob(
            kind=kind,
            config=str(self.cfg.source),
            node=self.node,
            epoch=epoch,
            home=str(self.cfg.home_of(node)),
            database_url=self.cfg.database_url_of(node),
        )

    async def run(self) -> None:
        """The schedule; when not ``enabled``, waits forever (the agent cancels it)."""
        if not self.enabled:
            await asyncio.Event().wait()
        while True:
            await asyncio.sleep(self.tick)
            epoch = self.active()
            try:
                await self.turn(epoch)
            except Exception as error:  # a backup's bug must not end the agent (and its app)
                log.exception("scheduled backup")
                self.record(
                    EventKind.INTERNAL,
                    f"scheduled backup: unexpected {error!r}; the schedule goes on",
                    epoch=epoch,
                )

    async def turn(self, epoch: int) -> None:
        now = self.clock()
        if not epoch:
            self.active_since = None
            self.stale_alerted = False
        elif epoch != self._epoch_seen:
            self._epoch_seen = epoch
            self.active_since = now
            await self._read_newest()
        if capture_due(now, self.section.interval, self.last, active=bool(epoch)):
            self.last = self.clock()
            await self.backup(epoch)
        await self._watch_staleness(epoch)
        if check_due(self.clock(), self.section.health_every, self.last_check):
            self.last_check = self.clock()
            await self.check(epoch)

    async def _read_newest(self) -> None:
        try:
            target = await asyncio.to_thread(resolve_target, self.cfg)
            stored = await asyncio.to_thread(newest_backup_time, target)
        except (HakitError, OSError):
            stored = None  # the backup says what is wrong with the target
        if stored is not None:
            self.last = max(self.last or stored, stored)
            self.last_success = max(self.last_success or stored, stored)

    async def backup(self, epoch: int) -> None:
        def no_longer_active() -> str:
            now_epoch = self.active()
            if now_epoch == epoch:
                return ""
            return f"{self.node} is no longer the running active of epoch {epoch}" + (
                f" (now epoch {now_epoch})" if now_epoch else ""
            )

        try:
            finished = await run_job(self.job(BACKUP, epoch), self.tick, no_longer_active)
        except OSError as error:
            await self._failed(epoch, f"the backup process could not start: {error}")
            return
        if finished.abandoned:
            self.record(
                EventKind.BACKUP_FAILED,
                f"scheduled backup abandoned after {finished.seconds:.1f} s: "
                f"{finished.abandoned}; its process was killed (no generation, unless its "
                "manifest was already written)",
                epoch=epoch,
                data={"abandoned": True, "seconds": round(finished.seconds, 3)},
            )
            return
        outcome = finished.outcome
        if not outcome.ok:
            await self._failed(epoch, outcome.error)
            return
        self.failures = 0
        self.last_success = self.clock()
        fresh = "; backups are fresh again" if self.stale_alerted else ""
        self.stale_alerted = False
        data: Mapping[str, Any] = outcome.data
        self.record(
            EventKind.BACKUP,
            f"generation {outcome.generation} backed up to {data.get('target', '?')} in "
            f"{finished.seconds:.1f} s ({data.get('files', 0)} files, "
            f"{data.get('files_read', 0)} read, {data.get('bytes_written', 0)} bytes new)"
            f"{fresh}; next in {format_duration(self.section.interval or 0)}",
            epoch=epoch,
            data=dict(data),
        )

    async def _failed(self, epoch: int, error: str) -> None:
        self.failures += 1
        reason = f"scheduled backup failed: {error}"
        self.record(
            EventKind.BACKUP_FAILED,
            reason,
            epoch=epoch,
            data={"error": error, "failures": self.failures},
        )
        if self.failures == 1:  # once per run of failures: the history has the rest
            await self.alert(Alert(AlertKind.BACKUP, reason, data={"error": error}))

    async def _watch_staleness(self, epoch: int) -> None:
        threshold = self.section.stale_threshold
        age = stale_age(self.clock(), threshold, self.last_success, self.active_since)
        if age is None or self.stale_alerted or not epoch:
            return
        self.stale_alerted = True
        how_old = format_duration(round(age))
        reason = (
            f"backups are stale: the newest is {how_old} old"
            if self.last_success is not None
            else f"backups are stale: none seen in {how_old} as the active"
        ) + f" (stale_after {format_duration(threshold or 0)})"
        self.record(EventKind.BACKUP_STALE, reason, epoch=epoch, data={"age": round(age, 1)})
        await self.alert(Alert(AlertKind.BACKUP, reason, data={"stale": True, "age": age}))

    async def check(self, epoch: int) -> None:
        try:
            finished = await run_job(self.job(CHECK), self.tick, lambda: "", CHECK_TIMEOUT)
        except OSError as error:
            finished = Finished(Outcome(ok=False, error=str(error)), 0.0, "")
        outcome = finished.outcome
        if finished.abandoned or not outcome.ok:
            status = Status.ERROR
            messages: tuple[str, ...] = (
                f"the health check did not finish: {finished.abandoned or outcome.error}",
            )
        else:
            status = Status(outcome.data.get("status", Status.ERROR))
            messages = tuple(str(message) for message in outcome.data.get("messages", ()))
        verdict = health_verdict(status, messages, self.previous_check, self.warned)
        self.previous_check = (status, messages)
        where = outcome.data.get("target", "the backup target")
        reason = f"backup health check of {where}: {status.upper()}: " + "; ".join(messages)
        if verdict.record:
            self.record(
                EventKind.BACKUP_CHECK,
                reason,
                epoch=epoch,
                data={"status": str(status), "messages": list(messages)},
            )
        if verdict.alert:
            if status is Status.WARNING:
                self.warned = self.warned | {messages}
            await self.alert(Alert(AlertKind.BACKUP, reason, data={"health": str(status)}))
