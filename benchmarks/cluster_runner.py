"""A demo cluster for long benchmark runs: a service manager, a read-only view of the store.

``ManagedCluster`` is ``hakit.demo.cluster.DemoCluster`` (one ``hakit agent`` process
per node, one ``hakit router``, all real processes in sessions of their own) with
what a chaos run needs on top:

- ``ServiceManager``: restarts an agent or the router that exited, after
  ``restart_sec`` (systemd's ``Restart=on-failure``, ``RestartSec=1``), *without*
  touching what the dead process left behind (its app keeps running: cleaning
  up is the new agent's job);
- observation that never writes: the coordination store is read through a
  read-only SQLite connection opened per read, so deleting or replacing the
  store is seen as it is (a missing file is not recreated, a replaced one is
  read, not the old inode);
- pids from the operating system: the app of a node is the process listening on
  its port (psutil), whatever the store says;
- ``shutdown()``: SIGTERM to every agent and the router, SIGKILL by pid after a
  bound, then every process of the cluster still alive (an app an agent left,
  anything on the nodes' or the router's ports) is reported as leaked and
  killed by pid.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from hakit.coord.base import NodeRecord
from hakit.demo.cluster import DemoCluster, DemoSettings


@dataclass(frozen=True)
class StoreLease:
    holder: str
    epoch: int
    expires_at: float

    def valid(self) -> bool:
        return self.expires_at > time.time()


@dataclass(frozen=True)
class Leaked:
    pid: int
    why: str  # "cmdline names the cluster" / "listens on 127.0.0.1:8101"
    cmdline: str


@dataclass(frozen=True)
class Restart:
    name: str  # "agent-node1", "router"
    at: float  # monotonic
    exit_code: int | None  # negative: killed by that signal


def read_store(path: Path, timeout: float = 1.0) -> tuple[StoreLease | None, list[NodeRecord]]:
    """The lease and the node records, read-only. Raises sqlite3.Error (or OSError) when
    the store is missing, locked past ``timeout`` or not a store."""
    if not path.exists():
        raise FileNotFoundError(f"no coordination store at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    try:
        row = conn.execute("SELECT holder, epoch, expires_at FROM lease").fetchone()
        rows = conn.execute(
            "SELECT node, role, app_state, epoch, updated_at, detail FROM nodes ORDER BY node"
        ).fetchall()
    finally:
        conn.close()
    lease = StoreLease(str(row[0]), int(row[1]), float(row[2])) if row else None
    records = []
    for node, role, app_state, epoch, updated_at, detail in rows:
        try:
            parsed: dict[str, Any] = json.loads(detail)
        except ValueError:
            parsed = {}
        records.append(NodeRecord(node, role, app_state, epoch, updated_at, parsed))
    return lease, records


def listening_pid(host: str, port: int) -> int | None:
    """The pid of the process listening on ``host:port`` (TCP), None if there is none."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in connections:
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.laddr.ip in (host, "0.0.0.0", "::")
            and conn.pid is not None
        ):
            return int(conn.pid)
    return None


