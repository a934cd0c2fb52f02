"""Replicated storage's capture runs in a process of its own (hakit.agent.replication via
hakit.agent.snapshot_job), never in a thread of the agent: real capture processes, a real
SQLite store, a real SQLite database inside the home. A capture whose node stops being the
running active is killed by PID and leaves no generation."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hakit.agent.replication import REPLICA_KEY, ReplicationSide
from hakit.config import Config, load_config
from hakit.coord.factory import open_coordinator
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation
from hakit.supervisor.proctable import command_line, descendants, stat_of
from tests.integration.snapshot.conftest import make_database, make_home

CONFIG = """
[cluster]
name = "repl"
state_dir = "state"
storage = "replicated"
{replication}[admin]
token = "replication-test-token-0123456789abcdef"
[app]
start = "true"
home = "unused"
[[nodes]]
name = "node1"
port = 18101
admin_port = 18201
home = "node1/home"
database_url = "sqlite:///node1/home/data/app.db"
[[nodes]]
name = "node2"
port = 18102
admin_port = 18202
home = "node2/home"
database_url = "sqlite:///node2/home/data/app.db"
"""


@dataclass
class Agentish:
    """What the replication side asks of its agent: the epoch held as the running active."""

    epoch: int = 0
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def record(self, kind: Any, reason: str, *, epoch: int | None = None, data: Any = None) -> None:
        self.events.append((str(kind), reason, dict(data or {})))


def replicated_config(root: Path, replication: str = '[replication]\ninterval = "1h"\n') -> Config:
    (root / "hakit.toml").write_text(CONFIG.replace("{replication}", replication))
    for node in ("node1", "node2"):
        (root / node / "home").mkdir(parents=True)
    return load_config(root / "hakit.toml")


async def _call(function: Any, *args: Any, what: str = "") -> Any:
    return await asyncio.to_thread(function, *args)


def side_of(cfg: Config, node: str, agent: Agentish, **kwargs: Any) -> ReplicationSide:
    return ReplicationSide(
        cfg,
        cfg.node(node),
        open_coordinator(cfg),
        _call,
        active_epoch=lambda: agent.epoch,
        cold=lambda: agent.epoch == 0,
        served_epoch=lambda: agent.epoch,
        record=agent.record,
        token=cfg.admin.token,
        **kwargs,
    )


def test_the_active_captures_in_a_process_under_its_epoch(tmp_path: Path) -> None:
    cfg = replicated_config(tmp_path)
    home = cfg.home_of(cfg.node("node1"))
    make_home(home)
    (home / "data").mkdir()
    make_database(home / "data" / "app.db")
    agent = Agentish(epoch=4)
    side = side_of(cfg, "node1", agent)
    children: list[list[int]] = []

    async def scenario() -> None:
        turn = asyncio.create_task(side.turn())
        while not turn.done():  # bounded by the capture itself (a few seconds)
            children.append(
                [pid for pid in descendants(os.getpid()) if "snapshot_job" in command_line(pid)]
            )
            await asyncio.sleep(0.01)  # the event loop runs all along: nothing blocks it
        turn.result()

    asyncio.run(scenario())
    assert any(children), "no capture process was seen"
    assert agent.events == []
    assert side.captured is not None
    generation, taken_ns = side.captured
    store = open_local_store(side.repository)
    assert store.list_manifests() == [generation]
    manifest = read_manifest(store, generation)
    assert (manifest.node, manifest.epoch, manifest.started_ns) == ("node1", 4, taken_ns)
    assert manifest.database is not None and manifest.database.kind == "sqlite"
    paths = {entry.path for entry in manifest.entries}
    assert "data/app.db" not in paths  # read through the backup API, not as a file
    assert verify_generation(store, generation).ok
    entry = side.detail(taken_ns / 1e9 + 2)[REPLICA_KEY]
    assert entry["role"] == "source" and entry["generation"] == generation


def test_a_capture_is_killed_when_the_node_stops_being_the_active(tmp_path: Path) -> None:
    cfg = replicated_config(tmp_path)
    home = cfg.home_of(cfg.node("node1"))
    make_home(home)
    (home / "data").mkdir()
    agent = Agentish(epoch=6)
    side = side_of(cfg, "node1", agent)
    seen: list[int] = []

    async def scenario() -> None:
        turn = asyncio.create_task(side.turn())
        for _ in range(3000):  # bounded: the capture process waits on the locked database
            # The capture process is this process's child, as the agent's. Not its own
            # children: one sampled between its fork and exec still has its command line
            # (seen: the scan helper, which exits on its own once the capture is gone).
            jobs = [
                pid
                for pid in descendants(os.getpid())
                if "snapshot_job" in command_line(pid)
                and getattr(stat_of(pid), "ppid", None) == os.getpid()
            ]
            if jobs and (side.repository / "manifests").is_dir():
                seen.extend(jobs)
                break
            await asyncio.sleep(0.01)
        assert seen, "the capture process did not start"
        agent.epoch = 0  # the lease is lost
        await asyncio.wait_for(turn, 30)

    with locked_database(home / "data" / "app.db"):
        asyncio.run(scenario())
    for pid in seen:
        stat = stat_of(pid)
        assert stat is None or stat.state in ("Z", "X"), f"capture {pid} still runs"
    ((kind, reason, data),) = agent.events
    assert kind == "replication" and data == {"abandoned": True}
    assert "node1 is no longer the running active of epoch 6" in reason
    assert "its process was killed" in reason
    assert open_local_store(side.repository).list_manifests() == []
    assert side.captured is None


@contextmanager
def locked_database(path: Path) -> Iterator[None]:
    """A database the capture waits for: another connection holds its exclusive lock."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("CREATE TABLE t (x)")
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute("INSERT INTO t VALUES (1)")
        yield
    finally:
        connection.close()
