"""Start, stop and kill one local app process (DESIGN.md, "Automatic correction").

The app runs as the leader of its own process group, so a stop or a kill
reaches everything it spawned (a shell wrapper and the JVM it started, for
example). Its exit is seen at once: a task awaits the subprocess and calls
``on_exit`` exactly once per process; nothing polls for it.

The start command must stay in the foreground (Tomcat ``catalina.sh run``,
not ``startup.sh``): when the main process exits, whatever it left in its
group is killed, as systemd does with ``KillMode=control-group``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hakit.errors import SupervisorError

log = logging.getLogger(__name__)

START_MARKER = "===== hakit: start"  # a log line written before every start
LOG_TAIL_BYTES = 64 * 1024  # how much of the log end is read to classify an exit
LOG_TAIL_LINES = 50  # "the last lines" searched for an out-of-memory message
KILL_CONFIRM_TIMEOUT = 10.0  # a SIGKILLed group that outlives this is stuck in the kernel
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


# --- pure decisions ---------------------------------------------------------


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


def _parse_proc_stat(stat: str) -> tuple[str, int]:
    """(state letter, process group) from a /proc/<pid>/stat line."""
    # The command name is in parentheses and may itself contain ") ".
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[0], int(fields[2])


# --- process-group I/O ------------------------------------------------------


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The number now belongs to a group of another user: ours is gone.
        return False
    return True


def live_group_members(pgid: int) -> list[int]:
    """Pids of the group's processes that still run (zombies excluded); [] when gone."""
    if not _signal_group(pgid, 0):
        return []
    # killpg also finds zombies. A zombie holds no memory, socket or lock any
    # more; it only waits for its new parent (init) to reap it, which some
    # init processes do a second or more later. So zombies do not count.
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pgid]  # no /proc: trust killpg, conservatively
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                state, group = _parse_proc_stat(stat_file.read())
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        if group == pgid and state not in ("Z", "X"):
            members.append(int(entry))
    return members


async def wait_group_gone(pgid: int, timeout: float) -> list[int]:
    """Wait until no live process is left in the group; the survivors if time ran out.

    A bounded poll: the kernel offers no event for "a process group emptied".
    Used only while stopping, after the main process's exit was seen.
    """
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        members = live_group_members(pgid)
        if not members or time.monotonic() >= deadline:
            return members
        await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 0.05)


# --- the supervised process -------------------------------------------------


@dataclass(eq=False)
class _Run:
    """One started process and what we know about it."""

    process: asyncio.subprocess.Process
    exited: asyncio.Future[ExitInfo]
    stop_requested: bool = False
    group_gone: bool = False  # confirmed: never signal this pgid again (it may be reused)
    watcher: asyncio.Task[None] | None = field(default=None)

    @property
    def pgid(self) -> int:
        return self.process.pid  # leader of its own session and group


