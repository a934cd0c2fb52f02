"""A deleted, replaced or older coordination store under running processes.

Each worker is its own Python process that opens the store the way the agent
does (``open_coordinator(cfg, node=...)``: a memory file per node) or the way a
router does (no node: memory in the process), and answers one store call per
line on stdin. ``hakit init`` runs as the real command.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WORKER = r"""
import json, sys
from pathlib import Path
from hakit.config import load_config
from hakit.coord.factory import open_coordinator
from hakit.errors import HakitError

config, node = sys.argv[1], sys.argv[2]
cfg = load_config(Path(config))
coord = open_coordinator(cfg, node=None if node == "-" else node)
print(json.dumps({"ready": True}), flush=True)

def lease_of(lease):
    return None if lease is None else [lease.holder, lease.epoch]

for line in sys.stdin:
    cmd, *args = line.split()
    try:
        if cmd == "acquire":
            out = {"lease": lease_of(coord.acquire_or_renew(args[0], float(args[1])))}
        elif cmd == "renew":
            out = {"lease": lease_of(coord.renew_epoch(args[0], int(args[1]), float(args[2])))}
        elif cmd == "release":
            out = {"released": coord.release(args[0], int(args[1]))}
        elif cmd == "lease":
            out = {"lease": lease_of(coord.current_lease())}
        else:
            out = {"error": "unknown", "message": cmd}
        out["identity"] = coord.identity
    except HakitError as error:
        out = {"error": type(error).__name__, "message": str(error)}
    print(json.dumps(out), flush=True)
"""


class Worker:
    """One process holding one coordinator; ``ask`` sends a call and returns its answer."""

    def __init__(self, script: Path, config: Path, node: str) -> None:
        self.node = node
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(config), node],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self._answer() == {"ready": True}

    def _answer(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout=timeout):
                pytest.fail(f"worker {self.node} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
            pytest.fail(f"worker {self.node} exited: {stderr}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, Path, list[Worker]]]:
    """(config, worker script, workers started by the test: all killed afterwards)."""
    config = tmp_path / "hakit.toml"
    config.write_text(
        """
[cluster]
name = "replaced"
state_dir = "state"

[coordination]
lease_ttl = "1s"
renew_interval = "200ms"

