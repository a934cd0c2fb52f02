"""Replicated storage's repositories are pruned as they go (hakit.agent.replica_prune):
real capture processes, a real admin API serving the active's repository over HTTP, real
pulls and applies. The active keeps its newest ``keep`` generations (and those within
``prune_grace``), a standby the same and always the copy it applied; every object left is
one a kept generation names. A pull whose generation the active pruned meanwhile fails
whole (no manifest, nothing applied) and the next turn applies the newest generation."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from hakit.agent import replica_prune
from hakit.agent.replication import ReplicationSide
from hakit.config import Config, load_config
from hakit.snapshot.apply import generations_dir
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.format import SnapshotError, manifest_key
from hakit.snapshot.peerstore import PeerStore, pull_generation
from hakit.snapshot.prune import prune, referenced_keys
from hakit.snapshot.store import LocalStore, open_local_store
from hakit.snapshot.trees import load_manifest
from hakit.snapshot.verify import verify_generation
from tests.integration.replication.test_capture_job import CONFIG, Agentish, side_of
from tests.integration.snapshot.conftest import (
    LIMITS,
    make_database,
    make_home,
    object_files,
    rows_of,
    tree_of,
)
from tests.integration.snapshot.test_peerstore import TOKEN, Served

ROUNDS = 5


def held(repository: Path) -> tuple[list[str], set[str], set[str]]:
    """(generations, object keys, keys the generations name) of a repository."""
    store = open_local_store(repository)
    generations = store.list_manifests()
    named = referenced_keys(load_manifest(store, generation) for generation in generations)
    return generations, object_files(repository), named


def change(home: Path, round_: int) -> None:
    """A new attachment, one rewritten, a large file rewritten, rows added: every
    generation differs, and leaves objects the previous one alone names."""
    (home / "attachments" / f"new{round_:03d}").write_bytes(os.urandom(3000))
    (home / "attachments" / "a001").write_bytes(os.urandom(5000))
    (home / "bin.dat").write_bytes(os.urandom(300 * 1024))
    with sqlite3.connect(home / "data" / "app.db") as connection:
        connection.executemany(
            "INSERT INTO records (title, body) VALUES (?, ?)",
            [(f"round {round_}", os.urandom(300)) for _ in range(20)],
        )
    connection.close()


def big_files(home: Path) -> None:
    """Two files above a chunk (4 MiB): a generation of several objects, not one pack."""
    for name in ("big-a.bin", "big-b.bin"):
        (home / name).write_bytes(os.urandom(4 * 1024 * 1024 + 4096))


def the_app(home: Path) -> None:
    make_home(home)
    (home / "data").mkdir()
    make_database(home / "data" / "app.db")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """node1's repository (not there yet) served by a real admin API."""
    server = Served(tmp_path / "state" / "replication" / "node1")
    try:
        yield server
    finally:
        server.close()


def two_nodes(root: Path, served: Served, settings: str) -> Config:
    """node1 serves its repository on ``served``'s port; both homes made, node1's app in it."""
    text = (
        CONFIG.replace("{replication}", settings)
        .replace("admin_port = 18201", f"admin_port = {served.port}")
        .replace("replication-test-token-0123456789abcdef", TOKEN)
    )
    (root / "hakit.toml").write_text(text)
    (root / "node2" / "home").mkdir(parents=True)
    cfg = load_config(root / "hakit.toml")
    the_app(cfg.home_of(cfg.node("node1")))
    return cfg


def the_active(cfg: Config, agent: Agentish) -> ReplicationSide:
    """node1's side, holding the lease as its running active."""
    side = side_of(cfg, "node1", agent)
    lease = side.coordinator.acquire_or_renew("node1", 60.0)
    assert lease is not None
    agent.epoch = lease.epoch
    return side


def settings(keep: int) -> str:
    """A grace period of 1 µs: no generation or object is shielded by its age (a
    manifest's time is never within 1 µs of a prune that follows its write)."""
    return f'[replication]\ninterval = "1h"\nkeep = {keep}\nprune_grace = 0.000001\n'


