"""The agent's scheduled capture (hakit.agent.snapshots) with real capture processes: a
generation under the active's epoch, retention after it, a failure alerted once, and a
capture abandoned (its process killed, no generation) when the node stops being active."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hakit.agent.snapshots import SnapshotSchedule
from hakit.config import Config, load_config
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import Alert
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation
from tests.integration.snapshot.conftest import make_database, make_home
from tests.integration.snapshot.test_cli import CONFIG
from tests.integration.snapshot.test_prune import age
from tests.support.waiting import wait_until


@dataclass
class Agentish:
    """What the schedule talks to: the node's epoch as active, the history, the alerts."""

    epoch: int = 1
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)

    def record(self, kind: EventKind, reason: str, *, epoch: int, data: Any = None) -> None:
        self.events.append((str(kind), reason, dict(data or {})))

    async def alert(self, alert: Alert) -> None:
        self.alerts.append(alert)


def _config(tmp_path: Path, snapshot: str, database: str = "app.db") -> Config:
    make_home(tmp_path / "home")
    if database == "app.db":
        make_database(tmp_path / "app.db")
    config = tmp_path / "hakit.toml"
    text = CONFIG.replace('"sqlite:///app.db"', f'"sqlite:///{database}"')
    config.write_text(text + snapshot)
    return load_config(config)


def _schedule(cfg: Config, agent: Agentish) -> SnapshotSchedule:
    return SnapshotSchedule(
        cfg, "node1", active=lambda: agent.epoch, record=agent.record, alert=agent.alert
    )


