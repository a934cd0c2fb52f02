"""One writer, always: an agent's death takes its app with it (hakit.supervisor.shim,
hakit.supervisor.leftovers).

Real agents, apps and router; the agent alone is killed with SIGKILL, as the OOM
killer or a crash would. A monitor samples every node's /status every 20 ms for the
whole test: never may two apps answer RUNNING at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from hakit.demo.cluster import DemoCluster, wait_for
from hakit.supervisor import proctable
from hakit.supervisor.leftovers import pid_file_path

from .conftest import ClusterFactory, router_get, wait_serving


def alive(pid: int) -> bool:
    return proctable.is_live(proctable.stat_of(pid))


@contextmanager
def running_monitor(cluster: DemoCluster) -> Iterator[list[tuple[float, list[str]]]]:
    """Samples of (time, nodes serving: RUNNING or FIRST_RUN) with two or more, every 20 ms."""
    overlaps: list[tuple[float, list[str]]] = []
    stop = threading.Event()
    urls = {node.name: f"http://{node.host}:{node.port}/status" for node in cluster.cfg.nodes}

    def sample() -> None:
        with httpx.Client(timeout=0.5) as client:
            while not stop.wait(0.02):
                running = []
                for name, url in urls.items():
                    try:
                        answer = client.get(url)
                        state = answer.json().get("state") if answer.status_code == 200 else None
                        if state in ("RUNNING", "FIRST_RUN"):
                            running.append(name)
                    except (httpx.HTTPError, ValueError):
                        pass
                if len(running) > 1:
                    overlaps.append((time.time(), running))

    thread = threading.Thread(target=sample, name="running-monitor", daemon=True)
    thread.start()
    try:
        yield overlaps
    finally:
        stop.set()
        thread.join(timeout=5)


def other_node(cluster: DemoCluster, node: str) -> str:
    return next(n.name for n in cluster.cfg.nodes if n.name != node)


def test_killed_agent_takes_its_app_before_the_lease_expires(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(lease_ttl="3s", renew_interval="500ms", startup_delay=0.2)
    old = wait_serving(cluster)
    new = other_node(cluster, old)
    app = cluster.app_pid(old)
    assert app is not None
    with running_monitor(cluster) as overlaps:
        cluster.kill_agent(old)  # SIGKILL, the agent alone
        lease = cluster.coordinator.current_lease()  # no renewal after this
        assert lease is not None and lease.holder == old
        wait_for(lambda: not alive(app), 10, "the app to die with its agent")
        died = time.time()
        assert died < lease.expires_at, f"the app outlived the lease by {died - lease.expires_at}"
        wait_for(lambda: cluster.active_running() == new, 30, f"{new} to take over")
        response = router_get(cluster, "/status")
        assert response is not None and response.status_code == 200
        # The agent comes back, as a service manager restarts it: a standby now, and
        # nothing of the old app was left for it to find.
        mark = cluster.events()[-1].id
        cluster.start_agent(old)
        wait_for(
            lambda: (
                (r := cluster.node_record(old)) is not None
                and r.role == "standby"
                and r.detail.get("agent_pid") == cluster.agent_pid(old)
            ),
            30,
            f"the restarted agent of {old} to report",
        )
        after = [e for e in cluster.events(mark) if e.node == old]
        assert not [e for e in after if e.kind == "start"], after
        assert not [e for e in after if e.data.get("leftovers")], after
        came_back = [e for e in after if e.kind == "agent" and e.data.get("unclean_end")]
        assert came_back and came_back[0].data["rebooted"] is False, after
        assert cluster.active_running() == new
    assert overlaps == [], f"two apps answered RUNNING: {overlaps[:5]}"
    # `hakit why` tells the agent's death from the loss of its node.
    why = subprocess.run(
        [sys.executable, "-m", "hakit", "why", "-c", str(cluster.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert why.returncode == 0, why.stderr
    assert f"failed over to {new}" in why.stdout
    assert "died (killed or crashed) while the host stayed up" in why.stdout, why.stdout


def test_agent_that_starts_stops_what_an_earlier_agent_left(make_cluster: ClusterFactory) -> None:
    """The shim is frozen, so the killed agent's app lives on: the agent that starts next
    on the node finds it (its pid file) and stops it before doing anything else."""
    cluster = make_cluster(lease_ttl="3s", renew_interval="500ms", startup_delay=0.2)
    old = wait_serving(cluster)
    app = cluster.app_pid(old)
    assert app is not None
    recorded = json.loads(pid_file_path(cluster.cfg.cluster.state_dir, old).read_text())
    shim = recorded["shim_pid"]
    assert recorded["app_pid"] == app and proctable.stat_of(app).ppid == shim  # type: ignore[union-attr]
    mark = cluster.events()[-1].id
    os.kill(shim, signal.SIGSTOP)
    try:
        cluster.kill_agent(old)
        assert alive(app)  # nobody left to stop it: the shim is frozen
        cluster.start_agent(old)
        found = wait_for(
            lambda: [e for e in cluster.events(mark) if e.node == old and e.data.get("leftovers")],
            30,
            "the new agent to stop the leftovers",
        )
    finally:
        os.kill(shim, signal.SIGCONT)
    assert f"app pid {app} and shim pid {shim} left by an earlier agent" in found[0].reason
    assert found[0].data["previous_agent_pid"] == recorded["agent_pid"]
    assert not alive(app) and not alive(shim)
    wait_serving(cluster)


def test_no_promotion_while_the_old_app_still_answers(make_cluster: ClusterFactory) -> None:
    """Agent and shim frozen, the app serving on: self-fencing cannot happen. With shared
    storage and no fence command, the standby does not promote over an app that still
    answers; once the shim wakes and kills it (its grace after its own freeze), the
    standby takes over."""
    cluster = make_cluster(lease_ttl="3s", renew_interval="500ms", startup_delay=0.2, patience="2s")
    old = wait_serving(cluster)
    new = other_node(cluster, old)
    app = cluster.app_pid(old)
    assert app is not None
    shim = proctable.stat_of(app).ppid  # type: ignore[union-attr]
    agent = cluster.agent_pid(old)
    mark = cluster.events()[-1].id
    with running_monitor(cluster) as overlaps:
        os.kill(shim, signal.SIGSTOP)
        os.kill(agent, signal.SIGSTOP)
        try:
            refused = wait_for(
                lambda: [
                    e
                    for e in cluster.events(mark)
                    if e.kind == "fence" and e.data.get("result") == "still-answering"
                ],
                30,
                f"{new} to refuse to promote over {old}'s answering app",
            )
            assert f"{old}'s app still answers (" in refused[0].reason
            assert alive(app)
            assert not [e for e in cluster.events(mark) if e.kind == "start" and e.node == new]
        finally:
            os.kill(shim, signal.SIGCONT)
            os.kill(agent, signal.SIGCONT)
        wait_for(lambda: not alive(app), 15, f"{old}'s app to be fenced")
        wait_for(lambda: cluster.active_running() is not None, 45, "a node to serve again")
    assert overlaps == [], f"two apps answered RUNNING: {overlaps[:5]}"


LISTENER = (
    "import socket, sys, time\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('ready', flush=True)\n"
    "time.sleep(120)\n"
)


def test_a_foreign_process_on_the_apps_port_blocks_the_start_and_is_named(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(lease_ttl="3s", renew_interval="500ms", startup_delay=0.2)
    old = wait_serving(cluster)
    new = other_node(cluster, old)
    port = cluster.cfg.node(new).port
    squatter = subprocess.Popen(
        [sys.executable, "-c", LISTENER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
        mark = cluster.events()[-1].id
        cluster.lose_node(old)
        failed = wait_for(
            lambda: [
                e
                for e in cluster.events(mark)
                if e.node == new and f"port {port} is taken by pid {squatter.pid}" in e.reason
            ],
            30,
            f"{new} to name the process on its port",
        )
        assert "stop that process first" in failed[0].reason
        assert squatter.poll() is None  # not ours: never killed
        assert cluster.active_running() is None
    finally:
        squatter.kill()
        squatter.wait(timeout=10)
