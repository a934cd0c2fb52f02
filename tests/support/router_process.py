"""A real `hakit router` process on the real SQLite coordination store, in front of real
backend processes: for tests of what users see while a node goes away (a switchover,
a failover, a node killed mid-request).

The test plays the agents: it writes the lease and the node records into the store
(``ClusterStore``), and the router reads them as it would from real agents
(``router.state_poll_interval``). The router publishes its data-path report into the
same store. Backends are separate Python processes (``BackendProcess``), so a test can
kill one with a real signal; each writes a line to its own log file for every request
it receives (before reading the body, and again once the body is read), which is how a
test proves what reached which node.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hakit.coord.base import NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
from hakit.demo.cluster import free_ports
from hakit.health.datapath import PathReport, reports_in
from tests.support.procnet import listens_on

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
PORT_ATTEMPTS = 3  # free ports picked anew when another process took one meanwhile

# A backend: GET /status answers RUNNING (the app contract, for the router's checks);
# POST /echo answers with the body it received, byte for byte; POST /hang reads the
# body and never answers (until killed); GET /slow answers once GET /release came.
BACKEND_SCRIPT = r"""
import hashlib, json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name, log_path = sys.argv[1], sys.argv[2]
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
release = threading.Event()


def note(line):
    os.write(log, (line + "\n").encode())  # one write: whole lines, in order


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline(100).split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline(1000) not in (b"\r\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(10)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, body, content_type="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Node", name)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/status":
            return self.answer(b'{"state": "RUNNING"}')
        note(f"GET {self.path}")
        if self.path == "/release":
            release.set()
        elif self.path == "/slow":
            release.wait(60)
        self.answer(json.dumps({"node": name, "path": self.path}).encode())

    def do_POST(self):
        note(f"POST {self.path} head")
        body = self.read_body()
        note(f"POST {self.path} body {len(body)} {hashlib.sha256(body).hexdigest()}")
        if self.path == "/hang":
            threading.Event().wait(120)  # the node dies before it answers
        self.answer(body, "application/octet-stream")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll ``condition`` until it gives something other than None/False; fail after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


class BackendProcess:
    """One backend node: its own process, port and request log."""

    def __init__(self, name: str, tmp: Path) -> None:
        self.name = name
        self.log = tmp / f"{name}.requests"
        self.log.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BACKEND_SCRIPT, name, str(self.log)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # its port, once listening
        assert line.strip().isdigit(), f"backend {name} did not start (exit {self.proc.poll()})"
        self.port = int(line)

    def requests(self) -> list[str]:
        """The lines it logged: ``GET /path``, ``POST /path head``, ``POST /path body N sha``."""
        return self.log.read_text().splitlines()

    def kill(self) -> None:
        """SIGKILL: the node dies on the spot, mid-request or not."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class ClusterStore:
    """The coordination store as the agents would write it (lease and node records)."""

    def __init__(self, path: Path) -> None:
        self.coordinator = SqliteCoordinator(path)
        self.epoch = 0

    def standby(self, *names: str) -> None:
        for name in names:
            self.coordinator.publish_node(NodeRecord(name, "standby", "STOPPED", 0, time.time()))

    def active(self, name: str, *, draining: bool = False) -> int:
        """``name`` takes the lease under a new epoch and serves (RUNNING)."""
        if self.coordinator.current_lease() is None or self._holder() != name:
            self.epoch = self.coordinator.take_over(name, 600.0).epoch
        record = NodeRecord(
            name, "active", "RUNNING", self.epoch, time.time(), {"draining": draining}
        )
        self.coordinator.publish_node(record)
        return self.epoch

    def serving(self, name: str, state: str = "RUNNING") -> None:
        """Active-active: ``name`` publishes ``state`` (no lease involved)."""
        self.coordinator.publish_node(NodeRecord(name, "active", state, 0, time.time()))

    def _holder(self) -> str | None:
        lease = self.coordinator.current_lease()
        return lease.holder if lease is not None else None

    def reports(self) -> list[PathReport]:
        return reports_in(self.coordinator.cluster_state())

    def close(self) -> None:
        self.coordinator.close()


class RouterProcess:
    """`hakit router -c hakit.toml` in its own process, with its admin port."""

    def __init__(self, tmp: Path, mode: str, backends: list[BackendProcess], **router: str) -> None:
        state = tmp / "state"
        state.mkdir(parents=True, exist_ok=True)
        self.store = ClusterStore(state / "coordination.db")
        self.config = tmp / "hakit.toml"
        self.log = tmp / "router.log"
        # Free ports are picked, then bound by the router: another test's process may
        # take one in between. The router then exits saying so; try other ports.
        for _ in range(PORT_ATTEMPTS):
            self.port, self.admin_port = free_ports(2)
            self._write_config(state, mode, backends, router)
            with self.log.open("wb") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "hakit", "router", "-c", str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                )
            wait_for(self._started, f"the router to listen (log: {self.log})", timeout=30)
            if self.proc.poll() is None:
                return
            if "address already in use" not in self.log.read_text():
                break
        raise AssertionError(f"router exited: {self.log.read_text()}")

    def _write_config(
        self, state: Path, mode: str, backends: list[BackendProcess], router: dict[str, str]
    ) -> None:
        settings = {
            "listen": f"127.0.0.1:{self.port}",
            "admin_listen": f"127.0.0.1:{self.admin_port}",
            "state_poll_interval": "50ms",
            "check_interval": "200ms",
            "retry_after": "7s",
            "sticky": "none",
            **router,
        }
        nodes = "".join(
            f'[[nodes]]\nname = "{b.name}"\nhost = "127.0.0.1"\nport = {b.port}\n\n'
            for b in backends
        )
        self.config.write_text(
            f'[cluster]\nname = "moves"\nmode = "{mode}"\nstate_dir = "{state}"\n\n'
            # A report every 0.5 s (the agents' renewal pace): pathreport.report_every.
            '[coordination]\nlease_ttl = "1.5s"\nrenew_interval = "500ms"\n\n'
            f'[app]\nstart = ["true"]\nhome = "{state.parent / "home"}"\n'
            'database_url = "sqlite:///app.db"\n\n'
            "[router]\n"
            + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
            + "\n"
            + nodes
        )

    def _started(self) -> bool:
        """The router process itself listens on both its ports (not merely someone does:
        a port it failed to bind may answer for another process), or it has exited."""
        if self.proc.poll() is not None:
            return True
        return listens_on(self.proc.pid, self.port) and listens_on(self.proc.pid, self.admin_port)

    def admin(self, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def held(self) -> int:
        """Requests waiting in the router for a node now (its /metrics)."""
        for line in self.admin("/metrics").splitlines():
            if line.startswith("hakit_router_requests_held "):
                return int(float(line.split()[1]))
        raise AssertionError("no hakit_router_requests_held in /metrics")

    def nodes(self) -> dict[str, Any]:
        """The router's /nodes document: what it sees of each node."""
        document: dict[str, Any] = json.loads(self.admin("/nodes"))
        return document

    def routable(self) -> set[str]:
        return {name for name, node in self.nodes()["nodes"].items() if node["routable"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.store.close()
