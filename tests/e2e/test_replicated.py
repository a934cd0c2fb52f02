"""Replicated storage end to end: two nodes, each its own home and SQLite database.

Real agents, apps and router; records written through the router; the active's
node lost (agent, shim and app SIGKILLed). The standby promotes from the newest
generation it applied: the sample app's /integrity is clean (home and database
of one moment), every record acknowledged before that generation's capture is
there, and the failover's data-loss window is recorded and told by `hakit why`.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import pytest

from hakit.agent.replication import REPLICA_KEY
from hakit.demo.cluster import DemoCluster, free_ports, wait_for
from hakit.history.facts import DATA_LOSS_WINDOW, GENERATION
from hakit.history.kinds import EventKind
from hakit.history.why import explain
from hakit.snapshot.restore import RECEIPT

from .conftest import ClusterFactory, events_of, wait_serving
from .test_operator import Load, hakit

pytestmark = pytest.mark.e2e

TOKEN = "replicated-demo-token-0123456789abcdef"


def _write(url: str, prefix: str, count: int) -> list[str]:
    ids = []
    with httpx.Client(base_url=url, timeout=5) as client:
        for index in range(count):
            response = client.post(
                "/records", json={"title": f"{prefix}-{index}", "attachment": f"{prefix} {index}"}
            )
            assert response.status_code in (200, 201), response.text
            ids.append(str(response.json()["id"]))
    return ids


def _replica(cluster: DemoCluster, node: str) -> dict[str, Any] | None:
    record = cluster.node_record(node)
    entry = record.detail.get(REPLICA_KEY) if record is not None else None
    return entry if isinstance(entry, dict) else None


def switch_over(cluster: DemoCluster, load: Load, standby: str, reason: str) -> None:
    """``hakit switchover --to standby`` while ``load`` writes; twenty requests after it."""
    result = hakit(cluster, "switchover", "--to", standby, "--reason", reason)
    before_end = load.count()
    wait_for(lambda: load.count() >= before_end + 20, 60, "requests after the switchover")
    assert f"{standby} is active under epoch" in result.stdout


def nothing_lost(cluster: DemoCluster, load: Load, standby: str) -> None:
    """``standby`` serves, every write ``load`` had acknowledged is there, /integrity clean."""
    print(f"{len(load.written)} writes acknowledged; failures: {load.failures[:5]}")
    assert wait_serving(cluster, 30) == standby
    with httpx.Client(base_url=cluster.router_url, timeout=30) as client:
        integrity = client.get("/integrity").json()
        assert integrity["ok"], integrity
        missing = [i for i in load.written if client.get(f"/records/{i}").status_code != 200]
    assert missing == [], f"{len(missing)} acknowledged writes lost: {missing[:5]}"


def test_node_loss_promotes_the_standby_from_its_newest_generation(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(
        storage="replicated",
        replication_interval="1s",
        admin_ports=tuple(free_ports(2)),
        admin_token=TOKEN,
    )
    active = wait_serving(cluster)
    standby = next(node.name for node in cluster.cfg.nodes if node.name != active)
    acknowledged = _write(cluster.router_url, "before", 20)
    written_by = time.time()

    # The standby applied a generation whose capture began after those writes.
    def caught_up() -> dict[str, Any] | None:
        entry = _replica(cluster, standby)
        record = cluster.node_record(standby)
        if entry is None or record is None or entry.get("generation") is None:
            return None
        captured_at = record.updated_at - float(entry["age"])
        return entry if captured_at > written_by else None

    copy = wait_for(caught_up, 60, f"{standby} to apply a generation taken after the writes")
    assert copy["from"] == active and copy["role"] == "copy"
    home = cluster.cfg.home_of(cluster.cfg.node(standby))
    assert os.readlink(home) == f"home.generations/{copy['generation']}/home"

    # The generations after the first link the files that did not change from the one
    # before (hakit.snapshot.ledger): the promotion below starts the app on such a one.
    def linking() -> dict[str, Any] | None:
        try:
            receipt = json.loads(
                (home.parent / os.readlink(home)).parent.joinpath(RECEIPT).read_text()
            )
        except (OSError, ValueError):
            return None  # swapped or pruned meanwhile: asked again
        return receipt if receipt.get("linked", {}).get("files") else None

    wait_for(linking, 60, f"{standby} to apply a generation linking the one before")
    later = _write(cluster.router_url, "after", 5)  # may or may not reach the standby

    cluster.lose_node(active)
    assert wait_serving(cluster, 60) == standby

    with httpx.Client(base_url=cluster.router_url, timeout=5) as client:
        integrity = client.get("/integrity").json()
        assert integrity["ok"], integrity
        present = {str(row["id"]) for row in client.get("/records").json()["records"]}
    assert set(acknowledged) <= present
    assert present <= set(acknowledged) | set(later)  # nothing invented

    (promotion,) = [
        event
        for event in events_of(cluster, str(EventKind.REPLICATION), standby)
        if DATA_LOSS_WINDOW in event.data and event.epoch
    ]
    window = promotion.data[DATA_LOSS_WINDOW]
    assert isinstance(window, float) and 0 < window < cluster.cfg.replication.max_lag
    assert "leads under epoch" in promotion.reason
    story = "\n".join(explain(cluster.events()))
    assert f"failed over to {standby}" in story
    assert "data-loss window: " in story and "replicated storage" in story, story


def test_a_switchover_ships_a_final_generation_and_loses_no_acknowledged_write(
    make_cluster: ClusterFactory,
) -> None:
    """No scheduled generation reaches the standby (interval 1h): everything it serves
    after the switchover came in the final one, shipped once the active's app stopped."""
    cluster = make_cluster(
        storage="replicated",
        replication_interval="1h",
        admin_ports=tuple(free_ports(2)),
        admin_token=TOKEN,
        hold_timeout="60s",
    )
    active = wait_serving(cluster)
    standby = next(node.name for node in cluster.cfg.nodes if node.name != active)
    assert (_replica(cluster, standby) or {}).get("generation") is None  # nothing shipped yet
    with Load(cluster.router_url, rate=20) as load:
        wait_for(lambda: len(load.written) >= 30, 30, "writes before the switchover")
        switch_over(cluster, load, standby, "replicated move")
    nothing_lost(cluster, load, standby)

    (shipped,) = [
        event
        for event in events_of(cluster, str(EventKind.REPLICATION), active)
        if event.data.get("final")
    ]
    assert shipped.data["final"] == "applied" and shipped.data[DATA_LOSS_WINDOW] == 0.0
    assert "the switchover loses nothing" in shipped.reason, shipped.reason
    (promotion,) = [
        event
        for event in events_of(cluster, str(EventKind.REPLICATION), standby)
        if DATA_LOSS_WINDOW in event.data and event.epoch
    ]
    assert promotion.data[DATA_LOSS_WINDOW] == 0.0, promotion.reason
    assert promotion.data[GENERATION] == shipped.data[GENERATION]
    assert "final generation" in promotion.reason and "nothing is lost" in promotion.reason
    home = cluster.cfg.home_of(cluster.cfg.node(standby))
    assert os.readlink(home) == f"home.generations/{shipped.data[GENERATION]}/home"
