"""Running the fence command (``failover.fence_command``), as Pacemaker runs a fence
agent: its own process group, bounded by ``fence_timeout``, success is exit status 0,
its output appended to a log file and its tail kept for the event (hakit.fencing.fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hakit.fencing.watchdog import kill_group_now

OUTPUT_TAIL = 2000  # characters of a fence command's output kept in its event


def render_fence_command(argv: Sequence[str], node: str, host: str) -> list[str]:
    """``argv`` with ``{node}`` and ``{host}`` of the node to fence substituted."""
    values = {"node": node, "host": host}
    return [part.format_map(values) for part in argv]


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    summary: str  # "exited 0 after 0.2 s", "did not finish within 10 s", ...
    returncode: int | None
    elapsed: float
    output: str


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as output:
            output.seek(offset)
            data = output.read()
    except OSError:
        return ""
    return data.decode("utf-8", errors="replace")[-OUTPUT_TAIL:].strip()


async def run_fence_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str], log_path: Path
) -> CommandResult:
    """Run one fence command in its own process group, bounded by ``timeout``.

    Its output is appended to ``log_path`` (a file, not a pipe: a fence agent
    that leaves a child behind cannot keep us waiting for the pipe's end).
    Success is exit status 0, as for Pacemaker fence agents.
    """
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # 0600: a fence agent's output may carry a BMC's or a cloud API's credentials.
    with open(log_path, "ab", opener=lambda path, flags: os.open(path, flags, 0o600)) as output:
        output.write(f"===== hakit: fence {list(argv)!r} at {time.ctime()} =====\n".encode())
        output.flush()  # before the command writes to the same file
        offset = output.tell()
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )
        except OSError as error:
            return CommandResult(
                False,
                f"could not be started: {error.strerror or error} (check failover.fence_command)",
                None,
                time.monotonic() - started,
                "",
            )
    try:
        async with asyncio.timeout(timeout):
            returncode = await process.wait()
    except TimeoutError:
        kill_group_now(process.pid)
        with contextlib.suppress(ProcessLookupError):
            await process.wait()
        elapsed = time.monotonic() - started
        return CommandResult(
            False,
            f"did not finish within fence_timeout {timeout:g} s (killed)",
            None,
            elapsed,
            _read_from(log_path, offset),
        )
    elapsed = time.monotonic() - started
    # Anything the fence agent left behind in its group goes too.
    kill_group_now(process.pid)
    if returncode == 0:
        summary = f"exited 0 after {elapsed:.1f} s"
    elif returncode < 0:
        summary = f"was killed by signal {-returncode} after {elapsed:.1f} s"
    else:
        summary = f"exited with status {returncode} after {elapsed:.1f} s"
    return CommandResult(
        returncode == 0, summary, returncode, elapsed, _read_from(log_path, offset)
    )
