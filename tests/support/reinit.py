"""What the ``hakit init --reinit`` tests of the distributed stores share: a two-node config
on a given store, the command run as an operator runs it, the scenario of a store wiped
under a running agent, and the hold as ``status`` shows it
(tests/integration/coord/test_etcd_reinit.py, test_zookeeper_reinit.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hakit.cli import app
from hakit.coord.base import REINIT_HOLDER, Coordinator, Lease
from hakit.errors import StoreReplacedError
from tests.support.waiting import wait_until

CLUSTER = "reinit"


def write_config(tmp_path: Path, backend: str, table: str, ttl: float) -> Path:
    """``hakit.toml`` of a cluster of two nodes on ``backend``, ``table`` its
    ``[coordination.<backend>]`` lines."""
    path = tmp_path / "hakit.toml"
    path.write_text(
        f"""
[cluster]
name = "{CLUSTER}"
state_dir = "state"

[coordination]
backend = "{backend}"
lease_ttl = "{ttl:g}s"
renew_interval = "500ms"

[coordination.{backend}]
{table}

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
    """``hakit init -c config args...``: its exit code and output."""
    result = CliRunner().invoke(app, ["init", "-c", str(config), *args])
    return result.exit_code, result.output


def assert_status_shows_the_hold(config: Path) -> None:
    """``--reinit --min-epoch 7`` then ``hakit status``: the hold and its epoch are shown
    (give a config with a long TTL: the hold is still there however slow the machine)."""
    assert init(config, "--reinit", "--min-epoch", "7")[0] == 0
    result = CliRunner().invoke(app, ["status", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert REINIT_HOLDER in result.output and "7" in result.output, result.output


def wiped_then_reinitialised(
    config: Path, agent: Coordinator, wipe: Callable[[], None], ttl: float
) -> tuple[Lease, Lease, str]:
    """An agent of node1 takes epochs 1..3, its store is wiped (``wipe``) under it, then
    ``hakit init`` refuses and ``--reinit`` replaces it: the agent accepts the new store,
    nobody gets the lease during the hold, then node2 gets epoch 4. (the hold as the agent
    read it after the command, the grant after it, the command's output)"""
    for _ in range(3):
        lease = agent.take_over("node1", ttl)
    assert lease.epoch == 3

    wipe()  # the store is lost under the running agent
    with pytest.raises(StoreReplacedError):
        agent.acquire_or_renew("node1", ttl)

    code, output = init(config)
    assert code == 1 and "--reinit" in output and "node1" in output, output

    code, output = init(config, "--reinit")
    assert code == 0, output
    assert "epochs continue above 3" in output
    assert f"held by {REINIT_HOLDER!r}" in output

    # The agent accepts the new identity (its old one is in the lineage) and sees the
    # hold: nobody, itself included, gets the lease until the store ends it.
    held = agent.current_lease()
    assert held is not None and held.holder == REINIT_HOLDER and held.valid
    assert held.epoch == 3
    assert agent.acquire_or_renew("node1", ttl) is None
    assert agent.acquire_or_renew("node2", ttl) is None
    granted = wait_until(
        lambda: agent.acquire_or_renew("node2", ttl), 4 * ttl + 5, "the hold to expire"
    )
    assert granted.holder == "node2" and granted.epoch == 4  # above every epoch used
    events = [e for e in agent.events() if e.kind == "store"]
    assert events and "epochs continue above 3" in events[-1].reason
    return held, granted, output


def kept_unless_forced(config: Path, agent: Coordinator, ttl: float) -> None:
    """After ``wiped_then_reinitialised``: the store is healthy and trusted by the memory
    here, so ``--reinit`` refuses it; ``--force`` replaces it, and node2's grant is gone."""
    code, output = init(config, "--reinit")
    assert code == 1 and "--force" in output, output
    code, output = init(config, "--reinit", "--force")
    assert code == 0 and "epochs continue above 4" in output, output
    assert agent.renew_epoch("node2", 4, ttl) is None  # the old grant is gone: fence
    held = agent.current_lease()
    assert held is not None and held.holder == REINIT_HOLDER and held.epoch == 4
