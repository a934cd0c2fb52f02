"""The chaos run across hosts (benchmarks/chaos.py --hosts) as `make test` runs it: nodes,
router and store in network namespaces, node2's wall clock seven minutes ahead, writers
through the router while a nemesis kills and stops processes, cuts the network (the
active isolated, only the router's path, only the store's path, the active with an etcd
minority), drops every packet one way, slows and loses store traffic and kills etcd
members and the etcd leader.

Per backend: etcd for two minutes (its faults are the most), ZooKeeper and the embedded
SQLite store for one. The run is a subprocess of its own (real agents, apps, router,
store servers, PostgreSQL, nftables); this test reads its JSON result: no acknowledged
write lost, no moment two apps answered RUNNING, no write under an older epoch after a
newer epoch's first (the database's own record of who wrote), every fault recovered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.hosts import hosts_unavailable
from tests.support.zookeeper import unavailable as zookeeper_unavailable

REPO = Path(__file__).resolve().parents[2]
CHAOS = REPO / "benchmarks" / "chaos.py"
# The sequence of faults (and hold times) is the seed's: a failure can be run again.
SEED = int(os.environ.get("HAKIT_CHAOS_SEED", "5"))
RUNS = {"etcd": 120, "zookeeper": 60, "sqlite": 60}  # fault phase, seconds
NETWORK_FAULTS = {
    "partition-active",
    "partition-routers",
    "partition-store",
    "partition-minority",
    "one-way-loss",
    "latency-loss",
    "store-member-kill",
    "store-leader-kill",
}

pytestmark = [pytest.mark.e2e, pytest.mark.multihost, pytest.mark.xdist_group("multihost")]


def run_chaos(tmp_path: Path, backend: str, seconds: int) -> tuple[dict[str, object], str]:
    result_path = tmp_path / "chaos.json"
    argv = [
        *(sys.executable, str(CHAOS), "--hosts", "--backend", backend),
        *("--duration", str(seconds), "--seed", str(SEED), "--json", str(result_path)),
    ]
    # The fault phase, the last fault's recovery (a 15 s hold, at most 60 s more), the
    # setup (etcd, ZooKeeper's JVM, PostgreSQL), the read-back and the stop.
    timeout = seconds + 240
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the run stops its cluster on SIGTERM
        try:
            output, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"the chaos run took over {timeout} s:\n{output}")
    print(output)  # shown when the test fails: the table, every fault, the reasons
    assert result_path.exists(), output
    result: dict[str, object] = json.loads(result_path.read_text())
    assert process.returncode in (0, 1), output
    return result, output


@pytest.mark.timeout(600)
@pytest.mark.parametrize("backend", list(RUNS))
def test_chaos_across_hosts_loses_nothing_and_never_has_two_writers(
    tmp_path: Path, backend: str
) -> None:
    why = hosts_unavailable() or (zookeeper_unavailable() if backend == "zookeeper" else None)
    if why is not None:
        pytest.skip(why)
    result, output = run_chaos(tmp_path, backend, RUNS[backend])

    faults = result["faults"]
    assert isinstance(faults, list)
    injected = [f for f in faults if f["released_s"] is not None]
    assert len(injected) >= 2, output  # a fault every 5-20 s after the last one's recovery
    assert {f["kind"] for f in injected} & NETWORK_FAULTS, output  # not only process faults
    assert result["acknowledged_writes"] >= 100, output
    assert result["read_back_error"] == "", output
    assert result["lost_writes"] == 0, output
    assert result["double_active_ms"] == 0, output
    assert result["stale_epoch_writes"] == 0, output
    write_epochs = result["write_epochs"]
    assert isinstance(write_epochs, dict) and "0" not in write_epochs, output
    assert result["all_recovered"], output
    assert result["integrity_ok"], output
    assert result["leaked"] == [], output
    assert result["passed"], output
