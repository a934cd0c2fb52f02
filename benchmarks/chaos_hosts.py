"""The chaos run across hosts (``benchmarks/chaos.py --hosts``): the cluster and the faults
only several hosts have.

The setup (root; tests/support/hosts.py's namespaces on one bridge):

- ``hosts[0]``, ``hosts[1]``: node1 and node2, each its agent, shim and app; node2's
  agent (hence its app) runs with its wall clock ``--skew`` seconds ahead
  (libfaketime; its monotonic clock is left alone) the whole run: every
  failover to or from it crosses the skew;
- ``hosts[2]``: the router, listening on its own address;
- the store: ``sqlite``, a file on the shared directory every namespace sees (the
  embedded store); ``etcd``, three members, one per store namespace, each node
  reaching them through a relay that can add latency (tests/support/relay.py);
  ``zookeeper``, an ensemble of three servers, one per store namespace
  (tests/support/zk_ensemble.py);
- the root namespace: PostgreSQL (the apps' database), this script (its writers,
  monitor and nemesis) and the store reads that decide "a leader exists". No
  partition cuts the root: it is the observer, and the database stays reachable
  from every node, so an isolated active that kept serving would be seen writing.

The network faults (``NET_FAULTS``), each held 4-15 s, then healed:

  ``partition-active``   the active node cut from the other node, the router and the
                         store (it must self-fence within the lease; the other takes over)
  ``partition-routers``  only the router's path to the active cut (path-loss handover)
  ``partition-store``    the active cut from the store only (etcd, zookeeper)
  ``partition-minority`` the active and one store member cut from the rest (etcd, zookeeper)
  ``one-way-loss``       every packet one way between the active and everyone else
                         (router, other node, store) dropped; the direction at random
  ``latency-loss``       200 ms each way on every node's store traffic and 5 % loss on
                         its packets to and from the members (etcd; no netem here)
  ``store-member-kill``  SIGKILL of a store member (etcd, ZooKeeper) that is not the
                         leader; restarted at the end of the hold
  ``store-leader-kill``  SIGKILL of the store's leader; restarted at the end of the hold

Every loop is bounded in count and time; processes are ended by PID; the
namespaces (with their veths, bridge and nftables tables) are deleted at the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

from cluster_runner import ManagedCluster, StoreLease

from hakit.config import load_config
from hakit.coord.base import NodeRecord
from hakit.coord.factory import open_coordinator
from hakit.demo.cluster import DemoSettings
from hakit.errors import HakitError

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.hosts import (  # noqa: E402 (the repository's test harness)
    Host,
    Lan,
    etcd_members,
    faketime_leftovers_removed,
    faketime_prefix,
    hosts_unavailable,
    lan,
)
from tests.support.multihost_cluster import postgres_on  # noqa: E402
from tests.support.relay import Relays, store_relays  # noqa: E402
from tests.support.zk_ensemble import ZkMember, zookeeper_ensemble  # noqa: E402

BACKENDS = ("sqlite", "etcd", "zookeeper")
NET_FAULTS = (
    "partition-active",
    "partition-routers",
    "partition-store",
    "partition-minority",
    "one-way-loss",
    "latency-loss",
    "store-member-kill",
    "store-leader-kill",
)
# Which network faults a backend has: a file on shared storage has no network path to
# cut; the latency relay (tests/support/relay.py) speaks to etcd's client port only.
NET_FAULTS_OF = {
    "sqlite": ("partition-active", "partition-routers", "one-way-loss"),
    "etcd": NET_FAULTS,
    "zookeeper": tuple(kind for kind in NET_FAULTS if kind != "latency-loss"),
}
NEEDS_ACTIVE = frozenset(NET_FAULTS) - {"latency-loss", "store-member-kill", "store-leader-kill"}
HOLD_SECONDS = (4.0, 15.0)
LATENCY = 0.2
LOSS_PERCENT = 5
ROUTER_PORT = 8080
NODE_PORTS = (8101, 8102)  # each host is a namespace: its own port space
STORE_TIMEOUT = 1.0  # [coordination.etcd] timeout


class Member(Protocol):
    """A store server the nemesis kills (tests/support/hosts.EtcdMember, zk_ensemble.ZkMember)."""

    name: str
    host: Host

    @property
    def process(self) -> subprocess.Popen[bytes]: ...

    def kill(self) -> None: ...

    def restart(self) -> None: ...


class Say(Protocol):
    def __call__(self, text: str) -> None: ...


class FaultLike(Protocol):
    """What a network fault fills in (chaos.Fault)."""

    held: float
    notes: list[str]
    pids: dict[str, int]


# --- the cluster -------------------------------------------------------------------------------


class HostsCluster(ManagedCluster):
    """A ManagedCluster whose nodes and router live in namespaces, on any backend: the
    store is read through hakit's own coordinator (from the root namespace, which no
    partition cuts), the router is started (and restarted) in its own namespace."""

    router_host: Host

    def __init__(self, root: Path, settings: DemoSettings) -> None:
        super().__init__(root, settings)
        self.read_lock = threading.Lock()  # one store client, read from several threads

    def start_router(self) -> subprocess.Popen[bytes]:
        return self._spawn("router", ["router"], self.router_host.prefix())

    def respawn(self, name: str) -> subprocess.Popen[bytes]:
        if name == "router":
            return self.start_router()
        return super().respawn(name)

    def store(self) -> tuple[StoreLease | None, list[NodeRecord]] | None:
        raise NotImplementedError("read through leader() and node_record()")

    def node_record(self, node: str) -> NodeRecord | None:
        try:
            with self.read_lock:
                return next((r for r in self.coordinator.nodes() if r.node == node), None)
        except (HakitError, OSError):
            return None

    def leader(self) -> str | None:
        try:
            with self.read_lock:
                lease = self.coordinator.current_lease()
        except (HakitError, OSError):
            return None
        return lease.holder if lease is not None and lease.valid else None


def _etcd_section(net: Lan) -> str:
    return (
        f"[coordination.etcd]\nendpoints = {json.dumps(net.endpoints())}\n"
        f'prefix = "/hakit-chaos-{net.tag}"\ntimeout = {STORE_TIMEOUT}\n'
    )


def _zookeeper_section(hosts: list[str], net: Lan) -> str:
    return (
        f"[coordination.zookeeper]\nhosts = {json.dumps(hosts)}\n"
        f'prefix = "/hakit-chaos-{net.tag}"\n'
    )


def _configure(cluster: HostsCluster, backend: str, section: str, listen: str) -> None:
    """The demo's config, moved onto ``backend`` and the router's namespace address."""
    text = cluster.config_path.read_text()
    if backend != "sqlite":
        cluster.coordinator.close()  # the SQLite store the demo opened: not this cluster's
        text = text.replace('backend = "sqlite"', f'backend = "{backend}"').replace(
            "[app]\n", section + "\n[app]\n", 1
        )
    before = f'listen = "127.0.0.1:{cluster.settings.router_port}"'
    if before not in text:
        raise RuntimeError(f"the demo config has no {before!r}")
    cluster.config_path.write_text(text.replace(before, f'listen = "{listen}"', 1))
    cluster.cfg = load_config(cluster.config_path)
    if backend != "sqlite":
        cluster.coordinator = open_coordinator(cluster.cfg)


@contextmanager
def hosts_cluster(
    root: Path, backend: str, skew: float, settings: dict[str, Any]
) -> Iterator[tuple[HostsCluster, Nemesis]]:
    """The setup of the module doc (not started); everything removed when the block ends.
    ``settings``: DemoSettings fields beside the placement (lease_ttl, ...)."""
    why = hosts_unavailable()
    if why is not None:
        raise RuntimeError(f"the chaos run across hosts cannot run here: {why}")
    stores = {"sqlite": 0, "etcd": 3, "zookeeper": 3}[backend]
    with ExitStack() as stack:
        stack.enter_context(faketime_leftovers_removed())
        net = stack.enter_context(lan(hosts=3, stores=stores))
        stack.callback(net.heal_all)
        _, database_url = stack.enter_context(postgres_on(net))
        nodes, router_host = net.hosts[:2], net.hosts[2]
        members: list[Member] = []
        relays: Relays | None = None
        section = ""
        if backend == "etcd":
            members = stack.enter_context(etcd_members(net))
            relays = stack.enter_context(store_relays(net, nodes, LATENCY))
            section = _etcd_section(net)
        elif backend == "zookeeper":
            members = stack.enter_context(zookeeper_ensemble(net, root / "zookeeper"))
            section = _zookeeper_section([m.endpoint for m in members], net)
        prefixes = {f"node{i + 1}": host.prefix() for i, host in enumerate(nodes)}
        if skew:
            prefixes["node2"] = (
                *prefixes["node2"],
                *faketime_prefix(f"{skew:+g}s", monotonic=False),
            )
        demo = DemoSettings(
            router_port=ROUTER_PORT,
            node_ports=NODE_PORTS,
            node_hosts=tuple(host.ip for host in nodes),
            node_prefix=prefixes,
            database_url=database_url,
            **settings,
        )
        cluster = HostsCluster(root / "cluster", demo)
        cluster.router_host = router_host
        _configure(cluster, backend, section, f"{router_host.ip}:{ROUTER_PORT}")
        stack.callback(cluster.close)
        yield cluster, Nemesis(net, backend, nodes, router_host, members, relays)


# --- the faults ---------------------------------------------------------------------------------


def store_leader(members: list[Member]) -> Member | None:
    """The member that says it leads, None if none answers so."""
    for member in members:
        if isinstance(member, ZkMember):
            if member.leads():
                return member
            continue
        if member.process.poll() is not None:
            continue
        request = urllib.request.Request(
            member.endpoint + "/v3/maintenance/status", data=b"{}", method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as answer:
                status = json.loads(answer.read())
        except (OSError, ValueError):
            continue
        if str(status.get("leader")) == str(status.get("header", {}).get("member_id")):
            return member
    return None


class Nemesis:
    """Cuts, loss, latency and store member kills on the namespace setup."""

    def __init__(
        self,
        net: Lan,
        backend: str,
        nodes: list[Host],
        router_host: Host,
        members: list[Member],
        relays: Relays | None,
    ) -> None:
        self.net = net
        self.backend = backend
        self.nodes = nodes
        self.router_host = router_host
        self.members = members
        self.relays = relays
        self._tables: list[tuple[Host, str]] = []
        self._killed: Member | None = None  # the member a kill fault restarts at its end

    def host_of(self, node: str) -> Host:
        return self.nodes[int(node.removeprefix("node")) - 1]

    def _others(self, host: Host) -> list[str]:
        """Everyone but ``host`` and the root namespace (the observer and the database)."""
        return [h.ip for h in [*self.nodes, self.router_host] if h is not host] + [
            s.ip for s in self.net.stores
        ]

    def _drop(self, host: Host, table: str, inbound: list[str], outbound: list[str]) -> None:
        chains = []
        if inbound:
            chains += [
                "  chain input { type filter hook input priority -10; policy accept;",
                f"    ip saddr {{ {', '.join(inbound)} }} drop",
                "  }",
            ]
        if outbound:
            chains += [
                "  chain output { type filter hook output priority -10; policy accept;",
                f"    ip daddr {{ {', '.join(outbound)} }} drop",
                "  }",
            ]
        rules = "\n".join([f"table inet {table} {{", *chains, "}"])
        subprocess.run(
            [*host.prefix(), "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30
        )
        self._tables.append((host, table))

    def heal(self) -> None:
        for host, table in self._tables:
            subprocess.run(
                [*host.prefix(), "nft", "delete", "table", "inet", table],
                capture_output=True,
                timeout=30,
                check=False,
            )
        self._tables.clear()
        if self.relays is not None:
            self.relays.clear()

    def _cut(self, host: Host, addresses: list[str]) -> None:
        self._drop(host, f"hkchaos{self.net.tag}", addresses, addresses)

    def _start(self, kind: str, node: str | None, fault: FaultLike, rng: random.Random) -> str:
        """Put the fault in place; what was done, for the log."""
        active = self.host_of(node) if node else None
        stores = [s.ip for s in self.net.stores]
        if kind == "partition-active":
            assert active is not None
            self._cut(active, self._others(active))
            return f"{node} cut from {', '.join(self._others(active))}"
        if kind == "partition-routers":
            assert active is not None
            self._cut(self.router_host, [active.ip])
            return f"router {self.router_host.ip} cut from {node} {active.ip}"
        if kind == "partition-store":
            assert active is not None
            self._cut(active, stores)
            return f"{node} cut from the store {', '.join(stores)}"
        if kind == "partition-minority":
            assert active is not None
            member = rng.choice(self.members)
            side = [active.ip, member.host.ip]
            rest = [ip for ip in [*self._others(active), active.ip] if ip not in side]
            for host in (active, member.host):
                self._drop(host, f"hkchaos{self.net.tag}", rest, rest)
            return f"{node} and store member {member.name} cut from {', '.join(rest)}"
        if kind == "one-way-loss":
            assert active is not None
            others = self._others(active)
            inbound = rng.random() < 0.5
            self._drop(
                active,
                f"hkchaos{self.net.tag}",
                others if inbound else [],
                [] if inbound else others,
            )
            return (
                f"every packet {'to' if inbound else 'from'} {node} dropped ({', '.join(others)})"
            )
        if kind == "latency-loss":
            assert self.relays is not None
            self.relays.slow()
            self.relays.lossy(LOSS_PERCENT)
            return f"{LATENCY * 1000:.0f} ms each way and {LOSS_PERCENT} % loss on every node's store links"
        leader = store_leader(self.members)
        if kind == "store-leader-kill":
            if leader is None:
                raise RuntimeError("no store member says it leads")
            victim = leader
        else:
            victim = rng.choice([m for m in self.members if m is not leader])
        victim.kill()
        fault.pids[f"store-{victim.name}"] = victim.process.pid
        self._killed = victim
        return f"store member {victim.name}{' (the leader)' if victim is leader else ''} SIGKILLed"

    def _end(self) -> None:
        self.heal()
        if self._killed is not None:
            self._killed.restart()
            self._killed = None

    async def apply(
        self, kind: str, node: str | None, fault: FaultLike, rng: random.Random, say: Say
    ) -> None:
        """The fault, held ``fault.held`` seconds (drawn here), then healed."""
        fault.held = round(rng.uniform(*HOLD_SECONDS), 1)
        what = await asyncio.to_thread(self._start, kind, node, fault, rng)
        say(f"{kind}: {what}, for {fault.held:g} s")
        try:
            await asyncio.sleep(fault.held)
        finally:
            await asyncio.to_thread(self._end)


def available_faults(backend: str) -> tuple[str, ...]:
    return NET_FAULTS_OF[backend]
