"""Table-driven tests of the pure probe classifiers (no I/O)."""

from __future__ import annotations

import json

import pytest

from hakit.contract import REPORTED_STATES, AppState, http_status_for
from hakit.health.probe import (
    classify_command_result,
    classify_health_response,
    classify_status_response,
    sqlite_path,
    substitute,
)

JSON = "application/json"


def _state_body(state: str) -> bytes:
    return json.dumps({"state": state}).encode()


@pytest.mark.parametrize("state", sorted(REPORTED_STATES))
def test_every_reported_state_with_its_contract_code_is_taken_as_is(state: AppState) -> None:
    result, detail = classify_status_response(http_status_for(state), _state_body(state), JSON)
    assert result is state
    assert detail == f"reports {state}"


@pytest.mark.parametrize(
    ("http_status", "body", "content_type", "state", "detail_part"),
    [
        (404, b"<html>Not Found</html>", "text/html", AppState.NOT_DEPLOYED, "404"),
        (404, _state_body("RUNNING"), JSON, AppState.NOT_DEPLOYED, "not deployed"),
        (200, b"<html>It works</html>", "text/html", AppState.NOT_DEPLOYED, "without JSON"),
        (200, b"", JSON, AppState.NOT_DEPLOYED, "without JSON"),
        (200, b"\xff\xfe\x00garbage", JSON, AppState.NOT_DEPLOYED, "without JSON"),
        (200, b'["RUNNING"]', JSON, AppState.NOT_DEPLOYED, '"state"'),
        (200, b'{"status": "RUNNING"}', JSON, AppState.NOT_DEPLOYED, '"state"'),
        (200, b'{"state": 1}', JSON, AppState.NOT_DEPLOYED, '"state"'),
        (200, b'{"state": "DANCING"}', JSON, AppState.NOT_DEPLOYED, "unknown state 'DANCING'"),
        # Observations are not states an app may report about itself.
        (200, b'{"state": "DOWN"}', JSON, AppState.NOT_DEPLOYED, "unknown state"),
        (302, _state_body("RUNNING"), JSON, AppState.NOT_DEPLOYED, "redirected"),
        (301, b"", "text/html", AppState.NOT_DEPLOYED, "redirected"),
        # The JSON state wins; a code that disagrees with the contract is noted.
        (200, _state_body("ERROR"), JSON, AppState.ERROR, "contract says 500"),
        (503, _state_body("RUNNING"), JSON, AppState.RUNNING, "answered HTTP 503"),
        (200, _state_body("running"), JSON, AppState.RUNNING, "reports RUNNING"),
        (200, _state_body("RUNNING"), "text/plain", AppState.RUNNING, "content type text/plain"),
        (200, _state_body("RUNNING"), "", AppState.RUNNING, "content type missing"),
        (
            200,
            b'{"state": "RUNNING"}',
            "application/json; charset=utf-8",
            AppState.RUNNING,
            "reports RUNNING",
        ),
    ],
)
def test_status_response(
    http_status: int, body: bytes, content_type: str, state: AppState, detail_part: str
) -> None:
    result, detail = classify_status_response(http_status, body, content_type)
    assert result is state
    assert detail_part in detail


def test_status_detail_is_clean_when_everything_matches() -> None:
    _, detail = classify_status_response(200, b'{"state": "RUNNING"}', "application/json")
    assert "contract" not in detail and "content type" not in detail


@pytest.mark.parametrize(
    ("http_status", "body", "expect_status", "expect_body", "state", "detail_part"),
    [
        (200, b"ok", None, None, AppState.RUNNING, "as expected"),
        (204, b"", None, None, AppState.RUNNING, "as expected"),
        (302, b"", None, None, AppState.ERROR, "expected a 2xx"),  # maintenance redirect
        (503, b"ok", None, None, AppState.ERROR, "HTTP 503"),
        (200, b"ok", 204, None, AppState.ERROR, "expected 204"),
        (503, b"busy", 503, None, AppState.RUNNING, "as expected"),  # the admin asked for it
        (200, b'{"db": "up", "ok": true}', 200, r'"ok":\s*true', AppState.RUNNING, "as expected"),
        (
            200,
            b'{"db": "down", "ok": false}',
            200,
            r'"ok":\s*true',
            AppState.ERROR,
            "does not match",
        ),
        (500, b"nope", 200, "ok", AppState.ERROR, "expected 200; body does not match"),
        (200, b"\xff healthy", None, "healthy", AppState.RUNNING, "as expected"),
    ],
)
def test_health_response(
    http_status: int,
    body: bytes,
    expect_status: int | None,
    expect_body: str | None,
    state: AppState,
    detail_part: str,
) -> None:
    result, detail = classify_health_response(http_status, body, expect_status, expect_body)
    assert result is state
    assert detail_part in detail


@pytest.mark.parametrize(
    ("returncode", "stdout", "state", "detail_part"),
    [
        (0, "", AppState.RUNNING, "exited 0"),
        (0, "whatever it says", AppState.RUNNING, "exited 0"),
        (1, "MAINTENANCE\n", AppState.MAINTENANCE, "reports MAINTENANCE"),
        (3, "app is STARTING (pid 12)", AppState.STARTING, "reports STARTING"),
        (2, "state: STOPPING", AppState.STOPPING, "reports STOPPING"),
        (1, "ERROR: db gone", AppState.ERROR, "reports ERROR"),
        (1, "something broke", AppState.ERROR, "without naming a state"),
        (1, "", AppState.ERROR, "without naming a state"),
        # LSB "not running" (exit 3) must never read as healthy.
        (3, "app is NOT RUNNING", AppState.ERROR, "although it printed RUNNING"),
        (1, "FIRST_RUN", AppState.ERROR, "although it printed FIRST_RUN"),
        # Whole words only: RUNNINGX is no state; observations are not reportable.
        (1, "RUNNINGX DOWN TIMEOUT", AppState.ERROR, "without naming a state"),
    ],
)
def test_command_result(returncode: int, stdout: str, state: AppState, detail_part: str) -> None:
    result, detail = classify_command_result(returncode, stdout)
    assert result is state
    assert detail_part in detail


@pytest.mark.parametrize(
    ("template", "host", "url", "expected"),
    [
        ("http://{host}:{port}/status", "127.0.0.1", True, "http://127.0.0.1:8101/status"),
        ("http://{host}:{port}/status", "::1", True, "http://[::1]:8101/status"),
        ("--host={host}", "::1", False, "--host=::1"),
        ("/health?x={a}", "h", True, "/health?x={a}"),  # other braces stay
    ],
)
def test_substitute(template: str, host: str, url: bool, expected: str) -> None:
    assert substitute(template, host, 8101, url=url) == expected


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////srv/app/app.db", "/srv/app/app.db"),
        ("sqlite:///app.db", "app.db"),
        ("sqlite:////srv/app.db?mode=rwc", "/srv/app.db"),
        ("/srv/app.db", "/srv/app.db"),
    ],
)
def test_sqlite_path(url: str, path: str) -> None:
    assert str(sqlite_path(url)) == path
