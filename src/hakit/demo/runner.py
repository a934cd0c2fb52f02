"""``hakit demo``: start a local cluster, print what happens, stop cleanly on Ctrl-C."""

from __future__ import annotations

import signal
import tempfile
import threading
import urllib.request
from pathlib import Path

from rich.console import Console

from hakit.demo.cluster import DemoCluster, DemoSettings, free_port, wait_for
from hakit.errors import HakitError
from hakit.eventlog import format_event


def _router_serves(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/status", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def run_demo(port: int, directory: Path | None, console: Console) -> None:
    if not _port_free(port):
        raise HakitError(
            f"port {port} on 127.0.0.1 is in use; stop what uses it or run `hakit demo --port N`"
        )
    root = directory or Path(tempfile.mkdtemp(prefix="hakit-demo-"))
    node_ports = tuple(p if _port_free(p) else free_port() for p in (8101, 8102))
    cluster = DemoCluster(root, DemoSettings(router_port=port, node_ports=node_ports))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster.start()
    config = cluster.config_path
    try:
        console.print(
            "[bold]hakit demo[/bold]: two nodes of the sample app, cold standby, shared storage"
        )
        console.print(
            f"  router     {cluster.router_url}/   (the app: /status, /records, /integrity)"
        )
        for node in cluster.cfg.nodes:
            console.print(
                f"  {node.name}      http://{node.host}:{node.port}/status  (route {node.route_name})"
            )
        console.print(f"  config     {config}")
        console.print(f"  logs       {cluster.cfg.cluster.state_dir / 'logs'}")
        console.print("Waiting for the first node to serve...")
        last_id = 0
        try:
            wait_for(
                lambda: stop.is_set() or _router_serves(cluster.router_url),
                60,
                "the router to serve",
            )
        except TimeoutError:
            console.print("[red]the cluster did not come up within 60 s; see the logs above[/red]")
        if not stop.is_set():
            console.print(
                "\n[bold]Try it[/bold] (in another terminal):\n"
                f'  curl -s -X POST {cluster.router_url}/records -d \'{{"title": "hello", "attachment": "hi"}}\'\n'
                f"  hakit status -c {config}\n"
                "  kill -9 <app pid shown below>      # crash: restarted on the same node\n"
                "  kill -9 it three times             # repeated crashes: failover to the standby\n"
                f"  hakit events -c {config}\n"
                "Ctrl-C stops everything.\n"
            )
        shown_pids: set[int] = set()
        while not stop.is_set():
            for event in cluster.events(last_id):
                console.print(format_event(event, markup=True), highlight=False)
                last_id = event.id
            for node in cluster.cfg.nodes:
                record = cluster.node_record(node.name)
                pid = cluster.app_pid(node.name)
                if record and pid and record.app_state == "RUNNING" and pid not in shown_pids:
                    shown_pids.add(pid)
                    role = "active" if cluster.leader() == node.name else record.role
                    console.print(
                        f"[bold]>>> {node.name} ({role}) serves; app pid {pid}: try `kill -9 {pid}`[/bold]"
                    )
            stop.wait(0.2)
    finally:
        console.print("Stopping the cluster...")
        cluster.stop()
        for event in cluster.events(last_id):
            console.print(format_event(event), highlight=False, markup=False)
        cluster.close()
        console.print(f"Stopped. State kept in {root}")
