"""One scheduled capture, in a process of its own (``COMMAND``, then ``--parent PID``).

The agent (hakit.agent.snapshots, and hakit.agent.replication for replicated
storage) starts it and writes the ``Job`` as JSON on its stdin; it prints the
``Outcome`` (hakit.agent.jobs, which says why a process, at a lower priority, dying
with the agent). With a retention policy (``keep_*``) the repository is pruned
right after the capture, in the same process (``grace``: hakit.snapshot.prune); a
prune that fails leaves the generation and says why (``prune_error``). A capture
killed midway leaves no generation (the manifest is written last) and its objects
are swept by a later prune once older than the grace period.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hakit.agent.jobs import Outcome, job_main
from hakit.errors import HakitError
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.database import DUMP
from hakit.snapshot.prune import prune
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import open_local_store

# Not ``-m hakit.agent.snapshot_job``: the package imports this module first (runpy warns).
COMMAND = ("-c", "import sys; from hakit.agent.snapshot_job import main; sys.exit(main())")


@dataclass(frozen=True, slots=True)
class Job:
    home: str
    database_url: str
    directory: str
    node: str
    epoch: int
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    grace: float = 3600.0
    postgres_method: str = DUMP  # [snapshot] postgres_method
    # Paths relative to the home left out (replicated storage: the SQLite file inside it,
    # read through the backup API instead; hakit.snapshot.apply.home_exclusions).
    exclude: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> Job:
        raw = json.loads(data)
        return cls(**{**raw, "exclude": tuple(raw.get("exclude", ()))})

    @property
    def policy(self) -> RetentionPolicy:
        return RetentionPolicy(self.keep_last, self.keep_daily, self.keep_weekly)


def run(job: Job) -> Outcome:
    started = time.monotonic()
    try:
        store = open_local_store(Path(job.directory), create=True)
        report = create_snapshot(
            store,
            CaptureOptions(
                home=Path(job.home),
                database_url=job.database_url,
                postgres_method=job.postgres_method,
                node=job.node,
                epoch=job.epoch,
                exclude=frozenset(job.exclude),
            ),
        )
    except (HakitError, OSError) as error:
        return Outcome(ok=False, error=str(error))
    data: dict[str, Any] = {
        "generation": report.header.generation,
        "taken_ns": report.header.started_ns,
        "files": report.files,
        "files_read": report.walked.files_read,
        "bytes_written": report.written.bytes_written,
        "seconds": round(time.monotonic() - started, 3),
    }
    prune_error = ""
    if not job.policy.empty:
        try:
            pruned = prune(store, job.policy, grace=job.grace)
        except (HakitError, OSError) as error:
            prune_error = str(error)
        else:
            data["pruned"] = list(pruned.removed_generations)
            data["objects_removed"] = pruned.removed_objects
    return Outcome(True, report.header.generation, data=data, prune_error=prune_error)


def main(argv: list[str] | None = None) -> int:
    return job_main("hakit.agent.snapshot_job", lambda data: run(Job.decode(data)), argv)
