"""Start, stop and kill one local app process (docs/architecture.md, "supervisor/").

The app runs as the leader of its own process group, so a stop or a kill
reaches everything it spawned (a shell wrapper and the JVM it started, for
example). Its exit is seen at once: a task awaits the subprocess and calls
``on_exit`` exactly once per process; nothing polls for it.

The app is started through its shim (hakit.supervisor.shim), a small parent that holds a
lifeline from this agent and the lease deadline: the app cannot outlive the
agent, whatever kills the agent, nor a frozen agent's lease. The shim exits with
the app's own status once nothing of the app is left, so its exit is the app's.

The start command must stay in the foreground (Tomcat ``catalina.sh run``,
not ``startup.sh``): when the main process exits, whatever it left (in its
group, its cgroup, or re-parented to the shim) is killed, as systemd does with
``KillMode=control-group``, and the exit says the command must stay in the
foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.errors import SupervisorError
from hakit.service.sdnotify import without_service_variables
from hakit.supervisor import cgroup, lifeline, proctable
from hakit.supervisor.exits import (  # re-exported: callers import them from here too
    FOREGROUND_ADVICE as FOREGROUND_ADVICE,
)
from hakit.supervisor.exits import LOG_TAIL_BYTES, START_MARKER, ExitInfo
from hakit.supervisor.exits import classify_exit as classify_exit
from hakit.supervisor.exits import describe_returncode as describe_returncode
from hakit.supervisor.exits import foreground_words as foreground_words
from hakit.supervisor.exits import tail_since_last_start as tail_since_last_start
from hakit.supervisor.lifeline import Inbox

log = logging.getLogger("hakit.supervisor")

KILL_CONFIRM_TIMEOUT = 10.0  # a SIGKILLed group that outlives this is stuck in the kernel
SHIM_START_TIMEOUT = 30.0  # the shim reports the app's pid within this (an interpreter start)


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
    if not os.path.isdir("/proc"):
        return [pgid]  # no /proc: trust killpg, conservatively
    return proctable.group_members(pgid)


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
    """One started app (through its shim) and what we know about it."""

    shim: asyncio.subprocess.Process
    app_pid: int  # leader of its own session and group
    lifeline: socket.socket  # our end: closing it (or our death) makes the shim kill the app
    exited: asyncio.Future[ExitInfo]
    stop_requested: bool = False
    group_gone: bool = False  # confirmed: never signal this pgid again (it may be reused)
    watcher: asyncio.Task[None] | None = field(default=None)
    fenced: str | None = None  # why the shim killed the app at the lease deadline
    left: dict[str, Any] | None = None  # what the app's main process left running
    inbox: Inbox = field(default_factory=Inbox)
    lifeline_closed: bool = False

    @property
    def pgid(self) -> int:
        return self.app_pid

    def send(self, message: bytes) -> None:
        """Thread-safe: one small write on a socket (the watchdog thread uses it too)."""
        with contextlib.suppress(OSError):  # the shim is gone: its exit is being handled
            self.lifeline.send(message)


def _argv(command: Sequence[str] | str) -> list[str]:
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    return list(command)


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _open_private(path: str | os.PathLike[str], flags: int) -> int:
    """Open (creating 0600): app logs may hold what the app prints of its secrets."""
    return os.open(path, flags, 0o600)


class AppProcess:
    """One local app process: started through its shim, stopped gracefully, killed at once.

    ``on_exit`` is called in the event loop exactly once per started process,
    as soon as it exits (and nothing of it is left), whether we stopped it or it died.
    ``cgroup`` is the app's cgroup directory (hakit.supervisor.cgroup; None: process group only);
    ``pid_file`` records the shim and app while they run, for an agent that starts
    after this one died (hakit.supervisor.leftovers). ``threshold`` and ``grace`` are the shim's
    deadline rule (hakit.supervisor.lifeline.DeadlineKeeper).
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
        cgroup_path: Path | None = None,
        pid_file: Path | None = None,
        threshold: float = 1.0,
        grace: float = 3.0,
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
        self._cgroup = cgroup_path
        self._pid_file = pid_file
        self._threshold = threshold
        self._grace = grace
        self._run: _Run | None = None
        self._armed: float | None = None
        self._early = b""  # what the shim sent right after its first message

    @property
    def pid(self) -> int | None:
        return self._run.app_pid if self.running and self._run else None

    @property
    def running(self) -> bool:
        return self._run is not None and not self._run.exited.done()

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def cgroup_path(self) -> Path | None:
        return self._cgroup

    # --- the lease deadline, kept by the shim ----------------------------------------

    def arm(self, deadline: float) -> None:
        """The shim kills the app at ``deadline`` (CLOCK_MONOTONIC) unless armed again."""
        run = self._run
        if run is None or run.exited.done() or deadline == self._armed:
            return
        self._armed = deadline
        run.send(lifeline.encode(lifeline.ARM, deadline))

    def disarm(self) -> None:
        run = self._run
        if run is None or run.exited.done() or self._armed is None:
            return
        self._armed = None
        run.send(lifeline.encode(lifeline.DISARM))

    def take_fenced(self) -> str | None:
        """Why the shim killed the app at the lease deadline, once (None: it did not).

        Reads what the shim sent first, without waiting: an agent that wakes from a
        freeze asks this before its event loop has run the lifeline's reader."""
        run = self._run
        if run is None:
            return None
        if not run.lifeline_closed:
            self._read_lifeline(run)
        if run.fenced is None:
            return None
        fenced, run.fenced = run.fenced, None
        return fenced

    def kill_now(self) -> bool:
        """SIGKILL the app's group and cgroup synchronously, from any thread (self-fencing);
        the shim is told to kill whatever else it finds. False when nothing ran."""
        run = self._run
        if run is None or run.group_gone:
            return False
        killed = _signal_group(run.pgid, signal.SIGKILL)
        if self._cgroup is not None:
            killed = cgroup.kill(self._cgroup) or killed
        run.send(lifeline.encode(lifeline.KILL))
        return killed

    # --- start, stop, kill --------------------------------------------------------------

    async def start(self, extra_env: Mapping[str, str] | None = None) -> int:
        """Start the app; its pid. SupervisorError if it is running or cannot be started.
        ``extra_env``: variables of this start only (the lease epoch it serves under)."""
        if self._run is not None:
            if not self._run.exited.done():
                raise SupervisorError(
                    f"cannot start the app: it is already running as pid {self._run.app_pid}; stop it first"
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
        ours, theirs = socket.socketpair()
        shim_argv = [
            sys.executable,
            "-m",
            "hakit.supervisor.shim",
            "--fd",
            str(theirs.fileno()),
            "--cgroup",
            str(self._cgroup or ""),
            "--threshold",
            repr(self._threshold),
            "--grace",
            repr(self._grace),
            "--",
            *argv,
        ]
        try:
            with open(self._log_path, "ab", opener=_open_private) as output:
                shim = await asyncio.create_subprocess_exec(
                    *shim_argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=output,
                    stderr=asyncio.subprocess.STDOUT,
                    env={
                        **without_service_variables(os.environ),
                        **self._env,
                        **(extra_env or {}),
                    },
                    cwd=self._cwd,
                    start_new_session=True,
                    pass_fds=(theirs.fileno(),),
                )
        except OSError as exc:
            ours.close()
            self._append_log(f"===== hakit: start failed: {exc} =====")
            raise SupervisorError(
                f"cannot start the app's shim ({sys.executable} -m hakit.supervisor.shim): "
                f"{exc.strerror or exc}"
            ) from exc
        finally:
            theirs.close()
        try:
            app_pid = await self._await_started(ours, shim, argv)
        except BaseException:
            ours.close()
            raise
        run = _Run(
            shim=shim,
            app_pid=app_pid,
            lifeline=ours,
            exited=asyncio.get_running_loop().create_future(),
        )
        self._armed = None
        ours.setblocking(False)
        asyncio.get_running_loop().add_reader(ours.fileno(), self._read_lifeline, run)
        run.watcher = asyncio.create_task(self._watch(run), name=f"hakit-app-{app_pid}")
        self._run = run
        self._write_pid_file(run)
        log.info("app started as pid %d (shim pid %d): %r", app_pid, shim.pid, argv)
        return app_pid

    async def _await_started(
        self, ours: socket.socket, shim: asyncio.subprocess.Process, argv: list[str]
    ) -> int:
        """The app's pid from the shim's first message; SupervisorError if it could not run."""
        loop = asyncio.get_running_loop()
        ours.setblocking(False)
        line = b""
        try:
            async with asyncio.timeout(SHIM_START_TIMEOUT):
                while not line.endswith(b"\n"):
                    chunk = await loop.sock_recv(ours, 4096)
                    if not chunk:
                        break
                    line += chunk
        except TimeoutError:
            line = b""
        first, _, rest = line.partition(b"\n")
        try:
            kind, payload = lifeline.decode(first) if first else ("", None)
        except ValueError:
            kind, payload = "", None
        if kind == lifeline.STARTED and isinstance(payload, int):
            if rest:  # more already came (a very short-lived app): keep it for the reader
                self._early = rest
            return payload
        _signal_group(shim.pid, signal.SIGKILL)
        returncode = await shim.wait()
        if kind == lifeline.FAILED and isinstance(payload, dict):
            error = str(payload.get("error", "unknown error"))
            self._append_log(f"===== hakit: start failed: {error} =====")
            raise SupervisorError(
                f"cannot start the app with {argv!r}: {error}; "
                "check app.start in the config (the path and the execute permission)"
            )
        raise SupervisorError(
            f"cannot start the app: its shim ended ({describe_returncode(returncode)}) before "
            f"starting it; see {self._log_path}"
        )

    async def stop(self, reason: str = "") -> ExitInfo | None:
        """Graceful stop, then SIGKILL of the group after ``stop_timeout``; None if not running."""
        run = self._run
        if run is None:
            return None
        if run.exited.done():
            await self._confirm_gone(run)
            return None
        run.stop_requested = True
        run.send(lifeline.encode(lifeline.STOPPING))
        deadline = time.monotonic() + self._stop_timeout
        self._append_log(
            f"===== hakit: stop at {_timestamp()}{': ' + reason if reason else ''} ====="
        )
        if self._stop is None or not await self._run_stop_command(run, deadline):
            _signal_group(run.pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await asyncio.shield(run.exited)
        if not run.exited.done():
            self._append_log(
                f"===== hakit: still running after stop_timeout {self._stop_timeout:g}s: SIGKILL ====="
            )
            self.kill_now()
        return await self._finish(run)

    async def kill(self) -> ExitInfo | None:
        """SIGKILL the whole app at once (self-fencing) and confirm it is gone."""
        run = self._run
        if run is None:
            return None
        if run.exited.done():
            await self._confirm_gone(run)
            return None
        run.stop_requested = True
        self.kill_now()
        return await self._finish(run)

    # --- internals ----------------------------------------------------------

    async def _finish(self, run: _Run) -> ExitInfo:
        """Wait for the app's exit (the shim's) after a SIGKILL may have been sent, confirm it gone."""
        try:
            async with asyncio.timeout(KILL_CONFIRM_TIMEOUT):
                info = await asyncio.shield(run.exited)
        except TimeoutError:
            self.kill_now()
            _signal_group(run.shim.pid, signal.SIGKILL)
            raise SupervisorError(
                f"app pid {run.app_pid} did not exit {KILL_CONFIRM_TIMEOUT:g}s after SIGKILL "
                "(stuck in the kernel, e.g. on a dead NFS mount); the node needs attention"
            ) from None
        await self._confirm_gone(run)
        return info

    async def _confirm_gone(self, run: _Run) -> None:
        if run.group_gone:
            return
        if live_group_members(run.pgid) or (
            self._cgroup is not None and cgroup.populated(self._cgroup)
        ):
            _signal_group(run.pgid, signal.SIGKILL)
            if self._cgroup is not None:
                cgroup.kill(self._cgroup)
        survivors = await wait_group_gone(run.pgid, KILL_CONFIRM_TIMEOUT)
        if self._cgroup is not None:
            survivors += cgroup.members(self._cgroup)
        if survivors:
            raise SupervisorError(
                f"processes {survivors} of the app (group {run.pgid}) survived SIGKILL for "
                f"{KILL_CONFIRM_TIMEOUT:g}s; the node needs attention"
            )
        run.group_gone = True
        self._remove_pid_file(run)

    def _read_lifeline(self, run: _Run) -> None:
        """The shim's messages: the lease deadline it fenced at, what the app left."""
        try:
            data = run.lifeline.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if self._early:
            data, self._early = self._early + data, b""
        if not data:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                asyncio.get_running_loop().remove_reader(run.lifeline.fileno())
            return
        for kind, payload in run.inbox.feed(data):
            if kind == lifeline.FENCED and isinstance(payload, dict):
                run.fenced = str(payload.get("reason", "killed at the lease deadline"))
                log.warning("self-fencing (shim): %s", run.fenced)
            elif kind == lifeline.LEFT and isinstance(payload, dict):
                run.left = payload

    async def _watch(self, run: _Run) -> None:
        returncode = await run.shim.wait()
        loop = asyncio.get_running_loop()
        self._read_lifeline(run)  # the last messages, sent before the shim exited
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(run.lifeline.fileno())
        run.lifeline_closed = True
        run.lifeline.close()
        if not run.stop_requested:
            # The app died by itself (or its shim was killed): what it left behind is not
            # a serving app and would hold its port and home (KillMode=control-group).
            _signal_group(run.pgid, signal.SIGKILL)
            if self._cgroup is not None:
                cgroup.kill(self._cgroup)
        oom, description = classify_exit(returncode, self._read_log_tail())
        if run.left and not run.stop_requested:
            description += "; " + foreground_words(run.left)
            self._append_log(f"===== hakit: {description} =====")
        info = ExitInfo(
            pid=run.app_pid,
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

    def _write_pid_file(self, run: _Run) -> None:
        if self._pid_file is None:
            return
        record = {
            "shim_pid": run.shim.pid,
            "shim_start": _start_ticks(run.shim.pid),
            "app_pid": run.app_pid,
            "app_start": _start_ticks(run.app_pid),
            "cgroup": str(self._cgroup or ""),
            "agent_pid": os.getpid(),
            "boot_id": proctable.boot_id(),
            "started_at": time.time(),
        }
        try:
            self._pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            temporary = self._pid_file.with_name(self._pid_file.name + ".tmp")
            with open(temporary, "w", opener=_open_private) as output:
                json.dump(record, output)
            os.replace(temporary, self._pid_file)
        except OSError as exc:
            log.warning("could not write the pid file %s: %s", self._pid_file, exc)

    def _remove_pid_file(self, run: _Run) -> None:
        if self._pid_file is None:
            return
        with contextlib.suppress(OSError):
            recorded = json.loads(self._pid_file.read_text())
            if recorded.get("app_pid") == run.app_pid:
                self._pid_file.unlink()

    async def _run_stop_command(self, run: _Run, deadline: float) -> bool:
        """Run the configured stop command until ``deadline``; True if it succeeded."""
        assert self._stop is not None
        argv = _argv(self._stop)
        env = {
            **without_service_variables(os.environ),
            **self._env,
            "HAKIT_APP_PID": str(run.app_pid),
        }
        try:
            with open(self._log_path, "ab", opener=_open_private) as output:
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
        self._log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self._log_path, "a", encoding="utf-8", opener=_open_private) as output:
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


def _start_ticks(pid: int) -> int | None:
    stat = proctable.stat_of(pid)
    return None if stat is None else stat.start_ticks
