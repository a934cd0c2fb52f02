"""The active node's agent backs up every ``[backup] interval`` (hakit.agent.backups), each
backup in a process of its own, while its lease renewals go on; every node runs the backup
health check; the standbys run restore drills (hakit.agent.drills). The lease never changes
hands, every generation is the active's under its epoch, the standby never backs up, the
active never drills."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hakit.demo.cluster import DemoCluster, wait_for
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation

from .conftest import cluster_factory, events_of, wait_serving

pytestmark = pytest.mark.e2e

BACKUPS = 3


def with_backups(cluster: DemoCluster) -> None:
    """Before the agents start: a backup every second into a directory, checked every second."""
    with open(cluster.config_path, "a") as config:
        config.write(
            '\n[backup]\ndirectory = "backups"\ninterval = "1s"\nhealth_check_interval = "1s"\n'
            'drill_interval = "10s"\n'
        )
    home = cluster.root / "shared" / "home" / "data"
    home.mkdir(parents=True)
    for index in range(4):
        (home / f"blob-{index}.bin").write_bytes(os.urandom(2 * 1024 * 1024))


def test_the_active_backs_up_on_schedule_while_its_lease_holds(tmp_path: Path) -> None:
    with cluster_factory(tmp_path, prepare=with_backups) as make_cluster:
        cluster = make_cluster()
        active = wait_serving(cluster)
        lease = cluster.coordinator.current_lease()
        assert lease is not None and lease.holder == active
        epoch = lease.epoch

        def backed_up() -> bool:
            now = cluster.coordinator.current_lease()
            assert now is not None and (now.holder, now.epoch) == (active, epoch)
            assert now.valid, "the active's lease lapsed during scheduled backups"
            return len(events_of(cluster, "backup")) >= BACKUPS

        wait_for(backed_up, 90, f"{BACKUPS} scheduled backups by {active}")
        wait_for(lambda: events_of(cluster, "backup-drill"), 90, "a standby's restore drill")
        store = open_local_store(cluster.root / "backups")
        generations = store.list_manifests()
        assert len(generations) >= BACKUPS
        for generation in generations:
            manifest = read_manifest(store, generation)
            assert (manifest.node, manifest.epoch) == (active, epoch)
            assert {"data/blob-0.bin", "data/blob-3.bin"} <= set(manifest.files())
        assert verify_generation(store, generations[-1]).ok
        backups = events_of(cluster, "backup")
        assert {event.node for event in backups} == {active}
        assert all(event.epoch == epoch for event in backups)
        # The standbys drill, never the active (no drill before the first backup: no failure).
        drills = events_of(cluster, "backup-drill")
        assert active not in {event.node for event in drills}
        assert all(event.data["ok"] for event in drills)
        # Nothing failed, nothing stale; the health checks (every node's) found nothing to say.
        for kind in (
            "backup-failed",
            "backup-stale",
            "backup-check",
            "backup-drill-failed",
            "alert",
        ):
            assert events_of(cluster, kind) == [], kind
        for kind in ("lease", "fenced", "promoted", "failover"):
            assert events_of(cluster, kind) == [], kind
