"""StatusProber and check_database against real HTTP servers, processes and databases."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hakit.config import HealthCheckConfig
from hakit.contract import REPORTED_STATES, AppState, http_status_for
from hakit.errors import ConfigError
from hakit.health.probe import Observation, StatusProber, check_database, database_problem
from tests.pgserver import PostgresServer

PROBE_TIMEOUT = 5.0  # generous: these answers come at once unless a test delays them


@dataclass
class Answer:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False  # do not answer until the test ends


@dataclass
class TinyApp:
    """A real threaded HTTP server; tests set what each path answers."""

    server: ThreadingHTTPServer
    answers: dict[str, Answer]
    release: threading.Event

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def status_answer(state: AppState) -> Answer:
    return Answer(http_status_for(state), json.dumps({"state": state.value}).encode())


def start_tiny_app(port: int = 0) -> TinyApp:
    answers: dict[str, Answer] = {}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = answers.get(self.path, Answer(404, b"<h1>Not Found</h1>", "text/html"))
            if answer.hang:
                release.wait(30)
                return
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return TinyApp(server, answers, release)


@pytest.fixture
def app() -> Iterator[TinyApp]:
    tiny = start_tiny_app()
    try:
        yield tiny
    finally:
        tiny.stop()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connections are refused, and no one else takes it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def probe_once(check: HealthCheckConfig, port: int, timeout: float = PROBE_TIMEOUT) -> Observation:
    async def run() -> Observation:
        prober = StatusProber(check, "127.0.0.1", port, timeout)
        try:
            return await prober.probe()
        finally:
            await prober.aclose()

    return asyncio.run(run())


STATUS = HealthCheckConfig(status_url="http://{host}:{port}/status")


@pytest.mark.parametrize("state", sorted(REPORTED_STATES))
def test_every_contract_state_is_observed(app: TinyApp, state: AppState) -> None:
    app.answers["/status"] = status_answer(state)
    observation = probe_once(STATUS, app.port)
    assert observation.state is state
    assert observation.http_status == http_status_for(state)
    assert observation.elapsed < PROBE_TIMEOUT


def test_404_is_not_deployed(app: TinyApp) -> None:
    observation = probe_once(STATUS, app.port)  # nothing at /status
    assert (observation.state, observation.http_status) == (AppState.NOT_DEPLOYED, 404)


def test_html_answer_is_not_deployed(app: TinyApp) -> None:
    app.answers["/status"] = Answer(200, b"<html>Apache Tomcat</html>", "text/html")
    observation = probe_once(STATUS, app.port)
    assert observation.state is AppState.NOT_DEPLOYED
    assert "without JSON" in observation.detail


def test_redirect_is_not_followed(app: TinyApp) -> None:
    # The target would look healthy: following it would hide a maintenance redirect.
    app.answers["/status"] = Answer(302, headers={"Location": "/maintenance"})
    app.answers["/maintenance"] = status_answer(AppState.RUNNING)
    observation = probe_once(STATUS, app.port)
    assert (observation.state, observation.http_status) == (AppState.NOT_DEPLOYED, 302)
    assert "redirect to /maintenance" in observation.detail


def test_health_url_redirect_to_maintenance_is_not_running(app: TinyApp) -> None:
    app.answers["/"] = Answer(302, headers={"Location": "/maintenance.html"})
    app.answers["/maintenance.html"] = Answer(200, b"back soon", "text/html")
    observation = probe_once(HealthCheckConfig(url="http://{host}:{port}/"), app.port)
    assert (observation.state, observation.http_status) == (AppState.ERROR, 302)


def test_slow_answer_is_timeout(app: TinyApp) -> None:
    app.answers["/status"] = Answer(200, hang=True)
    observation = probe_once(STATUS, app.port, timeout=0.3)
    assert observation.state is AppState.TIMEOUT
    assert observation.http_status is None
    assert 0.3 <= observation.elapsed < 3.0


def test_closed_port_is_down(refused_port: int) -> None:
    observation = probe_once(STATUS, refused_port)
    assert observation.state is AppState.DOWN
    assert "connection refused" in observation.detail


def test_connection_closed_without_an_answer_is_down() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()

        def hang_up() -> None:
            connection, _ = listener.accept()
            connection.recv(1024)
            connection.close()

        closer = threading.Thread(target=hang_up, daemon=True)
        closer.start()
        observation = probe_once(STATUS, int(listener.getsockname()[1]))
        closer.join(timeout=5)
    assert observation.state is AppState.DOWN
    assert "without a complete answer" in observation.detail


def test_restarted_app_on_the_same_port_is_probed_afresh(tmp_path: Path) -> None:
    first = start_tiny_app()
    port = first.port
    first.answers["/status"] = status_answer(AppState.RUNNING)

    async def scenario() -> list[AppState]:
        prober = StatusProber(STATUS, "127.0.0.1", port, PROBE_TIMEOUT)
        seen = []
        second: TinyApp | None = None
        try:
            seen.append((await prober.probe()).state)
            await asyncio.to_thread(first.stop)
            seen.append((await prober.probe()).state)
            second = await asyncio.to_thread(start_tiny_app, port)
            second.answers["/status"] = status_answer(AppState.MAINTENANCE)
            seen.append((await prober.probe()).state)
        finally:
            await prober.aclose()
            if second is not None:
                second.stop()
        return seen

    try:
        assert asyncio.run(scenario()) == [AppState.RUNNING, AppState.DOWN, AppState.MAINTENANCE]
    finally:
        first.stop()


def test_health_url_with_expected_status_and_body(app: TinyApp) -> None:
    check = HealthCheckConfig(
        url="http://{host}:{port}/health", expect_status=200, expect_body=r'"db":\s*"up"'
    )
    app.answers["/health"] = Answer(200, b'{"db": "up"}')
    assert probe_once(check, app.port).state is AppState.RUNNING
    app.answers["/health"] = Answer(200, b'{"db": "down"}')
    observation = probe_once(check, app.port)
    assert observation.state is AppState.ERROR
    assert "does not match" in observation.detail
    app.answers["/health"] = Answer(503, b'{"db": "up"}')
    assert probe_once(check, app.port).state is AppState.ERROR


def _command(code: str, *args: str) -> HealthCheckConfig:
    return HealthCheckConfig(command=(sys.executable, "-c", code, *args))


def test_command_probe_states() -> None:
    assert probe_once(_command("pass"), 1).state is AppState.RUNNING
    maintenance = _command("import sys; print('MAINTENANCE'); sys.exit(1)")
    assert probe_once(maintenance, 1).state is AppState.MAINTENANCE
    assert probe_once(_command("import sys; sys.exit(2)"), 1).state is AppState.ERROR


def test_command_probe_substitutes_host_and_port() -> None:
    check = _command(
        "import sys; sys.exit(0 if sys.argv[1:] == ['127.0.0.1', '4321'] else 1)",
        "{host}",
        "{port}",
    )
    assert probe_once(check, 4321).state is AppState.RUNNING
    assert probe_once(check, 4322).state is AppState.ERROR


def test_hanging_command_is_timeout_and_is_ended(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    check = _command(
        "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)",
        str(pid_file),
    )
    observation = probe_once(check, 1, timeout=1.0)
    assert observation.state is AppState.TIMEOUT
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


def test_missing_status_command_is_a_config_error() -> None:
    check = HealthCheckConfig(command=("/nonexistent/status-check",))
    with pytest.raises(ConfigError, match="not an executable"):
        StatusProber(check, "127.0.0.1", 1, 1.0)


# --- check_database ---------------------------------------------------------


def test_sqlite_database_up(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE record (id INTEGER PRIMARY KEY)")
    assert asyncio.run(check_database(f"sqlite:///{path}", 2.0)) is True
    assert asyncio.run(check_database(str(path), 2.0)) is True


def test_sqlite_missing_or_garbage_is_down(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    assert asyncio.run(check_database(f"sqlite:///{missing}", 2.0)) is False
    assert not missing.exists()  # a read-only check never creates the file
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    problem = asyncio.run(database_problem(f"sqlite:///{garbage}", 2.0))
    assert problem is not None and "cannot be read" in problem


def test_postgres_closed_port_is_down(refused_port: int) -> None:
    url = f"postgresql://postgres@127.0.0.1:{refused_port}/postgres"
    assert asyncio.run(check_database(url, 2.0)) is False


def test_postgres_up(postgres: PostgresServer) -> None:
    assert asyncio.run(check_database(postgres.url, 10.0)) is True


def test_unknown_database_scheme_is_config_error() -> None:
    with pytest.raises(ConfigError, match="database_url"):
        asyncio.run(check_database("oracle://localhost/app", 1.0))
