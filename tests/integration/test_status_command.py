"""`hakit status` as a subprocess: the router's view per node, or why it is missing.

A real `hakit router` process runs on a config whose coordination store the
test fills (a real SQLite coordinator: lease + node records, as agents would
publish them), in front of two small real HTTP backends that answer /status
like the app contract says. The router also writes its JSON access log to
stderr (router.access_log = "-"), checked here since only a process has one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hakit.config import load_config
from hakit.coord.base import NodeRecord
from hakit.coord.embedded import SqliteCoordinator
from hakit.demo.cluster import free_ports


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ContractBackend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/status":
            body = b'{"state": "RUNNING"}'
        else:
            body = json.dumps({"node": self.server.name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ContractBackend(ThreadingHTTPServer):
    """A node's app, reduced to what the router needs: /status says RUNNING."""

    daemon_threads = True

    def __init__(self, name: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


@pytest.fixture
def nodes() -> Iterator[tuple[ContractBackend, ContractBackend]]:
    n1, n2 = ContractBackend("n1"), ContractBackend("n2")
    try:
        yield n1, n2
    finally:
        n1.stop()
        n2.stop()


def write_config(
    root: Path, router_port: int, admin_port: int, n1: int, n2: int, *, admin: bool = True
) -> Path:
    path = root / "hakit.toml"
    admin_line = f'admin_listen = "127.0.0.1:{admin_port}"\n' if admin else ""
    path.write_text(
        f"""
[cluster]
name = "obs"
mode = "cold-standby"
state_dir = "state"

[coordination]
backend = "sqlite"

[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"

[router]
listen = "127.0.0.1:{router_port}"
{admin_line}access_log = "-"
access_log_format = "json"
state_poll_interval = "100ms"

[[nodes]]
name = "n1"
port = {n1}

[[nodes]]
name = "n2"
port = {n2}
"""
    )
    return path


def publish_cluster(config: Path) -> int:
    """n1 holds the lease and is active; n2 is a standby. Returns the epoch."""
    cfg = load_config(config)
    cfg.coordination_path.parent.mkdir(parents=True, exist_ok=True)
    with SqliteCoordinator(cfg.coordination_path) as coordinator:
        lease = coordinator.acquire_or_renew("n1", 600)
        assert lease is not None
        now = time.time()
        coordinator.publish_node(NodeRecord("n1", "active", "RUNNING", lease.epoch, now))
        coordinator.publish_node(NodeRecord("n2", "standby", "RUNNING", 0, now))
        return lease.epoch


def hakit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "220", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "hakit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def table_rows(output: str) -> dict[str, list[str]]:
    """Cells of the status table by node name; the header row under "node"."""
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        for bar in ("┃", "│"):
            if line.count(bar) >= 2:
                cells = [cell.strip() for cell in line.strip().strip(bar).split(bar)]
                rows.setdefault(cells[0], cells)
    return rows


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


class RouterProcess:
    """`hakit router -c CONFIG` in its own process, stopped by PID."""

    def __init__(self, config: Path, stderr: Path, admin_port: int) -> None:
        self.stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hakit", "router", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )
        self.admin_port = admin_port

    def ready(self, timeout: float = 20.0) -> bool:
        """The admin port answers; False if the process exited (port taken meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                http_get(f"http://127.0.0.1:{self.admin_port}/nodes", timeout=1)
                return True
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"the router did not serve its admin port: {self.log()}")

    def log(self) -> str:
        return self.stderr_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._stderr.close()


def test_status_shows_the_routers_view_per_node(tmp_path, nodes) -> None:
    n1, n2 = nodes
    router: RouterProcess | None = None
    try:
        for _ in range(3):  # a free port may be taken by a parallel test before we bind it
            router_port, admin_port = free_ports(2)
            config = write_config(tmp_path, router_port, admin_port, n1.port, n2.port)
            epoch = publish_cluster(config)
            router = RouterProcess(config, tmp_path / "router.err", admin_port)
            if router.ready():
                break
            router.stop()
            router = None
        assert router is not None, "could not start the router on free ports"

        for i in range(3):
            status, body = http_get(f"http://127.0.0.1:{router_port}/page/{i}")
            assert status == 200 and json.loads(body)["node"] == "n1"

        result = hakit("status", "-c", str(config))
        assert result.returncode == 0, result.stderr
        rows = table_rows(result.stdout)
        header = rows["node"]
        assert header[-3:] == ["routable", "in-flight", "requests"], result.stdout
        first = dict(zip(header, rows["n1"], strict=True))
        second = dict(zip(header, rows["n2"], strict=True))
        assert (first["routable"], first["in-flight"], first["requests"]) == ("yes", "0", "3")
        assert (second["routable"], second["requests"]) == ("no", "0")
        assert first["epoch"] == str(epoch)
        assert "not reachable" not in result.stdout

        # The JSON access log went to the router's stderr, one object per request.
        def logged() -> list[dict[str, Any]]:
            return [
                json.loads(line)
                for line in router.log().splitlines()  # type: ignore[union-attr]
                if line.startswith("{")
            ]

        deadline = time.monotonic() + 10
        while len(logged()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        records = logged()
        assert [r["target"] for r in records[:3]] == ["/page/0", "/page/1", "/page/2"]
        assert all(r["node"] == "n1" and r["status"] == 200 for r in records[:3])
    finally:
        if router is not None:
            router.stop()


def test_status_says_when_the_router_is_not_reachable(tmp_path, nodes) -> None:
    n1, n2 = nodes
    router_port, admin_port = free_ports(2)  # nothing listens on either
    config = write_config(tmp_path, router_port, admin_port, n1.port, n2.port)
    publish_cluster(config)
    result = hakit("status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert f"router: not reachable at 127.0.0.1:{admin_port}" in result.stdout
    rows = table_rows(result.stdout)
    assert "routable" not in rows["node"] and rows["n1"][0] == "n1"


def test_status_without_admin_port_shows_the_cluster_only(tmp_path, nodes) -> None:
    n1, n2 = nodes
    router_port, admin_port = free_ports(2)
    config = write_config(tmp_path, router_port, admin_port, n1.port, n2.port, admin=False)
    publish_cluster(config)
    result = hakit("status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "router:" not in result.stdout and "routable" not in table_rows(result.stdout)["node"]
