"""The agent's scheduled work in processes of their own: snapshots (hakit.agent.snapshot_job),
backups, health checks and restore drills (hakit.agent.backup_job).

Both sides of one protocol:

- **The agent's side** (``JobProcess.run``): starts ``python -c COMMAND --parent PID``,
  writes the job as JSON on its stdin (not on the command line: a database URL may
  hold a password), and while it runs looks every ``tick`` at ``stop_reason()``: a
  reason (the node stopped, or started, being the running active) kills it by PID,
  as does running longer than ``timeout``. Its last stdout line is the ``Outcome``;
  a process that printed none (a crash, killed) is a failure with its stderr's tail.
- **The job's side** (``job_main``): dies with the agent (``PR_SET_PDEATHSIG``), so no
  job goes on under an agent that is gone; runs at a lower priority (``nice``);
  prints one JSON line, the ``Outcome``, and exits 0, or 1 when it failed.

A process, not a thread of the agent: hashing a home, restoring it or waiting on a
store that hangs would hold the agent's interpreter lock or a thread, and delay its
lease renewals and probes; a process can be killed by PID at once.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from hakit.config import format_duration

NICENESS = 10  # below the agent and the app
STDERR_TAIL = 600  # characters of a crashed job's stderr kept in its event
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    generation: str = ""
    error: str = ""  # the job's failure
    data: dict[str, Any] = field(default_factory=dict)  # counts, for the history
    prune_error: str = ""  # a capture succeeded, its retention did not

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


@dataclass(frozen=True, slots=True)
class Finished:
    outcome: Outcome
    seconds: float
    abandoned: str  # why it was killed ("" when it ran to its end)


def outcome_of(stdout: bytes, stderr: bytes, code: int | None, what: str) -> Outcome:
    """The job's last stdout line, or a failure built from its exit and stderr."""
    lines = stdout.decode(errors="replace").strip().splitlines()
    if lines:
        try:
            return Outcome.decode(lines[-1])
        except (ValueError, KeyError, TypeError):
            pass
    tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL:]
    return Outcome(ok=False, error=f"the {what} process ended with code {code}: {tail}")


class JobProcess:
    """Runs one job at a time of ``command``; ``process`` is the one running (else None)."""

    def __init__(self, command: tuple[str, ...], what: str) -> None:
        self.command = command
        self.what = what  # "capture", "backup"...: the process's name in a failure
        self.process: asyncio.subprocess.Process | None = None

    async def run(
        self,
        payload: bytes,
        tick: float,
        stop_reason: Callable[[], str],
        timeout: float | None = None,
    ) -> Finished:
        """The job to its end, or killed when ``stop_reason()`` gives a reason or after
        ``timeout`` seconds. Raises OSError when the process cannot start."""
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.command,
            "--parent",
            str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.process = process
        talk = asyncio.ensure_future(process.communicate(payload))
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
            self.process = None
        outcome = outcome_of(stdout, stderr, process.returncode, self.what)
        return Finished(outcome, time.monotonic() - started, abandoned)


# --- the job's side ---------------------------------------------------------------


def die_with(parent: int) -> None:
    """SIGKILL for this process when its parent dies (exit now if it already has)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before the line above
        sys.exit(1)


def job_main(prog: str, run: Callable[[bytes], Outcome], argv: list[str] | None = None) -> int:
    """A job process's ``main``: ``run`` the job read from stdin, print its outcome."""
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--parent", type=int, required=True, help="the agent's pid")
    args = parser.parse_args(argv)
    die_with(args.parent)
    os.nice(NICENESS)
    outcome = run(sys.stdin.buffer.read())
    print(outcome.encode(), flush=True)
    return 0 if outcome.ok else 1
