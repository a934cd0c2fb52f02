"""`hakit status` as a subprocess: the router's view per node, or why it is missing;
lost nodes, --json, --watch, full dates.

A real `hakit router` process runs on a config whose coordination store the
test fills (a real SQLite coordinator: lease + node records, as agents would
publish them), in front of two small real HTTP backends that answer /status
like the app contract says. The router also writes its JSON access log to
stderr (router.access_log = "-"), checked here since only a process has one.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hakit.config import load_config
from hakit.coord.base import Event, NodeRecord
from hakit.coord.sqlite import SqliteCoordinator
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
    root: Path,
    router_port: int,
    admin_port: int,
    n1: int,
    n2: int,
    *,
    admin: bool = True,
    lease_ttl: str = "3s",
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
lease_ttl = "{lease_ttl}"

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


def hakit(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("HAKIT_CONFIG", "FORCE_COLOR")}
    full = {**base, "COLUMNS": "220", "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "hakit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full,
        cwd=cwd,
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


# --- what an operator sees is true: lost nodes, JSON, watch, dates -------------------------


def silent_cluster(config: Path) -> tuple[float, float]:
    """n1 was active and RUNNING, then its agent was killed 120 s ago (its record stays);
    n2 is a live standby; paused by alice; a few events. Returns (lease expiry, pause time)."""
    cfg = load_config(config)
    cfg.coordination_path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    store_clock = [now - 120]  # the store's clock: n1's record was stored 120 s ago
    with SqliteCoordinator(cfg.coordination_path, clock=lambda: store_clock[0]) as coordinator:
        coordinator.publish_node(NodeRecord("n1", "active", "RUNNING", 1, now - 120, {"pid": 4242}))
        store_clock[0] = now
        lease = coordinator.acquire_or_renew("n1", 600)
        assert lease is not None and lease.epoch == 1
        coordinator.publish_node(NodeRecord("n2", "standby", "STOPPED", 0, now))
        paused_at = now - 60
        coordinator.set_state(
            "paused",
            {"paused": True, "actor": "operator:alice", "reason": "jdk", "at": paused_at},
        )
        for t, node, kind, reason in (
            (now - 200, "n1", "start", "n1 promoted to active under epoch 1"),
            (now - 199, "n1", "running", "app on n1 RUNNING"),
            (paused_at, "", "pause", "operator:alice paused the cluster (jdk)"),
        ):
            coordinator.append_event(Event(0, t, node, kind, reason, lease.epoch, "test"))
        return lease.expires_at, paused_at


def lost_config(tmp_path: Path) -> Path:
    router_port, admin_port = free_ports(2)
    # A 30 s lease TTL: n2's fresh record stays fresh however slow the machine is.
    return write_config(tmp_path, router_port, admin_port, 1, 2, admin=False, lease_ttl="30s")


def test_status_marks_a_silent_node_lost_not_active(tmp_path: Path) -> None:
    config = lost_config(tmp_path)
    _, paused_at = silent_cluster(config)
    result = hakit("status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    first = dict(zip(rows["node"], rows["n1"], strict=True))
    second = dict(zip(rows["node"], rows["n2"], strict=True))
    # Its record still says active RUNNING: status does not repeat it.
    assert first["role"] == "lost (leader)" and first["app"] == "unknown", result.stdout
    assert "active" not in first["role"] and "RUNNING" not in first["app"]
    assert (second["role"], second["app"]) == ("standby", "STOPPED")
    assert "lost: n1 (no report for more than lease_ttl 30s" in result.stdout
    # Dates in full (ISO 8601): the pause and every event line.
    paused = f"paused: yes, by operator:alice since {iso(paused_at)} (jdk)"
    assert paused in result.stdout
    lines = result.stdout.split("last events:\n", 1)[1].splitlines()
    assert len(lines) == 3
    stamps = [datetime.fromisoformat(line.split()[0]) for line in lines]
    assert stamps[-1].timestamp() == pytest.approx(paused_at, abs=0.001)
    assert all(stamp.utcoffset() is not None for stamp in stamps)

    # In colour, lost is bold red.
    coloured = hakit(
        "status", "-c", str(config), env={"NO_COLOR": "", "FORCE_COLOR": "1", "TERM": "xterm"}
    )
    assert "\x1b[1;31mlost (leader)" in coloured.stdout, coloured.stdout


def iso(seconds: float) -> str:
    """As hakit prints times: ISO 8601, local time with its offset, milliseconds."""
    return datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="milliseconds")


def test_status_json(tmp_path: Path) -> None:
    config = lost_config(tmp_path)
    expires, paused_at = silent_cluster(config)
    result = hakit("status", "-c", str(config), "--json", "--events", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    nodes = {node["node"]: node for node in report["nodes"]}
    n1, n2 = nodes["n1"], nodes["n2"]
    assert (n1["role"], n1["state"], n1["lost"], n1["leader"]) == ("lost", "unknown", True, True)
    assert 120 <= n1["age"] < 180
    assert n1["reported"]["role"] == "active" and n1["reported"]["app_state"] == "RUNNING"
    assert (n2["role"], n2["state"], n2["lost"]) == ("standby", "STOPPED", False)
    assert 0 <= n2["age"] < 30
    lease = report["lease"]
    assert (lease["holder"], lease["epoch"], lease["valid"]) == ("n1", 1, True)
    assert datetime.fromisoformat(lease["expires_at"]).timestamp() == pytest.approx(
        expires, abs=0.001
    )
    paused = report["paused"]
    assert (paused["by"], paused["reason"]) == ("operator:alice", "jdk")
    assert datetime.fromisoformat(paused["since"]).timestamp() == pytest.approx(
        paused_at, abs=0.001
    )
    assert [e["kind"] for e in report["events"]] == ["running", "pause"]
    assert report["events"][-1]["timestamp"] == pytest.approx(paused_at)


def read_until(
    process: subprocess.Popen[bytes], needle: bytes, count: int, timeout: float
) -> bytes:
    """What ``process`` printed, once ``needle`` appeared ``count`` times (bounded wait)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        while seen.count(needle) < count:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"{needle!r} not seen {count} times in {timeout} s: {seen!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"output ended: {seen!r}")
            seen += chunk
    finally:
        selector.close()
    return seen


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_status_watch_redraws_until_ctrl_c(tmp_path: Path, as_json: bool) -> None:
    config = lost_config(tmp_path)
    silent_cluster(config)
    args = ["status", "-c", str(config), "--watch", "0.2", *(["--json"] if as_json else [])]
    env = {k: v for k, v in os.environ.items() if k != "HAKIT_CONFIG"}
    process = subprocess.Popen(
        [sys.executable, "-m", "hakit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**env, "PYTHONUNBUFFERED": "1", "COLUMNS": "220", "NO_COLOR": "1"},
    )
    try:
        needle = b'"cluster": "obs"' if as_json else b"cluster obs (cold-standby)"
        shown = read_until(process, needle, 2, timeout=30)  # it redrew
        assert process.poll() is None  # and goes on until Ctrl-C
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) in (0, 130)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert b"Traceback" not in process.stderr.read()
    if as_json:  # one whole JSON document per line and refresh
        lines = shown.splitlines()
        documents = [json.loads(line) for line in lines[:2]]
        assert all(doc["nodes"][0]["lost"] for doc in documents)
        assert documents[0]["read_at"] < documents[1]["read_at"]
    else:
        assert shown.count(b"lost (leader)") >= 2
