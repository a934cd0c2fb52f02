"""``hakit init --reinit`` on etcd: the keyspace wiped under a running cluster (a lost etcd,
or one restored from before the cluster existed), then replaced on purpose.

With a real etcd (tests/support/etcd.py): the agent that held epochs refuses the empty
keyspace; ``hakit init`` refuses to pretend it is new; ``--reinit`` writes a new
identity whose lineage the agent accepts, epochs continuing above the highest remembered,
and holds the lease for a TTL the server expires, after which the next grant gets the
next epoch. A healthy keyspace is kept unless ``--force``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.config import load_config
from hakit.coord.factory import open_coordinator
from tests.support import reinit
from tests.support.etcd import MISSING, EtcdServer, etcd_available, start_etcd, unique_prefix
from tests.support.reinit import init
from tests.support.waiting import wait_until

pytestmark = pytest.mark.skipif(not etcd_available(), reason=MISSING)
TTL = 2.0


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    server = start_etcd()
    try:
        yield server
    finally:
        server.stop()


def write_config(tmp_path: Path, endpoint: str, prefix: str, ttl: float = TTL) -> Path:
    table = f'endpoints = ["{endpoint}"]\nprefix = "{prefix}"\ntimeout = 1.0'
    return reinit.write_config(tmp_path, "etcd", table, ttl)


def test_a_wiped_keyspace_is_refused_then_reinitialised_above_the_remembered_epochs(
    tmp_path: Path, etcd: EtcdServer
) -> None:
    prefix = unique_prefix("reinit")
    config = write_config(tmp_path, etcd.endpoint, prefix)
    cfg = load_config(config)
    agent = open_coordinator(cfg, node="node1")  # remembers identity and epochs on disk
    try:
        reinit.wiped_then_reinitialised(
            config, agent, lambda: etcd.client().delete_prefix(prefix), TTL
        )
        reinit.kept_unless_forced(config, agent, TTL)
    finally:
        agent.close()


def test_init_refuses_an_existing_cluster_and_min_epoch_raises_the_base(
    tmp_path: Path, etcd: EtcdServer
) -> None:
    prefix = unique_prefix("reinit")
    config = write_config(tmp_path, etcd.endpoint, prefix)
    code, output = init(config)
    assert code == 0 and "cluster identity" in output, output
    code, output = init(config)
    assert code == 1 and "already holds a cluster" in output, output

    code, output = init(config, "--reinit", "--min-epoch", "41")
    assert code == 0 and "epochs continue above 41" in output, output
    reader = open_coordinator(load_config(config))
    try:
        assert reader.last_epoch() == 41
        started = time.monotonic()
        granted = wait_until(
            lambda: reader.acquire_or_renew("node1", TTL), 4 * TTL + 5, "the hold to expire"
        )
        assert granted.epoch == 42
        assert time.monotonic() - started > TTL / 2  # the hold was there
    finally:
        reader.close()


def test_status_shows_the_hold(tmp_path: Path, etcd: EtcdServer) -> None:
    reinit.assert_status_shows_the_hold(
        write_config(tmp_path, etcd.endpoint, unique_prefix("reinit"), ttl=60)
    )
