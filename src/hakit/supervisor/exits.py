"""How an app's exit is told: out of memory or a crash, the words for it (pure).

Read by the supervisor (hakit.supervisor.process) when the app ends; the start marker
it writes into the app's log bounds what "this run's log" is.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

START_MARKER = "===== hakit: start"  # a log line written before every start
LOG_TAIL_BYTES = 64 * 1024  # how much of the log end is read to classify an exit
LOG_TAIL_LINES = 50  # "the last lines" searched for an out-of-memory message
FOREGROUND_ADVICE = (
    "the start command must stay in the foreground (e.g. Tomcat's `catalina.sh run`, "
    "not `startup.sh`): hakit supervises the process it started"
)
_OOM_EXIT_CODE = 137  # 128 + SIGKILL: what a container runtime reports for an OOM kill
_OOM_LOG = re.compile(r"OutOfMemoryError|Out of memory|MemoryError")


@dataclass(frozen=True, slots=True)
class ExitInfo:
    pid: int
    returncode: int | None  # negative: killed by that signal (asyncio convention)
    signal: int | None  # the signal that ended the main process, if any
    oom: bool  # ended by running out of memory
    expected: bool  # we asked for it (stop or kill)
    description: str  # e.g. "killed by SIGKILL", "exited with code 3", "out of memory (exit 137)"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_returncode(returncode: int) -> str:
    """'killed by SIGKILL', 'exited with code 3', 'exited with code 143 (128+SIGTERM)'."""
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    text = f"exited with code {returncode}"
    if returncode == 126:
        return text + " (command not executable)"
    if returncode == 127:
        return text + " (command not found)"
    if returncode > 128 and (returncode - 128) in signal.valid_signals():
        # A shell or the JVM reports a child killed by signal N as 128 + N.
        return text + f" (128+{signal_name(returncode - 128)})"
    return text


def classify_exit(returncode: int, log_tail: str) -> tuple[bool, str]:
    """(oom, description) for a process that ended with ``returncode``.

    ``log_tail`` is the end of the app's output from its latest start; an
    out-of-memory message in its last lines makes the exit an OOM whatever
    the code, so the policy restarts instead of counting a plain crash.
    """
    last_lines = "\n".join(log_tail.splitlines()[-LOG_TAIL_LINES:])
    found = _OOM_LOG.search(last_lines)
    if returncode == _OOM_EXIT_CODE:
        return True, f"out of memory (exit {_OOM_EXIT_CODE})"
    if found:
        return (
            True,
            f"out of memory ({found.group(0)} in the log; {describe_returncode(returncode)})",
        )
    return False, describe_returncode(returncode)


def tail_since_last_start(text: str) -> str:
    """The part of a log after the latest start marker (earlier runs do not count)."""
    index = text.rfind(START_MARKER)
    if index < 0:
        return text
    newline = text.find("\n", index)
    return "" if newline < 0 else text[newline + 1 :]


def foreground_words(left: Mapping[str, Any]) -> str:
    """What to say when the app's main process exited and left processes running."""
    pids = [int(pid) for pid in left.get("pids", [])]
    commands = [str(command) for command in left.get("commands", []) if command]
    shown = f" ({'; '.join(commands[:2])})" if commands else ""
    return (
        f"it left {len(pids)} process{'es' if len(pids) != 1 else ''} running "
        f"{pids[:5]}{shown}, stopped by hakit: {FOREGROUND_ADVICE}"
    )
