"""A whole local cluster per test: real agents, real sample apps, a real router."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hakit.coord.base import Event
from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports, wait_for
from hakit.errors import HakitError
from hakit.history.eventlog import format_event

ClusterFactory = Callable[..., DemoCluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    with cluster_factory(tmp_path) as factory:
        yield factory


@contextmanager
def cluster_factory(
    tmp_path: Path, prepare: Callable[[DemoCluster], None] | None = None
) -> Iterator[ClusterFactory]:
    """A factory of started clusters (each on free ports, ``overrides`` for its settings),
    all stopped at the end; ``prepare`` sees each one before it starts (its config)."""
    clusters: list[DemoCluster] = []

    def factory(**overrides: Any) -> DemoCluster:
        router_port, *node_ports = free_ports(3)
        settings = DemoSettings(router_port=router_port, node_ports=tuple(node_ports), **overrides)
        cluster = DemoCluster(tmp_path / f"cluster{len(clusters)}", settings)
        clusters.append(cluster)
        if prepare is not None:
            prepare(cluster)
        cluster.start()
        return cluster

    try:
        yield factory
    finally:
        for cluster in clusters:
            cluster.stop()
            dump_history(cluster)
            cluster.close()


def dump_history(cluster: DemoCluster) -> None:
    """Printed with the test's captured output, which pytest shows when it fails."""
    print(f"--- events of {cluster.root}")
    try:
        for event in cluster.events():
            print(format_event(event))
    except HakitError as error:  # a test that deleted or replaced the store: the logs still
        print(f"(no events: {error})")
    for log in sorted((cluster.cfg.cluster.state_dir / "logs").glob("*")):
        lines = log.read_text(errors="replace").splitlines()
        print(f"--- {log.name} (last 40 of {len(lines)} lines)")
        print("\n".join(lines[-40:]))


def router_get(cluster: DemoCluster, path: str, timeout: float = 2.0) -> httpx.Response | None:
    try:
        return httpx.get(cluster.router_url + path, timeout=timeout)
    except httpx.HTTPError:
        return None


def served_by(cluster: DemoCluster) -> str | None:
    """The route (X-Hakit-Node) of a successful GET through the router, None if it failed."""
    response = router_get(cluster, "/status")
    if response is None or response.status_code != 200:
        return None
    return response.headers.get("X-Hakit-Node")


@contextmanager
def store_locked(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's view of the store: hold its write lock (BEGIN EXCLUSIVE, which in
    WAL mode keeps every writer out and lets readers on) until the block ends. Every lease
    renewal then waits the store's busy timeout and fails; nothing is frozen."""
    connection = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        yield connection
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


def wait_serving(cluster: DemoCluster, timeout: float = 30.0) -> str:
    """Wait until a request through the router succeeds; return the node that answered."""

    def served_by() -> str | None:
        response = router_get(cluster, "/status")
        if response is not None and response.status_code == 200:
            return cluster.active_running()
        return None

    return wait_for(served_by, timeout, "a successful request through the router")


def kill_app(cluster: DemoCluster, node: str) -> int:
    pid = cluster.app_pid(node)
    assert pid is not None, f"no app pid published for {node}"
    os.kill(pid, signal.SIGKILL)
    return pid


def events_of(cluster: DemoCluster, kind: str, node: str | None = None) -> list[Event]:
    return [
        event
        for event in cluster.events()
        if event.kind == kind and (node is None or event.node == node)
    ]
