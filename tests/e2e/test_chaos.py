"""The chaos run (benchmarks/chaos.py) as `make test` runs it: two minutes, three nodes,
shared SQLite, writers through the router while a nemesis kills and stops processes.

The run is a subprocess of its own (real agents, apps and router, real signals); this
test reads its JSON result. It runs alone on its xdist worker group: it keeps a
cluster busy for two minutes on a machine of two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHAOS = REPO / "benchmarks" / "chaos.py"

# Every fault the chaos run knows: process kills and freezes of agent, app and router,
# and the coordination store deleted or replaced (the run then re-initialises it, as
# an operator would).
PASSING_FAULTS = (
    "app-kill",
    "agent-kill",
    "agent-app-kill",
    "agent-stop",
    "app-stop",
    "router-stop",
    "store-delete",
    "store-replace",
)

RUN_SECONDS = 120
# The fault phase, the last fault's recovery (a 20 s stop, at most 60 s more), the
# read-back and the stop: a passing run takes ~150 s, a failing one less than this.
RUN_TIMEOUT = 330
# The sequence of faults (and stop lengths) is the seed's: a failure can be run again.
SEED = int(os.environ.get("HAKIT_CHAOS_SEED", "11"))

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("chaos")]


@pytest.mark.timeout(RUN_TIMEOUT + 90)
def test_two_minute_chaos_run_loses_nothing(tmp_path: Path) -> None:
    result_path = tmp_path / "chaos.json"
    argv = [
        sys.executable,
        str(CHAOS),
        "--duration",
        str(RUN_SECONDS),
        "--nodes",
        "3",
        "--database",
        "sqlite",
        "--faults",
        ",".join(PASSING_FAULTS),
        "--seed",
        str(SEED),
        "--json",
        str(result_path),
    ]
    process = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the run stops its cluster on SIGTERM
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        pytest.fail(f"the chaos run took over {RUN_TIMEOUT} s:\n{output}")
    print(output)  # shown when the test fails: the table, every fault, the reasons
    assert result_path.exists(), output
    result = json.loads(result_path.read_text())

    assert result["faults_injected"] >= 3, output
    assert {f["kind"] for f in result["faults"]} <= set(PASSING_FAULTS)
    assert result["acknowledged_writes"] >= 100, output
    assert result["read_back_error"] == "", output
    assert result["lost_writes"] == 0, output
    assert result["double_active_ms"] == 0, output
    assert result["all_recovered"], output
    assert result["integrity_ok"], output
    assert result["leaked"] == [], output
    assert result["passed"] and process.returncode == 0, output


def test_double_active_counts_only_overlaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor's arithmetic: a node serves from a RUNNING probe to its next probe."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import chaos

    def samples(*states: tuple[float, str]) -> list[chaos.Sample]:
        return [chaos.Sample(at, at + 0.01, state) for at, state in states]

    per_node = {
        # node1 serves from 0.0 until its probe at 1.0 finds it DOWN
        "node1": samples((0.0, "RUNNING"), (0.5, "RUNNING"), (1.0, "DOWN"), (1.5, "DOWN")),
        # node2 serves from 0.8 on: 0.2 s together with node1
        "node2": samples((0.3, "DOWN"), (0.8, "RUNNING"), (1.3, "FIRST_RUN"), (1.8, "DOWN")),
        "node3": samples((0.0, "TIMEOUT"), (1.0, "STARTING")),
    }
    windows = chaos.double_active(per_node)
    assert [(round(a, 3), round(b, 3), nodes) for a, b, nodes in windows] == [
        (0.8, 1.0, ["node1", "node2"])
    ]
    one_at_a_time = {
        "node1": samples((0.0, "RUNNING"), (1.0, "DOWN")),
        "node2": samples((1.0, "RUNNING"), (2.0, "DOWN")),
    }
    assert chaos.double_active(one_at_a_time) == []
