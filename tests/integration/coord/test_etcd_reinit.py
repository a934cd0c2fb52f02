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
from typer.testing import CliRunner

from hakit.cli import app
from hakit.config import load_config
from hakit.coord.base import REINIT_HOLDER
from hakit.coord.factory import open_coordinator
from hakit.errors import StoreReplacedError
from tests.support.etcd import MISSING, EtcdServer, etcd_available, start_etcd, unique_prefix
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
    path = tmp_path / "hakit.toml"
    path.write_text(
        f"""
[cluster]
name = "reinit"
state_dir = "state"

[coordination]
backend = "etcd"
lease_ttl = "{ttl:g}s"
renew_interval = "500ms"

[coordination.etcd]
endpoints = ["{endpoint}"]
prefix = "{prefix}"
timeout = 1.0

[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"

[[nodes]]
name = "node1"
port = 18101

[[nodes]]
name = "node2"
port = 18102
"""
    )
    return path


def init(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["init", "-c", str(config), *args])
    return result.exit_code, result.output


def test_a_wiped_keyspace_is_refused_then_reinitialised_above_the_remembered_epochs(
    tmp_path: Path, etcd: EtcdServer
) -> None:
    prefix = unique_prefix("reinit")
    config = write_config(tmp_path, etcd.endpoint, prefix)
    cfg = load_config(config)
    agent = open_coordinator(cfg, node="node1")  # remembers identity and epochs on disk
    try:
        for _ in range(3):
            lease = agent.take_over("node1", TTL)
        assert lease.epoch == 3

        etcd.client().delete_prefix(prefix)  # the keyspace is lost under the running agent
        with pytest.raises(StoreReplacedError):
            agent.acquire_or_renew("node1", TTL)

        code, output = init(config)
        assert code == 1 and "--reinit" in output and "node1" in output, output

        code, output = init(config, "--reinit")
        assert code == 0, output
        assert "epochs continue above 3" in output
        assert f"held by {REINIT_HOLDER!r}" in output

        # The agent accepts the new identity (its old one is in the lineage) and sees the
        # hold: nobody, itself included, gets the lease until the server expires it.
        held = agent.current_lease()
        assert held is not None and held.holder == REINIT_HOLDER and held.valid
        assert agent.acquire_or_renew("node1", TTL) is None
        granted = wait_until(
            lambda: agent.acquire_or_renew("node2", TTL), 4 * TTL + 5, "the hold to expire"
        )
        assert granted.holder == "node2" and granted.epoch == 4  # above every epoch used
        events = [e for e in agent.events() if e.kind == "store"]
        assert events and "epochs continue above 3" in events[-1].reason

        # Healthy now and trusted by the memory here: kept unless --force.
        code, output = init(config, "--reinit")
        assert code == 1 and "--force" in output, output
        code, output = init(config, "--reinit", "--force")
        assert code == 0 and "epochs continue above 4" in output, output
        assert agent.renew_epoch("node2", 4, TTL) is None  # the old grant is gone: fence
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
    # A hold of a minute: still there when `status` reads it, however slow the machine.
    config = write_config(tmp_path, etcd.endpoint, unique_prefix("reinit"), ttl=60)
    assert init(config, "--reinit", "--min-epoch", "7")[0] == 0
    result = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert REINIT_HOLDER in result.output and "7" in result.output, result.output
