"""An app without the /status contract and without [app.health]: the probe says what to set.

A real HTTP server that answers 404 everywhere (what most apps do at /status) is
probed the way the agent does; the agent's policy quotes this detail in the alert
of a failed start ("... reports NOT_DEPLOYED 3 times in a row while starting (...)").
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hakit.config import DEFAULT_HEALTH_CHECK, AppConfig, HealthCheckConfig
from hakit.contract import AppState
from hakit.health.probe import NO_CONTRACT_HINT, Observation, StatusProber


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def probe(check: HealthCheckConfig, port: int) -> Observation:
    async def run() -> Observation:
        prober = StatusProber(check, "127.0.0.1", port, 5.0)
        try:
            return await prober.probe()
        finally:
            await prober.aclose()

    return asyncio.run(run())


def test_a_404_under_the_default_check_says_to_set_app_health(port: int) -> None:
    app = AppConfig(start="true", home=Path("h"), database_url="sqlite:///a.db")
    assert app.health == DEFAULT_HEALTH_CHECK  # what a file without [app.health] gets
    observation = probe(app.health, port)
    assert (observation.state, observation.http_status) == (AppState.NOT_DEPLOYED, 404)
    assert observation.detail == "HTTP 404: the webapp is not deployed" + NO_CONTRACT_HINT
    assert "set [app.health] url/expect_status or command" in observation.detail


def test_a_404_under_a_url_check_needs_no_hint(port: int) -> None:
    observation = probe(HealthCheckConfig(url="http://{host}:{port}/health"), port)
    assert (observation.state, observation.http_status) == (AppState.ERROR, 404)
    assert observation.detail == "HTTP 404, expected a 2xx status"
