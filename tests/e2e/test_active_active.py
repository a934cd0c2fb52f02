"""End to end, active-active with the router's signed sticky cookie (lb-cookie).

Two logged-in users pinned to different nodes; one node's app is killed with
SIGKILL. Its user is moved to the other node (the in-memory session is gone:
a new login is needed, and the router rewrites its cookie), while the other
user's session carries on untouched.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from hakit.demo.cluster import DemoCluster, wait_for

from .conftest import ClusterFactory

pytestmark = pytest.mark.e2e

SERVING = ("RUNNING", "FIRST_RUN")


def both_serving(cluster: DemoCluster) -> bool:
    for node in cluster.cfg.nodes:
        record = cluster.node_record(node.name)
        if record is None or record.app_state not in SERVING:
            return False
    return True


def login(client: httpx.Client, user: str) -> str:
    """Log ``user`` in through the router; the route of the node that answered."""
    response = client.post("/login", json={"user": user})
    assert response.status_code == 200, response.text
    return response.headers["X-Hakit-Node"]


def test_users_stay_on_their_nodes_and_only_the_lost_nodes_user_moves(
    make_cluster: ClusterFactory,
) -> None:
    cluster = make_cluster(mode="active-active", sticky="lb-cookie")
    wait_for(lambda: both_serving(cluster), 30, "both nodes' apps serving")
    url = cluster.router_url
    clients: list[httpx.Client] = []
    try:
        # New users are spread over both nodes: keep the first user landing on each.
        users: dict[str, tuple[str, httpx.Client]] = {}
        for i in range(10):
            client = httpx.Client(base_url=url, timeout=5, trust_env=False)
            clients.append(client)
            route = wait_for(lambda c=client, i=i: _try_login(c, f"user{i}"), 10, "a login")
            users.setdefault(route, (f"user{i}", client))
            if len(users) == 2:
                break
        assert len(users) == 2, f"every new user landed on {list(users)}"
        for route, (user, client) in users.items():
            assert client.cookies["JSESSIONID"].endswith("." + route)
            for _ in range(10):
                whoami = client.get("/whoami")
                assert (whoami.status_code, whoami.json()) == (200, {"user": user, "node": route})

        lost, kept = sorted(users)
        lost_node = next(n.name for n in cluster.cfg.nodes if n.route_name == lost)
        alice, alice_client = users[lost]
        bob, bob_client = users[kept]
        routeid = alice_client.cookies["ROUTEID"]
        pid = cluster.app_pid(lost_node)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        def moved() -> httpx.Response | None:
            response = alice_client.get("/whoami")
            return response if response.headers.get("X-Hakit-Node") == kept else None

        after = wait_for(moved, 20, f"{alice}'s requests to reach {kept}")
        assert after.status_code == 401  # her session lived in the killed app: log in again
        assert alice_client.cookies["ROUTEID"] != routeid  # the router rewrote its cookie
        assert login(alice_client, alice) == kept
        for _ in range(10):
            assert alice_client.get("/whoami").json() == {"user": alice, "node": kept}
            whoami = bob_client.get("/whoami")  # bob never noticed
            assert (whoami.status_code, whoami.json()) == (200, {"user": bob, "node": kept})
    finally:
        for client in clients:
            client.close()


def _try_login(client: httpx.Client, user: str) -> str | None:
    try:
        response = client.post("/login", json={"user": user})
    except httpx.HTTPError:
        return None
    return response.headers.get("X-Hakit-Node") if response.status_code == 200 else None
