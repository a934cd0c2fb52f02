"""``hakit demo``: start a local cluster, print what happens, stop cleanly on Ctrl-C."""

from __future__ import annotations

import dataclasses
import faulthandler
import secrets
import signal
import socket
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from rich.console import Console

from hakit.contract import AppState, is_routable
from hakit.demo.cluster import DemoCluster, DemoSettings, free_port
from hakit.errors import HakitError
from hakit.history.eventlog import format_event

DEFAULT_NODE_PORTS = (8101, 8102)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _request(url: str, method: str = "GET") -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
            return int(r.status)
    except OSError:
        return None


def _print_banner(console: Console, cluster: DemoCluster) -> None:
    config = cluster.config_path
    console.print(
        "[bold]hakit demo[/bold]: two nodes of the sample app, cold standby, shared storage"
    )
    console.print(f"  router     {cluster.router_url}/   (the app: /status, /records, /integrity)")
    for node in cluster.cfg.nodes:
        console.print(
            f"  {node.name:<10} http://{node.host}:{node.port}/status  (route {node.route_name})"
        )
    if cluster.etcd is not None:
        pids = ", ".join(str(pid) for pid in cluster.etcd.pids)
        console.print(f"  etcd       {' '.join(cluster.etcd.endpoints)}  (pids {pids})")
    console.print(f"  config     {config}")
    console.print(f"  logs       {cluster.cfg.cluster.state_dir / 'logs'}")


def _print_hints(console: Console, cluster: DemoCluster) -> None:
    config = cluster.config_path
    console.print(
        "\n[bold]Try it[/bold] (in another terminal):\n"
        f"  curl -s -X POST {cluster.router_url}/records"
        ' -d \'{"title": "hello", "attachment": "hi"}\'\n'
        f"  .venv/bin/hakit status -c {config}\n"
        "  kill -9 <app pid>        a crash: the agent restarts the app on the same node\n"
        "  ... three times in 5 m   repeated crashes: failover to the standby\n"
        "  kill -9 <agent pid>      the agent dies: its app dies with it (its shim), the standby\n"
        "                           takes over when the lease expires; `hakit why` tells\n"
        f"  .venv/bin/hakit events -c {config}\n"
        "Ctrl-C stops everything.\n",
        highlight=False,
        soft_wrap=True,
    )


def _announce_serving_apps(console: Console, cluster: DemoCluster, shown: set[int]) -> None:
    """Print each newly serving app's pid once, so the next `kill -9` is one copy away."""
    leader = cluster.leader()
    for node in cluster.cfg.nodes:
        record = cluster.node_record(node.name)
        if record is None or not is_routable(AppState(record.app_state)):
            continue
        pid = cluster.app_pid(node.name)
        agent_pid = record.detail.get("agent_pid")
        if pid and pid not in shown:
            shown.add(pid)
            role = "active" if leader == node.name else record.role
            console.print(
                f"[bold]>>> {node.name} ({role}) serves: app pid {pid}, agent pid {agent_pid}."
                f"  Try: kill -9 {pid}[/bold]",
                highlight=False,
            )


def _print_events(console: Console, cluster: DemoCluster, last_id: int) -> int:
    """Print the events after ``last_id``; the id of the last one printed."""
    for event in cluster.events(last_id):
        console.print(format_event(event, markup=True), highlight=False, soft_wrap=True)
        last_id = event.id
    return last_id


def run_demo(
    port: int,
    directory: Path | None,
    console: Console,
    coordination: str = "sqlite",
    storage: str = "shared",
) -> None:
    """``coordination``: "sqlite" (the embedded store) or "etcd" (a local three-member etcd
    cluster the demo starts in its directory and stops on exit, every member by PID);
    ``storage``: "shared" or "replicated" (each node its own home and database, the
    standby pulling the active's generations over the admin API)."""
    if not _port_free(port):
        raise HakitError(
            f"port {port} on 127.0.0.1 is in use; stop what uses it or run `hakit demo --port N`"
        )
    root = directory or Path(tempfile.mkdtemp(prefix="hakit-demo-"))
    node_ports = tuple(p if _port_free(p) else free_port() for p in DEFAULT_NODE_PORTS)
    if coordination == "etcd":
        console.print("Starting a local three-member etcd cluster...")
    settings = DemoSettings(router_port=port, node_ports=node_ports, coordination=coordination)
    if storage == "replicated":
        # Standbys pull over the authenticated admin API: ports and a token of this demo's own.
        settings = dataclasses.replace(
            settings,
            storage=storage,
            admin_ports=tuple(free_port() for _ in node_ports),
            admin_token=secrets.token_urlsafe(24),
        )
    try:
        cluster = DemoCluster(root, settings)
    except RuntimeError as error:  # etcd did not start (hakit.demo.etcd says why)
        raise HakitError(f"cannot start the demo's etcd cluster: {error}") from None
    stop = threading.Event()
    # `kill -USR1 <demo pid>` prints every thread's stack: what a stuck demo is doing.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    last_id = 0
    try:
        cluster.start()
        _print_banner(console, cluster)
        console.print("Waiting for the first node to serve...")
        # The events are shown while waiting too: a node that cannot start (a port in use,
        # a broken home) says so at once instead of after a silent minute.
        deadline = time.monotonic() + 60
        while not stop.is_set() and _request(cluster.router_url + "/status") != 200:
            last_id = _print_events(console, cluster, last_id)
            if time.monotonic() > deadline:
                console.print(
                    f"[red]the cluster did not come up within 60 s; see the logs in "
                    f"{cluster.cfg.cluster.state_dir / 'logs'}[/red]"
                )
                break
            stop.wait(0.2)
        if not stop.is_set():
            # The sample app starts in FIRST_RUN (not yet configured), like Jira.
            if _request(cluster.router_url + "/setup", "POST") == 200:
                console.print("Configured the app through the router (POST /setup).")
            _print_hints(console, cluster)
        shown: set[int] = set()
        while not stop.is_set():
            last_id = _print_events(console, cluster, last_id)
            _announce_serving_apps(console, cluster, shown)
            stop.wait(0.2)
    finally:
        console.print("Stopping the cluster...")
        cluster.stop()
        for event in cluster.events(last_id):
            console.print(format_event(event, markup=True), highlight=False, soft_wrap=True)
        cluster.close()  # stops the demo's etcd cluster, if any
        console.print(f"Stopped; every process ended. State kept in {root}")