def signal_pid(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid``; False if it is gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


class ManagedCluster(DemoCluster):
    """A DemoCluster observed read-only and ended with a check for leaked processes."""

    def __init__(self, root: Path, settings: DemoSettings) -> None:
        super().__init__(root, settings)
        self.lock = threading.Lock()  # guards self.processes (the service manager replaces)
        self.all_processes: list[subprocess.Popen[bytes]] = []

    def _spawn(
        self, name: str, args: list[str], prefix: tuple[str, ...] = ()
    ) -> subprocess.Popen[bytes]:
        with self.lock:
            process = super()._spawn(name, args, prefix)
            self.all_processes.append(process)
            return process

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start the service ``name`` ("router" or "agent-<node>") again."""
        if name == "router":
            return self._spawn("router", ["router"])
        return self.start_agent(name.removeprefix("agent-"))

    def process(self, name: str) -> subprocess.Popen[bytes]:
        with self.lock:
            return self.processes[name]

    def agent_pid(self, node: str) -> int:
        return self.process(f"agent-{node}").pid

    @property
    def router_pid(self) -> int:
        return self.process("router").pid

    # --- observation (never writes the store) ---------------------------------------

    @property
    def store_path(self) -> Path:
        return self.cfg.coordination_path

    def store(self) -> tuple[StoreLease | None, list[NodeRecord]] | None:
        try:
            return read_store(self.store_path)
        except (sqlite3.Error, OSError):
            return None

    def node_record(self, node: str) -> NodeRecord | None:
        view = self.store()
        return next((r for r in view[1] if r.node == node), None) if view else None

    def leader(self) -> str | None:
        view = self.store()
        lease = view[0] if view else None
        return lease.holder if lease is not None and lease.valid() else None

    def node_address(self, node: str) -> tuple[str, int]:
        config = self.cfg.node(node)
        return config.host, config.port

    @property
    def router_address(self) -> tuple[str, int]:
        host, _, port = self.cfg.router.listen.rpartition(":")
        return host, int(port)

    def app_pid(self, node: str) -> int | None:
        """The process listening on the node's port; else the pid its agent published."""
        pid = listening_pid(*self.node_address(node))
        if pid is None:
            record = self.node_record(node)
            published = record.detail.get("pid") if record else None
            pid = published if isinstance(published, int) else None
        if pid is not None:
            self.app_pids.add(pid)
        return pid

    # --- the end -----------------------------------------------------------------------

    def shutdown(self, timeout: float = 20.0) -> list[Leaked]:
        """SIGTERM the agents (each stops its app) and the router, SIGKILL by pid after
        ``timeout``; then every process of the cluster still alive is leaked: reported,
        killed by pid. Call with the service manager stopped."""
        with self.lock:
            current = list(self.processes.values())
        for process in current:
            if process.poll() is None:
                signal_pid(process.pid, signal.SIGCONT)  # a stopped process cannot exit
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in current:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for process in self.all_processes:  # reap the ones the service manager replaced
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        leaked = self.leftovers()
        for entry in leaked:
            signal_pid(entry.pid, signal.SIGCONT)
            signal_pid(entry.pid, signal.SIGKILL)
        gone_by = time.monotonic() + 10
        for entry in leaked:
            while psutil.pid_exists(entry.pid) and time.monotonic() < gone_by:
                try:
                    if psutil.Process(entry.pid).status() == psutil.STATUS_ZOMBIE:
                        break  # dead; its parent (init) reaps it
                except psutil.NoSuchProcess:
                    break
                time.sleep(0.05)
        return leaked

    def leftovers(self) -> list[Leaked]:
        """Processes (not zombies) whose command line names this cluster's directory, or
        that listen on a node's or the router's port."""
        me = os.getpid()
        found: dict[int, Leaked] = {}
        root = str(self.root)
        for proc in psutil.process_iter(["pid", "cmdline", "status"]):
            try:
                info = proc.info
                if info["pid"] == me or info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cmdline = " ".join(info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if root in cmdline:
                found[info["pid"]] = Leaked(
                    info["pid"], "its command line names the cluster", cmdline
                )
        addresses = [self.node_address(n.name) for n in self.cfg.nodes] + [self.router_address]
        for host, port in addresses:
            pid = listening_pid(host, port)
            if pid is not None and pid != me and pid not in found:
                try:
                    cmdline = " ".join(psutil.Process(pid).cmdline())
                except psutil.Error:
                    cmdline = "?"
                found[pid] = Leaked(pid, f"listens on {host}:{port}", cmdline)
        return sorted(found.values(), key=lambda entry: entry.pid)


class ServiceManager:
    """Restart every agent or router that exits, ``restart_sec`` after it did (bounded).

    Like systemd with ``Restart=on-failure`` and ``KillMode=process``: only the
    service's main process is replaced; whatever it started is left running.
    """

    def __init__(
        self,
        cluster: ManagedCluster,
        restart_sec: float = 1.0,
        max_seconds: float = 24 * 3600,
        max_restarts: int = 10_000,
    ) -> None:
        self.cluster = cluster
        self.restart_sec = restart_sec
        self.max_seconds = max_seconds
        self.max_restarts = max_restarts
        self.restarts: list[Restart] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="service-manager", daemon=True)

    def __enter__(self) -> ServiceManager:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        due: dict[str, tuple[float, int | None]] = {}  # name -> (restart at, exit code)
        while not self._stop.wait(0.1) and time.monotonic() < deadline:
            with self.cluster.lock:
                current = dict(self.cluster.processes)
            now = time.monotonic()
            for name, process in current.items():
                code = process.poll()
                if code is not None and name not in due:
                    due[name] = (now + self.restart_sec, code)
            for name, (at, code) in list(due.items()):
                if now < at or self._stop.is_set():
                    continue
                del due[name]
                if len(self.restarts) >= self.max_restarts:
                    self.errors.append(f"{name}: not restarted, {self.max_restarts} restarts done")
                    continue
                try:
                    self.cluster.respawn(name)
                except OSError as error:
                    if len(self.errors) < 100:  # retried every tick; the list stays bounded
                        self.errors.append(f"{name}: restart failed: {error}")
                    continue
                self.restarts.append(Restart(name, now, code))
