"""Across hosts: agents in network namespaces, a three-member etcd, partitions, clock skew.

Every node's agent (hence its shim and app) runs in a network namespace of its own
(a "host"); the three etcd members run in three more; a bridge in yet another joins
them all and the root namespace, where the test, the router and the CLI run
(tests/support/hosts.py). Partitions are nftables rules inside a host's namespace,
healed by deleting them. What the tests watch:

- ``WriterWatch`` asks every node's app for ``/status`` directly (from the root
  namespace, which no partition cuts) every 20 ms: an app answering 200 RUNNING with
  its own ``X-Hakit-Node`` is a writer; two in one round is a split brain. It also
  notes when the old active's app process is gone and when the store (the majority,
  read from the root namespace) stops calling its lease valid.
- the lease as the store holds it (holder, epoch), the history, ``hakit status``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hakit.config import load_config
from hakit.demo.cluster import DemoCluster, DemoSettings, free_port
from tests.support.hosts import (
    Lan,
    etcd_members,
    faketime_leftovers_removed,
    faketime_prefix,
    hosts_unavailable,
    lan,
)
from tests.support.multihost_cluster import (
    TTL,
    WriterWatch,
    host_of,
    observer,
    other,
    route_of,
)
from tests.support.waiting import wait_until

from .conftest import dump_history, served_by, wait_serving

# One group: each test already keeps 3 etcd members, 2 agents and a router busy on
# this machine; two at once would make their timings those of an overloaded host.
pytestmark = [pytest.mark.e2e, pytest.mark.multihost, pytest.mark.xdist_group("multihost")]


@pytest.fixture
def net() -> Iterator[Lan]:
    reason = hosts_unavailable()
    if reason is not None:
        pytest.skip(f"multi-host harness unavailable: {reason}")
    with lan(hosts=2) as made, etcd_members(made):
        try:
            yield made
        finally:
            made.heal_all()


@contextmanager
def etcd_cluster(
    tmp_path: Path, net: Lan, prefixes: dict[str, tuple[str, ...]] | None = None
) -> Iterator[DemoCluster]:
    """A demo cluster whose node N runs in ``net.hosts[N-1]`` (after ``prefixes[node]``, if
    any, inside the namespace), on the etcd members; its router in the root namespace."""
    extra = prefixes or {}
    settings = DemoSettings(
        router_port=free_port(),
        node_ports=(8101, 8102),  # each host is a namespace: its own port space
        node_hosts=tuple(host.ip for host in net.hosts),
        node_prefix={
            f"node{i + 1}": (*host.prefix(), *extra.get(f"node{i + 1}", ()))
            for i, host in enumerate(net.hosts)
        },
        lease_ttl=f"{TTL:g}s",
        renew_interval="500ms",
        patience="2s",
        fall=2,
        health_interval="250ms",
        probe_timeout="500ms",
        check_interval="250ms",
        startup_delay=0.2,
    )
    cluster = DemoCluster(tmp_path / "cluster", settings)
    cluster.close()  # the SQLite store the demo opened: this cluster's store is etcd
    text = cluster.config_path.read_text()
    etcd = (
        f"[coordination.etcd]\nendpoints = {json.dumps(net.endpoints())}\n"
        f'prefix = "/hakit-{net.tag}"\ntimeout = 1.0\n\n'
    )
    text = text.replace('backend = "sqlite"', 'backend = "etcd"').replace(
        "[app]\n", etcd + "[app]\n"
    )
    cluster.config_path.write_text(text)
    cluster.cfg = load_config(cluster.config_path)
    cluster.coordinator = observer(cluster.cfg)
    try:
        cluster.start()
        yield cluster
    finally:
        net.heal_all()  # the history is read from the store, every agent stops cleanly
        cluster.stop()
        dump_history(cluster)
        cluster.close()


def hakit_status(cluster: DemoCluster) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "hakit", "status", "--json", "--config", str(cluster.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def status_of(cluster: DemoCluster, node: str) -> dict[str, Any]:
    return next(n for n in hakit_status(cluster)["nodes"] if n["node"] == node)


def test_active_cut_from_the_store_fences_before_its_lease_expires(
    net: Lan, tmp_path: Path
) -> None:
    with etcd_cluster(tmp_path, net) as cluster:
        old = wait_serving(cluster, timeout=40)
        new = other(cluster, old)
        before = cluster.coordinator.current_lease()
        assert before is not None and before.holder == old
        app = cluster.app_pid(old)
        assert app is not None
        wait_until(lambda: cluster.node_record(new) is not None, 20, f"{new} to report")

        with WriterWatch(cluster) as watch:
            watch.watched.add(app)
            wait_until(lambda: watch.writing(route_of(cluster, old)), 10, f"{old}'s app sampled")
            # Cut from every etcd member and from the other host; the router (root
            # namespace) still reaches it.
            net.cut(host_of(net, old), [*net.store_ips(), host_of(net, new).ip])
            cut_at = time.monotonic()
            wait_until(lambda: watch.gone_at.get(app), 2 * TTL, f"{old}'s app {app} to be gone")
            wait_until(lambda: served_by(cluster) == route_of(cluster, new), 40, f"{new} serving")
            served_at = time.monotonic()
            expired_at = wait_until(lambda: watch.expired_since(cut_at), 10, "the lease's expiry")
            lease = cluster.coordinator.current_lease()
            assert lease is not None and lease.holder == new and lease.epoch > before.epoch
            # The router answered from the new active; and `hakit status` (the store's
            # clock) shows the cut node lost (it cannot report) while still cut.
            assert status_of(cluster, old)["lost"] is True

            net.heal(host_of(net, old))
            healed_at = time.monotonic()

            def old_is_standby() -> bool:
                record = cluster.node_record(old)
                return record is not None and record.role == "standby" and record.age < TTL

            wait_until(old_is_standby, 30, f"{old} back as a standby")
            back_at = time.monotonic()
            # No failback, no second writer, for a while after healing.
            wait_until(lambda: time.monotonic() > back_at + TTL, TTL + 1, "a lease TTL")
            assert cluster.leader() == new and not watch.writing(route_of(cluster, old))

        gone = watch.gone_at[app]
        stopped = watch.last_writing(route_of(cluster, old), before=gone + 1)
        started = watch.first_writing(route_of(cluster, new), after=stopped.end)
        assert started is not None
        gap = started.start - stopped.end
        status = status_of(cluster, old)
        print(
            f"cut -> old app gone {gone - cut_at:.2f} s; store expired the lease "
            f"{expired_at - cut_at:.2f} s after the cut ({expired_at - gone:.2f} s after the app "
            f"was gone); last old answer -> first new answer (gap) {gap:.2f} s; cut -> "
            f"{new} serving through the router {served_at - cut_at:.2f} s; heal -> {old} "
            f"standby {back_at - healed_at:.2f} s; {len(watch.rounds)} sampling rounds"
        )
        assert gone < expired_at, "the old active's app outlived its lease on the server"
        assert gone - cut_at < TTL, "self-fenced later than a lease TTL after the last renewal"
        assert gap > 0
        assert len(watch.rounds) > 100 and watch.overlaps() == []
        assert (status["role"], status["lost"]) == ("standby", False), status
        assert not any(
            e.kind == "start" and e.node == old and e.epoch > before.epoch for e in cluster.events()
        )


def test_every_host_cut_from_the_store_promotes_nobody(net: Lan, tmp_path: Path) -> None:
    with etcd_cluster(tmp_path, net) as cluster:
        old = wait_serving(cluster, timeout=40)
        new = other(cluster, old)
        before = cluster.coordinator.current_lease()
        assert before is not None and before.holder == old
        app = cluster.app_pid(old)
        assert app is not None
        wait_until(lambda: cluster.node_record(new) is not None, 20, f"{new} to report")
        mark = cluster.events()[-1].id

        with WriterWatch(cluster) as watch:
            watch.watched.add(app)
            wait_until(lambda: watch.writing(route_of(cluster, old)), 10, f"{old}'s app sampled")
            for host in net.hosts:
                net.cut(host, net.store_ips())
            cut_at = time.monotonic()
            gone = wait_until(lambda: watch.gone_at.get(app), 2 * TTL, f"{old}'s app gone")
            expired_at = wait_until(lambda: watch.expired_since(cut_at), 10, "the lease's expiry")
            # Nobody can promote: watch three lease TTLs past the expiry.
            wait_until(lambda: time.monotonic() > expired_at + 3 * TTL, 4 * TTL, "3 TTLs")
            writers_while_cut = [r for r in watch.rounds if r.start > gone and r.writers]
            lease = cluster.coordinator.current_lease()
            assert lease is not None and (lease.holder, lease.epoch) == (old, before.epoch)
            assert not lease.valid
            assert cluster.coordinator.last_epoch() == before.epoch

            for host in net.hosts:
                net.heal(host)
            healed_at = time.monotonic()
            leader = wait_serving(cluster, timeout=40)
            serving_at = time.monotonic()
            # Exactly one active: one lease, one writer, for a lease TTL after.
            wait_until(lambda: time.monotonic() > serving_at + TTL, TTL + 1, "a lease TTL")
            after = cluster.coordinator.current_lease()
            # A grant sent while cut may reach etcd late (TCP delivers it once healed, after
            # the agent gave up waiting): that agent gives the epoch back unused, so the
            # epoch may skip one; what counts is that only one app ever starts.
            assert after is not None and after.holder == leader and after.epoch > before.epoch
            since = [r for r in watch.rounds if r.start > serving_at]
            assert since and all(r.writers == [route_of(cluster, leader)] for r in since[-10:])

        print(
            f"all hosts cut: old app gone {gone - cut_at:.2f} s after the cut, lease expired "
            f"{expired_at - cut_at:.2f} s after; heal -> {leader} serving {serving_at - healed_at:.2f} s "
            f"(epoch {before.epoch} -> {after.epoch}); {len(watch.rounds)} sampling rounds"
        )
        assert gone < expired_at and writers_while_cut == []
        assert watch.overlaps() == []

        # The history says why, once the store could be written again: the active lost
        # its lease because the store did not answer (events queued while cut).
        def why() -> list[str]:
            return [
                e.reason
                for e in cluster.events(mark)
                if e.node == old and e.kind == "alert" and "lost the leader lease" in e.reason
            ]

        [reason] = wait_until(why, 20, f"{old}'s alert about its lease")
        assert f"epoch {before.epoch}: lease not renewed before its deadline" in reason
        starts = [e for e in cluster.events(mark) if e.kind == "start" and e.epoch > before.epoch]
        assert [(e.node, e.epoch) for e in starts] == [(leader, after.epoch)]


def clocks_of(prefix: tuple[str, ...]) -> tuple[float, float]:
    """(time.time(), time.monotonic()) of a Python run under ``prefix``, minus ours."""
    code = "import time; print(time.time(), time.monotonic())"
    ours = (time.time(), time.monotonic())
    out = subprocess.run(
        [*prefix, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    return float(out[0]) - ours[0], float(out[1]) - ours[1]


@pytest.mark.parametrize("monotonic", [False, True], ids=["wall-clock", "wall-and-monotonic"])
def test_clock_skew_changes_no_failover(net: Lan, tmp_path: Path, monotonic: bool) -> None:
    skew = faketime_prefix("+420s", monotonic=monotonic)
    wall, mono = clocks_of((*host_of(net, "node1").prefix(), *skew))
    assert 410 < wall < 430, wall  # time.time() is 7 minutes ahead
    # libfaketime also fakes CLOCK_MONOTONIC unless told not to (it then starts near the
    # faked wall clock): only differences of it are used, within one process tree.
    assert abs(mono) > 60 if monotonic else abs(mono) < 10, mono
    with faketime_leftovers_removed(), etcd_cluster(tmp_path, net, {"node1": skew}) as cluster:
        first = wait_serving(cluster, timeout=40)
        second = other(cluster, first)
        e0 = cluster.coordinator.current_lease().epoch  # type: ignore[union-attr]

        def reporting(node: str, role: str) -> bool:
            status = status_of(cluster, node)
            return status["role"] == role and status["lost"] is False

        wait_until(lambda: reporting(second, "standby"), 20, f"{second} standby, not lost")
        assert reporting(first, "active")
        took: list[tuple[str, float, float]] = []

        def fail_over(watch: WriterWatch, lost: str, heir: str, epoch: int) -> None:
            wait_until(lambda: watch.writing(route_of(cluster, lost)), 10, f"{lost} sampled")
            cluster.lose_node(lost)
            lost_at = time.monotonic()
            expired = wait_until(lambda: watch.expired_since(lost_at), 10, "lease expiry")
            wait_until(lambda: served_by(cluster) == route_of(cluster, heir), 30, heir)
            started = wait_until(
                lambda: watch.first_writing(route_of(cluster, heir), after=lost_at), 5, "a sample"
            )
            lease = cluster.coordinator.current_lease()
            assert lease is not None and (lease.holder, lease.epoch) == (heir, epoch)
            took.append((lost, expired - lost_at, started.start - expired))
            cluster.start_agent(lost)
            wait_until(lambda: reporting(lost, "standby"), 30, f"{lost} standby, not lost")
            # Its record is republished every renewal: within two, however busy the host.
            wait_until(lambda: reporting(heir, "active"), 2 * TTL, f"{heir} active, not lost")

        with WriterWatch(cluster) as watch:
            fail_over(watch, first, second, e0 + 1)  # node1 active or standby: both ways
            fail_over(watch, second, first, e0 + 2)
        print(
            f"skew +420 s on node1 ({'wall and monotonic' if monotonic else 'wall clock only'}): "
            + "; ".join(
                f"{lost} lost -> lease expired {expiry:.2f} s -> heir writing {promote:.2f} s later"
                for lost, expiry, promote in took
            )
        )
        assert watch.overlaps() == []
        for _, expiry, promote in took:
            # etcd keeps a lease ttl (3 s, whole seconds) past its last keepalive (at most a
            # renew interval before the loss), plus its 0.5 s expiry tick.
            assert TTL - 0.6 < expiry < TTL + 1.0
            assert 0 < promote < 5.0  # fence check, start, first probe: no waiting on clocks
