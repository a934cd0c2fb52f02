"""One scheduled backup, health check or restore drill, in a process of its own
(``COMMAND``, ``--parent PID``).

The agent (hakit.agent.backups, hakit.agent.drills) starts it and writes the
``BackupJob`` as JSON on its stdin; it prints hakit.agent.jobs' ``Outcome`` (which
says why a process: hashing and restoring hold the interpreter lock, a job is
killed by PID the moment the node's role changes, it dies with the agent). The
health check runs here too, so a store that hangs holds no thread of the agent:
the agent kills it after ``CHECK_TIMEOUT``. A drill's outcome is ok when the drill
passed; its data is the drill's record (hakit.backup.drill), which the job also
keeps in the node's state directory.

The target is read again from the configuration file (``config``), as ``hakit
backup create`` reads it: filestore-config.xml may have changed since the agent
started, and the credentials come from the agent's environment.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hakit.agent.jobs import Outcome, job_main
from hakit.backup.drill import drill_from_config, holds_no_generation
from hakit.backup.healthcheck import run_directory_check, run_s3_check
from hakit.backup.stores import close_store, open_store, s3_client, unwrapped
from hakit.backup.target import LocalTarget, resolve_target
from hakit.config import load_config
from hakit.errors import HakitError
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.s3store import S3Store

# Not ``-m``: the package imports this module first (runpy warns), as snapshot_job's.
COMMAND = ("-c", "import sys; from hakit.agent.backup_job import main; sys.exit(main())")
BACKUP = "backup"
CHECK = "check"
DRILL = "drill"


@dataclass(frozen=True, slots=True)
class BackupJob:
    kind: str  # BACKUP, CHECK or DRILL
    config: str  # the hakit.toml the agent runs with
    node: str
    epoch: int = 0
    home: str = ""  # this node's home and database (replicated storage: its own)
    database_url: str = ""
    scratch: str = ""  # DRILL: where it restores (a new directory is made in it)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> BackupJob:
        return cls(**json.loads(data))


def excluded(home: Path, target: LocalTarget) -> frozenset[str]:
    """A backup directory inside the home is not backed up into itself."""
    home, directory = home.absolute(), target.directory.absolute()
    if home in directory.parents:
        return frozenset({directory.relative_to(home).as_posix()})
    return frozenset()


def backup(job: BackupJob) -> Outcome:
    started = time.monotonic()
    try:
        cfg = load_config(Path(job.config))
        target = resolve_target(cfg)
        store = open_store(target, create=True)
    except (HakitError, OSError) as error:
        return Outcome(ok=False, error=str(error))
    try:
        home = Path(job.home)
        report = create_snapshot(
            store,
            CaptureOptions(
                home=home,
                database_url=job.database_url,
                postgres_method=cfg.snapshot.postgres_method,
                node=job.node,
                epoch=job.epoch,
                exclude=excluded(home, target) if isinstance(target, LocalTarget) else frozenset(),
            ),
        )
    except (HakitError, OSError) as error:
        return Outcome(ok=False, error=f"backup to {target.describe()} failed: {error}")
    finally:
        close_store(store)
    data: dict[str, Any] = {
        "generation": report.header.generation,
        "target": target.describe(),
        "taken_ns": report.header.started_ns,
        "files": report.files,
        "files_read": report.walked.files_read,
        "bytes_written": report.written.bytes_written,
        "seconds": round(time.monotonic() - started, 3),
    }
    bottom = unwrapped(store)
    if isinstance(bottom, S3Store):
        data["objects_uploaded"] = bottom.stats.objects_put
    return Outcome(True, report.header.generation, data=data)


def check(job: BackupJob) -> Outcome:
    """The health check; ``ok`` means it ran (its verdict is in ``data``)."""
    try:
        target = resolve_target(load_config(Path(job.config)))
        if isinstance(target, LocalTarget):
            report = run_directory_check(target.directory, job.node)
        else:
            report = run_s3_check(s3_client(target), target.filestore.bucket, job.node)
    except (HakitError, OSError) as error:
        return Outcome(ok=False, error=str(error))
    return Outcome(
        True,
        data={
            "status": str(report.status),
            "messages": list(report.messages),
            "target": target.describe(),
        },
    )


def drill(job: BackupJob) -> Outcome:
    """``hakit backup drill``'s drill of the newest generation, recorded; nothing (``data``
    "empty") when the target holds no generation yet."""
    try:
        cfg = load_config(Path(job.config))
        if holds_no_generation(resolve_target(cfg)):
            return Outcome(True, data={"empty": True})
        report, target = drill_from_config(cfg, scratch=Path(job.scratch) if job.scratch else None)
    except (HakitError, OSError) as error:
        return Outcome(ok=False, error=str(error))
    failed = [f"{check.name}: {check.detail}" for check in report.checks if check.failed]
    return Outcome(
        report.ok, report.generation or "", error="; ".join(failed), data=report.encode(target)
    )


def run(job: BackupJob) -> Outcome:
    jobs = {BACKUP: backup, CHECK: check, DRILL: drill}
    return jobs[job.kind](job)


def main(argv: list[str] | None = None) -> int:
    return job_main("hakit.agent.backup_job", lambda data: run(BackupJob.decode(data)), argv)
