"""The active node's agent captures a generation every ``[snapshot] interval`` (hakit.agent.
snapshots), each in a process of its own, while its lease renewals go on: the lease never
changes hands, every generation is the active's under its epoch, the standby never captures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hakit.demo.cluster import DemoCluster, wait_for
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation

from .conftest import cluster_factory, events_of, wait_serving

pytestmark = pytest.mark.e2e

GENERATIONS = 4


def with_snapshots(cluster: DemoCluster) -> None:
    """Before the agents start: a schedule every second, keeping 3, and a home with some
    weight (the first capture reads 24 MiB)."""
    with open(cluster.config_path, "a") as config:
        config.write(
            '\n[snapshot]\ndirectory = "snapshots"\ninterval = "1s"\nkeep_last = 3\n'
            'prune_grace = "1ms"\n'
        )
    home = cluster.root / "shared" / "home" / "data"
    home.mkdir(parents=True)
    for index in range(6):
        (home / f"blob-{index}.bin").write_bytes(os.urandom(4 * 1024 * 1024))


def test_the_active_captures_on_schedule_while_its_lease_holds(tmp_path: Path) -> None:
    with cluster_factory(tmp_path, prepare=with_snapshots) as make_cluster:
        cluster = make_cluster()
        active = wait_serving(cluster)
        lease = cluster.coordinator.current_lease()
        assert lease is not None and lease.holder == active
        epoch = lease.epoch
        repo = cluster.root / "snapshots"

        def captured() -> bool:
            # Every look also checks the lease: held by the active, same epoch, renewed.
            now = cluster.coordinator.current_lease()
            assert now is not None and (now.holder, now.epoch) == (active, epoch)
            assert now.valid, "the active's lease lapsed during scheduled captures"
            return len(events_of(cluster, "snapshot")) >= GENERATIONS

        wait_for(captured, 90, f"{GENERATIONS} scheduled captures by {active}")
        store = open_local_store(repo)
        generations = store.list_manifests()
        # keep_last 3, the newest older than the grace period, one not pruned yet
        assert 1 <= len(generations) <= 3 + 1 + 1
        for generation in generations:
            manifest = read_manifest(store, generation)
            assert (manifest.node, manifest.epoch) == (active, epoch)
            assert verify_generation(store, generation).ok
            assert {"data/blob-0.bin", "data/blob-5.bin"} <= set(manifest.files())
        snapshots = events_of(cluster, "snapshot")
        assert {event.node for event in snapshots} == {active}
        assert all(event.epoch == epoch for event in snapshots)
        assert events_of(cluster, "snapshot-failed") == []
        assert any(event.data.get("pruned") for event in snapshots)  # retention ran
        # Nothing about the lease happened: no loss, no self-fencing, no promotion.
        for kind in ("lease", "fenced", "promoted", "failover"):
            assert events_of(cluster, kind) == [], kind


def test_after_a_failover_the_new_active_captures_under_its_epoch(tmp_path: Path) -> None:
    with cluster_factory(tmp_path, prepare=with_snapshots) as make_cluster:
        cluster = make_cluster()
        old = wait_serving(cluster)
        wait_for(lambda: len(events_of(cluster, "snapshot", old)) >= 2, 60, "captures by " + old)
        cluster.lose_node(old)
        new = wait_for(
            lambda: (node := cluster.active_running()) != old and node, 60, "a new active"
        )
        lease = cluster.coordinator.current_lease()
        assert lease is not None and lease.holder == new and lease.epoch > 1
        wait_for(
            lambda: any(e.epoch == lease.epoch for e in events_of(cluster, "snapshot", new)),
            60,
            f"a capture by {new} under epoch {lease.epoch}",
        )
        store = open_local_store(cluster.root / "snapshots")
        manifests = [read_manifest(store, g) for g in store.list_manifests()]
        assert {(m.node, m.epoch) for m in manifests} <= {(old, 1), (new, lease.epoch)}
        assert manifests[-1].node == new and verify_generation(store, manifests[-1].generation).ok
        # The old active captured only while it was; the new one only once it was.
        assert all(e.epoch == 1 for e in events_of(cluster, "snapshot", old))
        assert all(e.epoch == lease.epoch for e in events_of(cluster, "snapshot", new))
