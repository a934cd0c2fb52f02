"""Slow start through a live router: a node back from DOWN ramps its share of new users.

Two real backends in active/active (the status-controllable servers of
test_checks.py); the router's own /status checks take n2 DOWN and
back UP, and ``router.slowstart`` ramps n2's weight from 0 to 1 from the
moment it came back. The test reads that moment from the router itself (its
admin ``/nodes``: ``health.n2.up_for_seconds``) and sends a bounded window
of new (non-sticky) requests at known fractions of the ramp: right after the
comeback, halfway, and after the ramp. No sleeps: each window starts when the
router's own clock says the ramp has reached it.

How shares are expected to move (balance.py): on each turn n2 takes part
only with probability ``weight`` (a deterministic low-discrepancy sequence),
and round robin gives it every other such turn, so its share is about
``weight / 2``: ~0 early, ~1/4 halfway, 1/2 once the ramp is over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hakit.config import Mode
from hakit.coord.view import ClusterView
from tests.integration.router import test_checks, test_metrics
from tests.integration.router.test_checks import Backend, _Handler, config
from tests.integration.router.test_metrics import AdminRouter, with_router
from tests.support.router_harness import ClusterHolder, get, record, wait_for

# Fixtures reused from those modules: backends whose /status answers what the test
# sets, and a router serving its admin port.
backends = test_checks.backends
admin_router = test_metrics.admin_router

SLOWSTART = 2.0  # seconds; the test lasts about this long
WINDOW = 30  # requests per window (bounded)


class _PromptHandler(_Handler):
    # Head and body are two writes: without this, each keep-alive response waits out
    # the router's 40 ms delayed ACK, and a window would span much of the ramp.
    disable_nagle_algorithm = True


@pytest.fixture
def prompt_backends(backends: Callable[..., Backend]) -> Callable[[str], Backend]:
    def start(name: str) -> Backend:
        backend = backends(name)
        backend.RequestHandlerClass = _PromptHandler
        return backend

    return start


def health(router: AdminRouter, node: str) -> dict[str, Any]:
    entry: dict[str, Any] = router.nodes()["nodes"][node]["health"]
    return entry


def up_for(router: AdminRouter, node: str) -> float | None:
    """Seconds since the router saw ``node`` come back (None: not ramping, or never down)."""
    value = health(router, node)["up_for_seconds"]
    return None if value is None else float(value)


def wait_ramp(router: AdminRouter, fraction: float) -> None:
    """Until n2's ramp has reached ``fraction`` of slowstart, by the router's clock."""

    def reached() -> bool:
        seen = up_for(router, "n2")
        return seen is not None and seen >= fraction * SLOWSTART

    wait_for(reached, f"n2 to be up for {fraction:.0%} of slowstart", timeout=10 * SLOWSTART)


def window(router: AdminRouter) -> tuple[float, float, float]:
    """Send WINDOW new requests: (n2's share, ramp fraction at start, at end)."""
    start = up_for(router, "n2")
    names = []
    conn = router.client()  # one keep-alive connection: each request is still a new user
    try:
        for _ in range(WINDOW):
            conn.request("GET", "/", headers={"Accept": "text/plain"})
            response = conn.getresponse()
            assert response.status == 200
            names.append(response.read().decode())
    finally:
        conn.close()
    end = up_for(router, "n2")
    assert start is not None and end is not None
    assert set(names) <= {"n1", "n2"}
    return names.count("n2") / WINDOW, start / SLOWSTART, end / SLOWSTART


def wait_state(router: AdminRouter, node: str, state: str) -> None:
    wait_for(lambda: health(router, node)["state"] == state, f"{node} {state} on /nodes")


def test_a_node_back_from_down_ramps_its_share_over_slowstart(
    tmp_path,
    prompt_backends: Callable[[str], Backend],
    cluster: ClusterHolder,
    admin_router,
) -> None:
    n1, n2 = prompt_backends("n1"), prompt_backends("n2")
    cluster.view = ClusterView(
        None, {"n1": record("n1", "active", 0), "n2": record("n2", "active", 0)}, 0
    )
    cfg = with_router(config(tmp_path, [n1, n2], Mode.ACTIVE_ACTIVE), slowstart=SLOWSTART)
    router = admin_router(cfg)
    wait_state(router, "n1", "UP")
    wait_state(router, "n2", "UP")
    # Up since the router started: nobody ramps, the two share new users evenly.
    assert up_for(router, "n2") is None
    names = [get(router, "/", Accept="text/plain")[2].decode() for _ in range(10)]
    assert 4 <= names.count("n2") <= 6, names  # round robin (a retry may shift one turn)

    n2.answer = "ERROR"  # its /status fails: DOWN after `fall` checks
    wait_state(router, "n2", "DOWN")
    assert {get(router, "/", Accept="text/plain")[2] for _ in range(5)} == {b"n1"}
    n2.answer = "RUNNING"  # back: UP after `rise` answers, and the ramp starts
    wait_state(router, "n2", "UP")

    early, _, early_end = window(router)
    wait_ramp(router, 0.5)
    mid, mid_start, _ = window(router)
    wait_ramp(router, 1.0)
    late, late_start, _ = window(router)
    shares = f"early {early:.2f} (ramp 0..{early_end:.2f}), mid {mid:.2f}, late {late:.2f}"
    # The windows were where the test meant them (else the shares say nothing); the
    # early one ends when it ends (a loaded machine is slow), and its share is judged
    # against the ramp it covered: about half the mean weight, at most end / 2.
    assert early_end < 0.8 and 0.5 <= mid_start < 0.9 and late_start >= 1.0, shares
    assert early <= early_end / 2 + 0.1, shares
    assert early < 0.3, shares  # well below half: the node is ramping
    assert early < mid < late, shares  # rising with the ramp
    assert 0.35 <= late <= 0.65, shares  # after the ramp: about half
