"""A local cluster of real processes: two agents (each supervising a sample app) and a router.

Used by ``hakit demo`` and by the end-to-end tests, so what the tests check is
exactly what a newcomer sees. Topology is the one of separate hosts:
every node is its own agent process; killing an agent and its app together is a
faithful node loss.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from hakit.config import Config
from hakit.config import load_config as _load_config
from hakit.coord.base import Event, NodeRecord
from hakit.coord.factory import open_coordinator
from hakit.demo.etcd import EtcdCluster, start_etcd_cluster
from hakit.errors import HakitError
from hakit.supervisor import cgroup, proctable

T = TypeVar("T")


log = logging.getLogger("hakit.demo")


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


# Listening ports are picked at random below the kernel's ephemeral range (32768 and up
# here): the kernel hands those out in sequence to every connecting socket and to every
# other process asking for port 0, so a port picked there and released is soon someone
# else's; down here only another random pick can collide (one in thousands).
_PICK_RANGE = (20000, 32000)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports: held open together so none is picked twice."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count * 50):  # bounded: taken ports are skipped
            if len(sockets) == count:
                break
            sock = socket.socket()
            try:
                sock.bind((host, random.randrange(*_PICK_RANGE)))
            except OSError:
                sock.close()
                continue
            sockets.append(sock)
        while len(sockets) < count:  # the range is crowded: the kernel's choice
            sock = socket.socket()
            sock.bind((host, 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class DemoSettings:
    """Knobs the demo and the tests turn; defaults make a snappy demo."""

    mode: str = "cold-standby"
    sticky: str = "none"  # router.sticky: "lb-cookie", "app-cookie-suffix", ...
    nodes: int = 2
    router_port: int = 8080
    node_ports: tuple[int, ...] = ()
    startup_delay: float = 1.0
    restart_attempts: int = 2
    failure_window: str = "5m"
    startup_timeout: str = "20s"
    stop_timeout: str = "5s"
    health_interval: str = "500ms"
    probe_timeout: str = "1s"
    patience: str = "10s"
    fall: int = 3
    lease_ttl: str = "3s"
    renew_interval: str = "500ms"
    hold_timeout: str | None = None  # router.hold_timeout; None: hakit's default (no hold)
    app_env: dict[str, str] = field(default_factory=dict)
    database_url: str = ""  # app.database_url; "": a SQLite file in the shared directory
    fence_command: tuple[str, ...] = ()  # failover.fence_command; (): none
    fence_timeout: str = "10s"
    fence_database_sessions: bool = False
    admin_ports: tuple[int, ...] = ()  # nodes' admin_port (agents serve the admin API); ()
    admin_token: str = ""  # [admin] token, with admin_ports
    nofailover: tuple[str, ...] = ()  # names of nodes with nofailover = true
    # Where each node listens (its app, and the address the router and checks use); ()
    # or "": 127.0.0.1. With node_prefix, a node can live in another network namespace.
    node_hosts: tuple[str, ...] = ()
    # A command prefix per node name for its agent (and so its app), e.g.
    # ("ip", "netns", "exec", "ns1"): the test of the data path (tests/support/netns.py).
    node_prefix: dict[str, tuple[str, ...]] = field(default_factory=dict)
    check_interval: str | None = None  # router.check_interval; None: hakit's default
    # coordination.backend: "sqlite" (a file in the state dir) or "etcd": with no
    # etcd_endpoints, DemoCluster starts a local three-member etcd cluster (hakit.demo.etcd)
    # with its data in <root>/etcd and stops it in close().
    coordination: str = "sqlite"
    etcd_endpoints: tuple[str, ...] = ()
    # cluster.storage: "shared" (one home and database in <root>/shared) or "replicated"
    # (each node its own in <root>/nodes/<node>/home, the SQLite file inside it; needs
    # admin_ports and admin_token: standbys pull over the admin API).
    storage: str = "shared"
    replication_interval: str = "2s"
    max_lag: str = "5m"
    # Replicated storage: each node's own database_url (e.g. a PostgreSQL database per
    # node); (): a SQLite file inside each node's home.
    node_database_urls: tuple[str, ...] = ()


def render_config(root: Path, settings: DemoSettings) -> str:
    """The hakit.toml of a demo cluster rooted at ``root`` (shared storage inside it)."""
    ports = settings.node_ports or tuple(8101 + i for i in range(settings.nodes))
    app_argv = [
        sys.executable,
        "-m",
        "hakit.demo",
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--home",
        "{home}",
        "--database-url",
        "{database_url}",
        "--route",
        "{route}",
        "--startup-delay",
        str(settings.startup_delay),
        "--enable-faults",
    ]
    env = "".join(f"{json.dumps(k)} = {json.dumps(v)}, " for k, v in settings.app_env.items())
    hosts = [
        (settings.node_hosts[i] if i < len(settings.node_hosts) else "") or "127.0.0.1"
        for i in range(len(ports))
    ]
    nodes = "".join(
        f'\n[[nodes]]\nname = "node{i + 1}"\nhost = "{hosts[i]}"\nport = {port}\nroute = "n{i + 1}"\n'
        + (f"admin_port = {settings.admin_ports[i]}\n" if i < len(settings.admin_ports) else "")
        + ("nofailover = true\n" if f"node{i + 1}" in settings.nofailover else "")
        + _replicated_node(root, settings, f"node{i + 1}")
        for i, port in enumerate(ports)
    )
    if settings.admin_token:
        nodes = f'\n[admin]\ntoken = "{settings.admin_token}"\n' + nodes
    hold = "" if settings.hold_timeout is None else f'hold_timeout = "{settings.hold_timeout}"\n'
    if settings.check_interval is not None:
        hold += f'check_interval = "{settings.check_interval}"\n'
    database_url = settings.database_url or f"sqlite:///{root / 'shared' / 'db' / 'app.db'}"
    fence = f"fence_database_sessions = {json.dumps(settings.fence_database_sessions)}\n"
    if settings.fence_command:
        fence += f"fence_command = {json.dumps(list(settings.fence_command))}\n"
    coordination = ""
    if settings.coordination == "etcd":
        coordination = (
            f"\n[coordination.etcd]\nendpoints = {json.dumps(list(settings.etcd_endpoints))}\n"
        )
    elif settings.coordination != "sqlite":
        raise ValueError(f"demo coordination {settings.coordination!r}: expected sqlite or etcd")
    replication = ""
    if settings.storage == "replicated":
        replication = (
            f'\n[replication]\ninterval = "{settings.replication_interval}"\n'
            f'max_lag = "{settings.max_lag}"\n'
        )
    elif settings.storage != "shared":
        raise ValueError(f"demo storage {settings.storage!r}: expected shared or replicated")
    return f"""# A demo cluster written by `hakit demo`: two nodes of the sample app, {settings.storage} storage.
