"""The app cannot outlive its agent: the shim (hakit.supervisor.shim) with real processes and
signals.

A small stand-in agent (a Python process that supervises the app with AppProcess,
exactly as the agent does) is killed, frozen or left without renewals; the app, and
what it started in another session, must be gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from hakit.demo.cluster import free_port
from hakit.supervisor import cgroup, proctable

PY = sys.executable
BOUND = 10.0  # upper bound for any condition a test waits for

# An app that starts a grandchild in a session of its own (out of the app's process
# group, as a daemonizing script does), writes both pids, and serves on PORT.
APP = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys, time
    port, out = int(sys.argv[1]), sys.argv[2]
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen()
    with open(out + ".tmp", "w") as f:
        json.dump({"app": os.getpid(), "escaped": child.pid}, f)
    os.rename(out + ".tmp", out)
    while True:
        conn, _ = server.accept()
        conn.close()
    """
)

# The stand-in agent: starts the app through AppProcess, arms the deadline ARM seconds
# ahead (none: disarmed), says "ready", then serves forever.
AGENT = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from hakit.supervisor.process import AppProcess
    app_script, port, out, logs, arm, group = sys.argv[1:7]

    async def main():
        app = AppProcess(start=[sys.executable, app_script, port, out], stop=None, env={},
                         cwd=None, log_path=Path(logs) / "app.log", stop_timeout=5,
                         on_exit=lambda info: print("exit", info.description, flush=True),
                         cgroup_path=Path(group) if group else None, threshold=1.0, grace=3.0)
        await app.start()
        if arm != "none":
            app.arm(time.monotonic() + float(arm))
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


def wait_until(condition: Callable[[], bool], what: str, bound: float = BOUND) -> float:
    """Wait (polling every 5 ms) until ``condition``; the monotonic time it was first seen."""
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {bound:g} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic()


def alive(pid: int) -> bool:
    return proctable.is_live(proctable.stat_of(pid))


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def stand_in_agent(
    tmp_path: Path, *, arm: str = "none", group: Path | None = None
) -> Iterator[tuple[subprocess.Popen[str], dict[str, int], int]]:
    """(agent process, {"app", "escaped"} pids, port); everything killed at the end."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "agent.py").write_text(AGENT)
    out = tmp_path / "pids.json"
    port = free_port()
    agent = subprocess.Popen(
        [
            PY,
            str(tmp_path / "agent.py"),
            str(tmp_path / "app.py"),
            str(port),
            str(out),
            str(tmp_path),
            arm,
            str(group or ""),
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pids: dict[str, int] = {}
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().strip() == "ready"
        wait_until(out.exists, "the app to write its pids")
        pids.update(json.loads(out.read_text()))
        wait_until(lambda: answers(port), "the app to listen")
        yield agent, pids, port
    finally:
        for pid in [agent.pid, *pids.values()]:
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        agent.wait(timeout=BOUND)


def app_group_dir(tmp_path: Path) -> Path | None:
    path = cgroup.app_cgroup_path("shim-test", tmp_path)
    return path if path is not None and cgroup.create(path) else None


@pytest.mark.parametrize("with_cgroup", [True, False], ids=["cgroup", "subreaper"])
def test_kill_9_of_the_agent_takes_the_app_and_what_it_escaped_with(
    tmp_path: Path, with_cgroup: bool
) -> None:
    group = app_group_dir(tmp_path) if with_cgroup else None
    if with_cgroup and group is None:
        pytest.skip("no writable cgroup v2 hierarchy on this machine")
    with stand_in_agent(tmp_path, group=group) as (agent, pids, port):
        assert os.getpgid(pids["escaped"]) != os.getpgid(pids["app"])  # out of its group
        if group is not None:
            assert set(pids.values()) <= set(cgroup.members(group))
        killed = time.monotonic()
        agent.send_signal(signal.SIGKILL)
        gone = wait_until(
            lambda: not alive(pids["app"]) and not alive(pids["escaped"]),
            "the app and its escaped grandchild to die with the agent",
        )
        assert not answers(port)
        # At once (no timer involved): well within a lease TTL of a few seconds.
        assert gone - killed < 2.0, gone - killed
        if group is not None:
            wait_until(lambda: not group.exists(), "the shim to remove the app's cgroup")


def test_a_frozen_agent_cannot_hold_the_app_past_its_deadline(tmp_path: Path) -> None:
    with stand_in_agent(tmp_path, arm="1.5") as (agent, pids, _port):
        armed_until = time.monotonic() + 1.5  # an upper bound: armed just before "ready"
        agent.send_signal(signal.SIGSTOP)  # its watchdog thread is frozen with it
        died = wait_until(lambda: not alive(pids["app"]), "the shim to kill the app")
        assert died <= armed_until + 1.0, died - armed_until
        assert died >= armed_until - 1.6  # not long before the deadline either
        wait_until(lambda: not alive(pids["escaped"]), "the escaped grandchild to die too")


def test_a_disarmed_shim_leaves_a_frozen_agents_app_alone(tmp_path: Path) -> None:
    # Disarmed (a standby in active-active, or no lease to guard): the app runs on.
    with stand_in_agent(tmp_path) as (agent, pids, port):
        agent.send_signal(signal.SIGSTOP)
        # A bounded look: 2 s is past any deadline the other test arms.
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            assert alive(pids["app"]) and answers(port)
            time.sleep(0.1)
        agent.send_signal(signal.SIGCONT)


def test_the_app_dies_with_its_shim(tmp_path: Path) -> None:
    with stand_in_agent(tmp_path) as (agent, pids, _port):
        shim = proctable.stat_of(pids["app"])
        assert shim is not None
        os.kill(shim.ppid, signal.SIGKILL)  # the shim itself, e.g. by the OOM killer
        wait_until(lambda: not alive(pids["app"]), "the app to die with its shim")
        assert agent.stdout is not None
        assert agent.stdout.readline().startswith("exit killed by SIGKILL")
