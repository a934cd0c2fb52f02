"""`hakit demo` as a newcomer runs it: output, a kill -9 by hand, Ctrl-C, nothing left behind."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from hakit.demo.cluster import free_port
from tests.support.waiting import wait_until

# One worker for both: `hakit demo` takes its default node ports (8101, 8102) when they are
# free, and two demos starting at once both find them free.
pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("demo-command")]


class Output:
    """The demo's stdout, read by a thread so waits have deadlines."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(target=lambda: [self.lines.put(x) for x in stdout], daemon=True).start()

    def drain(self) -> list[str]:
        """Lines read but not yet waited for."""
        lines = []
        while not self.lines.empty():
            lines.append(self.lines.get_nowait())
        return lines

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "".join(self.seen))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_demo_restarts_a_killed_app_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hakit", "demo", "--port", str(port), "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    output = Output(process)
    try:
        first = output.wait_for(
            r">>> (node\d) \(active\) serves: app pid (\d+), agent pid (\d+)", 60
        )
        node, app_pid, agent_pid = first.group(1), int(first.group(2)), int(first.group(3))
        response = httpx.get(f"http://127.0.0.1:{port}/status", timeout=5)
        assert response.json()["state"] == "RUNNING"  # the demo configured the app

        os.kill(app_pid, signal.SIGKILL)
        output.wait_for(rf"{node} .*killed by SIGKILL.*restart 1 of", 20)
        again = output.wait_for(rf">>> {node} \(active\) serves: app pid (\d+)", 30)
        new_pid = int(again.group(1))
        assert new_pid != app_pid

        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            returncode = process.wait(timeout=45)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGUSR1)  # the demo dumps its threads' stacks
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)
            raise AssertionError(
                "the demo did not stop within 45 s of Ctrl-C; output:\n"
                + "".join(output.seen)
                + "".join(output.drain())
            ) from None
        assert returncode == 0
        output.wait_for(r"Stopped; every process ended", 5)
        assert not alive(new_pid) and not alive(agent_pid)
    finally:
        if process.poll() is None:
            # Its agents, router and apps would outlive it: end them too (SIGTERM makes
            # each agent stop its app).
            leftovers = psutil.Process(process.pid).children(recursive=True)
            process.kill()
            process.wait(timeout=10)
            for child in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.terminate()
            _, alive_still = psutil.wait_procs(leftovers, timeout=15)
            for child in alive_still:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()


def test_demo_with_replicated_storage_shows_the_standby_following(tmp_path: Path) -> None:
    """`hakit demo --storage replicated`: each node its own home and database; the standby
    applies the active's generations (pulled over the admin API) and says how old its copy
    is in `hakit status --json`."""
    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "hakit", "demo", "--port", str(port)),
            *("--dir", str(tmp_path), "--storage", "replicated"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    output = Output(process)
    try:
        first = output.wait_for(r">>> (node\d) \(active\) serves: app pid (\d+)", 60)
        active = first.group(1)
        created = httpx.post(
            f"http://127.0.0.1:{port}/records",
            json={"title": "replicated", "attachment": "shipped to the standby"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        made_after = time.time()

        def standby_copy() -> dict[str, object] | None:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "hakit",
                    "status",
                    "--json",
                    "-c",
                    str(tmp_path / "hakit.toml"),
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if done.returncode != 0:
                return None
            for node in json.loads(done.stdout)["nodes"]:
                replica = node.get("replica") or {}
                # A copy captured after the record was written holds the record.
                captured_at = time.time() - float(replica.get("age") or 0)
                if (
                    node["node"] != active
                    and replica.get("generation")
                    and captured_at > made_after
                ):
                    return dict(replica)
            return None

        replica = wait_until(standby_copy, 60, "the standby to apply a generation")
        assert replica["role"] == "copy" and replica["from"] == active

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=45) == 0
        output.wait_for(r"Stopped; every process ended", 5)
    finally:
        if process.poll() is None:
            leftovers = psutil.Process(process.pid).children(recursive=True)
            process.kill()
            process.wait(timeout=10)
            for child in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.terminate()
            _, alive_still = psutil.wait_procs(leftovers, timeout=15)
            for child in alive_still:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
