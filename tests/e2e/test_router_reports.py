"""The routers' data-path reports in the store are kept to the routers that exist:
real agents, apps and router, the real SQLite store.

A router that stops removes its own report; one that crashed leaves it behind.
The active node's agent removes reports silent for ``FORGET_AFTER`` (an hour),
by compare-and-delete, and leaves younger stale ones and live ones alone.
"""

from __future__ import annotations

import time

import pytest

from hakit.coord.keys import ROUTER_REPORTS
from hakit.demo.cluster import wait_for
from hakit.health.datapath import FORGET_AFTER, PathReport, Sight

from .conftest import ClusterFactory, wait_serving

pytestmark = pytest.mark.e2e


def router_keys(state: dict[str, dict[str, object]]) -> set[str]:
    return {key for key in state if key.startswith(ROUTER_REPORTS)}


def test_the_active_agent_forgets_routers_silent_for_an_hour(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster()
    wait_serving(cluster)
    coordinator = cluster.coordinator
    (live,) = wait_for(
        lambda: router_keys(coordinator.cluster_state()), 30, "the router's first report"
    )

    now = time.time()
    crashed = PathReport(
        "192.0.2.1:8080",
        now - FORGET_AFTER - 60,
        1.0,
        1.0,
        {"node1": Sight(now - 3700, now - 3700)},
    )
    recent = PathReport("192.0.2.2:8080", now - 120, 1.0, 1.0, {})  # stale, not yet forgotten
    # The younger one first: every pass of the agent that sees the old one sees it too.
    coordinator.set_state(ROUTER_REPORTS + recent.router, recent.as_json())
    coordinator.set_state(ROUTER_REPORTS + crashed.router, crashed.as_json())

    wait_for(
        lambda: ROUTER_REPORTS + crashed.router not in coordinator.cluster_state(),
        30,
        "the active agent to remove the report silent for an hour",
    )
    # Removed in the same pass that kept these: younger stale reports and live ones stay.
    assert router_keys(coordinator.cluster_state()) == {live, ROUTER_REPORTS + recent.router}
