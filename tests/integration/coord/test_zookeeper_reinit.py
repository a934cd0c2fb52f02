"""``hakit init`` and ``hakit init --reinit`` on ZooKeeper: a cluster path wiped under a running
agent (a lost ensemble, or one restored from before the cluster existed), then replaced on
purpose.

With a real ZooKeeper (tests/support/zookeeper.py): ``hakit init`` makes the store of an
empty path and refuses one that exists, or one the agent's memory shows was lost; the agent
refuses the wiped path; ``--reinit`` writes, in one transaction, a new identity whose lineage
the agent accepts, epochs continuing above the highest remembered, and a hold on the lease
that outlasts the command (judged by the server's clock from its commit), after which the
next grant gets the next epoch. A healthy store is kept unless ``--force``; a writer that
comes between the command's read and its transaction makes it fail with nothing written.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from hakit.config import Config, load_config
from hakit.coord.base import REINIT_HOLDER, Coordinator
from hakit.coord.factory import open_coordinator
from hakit.coord.reinit import Request, plan
from hakit.coord.zookeeper.reinit import Initialiser
from hakit.errors import CoordinationError
from tests.support import reinit
from tests.support.reinit import CLUSTER, init
from tests.support.waiting import wait_until
from tests.support.zookeeper import (
    TEST_PREFIX,
    ZooKeeperServer,
    shared_server,
    stop_shared_server,
    unavailable,
)

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))
TTL = 3.0  # a hold of 4 s: the checks made during it have time on a loaded machine


@pytest.fixture(scope="module")
def zookeeper() -> Iterator[ZooKeeperServer]:
    try:
        yield shared_server()
    finally:
        stop_shared_server()


def write_config(tmp_path: Path, hosts: str, ttl: float = TTL) -> Path:
    """A cluster under its own prefix on the test server."""
    table = (
        f'hosts = ["{hosts}"]\nprefix = "{TEST_PREFIX}/{uuid.uuid4().hex}"\n'
        f"session_timeout = {max(10.0, ttl):g}\ntimeout = 1.5"
    )
    return reinit.write_config(tmp_path, "zookeeper", table, ttl)


def root_of(cfg: Config) -> str:
    return f"{cfg.coordination.zookeeper.prefix}/{CLUSTER}"


def initialiser(cfg: Config) -> Initialiser:
    section = cfg.coordination.zookeeper
    return Initialiser(
        section.hosts, root_of(cfg), timeout=section.timeout, create=False, config="hakit.toml"
    )


def delete_all(server: ZooKeeperServer, path: str) -> None:
    """The cluster's znodes lost (``zkCli.sh deleteall``), from a session of their own."""
    client = KazooClient(hosts=server.hosts, timeout=10.0)
    client.start(timeout=10)
    try:
        client.delete(path, recursive=True)
    finally:
        client.stop()
        client.close()


def test_init_makes_the_store_of_an_empty_path_and_refuses_an_existing_one(
    tmp_path: Path, zookeeper: ZooKeeperServer
) -> None:
    config = write_config(tmp_path, zookeeper.hosts)
    code, output = init(config)
    assert code == 0 and "cluster identity" in output and "held by" not in output, output
    reader = open_coordinator(load_config(config), create=False)
    try:
        assert reader.last_epoch() == 0 and reader.current_lease() is None
        assert getattr(reader, "identity", None) in output
        events = [e for e in reader.events() if e.kind == "store"]
        assert events and "created" in events[-1].reason
        assert reader.acquire_or_renew("node1", TTL) is not None  # no hold on a new store
    finally:
        reader.close()
    code, output = init(config)
    assert code == 1 and "already holds a cluster" in output, output


def test_a_wiped_path_is_refused_then_reinitialised_above_the_remembered_epochs(
    tmp_path: Path, zookeeper: ZooKeeperServer
) -> None:
    config = write_config(tmp_path, zookeeper.hosts)
    cfg = load_config(config)
    agent = open_coordinator(cfg, node="node1")  # remembers identity and epochs on disk
    try:
        wipe = functools.partial(delete_all, zookeeper, root_of(cfg))
        held, granted, output = reinit.wiped_then_reinitialised(config, agent, wipe, TTL)
        # The command's session was closed when it returned: the hold is not bound to it.
        assert "bound to no session" in output
        # Granted at the server's time (expires_at - ttl), which had passed the hold's end.
        assert granted.expires_at - TTL >= held.expires_at
        reinit.kept_unless_forced(config, agent, TTL)
    finally:
        agent.close()


