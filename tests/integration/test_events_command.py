"""`hakit events` as a subprocess, on a real SQLite coordination store the test fills as
agents would: --limit, full dates, --since/--node/--kind, --json, and -f following new
events until SIGINT."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from hakit.config import load_config
from hakit.coord.base import Event
from hakit.coord.sqlite import SqliteCoordinator

CONFIG = """\
[cluster]
mode = "restart-only"
state_dir = "state"

[app]
start = ["app"]
home = "home"
database_url = "sqlite:///app.db"

[[nodes]]
name = "node1"
port = 8101
"""


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[Path, SqliteCoordinator]]:
    config = tmp_path / "hakit.toml"
    config.write_text(CONFIG)
    path = load_config(config).coordination_path
    path.parent.mkdir(parents=True)
    coordinator = SqliteCoordinator(path)
    coordinator.last_epoch()  # the store exists, as once an agent has run (it creates it)
    try:
        yield config, coordinator
    finally:
        coordinator.close()


def append(coordinator: SqliteCoordinator, n: int, kind: str = "start") -> None:
    coordinator.append_event(
        Event(0, time.time(), "node1", kind, f"reason number {n}", 1, "agent:node1", {})
    )


def events(config: Path, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "hakit", "events", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_limit_shows_the_newest_events_oldest_first(
    store: tuple[Path, SqliteCoordinator],
) -> None:
    config, coordinator = store
    assert events(config) == []  # an empty history is no error
    for n in range(1, 61):
        append(coordinator, n)
    lines = events(config, "--limit", "3")
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["58", "59", "60"]
    assert all("node1" in line and "epoch 1" in line and " start " in line for line in lines)
    assert len(events(config)) == 50  # the default
    assert len(events(config, "--limit", "100")) == 60
    assert events(config, "--limit", "0") == []
    # One event, one line, however long its reason (for grep, and not cut at 80 columns).
    long_reason = "because " + "very " * 60 + "long"
    coordinator.append_event(Event(0, time.time(), "node1", "alert", long_reason, 1, "a", {}))
    [line] = events(config, "--limit", "1")
    assert line.endswith(long_reason)


def test_negative_limit_is_a_usage_error(store: tuple[Path, SqliteCoordinator]) -> None:
    config, _ = store
    done = subprocess.run(
        [sys.executable, "-m", "hakit", "events", "--config", str(config), "--limit", "-1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "limit" in done.stderr


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line ``process`` prints, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    line = b""
    deadline = time.monotonic() + timeout
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no line within {timeout} s (so far: {line!r})")
            chunk = os.read(fd, 1)
            if not chunk:
                raise AssertionError(f"output ended (so far: {line!r})")
            line += chunk
    finally:
        selector.close()
    return line.decode()


def test_follow_prints_new_events_until_sigint(store: tuple[Path, SqliteCoordinator]) -> None:
    config, coordinator = store
    append(coordinator, 1)
    append(coordinator, 2)
    process = subprocess.Popen(
        [sys.executable, "-m", "hakit", "events", "-f", "--limit", "1", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # Unbuffered output through the pipe, as on a terminal.
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert read_line(process, 20).rstrip().endswith("reason number 2")  # --limit 1
        append(coordinator, 3, kind="failover")
        followed = read_line(process, 10)
        assert " failover " in followed and followed.rstrip().endswith("reason number 3")
        append(coordinator, 4, kind="alert")
        assert read_line(process, 10).rstrip().endswith("reason number 4")
        assert process.poll() is None  # still following
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130  # like any command stopped by Ctrl-C
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read() == b""  # nothing printed twice, nothing after
    assert b"Traceback" not in process.stderr.read()


def test_lines_carry_the_full_date(store: tuple[Path, SqliteCoordinator]) -> None:
    config, coordinator = store
    t = time.time() - 3 * 86_400  # a history spans days: a time alone would not say which
    coordinator.append_event(Event(0, t, "node1", "alert", "three days ago", 1, "a", {}))
    [line] = events(config)
    stamp = datetime.fromisoformat(line.split(" ", 1)[0])
    assert stamp.utcoffset() is not None  # ISO 8601 with the date and the offset
    assert stamp.timestamp() == pytest.approx(t, abs=0.001)
    assert line.endswith(" alert     three days ago")


def history(coordinator: SqliteCoordinator) -> float:
    """Events over the last three hours, two nodes and the cluster; returns now."""
    now = time.time()
    for ago, node, kind, reason in (
        (3 * 3600, "node1", "start", "old start"),
        (2 * 3600 - 60, "node2", "alert", "node2 alert"),
        (1800, "node1", "alert", "node1 alert"),
        (300, "", "pause", "cluster pause"),
        (120, "node1", "failover", "node1 failover"),
        (60, "node2", "start", "node2 start"),
    ):
        coordinator.append_event(Event(0, now - ago, node, kind, reason, 1, "a", {"ago": ago}))
    return now


def test_since_node_and_kind_choose_the_events(store: tuple[Path, SqliteCoordinator]) -> None:
    config, coordinator = store
    now = history(coordinator)

    def shown(*args: str) -> list[str]:
        # time, node, "epoch", 1, kind, reason
        return [line.split(maxsplit=5)[5] for line in events(config, *args)]

    assert shown("--since", "10m") == ["cluster pause", "node1 failover", "node2 start"]
    assert shown("--since", "2h") == [
        "node2 alert",
        "node1 alert",
        "cluster pause",
        "node1 failover",
        "node2 start",
    ]
    moment = datetime.fromtimestamp(now - 1900).astimezone().isoformat()
    assert shown("--since", moment) == [
        "node1 alert",
        "cluster pause",
        "node1 failover",
        "node2 start",
    ]
    assert shown("--node", "node2") == ["node2 alert", "node2 start"]
    assert shown("--node", "cluster") == ["cluster pause"]
    assert shown("--kind", "alert", "--kind", "failover") == [
        "node2 alert",
        "node1 alert",
        "node1 failover",
    ]
    assert shown("--node", "node1", "--kind", "alert", "--since", "1h") == ["node1 alert"]
    # --limit keeps the newest of the chosen ones.
    assert shown("--kind", "alert", "--kind", "start", "--limit", "2") == [
        "node1 alert",
        "node2 start",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "hakit", "events", "-c", str(config), "--since", "soon"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--since" in done.stderr and "10m" in done.stderr


def test_json_is_one_object_per_line(store: tuple[Path, SqliteCoordinator]) -> None:
    config, coordinator = store
    now = history(coordinator)
    lines = events(config, "--json", "--kind", "alert")
    records = [json.loads(line) for line in lines]
    assert [r["reason"] for r in records] == ["node2 alert", "node1 alert"]
    first = records[0]
    assert set(first) == {"id", "time", "timestamp", "node", "kind", "reason", "epoch"} | {
        "actor",
        "data",
    }
    assert (first["node"], first["kind"], first["epoch"], first["actor"]) == (
        "node2",
        "alert",
        1,
        "a",
    )
    assert first["data"] == {"ago": 2 * 3600 - 60}
    assert first["timestamp"] == pytest.approx(now - 2 * 3600 + 60)
    assert datetime.fromisoformat(first["time"]).timestamp() == pytest.approx(
        first["timestamp"], abs=0.001
    )
    assert records[0]["id"] < records[1]["id"]


def test_follow_shows_only_the_chosen_new_events(
    store: tuple[Path, SqliteCoordinator],
) -> None:
    config, coordinator = store
    append(coordinator, 1, kind="alert")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hakit",
            "events",
            "-f",
            "--kind",
            "alert",
            "--json",
            "--config",
            str(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert json.loads(read_line(process, 20))["reason"] == "reason number 1"
        append(coordinator, 2, kind="start")  # not an alert: not shown
        append(coordinator, 3, kind="alert")
        assert json.loads(read_line(process, 10))["reason"] == "reason number 3"
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
