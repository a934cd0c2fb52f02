"""The sample app's start faults as a real process: a node-local failed start
(``--fail-start-if FILE``) and a webapp that failed to deploy (``--not-deployed``),
as the agent's own prober sees it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hakit.config import HealthCheckConfig
from hakit.contract import AppState
from hakit.health.probe import StatusProber
from tests.integration.demo.test_app import StartApp, start_app

__all__ = ["start_app"]  # the fixture, shared with test_app.py


def test_fail_start_if_fails_only_while_the_file_exists(
    start_app: StartApp, tmp_path: Path
) -> None:
    flag = tmp_path / "fail-node1"
    flag.touch()
    failing = start_app("--startup-delay", "0.2", env={"HAKIT_DEMO_FAIL_START_IF": str(flag)})
    assert failing.wait_exit() == 1
    assert f"{flag} exists" in failing.log() and "Remove that file" in failing.log()
    flag.unlink()
    fine = start_app("--startup-delay", "0.2", "--fail-start-if", str(flag))
    fine.wait_state("FIRST_RUN")
    assert fine.process.poll() is None


def test_not_deployed_answers_404_html_everywhere_and_the_prober_says_so(
    start_app: StartApp,
) -> None:
    app = start_app("--not-deployed", "--startup-delay", "0.2")
    status = app.request("GET", "/status")
    assert status.status_code == 404
    assert status.headers["content-type"].startswith("text/html")
    assert "failed to deploy" in status.text
    assert app.request("GET", "/records").status_code == 404

    async def probe() -> tuple[AppState, str]:
        prober = StatusProber(
            HealthCheckConfig(status_url="http://{host}:{port}/status"),
            "127.0.0.1",
            app.port,
            2.0,
        )
        try:
            observation = await prober.probe()
        finally:
            await prober.aclose()
        return observation.state, observation.detail

    state, detail = asyncio.run(probe())
    assert state is AppState.NOT_DEPLOYED and "404" in detail
    assert app.process.poll() is None  # up, just without its webapp
