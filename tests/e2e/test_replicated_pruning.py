"""Replicated storage's repositories stay bounded (hakit.agent.replica_prune): real agents,
apps and router, a capture every second under a steady write load.

Both nodes' repositories hold at most the newest ``keep`` generations and those of the last
``prune_grace`` at every look, while the standby applies generation after generation; the
objects only an early generation named are swept from both. A switchover then ships its
final generation through the pruned repositories and loses no acknowledged write
(/integrity clean); the old active, now following, keeps its repository bounded too. Once
the cluster stops, every generation left in either repository is whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.demo.cluster import DemoCluster, free_ports, wait_for
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.prune import referenced_keys
from hakit.snapshot.store import open_local_store
from hakit.snapshot.trees import load_manifest
from hakit.snapshot.verify import verify_generation
from tests.integration.snapshot.conftest import object_files

from .conftest import cluster_factory, wait_serving
from .test_operator import Load
from .test_replicated import TOKEN, _replica, nothing_lost, switch_over

pytestmark = pytest.mark.e2e

KEEP = 2
GRACE = "1s"
# keep, the generations of the last second (a capture every second, or more often when one
# took longer than the interval), the newest older one, one written but not pruned yet
BOUND = KEEP + 6
APPLIED = 12  # more than BOUND: unpruned, the repositories would hold them all


def with_pruning(cluster: DemoCluster) -> None:
    """Before the agents start: keep 2, a grace period of a second."""
    text = cluster.config_path.read_text()
    assert text.count("[replication]\n") == 1
    cluster.config_path.write_text(
        text.replace("[replication]\n", f'[replication]\nkeep = {KEEP}\nprune_grace = "{GRACE}"\n')
    )


def repository(cluster: DemoCluster, node: str) -> Path:
    return cluster.cfg.replication.repository(cluster.cfg.cluster.state_dir, node)


def held(root: Path) -> tuple[list[str], set[str], set[str]]:
    """(generations, object keys, keys the generations name) of a repository its agent
    prunes meanwhile: objects listed first, a manifest gone since is left out."""
    if not (root / "manifests").is_dir():
        return [], set(), set()
    objects = object_files(root)
    store = open_local_store(root)
    generations, manifests = [], []
    for generation in store.list_manifests():
        try:
            manifests.append(load_manifest(store, generation))
        except SnapshotError:
            continue  # pruned meanwhile
        generations.append(generation)
    return generations, objects, referenced_keys(manifests)


def bounded(cluster: DemoCluster) -> None:
    """Each repository: at most BOUND generations, and at most BOUND objects no generation
    names (those of generations pruned within the grace period, a pull's leftovers)."""
    for node in cluster.cfg.nodes:
        generations, objects, named = held(repository(cluster, node.name))
        assert len(generations) <= BOUND, f"{node.name} holds {len(generations)}: {generations}"
        unnamed = objects - named
        assert len(unnamed) <= BOUND, f"{node.name} holds {len(unnamed)} unnamed objects"


def follow(cluster: DemoCluster, node: str, count: int, what: str) -> set[str]:
    """Wait for ``node`` to apply ``count`` generations, both repositories bounded at each look."""
    applied: set[str] = set()

    def enough() -> bool:
        bounded(cluster)
        generation = (_replica(cluster, node) or {}).get("generation")
        if isinstance(generation, str):
            applied.add(generation)
        return len(applied) >= count

    wait_for(enough, 120, what)
    return applied


def test_both_repositories_stay_bounded_and_a_switchover_loses_nothing(tmp_path: Path) -> None:
    with cluster_factory(tmp_path, prepare=with_pruning) as make_cluster:
        cluster = make_cluster(
            storage="replicated",
            replication_interval="1s",
            admin_ports=tuple(free_ports(2)),
            admin_token=TOKEN,
            hold_timeout="60s",
        )
        active = wait_serving(cluster)
        standby = next(node.name for node in cluster.cfg.nodes if node.name != active)
        with Load(cluster.router_url, rate=10) as load:
            # The third generation applied under load: its database differs from all others.
            early = sorted(follow(cluster, standby, 3, f"{standby} to apply 3 generations"))[-1]
            named_early = referenced_keys(
                [load_manifest(open_local_store(repository(cluster, standby)), early)]
            )
            follow(cluster, standby, APPLIED, f"{standby} to apply {APPLIED}")

            def swept() -> bool:
                """The early generation and the objects only it named: gone from both."""
                bounded(cluster)
                unneeded_anywhere = False
                for node in (active, standby):
                    generations, objects, named = held(repository(cluster, node))
                    unneeded = named_early - named
                    if early in generations or unneeded & objects:
                        return False
                    unneeded_anywhere |= bool(unneeded)
                return unneeded_anywhere

            wait_for(swept, 60, "the early generation's objects swept from both repositories")
            switch_over(cluster, load, standby, "pruned repositories")
            # Roles swapped: the old active follows the new one, both still bounded.
            follow(cluster, active, 3, f"{active} to apply the new active's generations")
        nothing_lost(cluster, load, standby)
        cluster.stop()
        for node in (active, standby):
            root = repository(cluster, node)
            generations, objects, named = held(root)
            assert 1 <= len(generations) <= BOUND
            assert named <= objects  # no kept generation lost an object
            store = open_local_store(root)
            for generation in generations:
                assert verify_generation(store, generation).ok, (node, generation)