[cluster]
name = "demo"
mode = "{settings.mode}"
storage = "{settings.storage}"
state_dir = "state"
{replication}
[coordination]
backend = "{settings.coordination}"
lease_ttl = "{settings.lease_ttl}"
renew_interval = "{settings.renew_interval}"
{coordination}
[app]
start = {json.dumps(app_argv)}
home = "shared/home"
database_url = {json.dumps(database_url)}
startup_timeout = "{settings.startup_timeout}"
stop_timeout = "{settings.stop_timeout}"
env = {{ {env.rstrip(", ")} }}

[app.health]
status_url = "http://{{host}}:{{port}}/status"

[health]
interval = "{settings.health_interval}"
probe_timeout = "{settings.probe_timeout}"
timeout = "{settings.patience}"
fall = {settings.fall}
rise = 1

[failover]
restart_attempts = {settings.restart_attempts}
failure_window = "{settings.failure_window}"
auto_failback = false
fence_timeout = "{settings.fence_timeout}"
{fence}
[router]
listen = "127.0.0.1:{settings.router_port}"
sticky = "{settings.sticky}"
retry_after = "5s"
{hold}{nodes}"""


def _replicated_node(root: Path, settings: DemoSettings, node: str) -> str:
    """A node's own home and database (replicated storage): the SQLite file inside the home."""
    if settings.storage != "replicated":
        return ""
    home = root / "nodes" / node / "home"
    index = int(node.removeprefix("node")) - 1
    url = f"sqlite:///{home}/data/app.db"
    if index < len(settings.node_database_urls):
        url = settings.node_database_urls[index]
    return f'home = "{home}"\ndatabase_url = {json.dumps(url)}\n'