[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"

[[nodes]]
name = "n1"
port = 18101

[[nodes]]
name = "n2"
port = 18102
"""
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers: list[Worker] = []
    try:
        yield config, script, workers
    finally:
        for worker in workers:
            worker.kill()


def hakit(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "hakit", *args], capture_output=True, text=True, timeout=60, env=env
    )


def start(script: Path, config: Path, node: str, workers: list[Worker]) -> Worker:
    worker = Worker(script, config, node)
    workers.append(worker)
    return worker


def acquire_when_allowed(worker: Worker, node: str, deadline_s: float = 15.0) -> list[Any]:
    """Ask for the lease until it is granted (a re-initialised store waits one TTL)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        answer = worker.ask(f"acquire {node} 60")
        assert "error" not in answer, answer
        if answer["lease"] is not None:
            lease: list[Any] = answer["lease"]
            return lease
        time.sleep(0.1)
    pytest.fail(f"{node} got no lease within {deadline_s} s")


def test_a_deleted_store_fences_running_and_restarted_agents_until_reinit(
    tmp_path: Path, cluster: tuple[Path, Path, list[Worker]]
) -> None:
    config, script, workers = cluster
    db = tmp_path / "state" / "coordination.db"
    n1 = start(script, config, "n1", workers)  # the first agent creates the store
    n2 = start(script, config, "n2", workers)
    assert n1.ask("acquire n1 60")["lease"] == ["n1", 1]
    seen = n2.ask("lease")
    assert seen["lease"] == ["n1", 1]
    identity = seen["identity"]

    db.unlink()  # while the cluster runs

    refused = n1.ask("acquire n1 60")  # the very next call
    assert refused["error"] == "StoreReplacedError"
    assert f"the coordination store at {db} was replaced" in refused["message"]
    assert (
        f"the file is gone; this process saw identity {identity} up to epoch 1"
        in (refused["message"])
    )
    assert f"`hakit init --reinit -c {config}`" in refused["message"]
    assert n2.ask("lease")["error"] == "StoreReplacedError"
    assert not db.exists()

    # n1 restarts: its memory file still knows the store, so it creates nothing.
    n1.kill()
    n1 = start(script, config, "n1", workers)
    assert n1.ask("acquire n1 60")["error"] == "StoreReplacedError"
    assert not db.exists()

    init = hakit("init", "-c", str(config))  # a plain init refuses: the nodes remember one
    assert init.returncode == 1
    assert "the nodes remember one" in init.stderr and "--reinit" in init.stderr
    assert not db.exists()

    # A process that never saw the store (a router started now) creates a fresh one;
    # the agents refuse it: it is not theirs and would start over at epoch 1.
    newcomer = start(script, config, "-", workers)
    assert newcomer.ask("acquire n2 60")["lease"] == ["n2", 1]
    fresh = n1.ask("acquire n1 60")
    assert (
        fresh["error"] == "StoreReplacedError"
        and "last epoch 1; this process saw" in (fresh["message"])
    )

    reinit = hakit("init", "--reinit", "-c", str(config))
    assert reinit.returncode == 0, reinit.stderr
    assert "moved aside (kept)" in reinit.stdout and "epochs continue above 1" in reinit.stdout

    # Every process reconnects by itself; no lease for one TTL, then above every epoch.
    after = [worker.ask("lease") for worker in (n1, n2, newcomer)]
    assert all("error" not in answer for answer in after), after
    assert len({answer["identity"] for answer in after}) == 1
    assert after[0]["identity"] != identity
    assert n2.ask("renew n2 1 60")["lease"] is None
    lease = acquire_when_allowed(n1, "n1")
    assert lease == ["n1", 2]
    assert n2.ask("lease")["lease"] == ["n1", 2]
    assert newcomer.ask("lease")["lease"] == ["n1", 2]


def test_an_older_copy_is_refused_and_reinit_continues_above_the_newest_epoch(
    tmp_path: Path, cluster: tuple[Path, Path, list[Worker]]
) -> None:
    config, script, workers = cluster
    db = tmp_path / "state" / "coordination.db"
    n1 = start(script, config, "n1", workers)
    assert n1.ask("acquire n1 60")["lease"] == ["n1", 1]
    backup = tmp_path / "backup.db"
    source, copy = sqlite3.connect(db), sqlite3.connect(backup)
    source.backup(copy)  # the nightly backup, at epoch 1
    copy.close()
    source.close()
    assert n1.ask("release n1 1")["released"] is True
    assert n1.ask("acquire n1 60")["lease"] == ["n1", 2]
    assert n1.ask("release n1 2")["released"] is True
    assert n1.ask("acquire n1 60")["lease"] == ["n1", 3]
    identity = n1.ask("lease")["identity"]

    os.replace(backup, db)  # restored over the running store

    refused = n1.ask("renew n1 3 60")
    assert refused["error"] == "StoreReplacedError"
    assert (
        f"(identity {identity}, last epoch 1; this process saw identity {identity} up to epoch 3)"
        in refused["message"]
    )
    n1.kill()  # and after a restart too
    n1 = start(script, config, "n1", workers)
    assert n1.ask("lease")["error"] == "StoreReplacedError"

    reinit = hakit("init", "--reinit", "-c", str(config))
    assert reinit.returncode == 0, reinit.stderr
    assert "epochs continue above 3" in reinit.stdout
    assert acquire_when_allowed(n1, "n1") == ["n1", 4]


def test_hakit_init_creates_a_private_store_once(
    tmp_path: Path, cluster: tuple[Path, Path, list[Worker]]
) -> None:
    config, script, workers = cluster
    old_umask = os.umask(0o022)
    try:
        created = hakit("init", "-c", str(config))
    finally:
        os.umask(old_umask)
    assert created.returncode == 0, created.stderr
    state = tmp_path / "state"
    db = state / "coordination.db"
    assert f"created the coordination store {db}: identity " in created.stdout
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    n1 = start(script, config, "n1", workers)  # the agents adopt it
    answer = n1.ask("acquire n1 60")
    assert answer["lease"] == ["n1", 1] and answer["identity"] in created.stdout
    memory = state / "memory" / "n1.json"
    assert json.loads(memory.read_text())["identity"] == answer["identity"]
    assert stat.S_IMODE(memory.stat().st_mode) == 0o600

    again = hakit("init", "-c", str(config))
    assert again.returncode == 1 and "already exists" in again.stderr
    healthy = hakit("init", "--reinit", "-c", str(config))
    assert healthy.returncode == 1 and "is healthy" in healthy.stderr
    assert hakit("init", "--min-epoch", "5", "-c", str(config)).returncode == 2
    assert n1.ask("acquire n1 60")["lease"] == ["n1", 1]  # none of it touched the store
