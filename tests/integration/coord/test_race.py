"""Real processes racing for the SQLite leader lease: never two holders, epochs only grow.

Each worker is its own Python process (``subprocess``) with its own
``SqliteCoordinator`` on one shared file, created concurrently by the workers.
"""

from __future__ import annotations

import itertools
import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hakit.coord.sqlite import SqliteCoordinator

WORKERS = 6
RACE_TTL = 0.2
RACE_SECONDS = 3.0
# expires_at - ttl recovers the store's grant time up to float rounding.
EPSILON = 1e-6

# A worker: waits for "go" on stdin, then for RACE_SECONDS renews the lease
# every few milliseconds, sometimes releases it, sometimes stalls past the TTL
# (like a long pause) while holding it. It writes every hold it believed in.
RACE_WORKER = r"""
import json, random, sys, time
from pathlib import Path
from hakit.coord.sqlite import SqliteCoordinator

name, db, ttl, seconds, out, seed = sys.argv[1:7]
ttl, seconds = float(ttl), float(seconds)
rng = random.Random(int(seed))
coord = SqliteCoordinator(Path(db))
print("ready", flush=True)
assert sys.stdin.readline().strip() == "go"

holds = []  # one per epoch this worker held
current = None
deadline = time.time() + seconds
for _ in range(100_000):
    if time.time() >= deadline:
        break
    lease = coord.acquire_or_renew(name, ttl)
    returned_at = time.time()
    if lease is None:
        current = None
    elif current is None or current["epoch"] != lease.epoch:
        current = {"epoch": lease.epoch, "granted_at": lease.expires_at - ttl,
                   "returned_at": returned_at, "end": lease.expires_at, "ended_by": "expiry"}
        holds.append(current)
    else:
        current["end"] = lease.expires_at
    if current is not None:
        roll = rng.random()
        if roll < 0.08:
            # Stop believing first, then release: the belief ends before the release.
            current["end"] = min(current["end"], time.time())
            current["ended_by"] = "release"
            # False if a descheduled worker's lease expired first: fine, it ended then.
            coord.release(name, current["epoch"])
            current = None
        elif roll < 0.12:
            time.sleep(ttl * 1.5)  # a stall: the lease expires under us
            continue
    time.sleep(rng.uniform(0.002, 0.02))

Path(out).write_text(json.dumps({"name": name, "holds": holds, "last_epoch": coord.last_epoch()}))
coord.close()
"""

# A worker that takes the lease, says so, and keeps renewing until it is killed.
HOLDER_WORKER = r"""
import sys, time
from pathlib import Path
from hakit.coord.sqlite import SqliteCoordinator

name, db, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
coord = SqliteCoordinator(Path(db))
announced = False
deadline = time.time() + 60
while time.time() < deadline:
    lease = coord.acquire_or_renew(name, ttl)
    if lease is not None and not announced:
        print(f"holding {lease.epoch}", flush=True)
        announced = True
    time.sleep(ttl / 10)
sys.exit(3)  # never killed: the test failed to do its part
"""


@dataclass(frozen=True)
class Hold:
    worker: str
    epoch: int
    granted_at: float
    returned_at: float
    end: float
    ended_by: str


def _spawn(script: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_line(proc: subprocess.Popen[str], deadline: float) -> str:
    """The next stdout line of ``proc``; fails the test at ``deadline`` or if it exits."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not selector.select(timeout=remaining):
            pytest.fail(f"worker {proc.pid} said nothing before the deadline")
    line = proc.stdout.readline()
    if not line:
        stderr = proc.stderr.read() if proc.stderr is not None else ""
        pytest.fail(f"worker {proc.pid} exited early: {stderr}")
    return line.strip()


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Worker processes started by a test; every one still alive is killed afterwards."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def _check_no_overlap_and_increasing_epochs(holds: list[Hold]) -> None:
    """Holds sorted by grant time must be disjoint, with strictly increasing epochs."""
    ordered = sorted(holds, key=lambda hold: hold.granted_at)
    for before, after in itertools.pairwise(ordered):
        assert before.end <= after.granted_at + EPSILON, (
            f"two holders at once: {before} and {after}"
        )
        assert before.epoch < after.epoch, f"epoch went back: {before} then {after}"


def test_racing_processes_never_hold_the_lease_together(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    script = tmp_path / "race_worker.py"
    script.write_text(RACE_WORKER)
    db = tmp_path / "coordination.db"  # created by the workers themselves, concurrently
    outputs = [tmp_path / f"worker{i}.json" for i in range(WORKERS)]
    for i, out in enumerate(outputs):
        args = (f"w{i}", str(db), str(RACE_TTL), str(RACE_SECONDS), str(out), str(i))
        processes.append(_spawn(script, *args))

    ready_deadline = time.monotonic() + 30
    for proc in processes:
        assert _read_line(proc, ready_deadline) == "ready"
    for proc in processes:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in processes:
        _, stderr = proc.communicate(timeout=RACE_SECONDS + 30)
        assert proc.returncode == 0, stderr

    results = [json.loads(out.read_text()) for out in outputs]
    holds = [Hold(result["name"], **hold) for result in results for hold in result["holds"]]

    # The race really happened: many handovers, between several workers, by both ways.
    assert len(holds) >= 10
    assert len({hold.worker for hold in holds}) >= 3
    assert {hold.ended_by for hold in holds} == {"expiry", "release"}

    holders_by_epoch: dict[int, set[str]] = {}
    for hold in holds:
        holders_by_epoch.setdefault(hold.epoch, set()).add(hold.worker)
        assert hold.granted_at <= hold.returned_at + EPSILON
    assert all(len(holders) == 1 for holders in holders_by_epoch.values()), holders_by_epoch
    assert len(holds) == len(holders_by_epoch)  # no epoch granted twice, even to one worker
    _check_no_overlap_and_increasing_epochs(holds)

    # Every epoch handed out reached its worker: none skipped, none lost.
    assert sorted(holders_by_epoch) == list(range(1, len(holders_by_epoch) + 1))
    with SqliteCoordinator(db) as store:
        assert store.last_epoch() == max(holders_by_epoch)


def test_killed_holder_loses_the_lease_after_its_ttl(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    ttl = 1.0  # long enough that we ask while the dead holder's lease is still valid
    script = tmp_path / "holder_worker.py"
    script.write_text(HOLDER_WORKER)
    db = tmp_path / "coordination.db"
    holder = _spawn(script, "victim", str(db), str(ttl))
    processes.append(holder)
    line = _read_line(holder, time.monotonic() + 30)
    assert line.startswith("holding ")
    victim_epoch = int(line.split()[1])

    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=10)
    assert holder.returncode == -signal.SIGKILL

    with SqliteCoordinator(db) as store:
        orphan = store.current_lease()
        assert orphan is not None
        assert orphan.holder == "victim" and orphan.epoch == victim_epoch

        refused_before_expiry = 0
        taken = None
        deadline = time.monotonic() + 10 * ttl + 10
        while taken is None and time.monotonic() < deadline:
            asked_at = time.time()
            taken = store.acquire_or_renew("survivor", ttl)
            if taken is None:
                assert asked_at < orphan.expires_at, "a free lease was refused"
                refused_before_expiry += 1
                time.sleep(ttl / 20)

        assert taken is not None, "the lease of a killed holder was never freed"
        assert refused_before_expiry >= 1  # we asked while the dead holder's lease was valid
        assert taken.holder == "survivor"
        assert taken.epoch > victim_epoch
        assert taken.expires_at - ttl >= orphan.expires_at - EPSILON  # granted only after expiry
        assert store.last_epoch() == taken.epoch