def test_a_scheduled_capture_then_retention(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[snapshot]\ndirectory = "repo"\ninterval = "1h"\nkeep_last = 1\n')
    agent = Agentish(epoch=7)
    schedule = _schedule(cfg, agent)
    assert schedule.enabled

    async def turns() -> None:
        await schedule.turn(7)  # nothing in the repository yet: due now
        await schedule.turn(7)  # an hour has not passed: not due
        schedule.last = None  # as if it had
        await schedule.turn(7)
        age(tmp_path / "repo", 2 * 3600)  # both older than the grace period (1 h)
        schedule.last = None
        await schedule.turn(7)

    asyncio.run(turns())
    kinds = [kind for kind, _, _ in agent.events]
    assert kinds == ["snapshot", "snapshot", "snapshot"], agent.events
    first, second, third = (data["generation"] for _, _, data in agent.events)
    # keep_last 1 keeps the third; the second stays too: it was the newest an hour
    # ago, so a capture running meanwhile may build on it (hakit.snapshot.prune).
    store = open_local_store(tmp_path / "repo")
    assert store.list_manifests() == [second, third]
    assert agent.events[1][2]["pruned"] == []  # nothing older than the grace period then
    assert agent.events[2][2]["pruned"] == [first]
    assert "retention removed 1 generations" in agent.events[2][1]
    manifest = read_manifest(store, third)
    assert (manifest.node, manifest.epoch) == ("node1", 7)
    assert verify_generation(store, second).ok and verify_generation(store, third).ok


def test_a_restarted_schedule_keeps_the_rhythm_of_the_repository(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[snapshot]\ndirectory = "repo"\ninterval = "1h"\n')
    agent = Agentish()
    asyncio.run(_schedule(cfg, agent).turn(1))
    assert [kind for kind, _, _ in agent.events] == ["snapshot"]
    # A new schedule (a restarted agent, or another node become active) reads the newest
    # generation's time: no capture before an interval has passed.
    again = Agentish()
    asyncio.run(_schedule(cfg, again).turn(1))
    assert again.events == []


def test_failures_are_recorded_each_time_and_alerted_once(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[snapshot]\ndirectory = "repo"\ninterval = "1h"\n')
    (tmp_path / "repo").write_text("a file where the repository should be")
    agent = Agentish()
    schedule = _schedule(cfg, agent)

    async def failing() -> None:
        await schedule.turn(1)
        schedule.last = None
        await schedule.turn(1)

    asyncio.run(failing())
    assert [kind for kind, _, _ in agent.events] == ["snapshot-failed", "snapshot-failed"]
    assert agent.events[1][2]["failures"] == 2
    assert len(agent.alerts) == 1 and agent.alerts[0].kind is AlertKind.SNAPSHOT
    assert "scheduled snapshot into" in agent.alerts[0].reason


def test_a_capture_is_abandoned_when_the_node_stops_being_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _config(
        tmp_path, '[snapshot]\ndirectory = "repo"\ninterval = "1h"\n', database="stuck.db"
    )
    scratch = tmp_path / "tmp"  # the capture processes' temporary directory
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    agent = Agentish(epoch=5)
    schedule = _schedule(cfg, agent)
    killed: list[int] = []

    async def scenario() -> None:
        capture = asyncio.create_task(schedule.turn(5))
        for _ in range(3000):  # bounded: the capture process reaches the database
            if schedule.process is not None and _capturing(tmp_path):
                break
            await asyncio.sleep(0.01)
        process = schedule.process
        assert process is not None and process.returncode is None
        agent.epoch = 0  # the lease is lost
        await asyncio.wait_for(capture, 30)
        assert process.returncode == -9
        killed.append(process.pid)

    with locked_database(tmp_path / "stuck.db"):
        asyncio.run(scenario())
    (kind, reason, data), *rest = agent.events
    assert not rest and kind == "snapshot-failed" and data["abandoned"]
    assert "node1 is no longer the running active of epoch 5" in reason
    assert agent.alerts == []
    assert open_local_store(tmp_path / "repo").list_manifests() == []
    # The killed capture's copy of the database is left (hakit.snapshot.scratch) ...
    [left] = scratch.iterdir()
    assert left.name.startswith(f"hakit-scratch-database-{killed[0]}-")
    assert (left / "stuck.db").exists()
    # ... until the next capture on the host makes its own scratch directory.
    agent.epoch, schedule.last = 5, None
    asyncio.run(schedule.turn(5))
    assert [kind for kind, _, _ in agent.events][1:] == ["snapshot"], agent.events
    assert list(scratch.iterdir()) == []


def test_the_capture_process_dies_with_its_agent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a capture never goes on under an agent that is gone."""
    cfg = _config(tmp_path, '[snapshot]\ndirectory = "repo"\n', database="stuck.db")
    job = _schedule(cfg, Agentish()).job(1).encode()
    with locked_database(tmp_path / "stuck.db"):
        # An "agent" (a small Python process) that starts the capture and is then killed.
        agent = subprocess.Popen(
            [sys.executable, "-c", AGENT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert agent.stdin is not None and agent.stdout is not None
        agent.stdin.write(job)
        agent.stdin.close()
        child = int(agent.stdout.readline())
        wait_until(lambda: _capturing(tmp_path), 20, "the capture to reach the database")
        assert _state(child) not in (None, "Z")
        agent.kill()
        agent.wait()
        wait_until(lambda: _state(child) in (None, "Z"), 20, "the capture killed with its agent")


AGENT = """
import os, subprocess, sys, time
from hakit.agent.snapshot_job import COMMAND
job = sys.stdin.buffer.read()
capture = subprocess.Popen(
    [sys.executable, *COMMAND, "--parent", str(os.getpid())], stdin=subprocess.PIPE
)
capture.stdin.write(job)
capture.stdin.close()
print(capture.pid, flush=True)
time.sleep(600)
"""


@contextmanager
def locked_database(path: Path) -> Iterator[None]:
    """A database the capture waits for: another process holds its exclusive lock (a
    rollback journal, so readers wait too: SQLite's busy timeout is 30 s in the capture)."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("CREATE TABLE t (x)")
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("INSERT INTO t VALUES (1)")
        yield
    finally:
        connection.close()


def _capturing(root: Path) -> bool:
    """The capture process made the repository: it goes on to the database, whose lock
    holds it (up to SQLite's busy timeout, 30 s in the capture)."""
    return (root / "repo" / "manifests").is_dir()


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None