def without_database(tree: dict[str, tuple[str, int, bytes | str]]) -> set[str]:
    return {path for path in tree if not path.startswith("data/app.db")}


def test_each_node_keeps_its_newest_generations_and_the_standby_its_copy(
    tmp_path: Path, served: Served
) -> None:
    keep = 2
    cfg = two_nodes(tmp_path, served, settings(keep))
    agent1, agent2 = Agentish(), Agentish()  # node2: no lease, no app (a cold standby)
    active, standby = the_active(cfg, agent1), side_of(cfg, "node2", agent2)
    home1 = cfg.home_of(cfg.node("node1"))
    home2 = cfg.home_of(cfg.node("node2"))
    applied: list[str] = []
    for round_ in range(ROUNDS):
        change(home1, round_)
        asyncio.run(active.turn())
        assert active.captured is not None
        newest = active.captured[0]
        generations, objects, named = held(active.repository)
        # keep 2 (the grace shields none older); no object left that none names
        assert generations[-1] == newest and len(generations) == min(round_ + 1, keep)
        assert objects == named

        asyncio.run(standby.turn())
        assert standby.copy is not None and standby.copy.generation == newest
        applied.append(newest)
        generations, objects, named = held(standby.repository)
        assert newest in generations and len(generations) == min(round_ + 1, keep)
        assert objects == named
        for generation in generations:
            assert verify_generation(open_local_store(standby.repository), generation).ok
        assert os.readlink(home2) == f"home.generations/{newest}/home"
        copies = [name for name in os.listdir(generations_dir(home2)) if name[0].isdigit()]
        assert len(copies) <= keep
    assert len(set(applied)) == ROUNDS  # every new generation applied
    assert without_database(tree_of(home2)) == without_database(tree_of(home1))
    assert rows_of(home2 / "data" / "app.db") == rows_of(home1 / "data" / "app.db")
    assert agent1.events == [] and agent2.events == []  # no failure, no prune failure


class PrunedMidway(PeerStore):
    """The active's real admin API; once the standby copied its first object, the active
    captures again and prunes (as its next turn would) before the next one is asked for."""

    def __init__(self, base: str, active: ReplicationSide, home: Path) -> None:
        super().__init__(base, TOKEN)
        self.active = active
        self.home = home
        self.objects = 0

    def get(self, key: str) -> bytes:
        data = super().get(key)
        if not key.startswith("manifests/"):
            self.objects += 1
            if self.objects == 1:
                change(self.home, 99)
                big_files(self.home)
                asyncio.run(self.active.turn())
        return data


def test_a_pull_whose_generation_is_pruned_midway_fails_whole_then_the_newest_applies(
    tmp_path: Path, served: Served
) -> None:
    cfg = two_nodes(tmp_path, served, settings(keep=1))
    agent1, agent2 = Agentish(), Agentish()
    active, standby = the_active(cfg, agent1), side_of(cfg, "node2", agent2)
    home1 = cfg.home_of(cfg.node("node1"))
    big_files(home1)
    asyncio.run(active.turn())
    assert active.captured is not None
    first = active.captured[0]
    local = LocalStore(standby.repository).create()

    peer = PrunedMidway(served.base, active, home1)
    with pytest.raises(SnapshotError, match="is missing from the peer"):
        pull_generation(peer, local, first)

    assert active.captured[0] != first and agent1.events == []
    assert open_local_store(active.repository).list_manifests() == [active.captured[0]]
    assert local.list_manifests() == [] and not local.has(manifest_key(first))
    assert object_files(standby.repository)  # what it copied stays, for the next pull
    # The standby's next turn pulls the newest generation, applies it, and prunes what the
    # failed pull left that no generation names.
    asyncio.run(standby.turn())
    assert standby.copy is not None and standby.copy.generation == active.captured[0]
    generations, objects, named = held(standby.repository)
    assert generations == [active.captured[0]] and objects == named
    assert verify_generation(local, active.captured[0]).ok
    assert agent2.events == []