def test_min_epoch_raises_the_base_of_a_new_path(
    tmp_path: Path, zookeeper: ZooKeeperServer
) -> None:
    config = write_config(tmp_path, zookeeper.hosts)
    code, output = init(config, "--reinit", "--min-epoch", "41")
    assert code == 0 and "epochs continue above 41" in output, output
    reader = open_coordinator(load_config(config), create=False)
    try:
        assert reader.last_epoch() == 41
        held = reader.current_lease()
        assert held is not None and held.holder == REINIT_HOLDER and held.valid
        granted = wait_until(
            lambda: reader.acquire_or_renew("node1", TTL), 4 * TTL + 5, "the hold to expire"
        )
        assert granted.epoch == 42 and granted.expires_at - TTL >= held.expires_at
    finally:
        reader.close()


def test_a_damaged_identity_znode_is_replaced_by_reinit(
    tmp_path: Path, zookeeper: ZooKeeperServer
) -> None:
    config = write_config(tmp_path, zookeeper.hosts)
    cfg = load_config(config)
    assert init(config)[0] == 0
    client = KazooClient(hosts=zookeeper.hosts, timeout=10.0)
    client.start(timeout=10)
    try:
        client.set(f"{root_of(cfg)}/identity", b"not json")
    finally:
        client.stop()
        client.close()
    reader = open_coordinator(cfg, create=False)
    try:
        with pytest.raises(CoordinationError, match="damaged"):
            reader.last_epoch()
        code, output = init(config)
        assert code == 1 and "a damaged cluster identity" in output, output
        code, output = init(config, "--reinit")
        assert code == 0 and "was a damaged cluster identity" in output, output
        assert reader.last_epoch() == 0
    finally:
        reader.close()


def _concurrent_write(
    cfg: Config, write: Coordinator | None, reinit: bool
) -> tuple[CoordinationError, str]:
    """The command reads, an agent writes, the command's transaction: (its error, the
    identity in the store after)."""
    command = initialiser(cfg)
    try:
        found = command.read()
        asked = Request(CLUSTER, {}, TTL, reinit, force=True, config="hakit.toml")
        decided = plan(found.stored(), asked, command.where)
        agent = write if write is not None else open_coordinator(cfg)  # creates the store
        try:
            agent.take_over("node1", TTL)  # the agent writes between the read and the write
            with pytest.raises(CoordinationError) as refused:
                command.write(found, decided, 5.0 if reinit else 0.0, 0.0)
        finally:
            if write is None:
                agent.close()
        return refused.value, decided.identity
    finally:
        command.close()


def test_a_concurrent_writer_makes_the_transaction_fail_with_nothing_written(
    tmp_path: Path, zookeeper: ZooKeeperServer
) -> None:
    cfg = load_config(write_config(tmp_path, zookeeper.hosts))
    # hakit init on an empty path while the first agent creates the store.
    error, lost = _concurrent_write(cfg, None, reinit=False)
    assert "changed while it was being (re-)initialised" in str(error)
    agent = open_coordinator(cfg, node="node1")
    try:
        lease = agent.current_lease()
        assert lease is not None and lease.holder == "node1" and lease.epoch == 1
        assert getattr(agent, "identity", None) != lost
        # --reinit --force over a live store while its holder renews.
        error, lost = _concurrent_write(cfg, agent, reinit=True)
        assert "nothing was written" in str(error)
        renewed = agent.renew_epoch("node1", 2, TTL)  # its take_over's epoch, still its own
        assert renewed is not None and renewed.holder == "node1"
        assert getattr(agent, "identity", None) != lost and agent.last_epoch() == 2
    finally:
        agent.close()


def test_status_shows_the_hold(tmp_path: Path, zookeeper: ZooKeeperServer) -> None:
    reinit.assert_status_shows_the_hold(write_config(tmp_path, zookeeper.hosts, ttl=60))
