"""The reading commands as subprocesses: `hakit status`, `events` and `why` never create
a coordination store (a wrong -c says so), which config they read (-c, $HAKIT_CONFIG,
./hakit.toml), `hakit why` while the cluster is paused, and `hakit --version`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from hakit.config import load_config
from hakit.coord.base import Event, NodeRecord
from hakit.coord.sqlite import SqliteCoordinator

CONFIG = """\
[cluster]
name = "{name}"
mode = "cold-standby"
state_dir = "state"

[coordination]
lease_ttl = "30s"

[app]
start = ["app"]
home = "home"
database_url = "sqlite:///app.db"

[[nodes]]
name = "node1"
port = 8101

[[nodes]]
name = "node2"
port = 8102
"""


def write_config(directory: Path, name: str = "readers") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "hakit.toml"
    config.write_text(CONFIG.format(name=name))
    return config


def store_of(config: Path) -> Path:
    return load_config(config).coordination_path


def hakit(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "HAKIT_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "hakit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "COLUMNS": "250", "NO_COLOR": "1", **(env or {})},
        cwd=cwd,
    )


@pytest.mark.parametrize("command", ["status", "events", "why"])
def test_a_reader_never_creates_the_store(tmp_path: Path, command: str) -> None:
    config = write_config(tmp_path)
    store = store_of(config)
    result = hakit(command, "-c", str(config))
    assert result.returncode != 0
    assert f"no cluster state at {store}: is -c right?" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not store.exists() and not store.parent.exists()  # nothing left behind
    assert result.stdout == ""


def test_status_reads_the_store_once_an_agent_made_it(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = store_of(config)
    store.parent.mkdir(parents=True)
    with SqliteCoordinator(store) as coordinator:
        coordinator.last_epoch()  # what an agent's first turn leaves: an empty store
    result = hakit("status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "cluster readers (cold-standby)" in result.stdout


def populated(directory: Path, name: str) -> Path:
    config = write_config(directory, name)
    store = store_of(config)
    store.parent.mkdir(parents=True)
    with SqliteCoordinator(store) as coordinator:
        coordinator.publish_node(NodeRecord("node1", "standby", "STOPPED", 0, time.time()))
    return config


def test_which_config_a_command_reads(tmp_path: Path) -> None:
    env_config = populated(tmp_path / "by-env", "from-env")
    flag_config = populated(tmp_path / "by-flag", "from-flag")
    cwd_config = populated(tmp_path / "in-cwd", "from-cwd")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def cluster(result: subprocess.CompletedProcess[str]) -> str:
        assert result.returncode == 0, result.stderr
        return next(line for line in result.stdout.splitlines() if "cluster from-" in line)

    env = {"HAKIT_CONFIG": str(env_config)}
    assert "from-env" in cluster(hakit("status", env=env, cwd=cwd_config.parent))
    assert "from-flag" in cluster(hakit("status", "-c", str(flag_config), env=env))
    assert "from-flag" in cluster(hakit("status", "--config", str(flag_config), env=env))
    assert "from-cwd" in cluster(hakit("status", cwd=cwd_config.parent))  # ./hakit.toml
    # The environment also reaches the other commands (here: events and config check).
    with SqliteCoordinator(store_of(env_config)) as coordinator:
        coordinator.append_event(Event(0, time.time(), "node1", "boot", "env event", 0, "a"))
    events = hakit("events", env=env, cwd=elsewhere)
    assert events.returncode == 0 and events.stdout.rstrip().endswith("env event"), events
    checked = hakit("config", "check", env=env, cwd=elsewhere)
    assert checked.returncode == 0 and f"{env_config}: OK" in checked.stdout, checked
    checked = hakit("config", "check", "-c", str(flag_config), env=env, cwd=elsewhere)
    assert checked.returncode == 0 and f"{flag_config}: OK" in checked.stdout, checked
    # Nothing anywhere: the default names the file it looked for.
    missing = hakit("status", cwd=elsewhere)
    assert missing.returncode != 0 and "hakit.toml" in missing.stderr


def test_version() -> None:
    result = hakit("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"hakit {version('hakit')}\n"


def test_why_explains_the_outage_while_paused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    store = store_of(config)
    store.parent.mkdir(parents=True)
    now = time.time()
    paused_at = now - 600
    with SqliteCoordinator(store) as coordinator:
        lease = coordinator.acquire_or_renew("node1", 0.001)  # expired at once: nobody renews
        assert lease is not None
        for ago, node, kind, reason in (
            (900, "node1", "start", "node1 promoted to active under epoch 1; starting the app"),
            (899, "node1", "running", "app on node1 RUNNING after 1.0s"),
            (600, "", "pause", "operator:alice paused the cluster (san firmware)"),
            (
                300,
                "node1",
                "paused",
                "would start the app (app on node1 exited (killed by SIGKILL); restart 1 of 2 "
                "within 5m), but operator:alice (san firmware) paused the cluster: no action",
            ),
        ):
            coordinator.append_event(Event(0, now - ago, node, kind, reason, 1, "agent:node1"))
        coordinator.set_state(
            "paused",
            {"paused": True, "actor": "operator:alice", "reason": "san firmware", "at": paused_at},
        )
        # node2 is a live standby.
        coordinator.publish_node(NodeRecord("node2", "standby", "STOPPED", 0, now))
    # node1's app crashed during the pause, then its agent was killed: its record was
    # stored 5 minutes ago by the store's clock (what its age is judged by).
    with SqliteCoordinator(store, clock=lambda: now - 300) as coordinator:
        coordinator.publish_node(NodeRecord("node1", "active", "STOPPED", 1, now - 300))
    result = hakit("why", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(paused_at))
    assert lines[0].startswith(f"the cluster is paused since {since} (10m ")
    assert "by operator:alice (san firmware): agents keep monitoring" in lines[0]
    assert "take no action" in lines[0]
    assert lines[1].startswith("now: no node is RUNNING; no node holds the leader lease")
    assert lines[1].endswith("; lost: node1")
    assert lines[2].startswith("  node1: lost: its agent has not reported for 5m")
    assert lines[3].startswith("  node2: standby, app STOPPED")
    assert any("would start the app" in line for line in lines)
    assert any(line.startswith("from the history: ") for line in lines)
    # Asked about a moment, it tells the history only.
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 800))
    past = hakit("why", "-c", str(config), "--at", at)
    assert past.returncode == 0, past.stderr
    assert not past.stdout.startswith("the cluster is paused")