def _argv(command: Sequence[str] | str) -> list[str]:
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return list(command)


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class AppProcess:
    """One local app process: started in its own group, stopped gracefully, killed at once.

    ``on_exit`` is called in the event loop exactly once per started process,
    as soon as it exits, whether we stopped it or it died.
    """

    def __init__(
        self,
        *,
        start: Sequence[str] | str,
        stop: Sequence[str] | str | None,
        env: Mapping[str, str],
        cwd: Path | None,
        log_path: Path,
        stop_timeout: float,
        on_exit: Callable[[ExitInfo], None],
    ) -> None:
        if not _argv(start):
            raise SupervisorError("the app's start command is empty: set app.start in the config")
        self._start = start
        self._stop = stop
        self._env = dict(env)
        self._cwd = cwd
        self._log_path = log_path
        self._stop_timeout = stop_timeout
        self._on_exit = on_exit
        self._run: _Run | None = None

    @property
    def pid(self) -> int | None:
        return self._run.process.pid if self.running and self._run else None

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.exited.done()

    @property
    def log_path(self) -> Path:
        return self._log_path

    async def start(self) -> int:
        """Start the app; its pid. SupervisorError if it is running or cannot be started."""
        if self._run is not None:
            if not self._run.exited.done():
                raise SupervisorError(
                    f"cannot start the app: it is already running as pid {self._run.process.pid}; stop it first"
                )
            await self._confirm_gone(self._run)
        if self._cwd is not None and not self._cwd.is_dir():
            raise SupervisorError(
                f"cannot start the app: its working directory {self._cwd} does not exist"
            )
        argv = _argv(self._start)
        try:
            self._append_log(f"{START_MARKER} at {_timestamp()}: {argv!r} =====")
        except OSError as exc:
            raise SupervisorError(
                f"cannot start the app: its log {self._log_path} cannot be written: {exc}"
            ) from exc
        with open(self._log_path, "ab") as output:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env={**os.environ, **self._env},
                    cwd=self._cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                self._append_log(f"===== hakit: start failed: {exc} =====")
                raise SupervisorError(
                    f"cannot start the app with {argv!r}: {exc.strerror or exc}; "
                    "check app.start in the config (the path and the execute permission)"
                ) from exc
        run = _Run(process=process, exited=asyncio.get_running_loop().create_future())
        run.watcher = asyncio.create_task(self._watch(run), name=f"hakit-app-{process.pid}")
        self._run = run
        log.info("app started as pid %d: %r", process.pid, argv)
        return process.pid

    async def stop(self, reason: str = "") -> ExitInfo | None:
        """Graceful stop, then SIGKILL of the group after ``stop_timeout``; None if not running."""
        run = self._run
        if run is None:
            return None
        if run.exited.done():
            await self._confirm_gone(run)
            return None
        run.stop_requested = True
        deadline = time.monotonic() + self._stop_timeout
        self._append_log(
            f"===== hakit: stop at {_timestamp()}{': ' + reason if reason else ''} ====="
        )
        if self._stop is None or not await self._run_stop_command(run, deadline):
            _signal_group(run.pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(run.exited)
        except TimeoutError:
            pass
        if not run.exited.done() or await wait_group_gone(
            run.pgid, max(0.0, deadline - time.monotonic())
        ):
            self._append_log(
                f"===== hakit: still running after stop_timeout {self._stop_timeout:g}s: SIGKILL ====="
            )
            _signal_group(run.pgid, signal.SIGKILL)
        return await self._finish(run)

    async def kill(self) -> ExitInfo | None:
        """SIGKILL the whole group at once (self-fencing) and confirm it is gone."""
        run = self._run
        if run is None:
            return None
        if run.exited.done():
            await self._confirm_gone(run)
            return None
        run.stop_requested = True
        _signal_group(run.pgid, signal.SIGKILL)
        return await self._finish(run)

    # --- internals ----------------------------------------------------------

    async def _finish(self, run: _Run) -> ExitInfo:
        """Wait for the main process's exit after a SIGKILL may have been sent, confirm the group gone."""
        try:
            async with asyncio.timeout(KILL_CONFIRM_TIMEOUT):
                info = await asyncio.shield(run.exited)
        except TimeoutError:
            _signal_group(run.pgid, signal.SIGKILL)
            raise SupervisorError(
                f"app pid {run.process.pid} did not exit {KILL_CONFIRM_TIMEOUT:g}s after SIGKILL "
                "(stuck in the kernel, e.g. on a dead NFS mount); the node needs attention"
            ) from None
        await self._confirm_gone(run)
        return info

    async def _confirm_gone(self, run: _Run) -> None:
        if run.group_gone:
            return
        if live_group_members(run.pgid):
            _signal_group(run.pgid, signal.SIGKILL)
        survivors = await wait_group_gone(run.pgid, KILL_CONFIRM_TIMEOUT)
        if survivors:
            raise SupervisorError(
                f"processes {survivors} of the app's group {run.pgid} survived SIGKILL for "
                f"{KILL_CONFIRM_TIMEOUT:g}s; the node needs attention"
            )
        run.group_gone = True

    async def _watch(self, run: _Run) -> None:
        returncode = await run.process.wait()
        if not run.stop_requested:
            # The app died by itself: what it left behind is not a serving app
            # and would hold its port and home (systemd KillMode=control-group).
            _signal_group(run.pgid, signal.SIGKILL)
        oom, description = classify_exit(returncode, self._read_log_tail())
        info = ExitInfo(
            pid=run.process.pid,
            returncode=returncode,
            signal=-returncode if returncode < 0 else None,
            oom=oom,
            expected=run.stop_requested,
            description=description,
        )
        log.info("app pid %d %s%s", info.pid, description, "" if info.expected else " (unexpected)")
        run.exited.set_result(info)
        try:
            self._on_exit(info)
        except Exception:
            log.exception("on_exit callback failed for app pid %d", info.pid)

    async def _run_stop_command(self, run: _Run, deadline: float) -> bool:
        """Run the configured stop command until ``deadline``; True if it succeeded."""
        assert self._stop is not None
        argv = _argv(self._stop)
        env = {**os.environ, **self._env, "HAKIT_APP_PID": str(run.process.pid)}
        try:
            with open(self._log_path, "ab") as output:
                command = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=self._cwd,
                    start_new_session=True,
                )
        except OSError as exc:
            self._append_log(f"===== hakit: stop command {argv!r} failed to start: {exc} =====")
            return False
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                returncode = await command.wait()
        except TimeoutError:
            _signal_group(command.pid, signal.SIGKILL)
            await command.wait()
            self._append_log("===== hakit: stop command did not finish within stop_timeout =====")
            return False
        if returncode != 0:
            self._append_log(
                f"===== hakit: stop command {describe_returncode(returncode)}: sending SIGTERM ====="
            )
        return returncode == 0

    def _append_log(self, line: str) -> None:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._log_path, "a", encoding="utf-8") as output:
            output.write(line + "\n")

    def _read_log_tail(self) -> str:
        try:
            with open(self._log_path, "rb") as output:
                output.seek(0, os.SEEK_END)
                output.seek(max(0, output.tell() - LOG_TAIL_BYTES))
                data = output.read()
        except OSError:
            return ""
        return tail_since_last_start(data.decode("utf-8", errors="replace"))
