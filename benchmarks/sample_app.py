"""The peer every recovery benchmark compares with: the sample app's own startup.

Shared by benchmarks/failover.py and benchmarks/recovery.py (run as scripts, so
this directory is on ``sys.path``). A restart or a cold-standby failover cannot
be faster than the app takes to start; measuring it in the same run, on the
same (possibly busy) machine, keeps the comparison honest.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

import httpx

from hakit.demo.cluster import free_port

STARTUP_DELAY = 1.0  # the demo cluster's sample app spends this long in STARTING


def wait_ok(url: str, started: float, limit: float) -> float | None:
    """Poll ``url`` every 10 ms until it answers 200; seconds since ``started`` (None: not
    within ``limit`` seconds of ``started``)."""
    deadline = started + limit
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.01)
    return None


def startup_times(samples: int, limit: float = 30.0) -> list[float]:
    """Seconds from exec to a 200 from ``/status`` of a lone sample app, ``samples`` times
    (a start that takes over ``limit`` seconds is left out)."""
    times = []
    with tempfile.TemporaryDirectory(prefix="hakit-bench-app-") as tmp:
        for _ in range(samples):
            port = free_port()
            started = time.monotonic()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hakit.demo",
                    "--port",
                    str(port),
                    "--home",
                    tmp,
                    "--database-url",
                    f"sqlite:///{tmp}/app.db",
                    "--startup-delay",
                    str(STARTUP_DELAY),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                took = wait_ok(f"http://127.0.0.1:{port}/status", started, limit)
                if took is not None:
                    times.append(took)
            finally:
                process.terminate()
                process.wait(10)
    return times
