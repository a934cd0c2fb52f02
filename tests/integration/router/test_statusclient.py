"""The router's light HTTP prober sees what StatusProber (httpx) sees, without httpx."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading

import pytest

from hakit.config import HealthCheckConfig
from hakit.contract import REPORTED_STATES, AppState
from hakit.health.probe import Observation, StatusProber
from hakit.router.statusclient import LightStatusProber, make_prober
from tests.integration.health.test_probe import (  # noqa: F401  (fixtures)
    PROBE_TIMEOUT,
    STATUS,
    Answer,
    TinyApp,
    app,
    refused_port,
    start_tiny_app,
    status_answer,
)


def both(check: HealthCheckConfig, port: int, timeout: float = PROBE_TIMEOUT) -> list[Observation]:
    """The observation of the light prober, then StatusProber's, of the same answer."""

    async def run() -> list[Observation]:
        seen = []
        for prober in (
            make_prober(check, "127.0.0.1", port, timeout),
            StatusProber(check, "127.0.0.1", port, timeout),
        ):
            try:
                seen.append(await prober.probe())
            finally:
                await prober.aclose()
        return seen

    light, reference = asyncio.run(run())
    return [light, reference]


def same(light: Observation, reference: Observation) -> None:
    assert (light.state, light.http_status, light.detail) == (
        reference.state,
        reference.http_status,
        reference.detail,
    )


def test_http_urls_get_the_light_prober_and_the_rest_httpx() -> None:
    assert isinstance(make_prober(STATUS, "127.0.0.1", 1, 1.0), LightStatusProber)
    health = HealthCheckConfig(url="http://{host}:{port}/health", expect_status=200)
    assert isinstance(make_prober(health, "127.0.0.1", 1, 1.0), LightStatusProber)
    tls = HealthCheckConfig(status_url="https://{host}:{port}/status")
    assert isinstance(make_prober(tls, "127.0.0.1", 1, 1.0), StatusProber)


def test_the_router_does_not_load_httpx() -> None:
    code = "import sys, hakit.router.server; print('httpx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("state", sorted(REPORTED_STATES))
def test_every_contract_state_alike(app: TinyApp, state: AppState) -> None:  # noqa: F811
    app.answers["/status"] = status_answer(state)
    same(*both(STATUS, app.port))


@pytest.mark.parametrize(
    "answer",
    [
        Answer(404, b"<h1>Not Found</h1>", "text/html"),
        Answer(200, b"<html>Apache Tomcat</html>", "text/html"),
        Answer(200, b'{"state": "RUNNING"}', "text/plain"),
        Answer(200, b'{"state": "SLEEPING"}'),
        Answer(200, b'{"other": 1}'),
        Answer(302, headers={"Location": "/maintenance"}),
        Answer(500, b'{"state": "RUNNING"}'),
        Answer(200, b'{"state": "running"}', headers={"X-Extra": "1"}),
    ],
)
def test_status_answers_alike(app: TinyApp, answer: Answer) -> None:  # noqa: F811
    app.answers["/status"] = answer
    same(*both(STATUS, app.port))


@pytest.mark.parametrize(
    ("check", "answer"),
    [
        (HealthCheckConfig(url="http://{host}:{port}/h"), Answer(200, b"ok", "text/html")),
        (HealthCheckConfig(url="http://{host}:{port}/h"), Answer(503, b"down", "text/html")),
        (
            HealthCheckConfig(url="http://{host}:{port}/h"),
            Answer(302, headers={"Location": "/maintenance.html"}),
        ),
        (
            HealthCheckConfig(url="http://{host}:{port}/h", expect_status=204),
            Answer(200, b"ok", "text/html"),
        ),
        (
            HealthCheckConfig(url="http://{host}:{port}/h", expect_body="RUNNING|OK"),
            Answer(200, b"all OK here", "text/html"),
        ),
        (
            HealthCheckConfig(url="http://{host}:{port}/h", expect_body="RUNNING|OK"),
            Answer(200, b"sad", "text/html"),
        ),
    ],
)
def test_health_url_answers_alike(
    app: TinyApp,  # noqa: F811
    check: HealthCheckConfig,
    answer: Answer,
) -> None:
    app.answers["/h"] = answer
    same(*both(check, app.port))


def test_refused_alike(refused_port: int) -> None:  # noqa: F811
    same(*both(STATUS, refused_port))


def test_slow_answer_is_timeout_alike(app: TinyApp) -> None:  # noqa: F811
    app.answers["/status"] = Answer(200, hang=True)
    light, reference = both(STATUS, app.port, timeout=0.3)
    same(light, reference)
    assert 0.3 <= light.elapsed < 3.0


def raw_server(answer: bytes, *, close: bool = True) -> tuple[socket.socket, threading.Thread]:
    """A server that reads a request and writes ``answer`` (then closes), twice."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        for _ in range(2):
            connection, _ = listener.accept()
            connection.recv(4096)
            connection.sendall(answer)
            if close:
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed without a byte
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{",  # cut short
        b"garbage\r\n\r\n",
    ],
    ids=["nothing", "cut-short", "garbage"],
)
def test_broken_answers_are_down_alike(answer: bytes) -> None:
    listener, thread = raw_server(answer)
    with listener:
        light, reference = both(STATUS, int(listener.getsockname()[1]))
        thread.join(5)
    assert (light.state, light.http_status) == (reference.state, reference.http_status)
    assert light.state is AppState.DOWN
    assert "without a complete answer" in light.detail


@pytest.mark.parametrize(
    "answer",
    [
        b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"state": "RUNNING"}',
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b'\r\n6\r\n{"stat\r\ne\r\ne": "RUNNING"}\r\n0\r\n\r\n',
        b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"state": "MAINTENANCE"}',
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b'Content-Length: 20\r\n\r\n{"state": "RUNNING"}',
    ],
    ids=["until-close", "chunked", "http-1.0", "interim-first"],
)
def test_other_framings_alike(answer: bytes) -> None:
    listener, thread = raw_server(answer)
    with listener:
        same(*both(STATUS, int(listener.getsockname()[1])))
        thread.join(5)


def test_body_is_capped() -> None:
    body = b'{"state": "RUNNING", "pad": "' + b"x" * (200 * 1024) + b'"}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    listener, thread = raw_server(head % len(body) + body)
    with listener:
        light, reference = both(STATUS, int(listener.getsockname()[1]))
        thread.join(5)
    same(light, reference)  # both read 64 KiB: not JSON, so not deployed
    assert light.state is AppState.NOT_DEPLOYED
