"""AppProcess with real processes, real process groups and real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

from hakit.demo.cluster import free_port
from hakit.errors import SupervisorError
from hakit.supervisor.process import START_MARKER, AppProcess, ExitInfo, classify_exit

PY = sys.executable
DEADLINE = 10.0  # upper bound for any condition a test waits for

SLEEPER = "import time; print('ready', flush=True); time.sleep(60)"
# Exits 0 on SIGTERM, like a well-behaved server.
WELL_BEHAVED = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


# --- pure classification ----------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "log_tail", "oom", "description"),
    [
        (-9, "", False, "killed by SIGKILL"),
        (-15, "", False, "killed by SIGTERM"),
        (3, "", False, "exited with code 3"),
        (0, "", False, "exited with code 0"),
        (127, "", False, "exited with code 127 (command not found)"),
        (143, "", False, "exited with code 143 (128+SIGTERM)"),
        (137, "", True, "out of memory (exit 137)"),
        (
            1,
            'Exception in thread "main" java.lang.OutOfMemoryError: Java heap space\n',
            True,
            "out of memory (OutOfMemoryError in the log; exited with code 1)",
        ),
        (
            1,
            "fatal: Out of memory\n",
            True,
            "out of memory (Out of memory in the log; exited with code 1)",
        ),
        (-9, "MemoryError\n", True, "out of memory (MemoryError in the log; killed by SIGKILL)"),
        # Only the last lines count: an old message far up is not this exit's cause.
        (1, "OutOfMemoryError\n" + "fine\n" * 60, False, "exited with code 1"),
    ],
)
def test_classify_exit(returncode: int, log_tail: str, oom: bool, description: str) -> None:
    assert classify_exit(returncode, log_tail) == (oom, description)


# --- helpers ----------------------------------------------------------------


class Exits:
    """on_exit recorder: every call with the moment it happened."""

    def __init__(self) -> None:
        self.infos: list[ExitInfo] = []
        self.times: list[float] = []
        self.event = asyncio.Event()

    def __call__(self, info: ExitInfo) -> None:
        self.times.append(time.monotonic())
        self.infos.append(info)
        self.event.set()

    async def wait(self, count: int = 1) -> list[ExitInfo]:
        async with asyncio.timeout(DEADLINE):
            while len(self.infos) < count:
                self.event.clear()
                await self.event.wait()
        return self.infos


@asynccontextmanager
async def supervised(
    tmp_path: Path,
    start: list[str] | str,
    *,
    stop: list[str] | str | None = None,
    stop_timeout: float = 5.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> AsyncIterator[tuple[AppProcess, Exits]]:
    exits = Exits()
    app = AppProcess(
        start=start,
        stop=stop,
        env=env or {},
        cwd=cwd,
        log_path=tmp_path / "logs" / "app.log",
        stop_timeout=stop_timeout,
        on_exit=exits,
    )
    try:
        yield app, exits
    finally:
        await app.kill()  # the group of whatever this test started, confirmed gone


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def wait_for_log(app: AppProcess, line: str, count: int = 1) -> None:
    """Wait for ``line`` as a whole line of output (the start marker quotes the code)."""

    def present() -> bool:
        return app.log_path.exists() and app.log_path.read_text().splitlines().count(line) >= count

    await wait_until(present, f"{line!r} in {app.log_path}")


def live_group_members(pgid: int) -> list[int]:
    """Independent of the code under test: psutil's view of the group, zombies excluded."""
    members = []
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process.pid)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def is_live(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


# --- start and the log ------------------------------------------------------


def test_start_runs_in_own_group_with_env_cwd_and_log(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    code = (
        "import os, sys, time\n"
        "print('out', os.environ['HAKIT_TEST_VAR'], os.getcwd(), flush=True)\n"
        "print('err', os.environ['PATH'] != '', file=sys.stderr, flush=True)\n"
        "time.sleep(60)\n"
    )

    async def scenario() -> None:
        async with supervised(
            tmp_path, [PY, "-c", code], env={"HAKIT_TEST_VAR": "42"}, cwd=work
        ) as (
            app,
            _,
        ):
            pid = await app.start()
            assert app.pid == pid and app.running
            assert os.getpgid(pid) == pid != os.getpgid(0)  # leader of its own group
            await wait_for_log(app, "err True")  # stderr too; os.environ is inherited
            log = app.log_path.read_text()
            assert log.startswith(START_MARKER)
            assert f"out 42 {work}" in log
            with pytest.raises(SupervisorError, match="already running"):
                await app.start()

    run(scenario())


def test_string_command_runs_through_the_shell(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, "echo from-shell $((6 * 7)); exit 3") as (app, exits):
            await app.start()
            (info,) = await exits.wait()
            assert info.description == "exited with code 3"
            assert "from-shell 42" in app.log_path.read_text()

    run(scenario())


@pytest.mark.parametrize("kind", ["missing", "not-executable", "missing-cwd"])
def test_start_that_cannot_happen_raises(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "app.sh"
    script.write_text("#!/bin/sh\nsleep 60\n")  # no execute bit
    command, cwd, message = {
        "missing": ([str(tmp_path / "no-such-app")], None, "No such file"),
        "not-executable": ([str(script)], None, "Permission denied"),
        "missing-cwd": ([PY, "-c", "pass"], tmp_path / "gone", "working directory"),
    }[kind]

    async def scenario() -> None:
        async with supervised(tmp_path, command, cwd=cwd) as (app, exits):
            with pytest.raises(SupervisorError, match=message):
                await app.start()
            assert not app.running and app.pid is None
            assert await app.stop() is None
            assert exits.infos == []

    run(scenario())


# --- exits seen at once -----------------------------------------------------


def test_kill_9_from_outside_is_seen_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", SLEEPER]) as (app, exits):
            pid = await app.start()
            await wait_for_log(app, "ready")
            killed_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            (info,) = await exits.wait()
            assert exits.times[0] - killed_at < 0.5
            assert info == ExitInfo(
                pid=pid,
                returncode=-9,
                signal=signal.SIGKILL,
                oom=False,
                expected=False,
                description="killed by SIGKILL",
            )
            assert not app.running and app.pid is None
            assert await app.stop() is None  # nothing left to stop
            assert len(exits.infos) == 1

    run(scenario())


@pytest.mark.parametrize(
    ("code", "oom", "description"),
    [
        ("import sys; sys.exit(3)", False, "exited with code 3"),
        ("import os; os._exit(137)", True, "out of memory (exit 137)"),
        (
            "import sys; print('java.lang.OutOfMemoryError: Java heap space', file=sys.stderr); sys.exit(1)",
            True,
            "out of memory (OutOfMemoryError in the log; exited with code 1)",
        ),
    ],
)
def test_exit_classification(tmp_path: Path, code: str, oom: bool, description: str) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", code]) as (app, exits):
            await app.start()
            (info,) = await exits.wait()
            assert (info.oom, info.description, info.expected) == (oom, description, False)

    run(scenario())


def test_oom_message_of_an_earlier_run_does_not_count(tmp_path: Path) -> None:
    oom = "import sys; print('OutOfMemoryError', file=sys.stderr); sys.exit(1)"
    crash = "import sys; sys.exit(1)"

    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", oom]) as (app, exits):
            await app.start()
            await exits.wait(1)
            app._start = [PY, "-c", crash]  # same log file, next run
            await app.start()
            first, second = await exits.wait(2)
            assert (first.oom, second.oom) == (True, False)
            assert app.log_path.read_text().count(START_MARKER) == 2

    run(scenario())


def test_unexpected_exit_takes_the_apps_children_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"

    async def scenario() -> None:
        async with supervised(tmp_path, f"sleep 60 & echo $! > {pid_file}; exit 3") as (app, exits):
            await app.start()
            (info,) = await exits.wait()
            # The main process exited while its child ran on: said, and the child stopped.
            assert info.description.startswith("exited with code 3; it left 1 process running")
            assert "the start command must stay in the foreground" in info.description
            child = int(pid_file.read_text())
            await wait_until(lambda: not is_live(child), "the leftover child to be killed")

    run(scenario())


# A start script that daemonizes: forks, the child leaves the session (setsid) and forks
# the server, the script exits 0 at once. The server is out of the app's process group.
DAEMONIZING = (
    "import os, socket, sys, time\n"
    "port, out = int(sys.argv[1]), sys.argv[2]\n"
    "if os.fork() == 0:\n"
    "    os.setsid()\n"
    "    if os.fork() == 0:\n"
    "        s = socket.socket(); s.bind(('127.0.0.1', port)); s.listen()\n"
    "        open(out, 'w').write(str(os.getpid()))\n"
    "        time.sleep(60)\n"
    "    os._exit(0)\n"
    "time.sleep(0.5)\n"  # the server is up before the script returns, as startup.sh does
    "sys.exit(0)\n"
)


def test_a_start_command_that_daemonizes_is_told_to_stay_in_the_foreground(
    tmp_path: Path,
) -> None:
    port, out = free_port(), tmp_path / "server.pid"

    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", DAEMONIZING, str(port), str(out)]) as (
            app,
            exits,
        ):
            pid = await app.start()
            (info,) = await exits.wait()
            server = int(out.read_text())
            assert server != pid
            assert info.description.startswith("exited with code 0; it left 1 process running")
            assert "the start command must stay in the foreground" in info.description
            assert not info.expected
            # Stopped: nothing listens on the app's port any more.
            await wait_until(
                lambda: (
                    not psutil.pid_exists(server)
                    or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
                ),
                "the daemon to be stopped",
            )
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=1).close()

    run(scenario())


# --- stop and kill ----------------------------------------------------------


def test_graceful_stop_of_a_well_behaved_app(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", WELL_BEHAVED], stop_timeout=10) as (app, exits):
            pid = await app.start()
            await wait_for_log(app, "ready")
            started = time.monotonic()
            info = await app.stop("test")
            assert time.monotonic() - started < 5  # did not sit out stop_timeout
            assert info is not None
            assert (info.pid, info.returncode, info.signal, info.expected) == (pid, 0, None, True)
            assert exits.infos == [info]  # on_exit exactly once
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
            assert await app.stop() is None
            assert exits.infos == [info]

    run(scenario())


def test_stop_ignoring_sigterm_ends_with_sigkill_of_the_whole_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('{who} ready', flush=True); time.sleep(60)"
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"child = subprocess.Popen([sys.executable, '-c', {stubborn.format(who='grandchild')!r}])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('parent ready', flush=True)\n"
        "time.sleep(60)\n"
    )

    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", code], stop_timeout=0.5) as (app, exits):
            pid = await app.start()
            await wait_for_log(app, "parent ready")
            await wait_for_log(app, "grandchild ready")
            grandchild = int(pid_file.read_text())
            assert os.getpgid(grandchild) == pid
            started = time.monotonic()
            info = await app.stop()
            elapsed = time.monotonic() - started
            assert 0.5 <= elapsed < 5
            assert info is not None
            assert (info.signal, info.description, info.expected) == (9, "killed by SIGKILL", True)
            assert exits.infos == [info]
            assert not is_live(grandchild)
            assert live_group_members(pid) == []
            assert "SIGKILL" in app.log_path.read_text()

    run(scenario())


def test_graceful_stop_waits_for_children_of_a_shell_wrapper(tmp_path: Path) -> None:
    # The shell dies on SIGTERM at once; the "JVM" it started drains first.
    # The stop must let it finish instead of killing it when the shell exits.
    draining = (
        "import signal, sys, time\n"
        "def drain(*_):\n"
        "    time.sleep(0.3)\n"
        "    print('drained', flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, drain)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    script = tmp_path / "server.py"
    script.write_text(draining)

    async def scenario() -> None:
        async with supervised(tmp_path, f"{PY} {script}; echo after", stop_timeout=10) as (
            app,
            _,
        ):
            pid = await app.start()
            await wait_for_log(app, "ready")
            info = await app.stop()
            assert info is not None and info.expected
            assert "drained" in app.log_path.read_text()
            assert live_group_members(pid) == []

    run(scenario())


STOPPABLE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: sys.exit(7))\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(15))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.mark.parametrize(
    ("stop", "returncode", "log_text"),
    [
        ('kill -USR1 "$HAKIT_APP_PID"', 7, ""),  # the stop command does the job
        ("echo stop-failed; exit 1", 15, "stop-failed"),  # fails: SIGTERM instead
    ],
)
def test_stop_command(tmp_path: Path, stop: str, returncode: int, log_text: str) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", STOPPABLE], stop=stop, stop_timeout=10) as (
            app,
            exits,
        ):
            await app.start()
            await wait_for_log(app, "ready")
            info = await app.stop("maintenance")
            assert info is not None
            assert (info.returncode, info.expected) == (returncode, True)
            assert exits.infos == [info]
            assert log_text in app.log_path.read_text()

    run(scenario())


def test_kill_is_immediate_and_confirmed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", WELL_BEHAVED], stop_timeout=30) as (app, exits):
            pid = await app.start()
            await wait_for_log(app, "ready")
            started = time.monotonic()
            info = await app.kill()
            assert time.monotonic() - started < 2
            assert info is not None
            assert (info.signal, info.expected, info.description) == (9, True, "killed by SIGKILL")
            assert exits.infos == [info]
            with pytest.raises(ProcessLookupError):
                os.killpg(pid, 0)
            assert await app.kill() is None

    run(scenario())


def test_restart_after_a_crash_gets_a_new_process(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with supervised(tmp_path, [PY, "-c", SLEEPER]) as (app, exits):
            first = await app.start()
            await wait_for_log(app, "ready")
            os.kill(first, signal.SIGKILL)
            await exits.wait(1)
            second = await app.start()
            assert second != first and app.pid == second
            await wait_for_log(app, "ready", count=2)
            info = await app.stop()
            assert info is not None and info.pid == second
            assert [i.pid for i in exits.infos] == [first, second]

    run(scenario())
