"""One scheduled capture, in a process of its own (``COMMAND``, then ``--parent PID``).

The agent (hakit.agent.snapshots) starts it and writes the ``Job`` as JSON on its
stdin (not on the command line: the database URL may hold a password); it prints
one JSON line, the ``Outcome``, and exits 0, or 1 when the capture failed.

A process, not a thread of the agent: hashing a home is CPU work that would hold
the agent's interpreter lock and delay its lease renewals and probes; here it
runs at a lower priority (``nice``) and can be killed by PID the moment the node
is no longer active. It dies with the agent (``PR_SET_PDEATHSIG``), so no capture
goes on under an agent that is gone; a capture killed midway leaves no
generation (the manifest is written last) and its objects are swept by a later
prune once older than the grace period.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hakit.errors import HakitError
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.prune import prune
from hakit.snapshot.retention import RetentionPolicy
from hakit.snapshot.store import open_local_store

NICENESS = 10  # below the agent and the app
# Not ``-m hakit.agent.snapshot_job``: the package imports this module first (runpy warns).
COMMAND = ("-c", "import sys; from hakit.agent.snapshot_job import main; sys.exit(main())")
_PR_SET_PDEATHSIG = 1


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


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    generation: str = ""
    error: str = ""  # the capture's failure
    data: dict[str, Any] = field(default_factory=dict)  # counts, for the history
    prune_error: str = ""  # the capture succeeded, retention did not

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, line: str) -> Outcome:
        raw = json.loads(line)
        return cls(
            ok=bool(raw["ok"]),
            generation=str(raw.get("generation", "")),
            error=str(raw.get("error", "")),
            data=dict(raw.get("data", {})),
            prune_error=str(raw.get("prune_error", "")),
        )


def run(job: Job) -> Outcome:
    started = time.monotonic()
    try:
        store = open_local_store(Path(job.directory), create=True)
        report = create_snapshot(
            store,
            CaptureOptions(
                home=Path(job.home),
                database_url=job.database_url,
                node=job.node,
                epoch=job.epoch,
                exclude=frozenset(job.exclude),
            ),
        )
    except (HakitError, OSError) as error:
        return Outcome(ok=False, error=str(error))
    data: dict[str, Any] = {
        "generation": report.manifest.generation,
        "taken_ns": report.manifest.started_ns,
        "files": sum(1 for entry in report.manifest.entries if entry.type == "f"),
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
    return Outcome(True, report.manifest.generation, data=data, prune_error=prune_error)


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before the line above
        sys.exit(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hakit.agent.snapshot_job")
    parser.add_argument("--parent", type=int, required=True, help="the agent's pid")
    args = parser.parse_args(argv)
    _die_with(args.parent)
    os.nice(NICENESS)
    outcome = run(Job.decode(sys.stdin.buffer.read()))
    print(outcome.encode(), flush=True)
    return 0 if outcome.ok else 1
