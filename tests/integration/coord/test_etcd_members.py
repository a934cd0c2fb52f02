"""The etcd backend on a three-member etcd cluster (tests/support/etcd.py start_etcd_cluster):
a member killed (SIGKILL), the raft leader among them, costs nothing: renewals go on
under the same epoch, nobody else gets an epoch, the change token's watch moves to a
living member. Quorum lost (two killed): every call fails with CoordinationError
within the timeout; quorum back: the same lease goes on, no epoch lost or reused.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from hakit.coord.etcd import EtcdCoordinator, EtcdSection
from hakit.demo.etcd import EtcdCluster
from hakit.errors import CoordinationError
from tests.support.etcd import MISSING, etcd_available, start_etcd_cluster, unique_prefix

pytestmark = pytest.mark.skipif(not etcd_available(), reason=MISSING)
TIMEOUT = 2.0
TTL = 3.0


@pytest.fixture(scope="module")
def etcd3() -> Iterator[EtcdCluster]:
    cluster = start_etcd_cluster(3)
    try:
        yield cluster
    finally:
        cluster.stop()


def _store(endpoints: list[str], prefix: str) -> EtcdCoordinator:
    section = EtcdSection(endpoints=endpoints, prefix=prefix, timeout=TIMEOUT)
    return EtcdCoordinator(section, cluster="c")


def _raft_leader(cluster: EtcdCluster) -> int:
    """The index of the member that is the raft leader now."""
    for index, member in enumerate(cluster.members):
        if not member.running:
            continue
        request = urllib.request.Request(
            member.endpoint + "/v3/maintenance/status", data=b"{}", method="POST"
        )
        with urllib.request.urlopen(request, timeout=2) as answer:
            status = json.loads(answer.read())
        if status.get("leader") == status.get("header", {}).get("member_id"):
            return index
    raise AssertionError("no member is the raft leader")


def test_a_killed_member_costs_no_renewal_and_no_epoch(etcd3: EtcdCluster) -> None:
    leader = _raft_leader(etcd3)
    # The killed member first in the list: the store and the watch are on it.
    endpoints = [etcd3.endpoints[leader]] + [
        e for i, e in enumerate(etcd3.endpoints) if i != leader
    ]
    prefix = unique_prefix("members")
    agent, other, reader = (_store(endpoints, prefix) for _ in range(3))
    try:
        lease = agent.acquire_or_renew("n1", TTL)
        assert lease is not None
        token = reader.data_version()
        assert token is not None
        etcd3.kill(leader)
        revisions, slowest = [lease.revision], 0.0
        for _ in range(15):
            started = time.monotonic()
            renewed = agent.renew_epoch("n1", lease.epoch, TTL)
            slowest = max(slowest, time.monotonic() - started)
            assert renewed is not None and renewed.epoch == lease.epoch
            revisions.append(renewed.revision)
            assert other.acquire_or_renew("n2", TTL) is None  # the lease is n1's, alive
            time.sleep(0.2)
        assert revisions == sorted(set(revisions))  # every renewal counted, in order
        assert slowest < TIMEOUT
        assert agent.last_epoch() == lease.epoch
        # The reader's watch moved to a living member and follows the renewals.
        moved = reader.wait_change(reader.data_version(), 5.0)
        assert moved is not None
        agent.renew_epoch("n1", lease.epoch, TTL)
        assert reader.wait_change(moved, 5.0) != moved
    finally:
        for store in (agent, other, reader):
            store.close()
        etcd3.restart(leader)


def test_quorum_lost_fails_within_the_timeout_and_comes_back(etcd3: EtcdCluster) -> None:
    prefix = unique_prefix("quorum")
    agent, other = _store(etcd3.endpoints, prefix), _store(etcd3.endpoints, prefix)
    killed = [1, 2]
    try:
        lease = agent.acquire_or_renew("n1", TTL)
        assert lease is not None
        for index in killed:
            etcd3.kill(index)
        for call in (
            lambda: agent.renew_epoch("n1", lease.epoch, TTL),
            lambda: other.acquire_or_renew("n2", TTL),
            agent.current_lease,
            agent.last_epoch,
        ):
            started = time.monotonic()
            with pytest.raises(CoordinationError):
                call()
            assert time.monotonic() - started < TIMEOUT + 0.5
        etcd3.restart(*killed)
        killed = []
        # The same lease goes on under its epoch (revived if it expired meanwhile).
        deadline = time.monotonic() + 10
        while True:
            try:
                renewed = agent.renew_epoch("n1", lease.epoch, TTL)
                break
            except CoordinationError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert renewed is not None and renewed.epoch == lease.epoch
        assert agent.last_epoch() == lease.epoch  # no epoch handed out meanwhile
        taken = other.take_over("n2", TTL)
        assert taken.epoch == lease.epoch + 1
    finally:
        agent.close()
        other.close()
        if killed:
            etcd3.restart(*killed)