def _captured(store: LocalStore, home: Path, at: float) -> str:
    """A generation whose manifest and objects read as written at ``at`` (s)."""
    options = CaptureOptions(home=home, node="node1", epoch=3, limits=LIMITS)
    generation = create_snapshot(store, options).manifest.generation
    for key in [manifest_key(generation), *object_files(store.root)]:
        if os.stat(store.root / key).st_mtime >= at:
            os.utime(store.root / key, (at, at))
    return generation


def _kept(store: LocalStore, keep: int, grace: float, now: float) -> set[str]:
    report = prune(store, replica_prune.policy(keep), grace=grace, now_ns=int(now * 1e9))
    return {decision.generation.id for decision in report.decisions if decision.keep}


def _ages(generations: Iterable[str], store: LocalStore) -> list[float]:
    return [os.stat(store.root / manifest_key(g)).st_mtime for g in generations]


def test_a_generation_stays_while_a_pull_may_still_need_it(tmp_path: Path) -> None:
    """Every 30 s a capture, ``prune_grace`` 45 s: the generation a pull began with stays
    while it is among the newest ``keep`` or was the newest within the grace period."""
    home = tmp_path / "home"
    make_home(home)
    store = LocalStore(tmp_path / "repo").create()
    t = 1_000_000.0
    g1 = _captured(store, home, t)
    (home / "attachments" / "a001").write_bytes(os.urandom(4000))
    g2 = _captured(store, home, t + 30)
    (home / "attachments" / "a001").write_bytes(os.urandom(4000))
    g3 = _captured(store, home, t + 60)
    assert _ages([g1, g2, g3], store) == [t, t + 30, t + 60]

    # At t+70 g2 was the newest 10 s ago (a pull of it may run): kept, as g1 (newest 40 s ago).
    assert _kept(store, 1, 45, t + 70) == {g1, g2, g3}
    # At t+100 g1 was last the newest 70 s ago: gone; g2, newest until t+60, stays.
    assert _kept(store, 1, 45, t + 100) == {g2, g3}
    assert store.list_manifests() == [g2, g3]
    # Past the grace period only ``keep`` stay; the newest always.
    assert _kept(store, 2, 45, t + 200) == {g2, g3}
    assert _kept(store, 1, 45, t + 200) == {g3}
    _, objects, named = held(store.root)
    assert objects == named and verify_generation(store, g3).ok


def test_a_failed_prune_is_told_once_and_again_when_it_works(tmp_path: Path) -> None:
    """A manifest that cannot be read stops the prune (nothing is swept); the standby's
    apply stands, the failure is one ``replication`` event, its end another."""
    home = tmp_path / "home"
    make_home(home)
    store = LocalStore(tmp_path / "repo").create()
    generation = _captured(store, home, 1_000_000.0)
    bad = store.root / "manifests" / "20260101T000000.000000Z-0badbad0.json"
    bad.write_text("not a manifest")
    events: list[tuple[str, str]] = []
    pruning = replica_prune.Pruning(
        "node2", store.root, 1, 0.000001, lambda kind, reason, **_: events.append((kind, reason))
    )
    assert asyncio.run(pruning.after_apply(generation)) == ""
    assert asyncio.run(pruning.after_apply(generation)) == ""  # the same failure: told once
    ((kind, reason),) = events
    assert kind == "replication" and "pruning the repository of node2 failed" in reason
    assert "nothing was pruned" in reason
    assert store.list_manifests() == ["20260101T000000.000000Z-0badbad0", generation]
    bad.unlink()
    assert asyncio.run(pruning.after_apply(generation)) == ""  # nothing to remove
    assert events[-1] == ("replication", "pruning the repository of node2 works again")
    assert pruning.captured({"pruned": ["g1", "g2"], "objects_removed": 3}, "") == (
        "; pruned 2 generations, 3 objects"
    )
