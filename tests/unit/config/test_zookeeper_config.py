"""``[coordination.zookeeper]``: parsed by the backend's section model, checked against the
lease TTL, and opened under the cluster's own znode (no server needed: nothing connects
until the first call)."""

from __future__ import annotations

from pathlib import Path

from hakit.config import load_config
from hakit.coord.factory import open_coordinator
from hakit.coord.zookeeper import ZooKeeperAuth, ZooKeeperCoordinator, ZooKeeperSection
from tests.unit.config.test_config import BASE, problems_of

ZOOKEEPER = """
[coordination]
backend = "zookeeper"
lease_ttl = "3s"

[coordination.zookeeper]
hosts = ["10.0.0.1:2181", "10.0.0.2:2181"]
prefix = "/ha/clusters"
session_timeout = 6
timeout = 2.5
"""


def test_the_zookeeper_section_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE + ZOOKEEPER + '\n[coordination.zookeeper.auth]\ncredential = "u:p"\n')
    cfg = load_config(path)
    assert cfg.coordination.backend == "zookeeper"
    assert cfg.coordination.section("zookeeper") == ZooKeeperSection(
        hosts=["10.0.0.1:2181", "10.0.0.2:2181"],
        prefix="/ha/clusters",
        session_timeout=6.0,
        timeout=2.5,
        auth=ZooKeeperAuth(scheme="digest", credential="u:p"),
    )


def test_defaults_and_the_cluster_znode_named_after_the_cluster(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    text = BASE.replace("[cluster]\n", '[cluster]\nname = "shop"\n')
    path.write_text(text + '\n[coordination]\nbackend = "zookeeper"\n')
    cfg = load_config(path)
    assert cfg.coordination.zookeeper == ZooKeeperSection()
    assert ZooKeeperSection().hosts == ["127.0.0.1:2181"] and ZooKeeperSection().prefix == "/hakit"
    store = open_coordinator(cfg, create=True)  # connects at the first call only
    try:
        assert isinstance(store, ZooKeeperCoordinator)
        assert store.root == "/hakit/shop"
        assert store.where == "zookeeper://127.0.0.1:2181/hakit/shop"
    finally:
        store.close()


def test_zookeeper_mistakes_are_reported_at_their_line(tmp_path: Path) -> None:
    # Lines: 17 [coordination]  18 backend  19 lease_ttl  21 [coordination.zookeeper]  23 prefix
    assert problems_of(
        tmp_path, BASE + ZOOKEEPER.replace("session_timeout = 6", "session_timeout = 2")
    ) == [
        "FILE:21: coordination.zookeeper: session_timeout 2s is shorter than lease_ttl 3s; "
        "expected session_timeout >= lease_ttl (a lease is bound to its holder's ZooKeeper "
        "session)"
    ]
    bad_prefix = problems_of(tmp_path, BASE + ZOOKEEPER.replace('"/ha/clusters"', '"ha/"'))
    assert len(bad_prefix) == 1 and bad_prefix[0].startswith(
        'FILE:23: coordination.zookeeper.prefix: "ha/" is not a znode path'
    ), bad_prefix
    slow = problems_of(tmp_path, BASE + ZOOKEEPER.replace("timeout = 2.5", "timeout = 3"))
    assert slow == [
        "FILE:21: coordination.zookeeper: timeout 3s is not shorter than lease_ttl 3s; "
        "expected timeout < lease_ttl (a call that fails must say so within a lease TTL)"
    ]
    unknown = problems_of(tmp_path, BASE + ZOOKEEPER + "chroot = 1\n")
    assert len(unknown) == 1 and unknown[0].startswith(
        "FILE:26: coordination.zookeeper.chroot: unknown key"
    ), unknown
    # Another backend selected: its session timeout is not checked against the lease.
    other = BASE + ZOOKEEPER.replace('backend = "zookeeper"', 'backend = "sqlite"')
    (tmp_path / "ok.toml").write_text(other.replace("session_timeout = 6", "session_timeout = 2"))
    assert load_config(tmp_path / "ok.toml").coordination.backend == "sqlite"
