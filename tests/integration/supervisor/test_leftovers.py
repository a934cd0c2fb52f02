"""An agent that starts stops what an earlier one left (hakit.supervisor.leftovers), with real
processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hakit.demo.cluster import free_port
from hakit.supervisor import cgroup, leftovers, proctable
from tests.support.waiting import wait_until

PY = sys.executable
BOUND = 10.0

LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def alive(pid: int) -> bool:
    return proctable.is_live(proctable.stat_of(pid))


@pytest.fixture
def spawned() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        started.append(process)
        return process

    yield spawn
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=BOUND)


def sleeper(spawn: Callable[..., subprocess.Popen[str]]) -> subprocess.Popen[str]:
    process = spawn([PY, "-c", "import time; print('ready', flush=True); time.sleep(120)"])
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def write_pid_file(path: Path, app: int, start: int | None, agent: int = 4242) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"app_pid": app, "app_start": start, "agent_pid": agent}))


def test_the_pid_file_names_the_app_an_earlier_agent_left(tmp_path: Path, spawned) -> None:
    app = sleeper(spawned)
    stat = proctable.stat_of(app.pid)
    assert stat is not None
    pid_file = leftovers.pid_file_path(tmp_path, "n1")
    write_pid_file(pid_file, app.pid, stat.start_ticks)
    found = leftovers.sweep(
        node="n1", cluster="c", port=free_port(), pid_file=pid_file, group_dir=None
    )
    assert app.wait(timeout=BOUND) == -signal.SIGKILL
    assert found.previous_agent == 4242 and found.blocked is None
    assert found.stopped == [f"app pid {app.pid} left by an earlier agent (pid 4242): stopped"]
    assert not pid_file.exists()


def test_a_reused_pid_is_never_killed(tmp_path: Path, spawned) -> None:
    other = sleeper(spawned)  # holds the recorded pid, but started at another time
    stat = proctable.stat_of(other.pid)
    assert stat is not None
    pid_file = leftovers.pid_file_path(tmp_path, "n1")
    write_pid_file(pid_file, other.pid, stat.start_ticks - 1)
    found = leftovers.sweep(
        node="n1", cluster="c", port=free_port(), pid_file=pid_file, group_dir=None
    )
    assert found.stopped == [] and alive(other.pid)
    assert not pid_file.exists()


def test_this_nodes_app_on_its_port_is_stopped_another_program_is_reported(
    tmp_path: Path, spawned
) -> None:
    ours_port, theirs_port = free_port(), free_port()
    ours = spawned([PY, "-c", LISTENER, str(ours_port)], {"HAKIT_NODE": "n1", "HAKIT_CLUSTER": "c"})
    theirs = spawned([PY, "-c", LISTENER, str(theirs_port)], {"HAKIT_NODE": "n1"})
    other_cluster = spawned(
        [PY, "-c", LISTENER, str(free_port())], {"HAKIT_NODE": "n1", "HAKIT_CLUSTER": "other"}
    )
    assert isinstance(other_cluster.args, list)
    for process in (ours, theirs, other_cluster):
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    pid_file = tmp_path / "none.json"
    found = leftovers.sweep(
        node="n1", cluster="c", port=ours_port, pid_file=pid_file, group_dir=None
    )
    assert ours.wait(timeout=BOUND) == -signal.SIGKILL
    assert len(found.stopped) == 1 and f"pid {ours.pid}" in found.stopped[0]
    assert f"still listening on port {ours_port}: stopped" in found.stopped[0]
    # A listener started for another node (or another cluster's node of the same name)
    # is not ours: reported, never killed.
    other_port = int(other_cluster.args[-1])
    found = leftovers.sweep(
        node="n1", cluster="c", port=other_port, pid_file=pid_file, group_dir=None
    )
    assert found.stopped == [] and found.blocked is not None and alive(other_cluster.pid)
    found = leftovers.sweep(
        node="n2", cluster="c", port=theirs_port, pid_file=pid_file, group_dir=None
    )
    assert found.stopped == [] and alive(theirs.pid)
    assert found.blocked is not None
    assert f"port {theirs_port} is taken by pid {theirs.pid}" in found.blocked
    assert "hakit did not start for n2" in found.blocked
    with socket.create_connection(("127.0.0.1", theirs_port), timeout=2):
        pass  # untouched


def test_what_is_left_in_the_apps_cgroup_is_stopped(tmp_path: Path, spawned) -> None:
    group = cgroup.app_cgroup_path("leftover-test", tmp_path)
    if group is None or not cgroup.create(group):
        pytest.skip("no writable cgroup v2 hierarchy on this machine")
    try:
        app = sleeper(spawned)
        (group / "cgroup.procs").write_text(str(app.pid))
        found = leftovers.sweep(
            node="n1", cluster="c", port=free_port(), pid_file=tmp_path / "x.json", group_dir=group
        )
        assert app.wait(timeout=BOUND) == -signal.SIGKILL
        assert len(found.stopped) == 1 and f"[{app.pid}]" in found.stopped[0]
        wait_until(
            lambda: not cgroup.populated(group), BOUND, "the cgroup to empty", interval=0.005
        )
    finally:
        cgroup.remove(group)