class DemoCluster:
    """Start, inspect and stop a local cluster. Every process is ours, ended by PID."""

    def __init__(self, root: Path, settings: DemoSettings | None = None) -> None:
        self.root = root
        self.settings = settings or DemoSettings()
        self.config_path = root / "hakit.toml"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.app_pids: set[int] = set()
        self.etcd: EtcdCluster | None = None
        root.mkdir(parents=True, exist_ok=True)
        (root / "shared" / "home").mkdir(parents=True, exist_ok=True)
        (root / "shared" / "db").mkdir(parents=True, exist_ok=True)
        if self.settings.storage == "replicated":
            for index in range(self.settings.nodes):
                (root / "nodes" / f"node{index + 1}" / "home" / "data").mkdir(
                    parents=True, exist_ok=True
                )
        if self.settings.coordination == "etcd" and not self.settings.etcd_endpoints:
            self.etcd = start_etcd_cluster(root / "etcd", 3)
            self.settings = replace(self.settings, etcd_endpoints=tuple(self.etcd.endpoints))
        try:
            self.config_path.write_text(render_config(root, self.settings))
            self.cfg: Config = _load_config(self.config_path)
            self.coordinator = open_coordinator(self.cfg)
        except BaseException:
            self._stop_etcd()
            raise

    @property
    def router_url(self) -> str:
        host, _, port = self.cfg.router.listen.rpartition(":")
        return f"http://{host}:{port}"

    # --- processes ----------------------------------------------------------

    def _spawn(
        self, name: str, args: list[str], prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        logs = self.cfg.cluster.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{name}.out", "ab") as out:
            # A session of its own: Ctrl-C in the demo's terminal reaches only the
            # demo, which then stops everything in order.
            process = subprocess.Popen(
                [*prefix, sys.executable, "-m", "hakit", *args, "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def start_agent(self, node: str) -> subprocess.Popen[bytes]:
        prefix = self.settings.node_prefix.get(node, ())
        return self._spawn(f"agent-{node}", ["agent", "--node", node], prefix)

    def start_router(self) -> subprocess.Popen[bytes]:
        return self._spawn("router", ["router"])

    def start(self) -> None:
        self.start_router()
        for node in self.cfg.nodes:
            self.start_agent(node.name)

    def agent_pid(self, node: str) -> int:
        return self.processes[f"agent-{node}"].pid

    def kill_agent(self, node: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[f"agent-{node}"]
        process.send_signal(sig)
        process.wait(timeout=10)

    def lose_node(self, node: str) -> None:
        """A node loss: SIGKILL its agent, the app's shim and the app together (each may
        already be gone: the shim kills the app as soon as the agent dies)."""
        app = self.app_pid(node)
        stat = proctable.stat_of(app) if app is not None else None
        doomed = [pid for pid in (app, stat.ppid if stat else None) if pid is not None]
        process = self.processes[f"agent-{node}"]
        for pid in (process.pid, *doomed):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)

    def app_pid(self, node: str) -> int | None:
        record = self.node_record(node)
        pid = record.detail.get("pid") if record else None
        if isinstance(pid, int):
            self.app_pids.add(pid)
            return pid
        return None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM every agent (each stops its app) and the router; SIGKILL stragglers."""
        for node in self.cfg.nodes:
            try:
                self.app_pid(node.name)  # remember app pids in case an agent is gone
            except HakitError as error:
                # An unreadable store must not keep the processes running: stop them anyway.
                log.warning("stopping the demo cluster without the app pids: %s", error)
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        # Apps orphaned by a killed agent (node-loss tests) run in their own groups.
        for pid in self.app_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        self._remove_app_cgroups()

    def _remove_app_cgroups(self) -> None:
        """The apps' cgroups their shims could not remove (a shim killed with its node):
        empty ones go, as a reboot would take them; a populated one stays."""
        for node in self.cfg.nodes:
            path = cgroup.app_cgroup_path(node.name, self.cfg.cluster.state_dir)
            if path is not None:
                cgroup.remove(path)

    def close(self) -> None:
        """Close the store; stop the etcd cluster this object started (by PID, data kept)."""
        try:
            self.coordinator.close()
        finally:
            self._stop_etcd()

    def _stop_etcd(self) -> None:
        if self.etcd is not None:
            self.etcd.stop(remove=False)

    # --- observation --------------------------------------------------------

    def node_record(self, node: str) -> NodeRecord | None:
        for record in self.coordinator.nodes():
            if record.node == node:
                return record
        return None

    def leader(self) -> str | None:
        lease = self.coordinator.current_lease()
        if lease is not None and lease.valid:
            return lease.holder
        return None

    def events(self, after_id: int = 0) -> list[Event]:
        return list(self.coordinator.events(after_id))

    def active_running(self) -> str | None:
        """The node that holds the lease and whose app reports RUNNING/FIRST_RUN."""
        leader = self.leader()
        record = self.node_record(leader) if leader else None
        if record and record.role == "active" and record.app_state in ("RUNNING", "FIRST_RUN"):
            return leader
        return None


def wait_for(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Poll ``condition`` until it returns a truthy value; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)
