"""Several "hosts" on one machine: network namespaces on a bridge, a three-member etcd.

``lan(hosts, stores)`` makes, for one test:

- a switch: a namespace of its own holding a bridge (so the root namespace's
  firewall, bridge netfilter included, never sees the traffic between hosts);
- one namespace per host and per etcd member, each with a veth into the bridge
  and its own address in a /24 picked at random among the unused ones;
- the root namespace on the same bridge (``client_ip``, ``.1``): the test, the
  router and the CLI run there and reach every host and every member.

``start_etcd_members(lan)`` runs one etcd member in each store namespace (the
same ports everywhere: each namespace has its own). The members live in
namespaces of their own, not in the hosts': a host cut from the store keeps its
agent and app reachable by the router while the store keeps its quorum, and the
router (root namespace) always reads the majority's view. A member colocated
with the active host would, once partitioned, answer the router with a minority's
stale or stalled reads: a different test.

``Lan.cut(host, addresses)`` drops, with nftables inside that host's namespace,
every packet to or from ``addresses`` (a table per cut, named per test);
``Lan.heal(host)`` deletes it. Names carry the pid and a random number, so
parallel workers never collide; the context manager removes the namespaces
(their veths, bridge and nftables tables go with them) and the root's veth
however the test ends. ``hosts_unavailable()`` says why none of this can run.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.etcd import ETCD, SHM, data_root, etcd_available

CLIENT_PORT = 2379
PEER_PORT = 2380
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


def hosts_unavailable() -> str | None:
    """Why the multi-host harness cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"the {tool} command is not installed"
    if not etcd_available():
        return f"{ETCD} is missing (Debian package etcd-server)"
    probe = f"hkprobe{os.getpid()}"
    made = _run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip() or made.stdout.strip()}"
    try:
        nft = _run(
            "ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe", check=False
        )
        if nft.returncode != 0:
            return f"nft cannot add a table in a namespace: {nft.stderr.strip()}"
    finally:
        _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    """A network namespace with one address on the bridge."""

    name: str  # the namespace
    ip: str

    def prefix(self) -> tuple[str, ...]:
        """Run a command inside the namespace: put this before its argv."""
        return ("ip", "netns", "exec", self.name)


@dataclass
class Lan:
    tag: str
    switch: str  # the namespace holding the bridge
    client_ip: str  # the root namespace's address on the bridge
    root_if: str  # the root namespace's veth
    hosts: list[Host]
    stores: list[Host]
    _cuts: set[str] = field(default_factory=set)

    def cut(self, host: Host, addresses: Sequence[str]) -> None:
        """Drop every packet between ``host`` and ``addresses`` (both ways) in its namespace."""
        table = f"hkcut{self.tag}"
        rules = "\n".join(
            [
                f"table inet {table} {{",
                "  chain input { type filter hook input priority -10; policy accept;",
                *(f"    ip saddr {address} drop" for address in addresses),
                "  }",
                "  chain output { type filter hook output priority -10; policy accept;",
                *(f"    ip daddr {address} drop" for address in addresses),
                "  }",
                "}",
            ]
        )
        if host.name in self._cuts:
            self.heal(host)
        subprocess.run(
            [*host.prefix(), "nft", "-f", "-"], input=rules, text=True, check=True, timeout=30
        )
        self._cuts.add(host.name)

    def heal(self, host: Host) -> None:
        """Delete the cut's table: the traffic flows again."""
        _run(*host.prefix(), "nft", "delete", "table", "inet", f"hkcut{self.tag}")
        self._cuts.discard(host.name)

    def heal_all(self) -> None:
        for host in [*self.hosts, *self.stores]:
            if host.name in self._cuts:
                self.heal(host)

    def store_ips(self) -> list[str]:
        return [store.ip for store in self.stores]

    def endpoints(self) -> list[str]:
        return [f"http://{store.ip}:{CLIENT_PORT}" for store in self.stores]


def _free_subnet() -> ipaddress.IPv4Network:
    used = _run("ip", "-4", "-o", "addr", "show").stdout + _run("ip", "-4", "route").stdout
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randrange(200, 250)}.{random.randrange(256)}.0/24")
        assert isinstance(net, ipaddress.IPv4Network)
        prefix = str(net.network_address).rsplit(".", 1)[0] + "."
        if f" {prefix}" not in used:
            return net
    raise RuntimeError("no free /24 under 10.200.0.0/13")


@contextmanager
def lan(hosts: int, stores: int = 3) -> Iterator[Lan]:
    """``hosts`` host namespaces and ``stores`` store namespaces on one bridge, the root
    namespace on it too; everything removed when the block ends."""
    tag = f"{os.getpid() % 100000}{random.randrange(1000):03d}"
    net = _free_subnet()
    base = net.network_address
    switch = f"hksw{tag}"
    root_if = f"hk{tag}c"
    made = Lan(
        tag=tag,
        switch=switch,
        client_ip=str(base + 1),
        root_if=root_if,
        hosts=[Host(f"hkh{tag}-{i + 1}", str(base + 11 + i)) for i in range(hosts)],
        stores=[Host(f"hks{tag}-{i + 1}", str(base + 21 + i)) for i in range(stores)],
    )
    namespaces: list[str] = []
    try:
        for name in [switch, *(h.name for h in made.hosts), *(s.name for s in made.stores)]:
            _run("ip", "netns", "add", name)
            namespaces.append(name)
        inside = ("ip", "netns", "exec", switch, "ip")
        _run(*inside, "link", "add", "br0", "type", "bridge")
        _run(*inside, "link", "set", "br0", "up")
        # The root namespace: its end stays here, with the .1 address.
        _run("ip", "link", "add", root_if, "type", "veth", "peer", "name", f"hk{tag}p")
        _run("ip", "link", "set", f"hk{tag}p", "netns", switch)
        _run(*inside, "link", "set", f"hk{tag}p", "master", "br0", "up")
        _run("ip", "addr", "add", f"{made.client_ip}/24", "dev", root_if)
        _run("ip", "link", "set", root_if, "up")
        for index, host in enumerate([*made.hosts, *made.stores]):
            near, far = f"hk{tag}a{index}", f"hk{tag}b{index}"
            _run("ip", "link", "add", near, "type", "veth", "peer", "name", far)
            _run("ip", "link", "set", far, "netns", switch)
            _run(*inside, "link", "set", far, "master", "br0", "up")
            _run("ip", "link", "set", near, "netns", host.name)
            there = ("ip", "netns", "exec", host.name, "ip")
            _run(*there, "link", "set", near, "name", "eth0")
            _run(*there, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _run(*there, "link", "set", "eth0", "up")
            _run(*there, "link", "set", "lo", "up")
        yield made
    finally:
        _run("ip", "link", "del", root_if, check=False)  # its peer goes with it
        for name in reversed(namespaces):  # veths, the bridge and nft tables go with them
            _run("ip", "netns", "del", name, check=False)


@dataclass
class EtcdMember:
    name: str
    host: Host
    datadir: Path
    process: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)  # how it was started (for ``restart``)
    log: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host.ip}:{CLIENT_PORT}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as answer:
                return b'"true"' in answer.read()
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) by its PID (``ip netns exec`` execs etcd itself)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL by its PID: a member lost at once, its data directory kept."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start it again on its data directory (it rejoins the cluster it was part of)."""
        assert self.argv and self.log is not None and self.process.poll() is not None
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)


@contextmanager
def etcd_members(net: Lan, timeout: float = 30.0) -> Iterator[list[EtcdMember]]:
    """One etcd member per store namespace, one cluster; all healthy before it yields.

    A 50 ms heartbeat and 500 ms election timeout: a lost member is noticed within a
    second, and the minimum lease TTL is 750 ms (tests ask for 3 s). ``--pre-vote``
    (etcd 3.5's default; Debian 12's 3.4 has it off): without it a member cut off by a
    partition raises its term at every election it calls alone, and on the heal it
    deposes the majority's leader: a second or more without a leader, long enough for
    the active node's renewals to miss their deadline and fence it (seen as a flaky
    heal test). A production etcd should run with it too (README).

    The members' data is on tmpfs (tests.support.etcd.data_root). Each member's log
    (warnings and up) is printed when the block ends: pytest shows it with a failure."""
    peers = ",".join(f"m{i + 1}=http://{s.ip}:{PEER_PORT}" for i, s in enumerate(net.stores))
    root = data_root(f"hakit-etcd-{net.tag}-")
    members: list[EtcdMember] = []
    try:
        with ExitStack() as logs:
            for i, store in enumerate(net.stores):
                name = f"m{i + 1}"
                client, peer = f"http://{store.ip}:{CLIENT_PORT}", f"http://{store.ip}:{PEER_PORT}"
                argv = [
                    *store.prefix(),
                    str(ETCD),
                    f"--name={name}",
                    f"--data-dir={root / name}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster={peers}",
                    f"--initial-cluster-token=hakit-{net.tag}",
                    "--initial-cluster-state=new",
                    "--heartbeat-interval=50",
                    "--election-timeout=500",
                    "--pre-vote=true",
                    "--logger=zap",
                    "--log-level=warn",
                ]
                log = logs.enter_context(open(root / f"{name}.log", "wb"))
                process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                members.append(
                    EtcdMember(name, store, root / name, process, argv, root / f"{name}.log")
                )
        deadline = time.monotonic() + timeout
        for member in members:
            while not member.healthy():
                if member.process.poll() is not None:
                    text = (root / f"{member.name}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd {member.name} exited: {text}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd {member.name} not healthy in {timeout} s")
                time.sleep(0.05)
        yield members
    finally:
        for member in members:
            member.stop()
        for member in members:
            if member.log is None or not member.log.exists():
                continue
            lines = member.log.read_text(errors="replace").splitlines()[-20:]
            print(f"--- etcd {member.name} log (last {len(lines)} lines)", *lines, sep="\n")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def faketime_leftovers_removed() -> Iterator[None]:
    """libfaketime's first process of a tree makes a semaphore and a shared memory
    segment in /dev/shm named by its PID, removed when it exits, but not when it is
    killed (SIGKILL, as a lost node's agent is). When the block ends, those made during
    it whose process is gone are removed: only leftovers, never a live process's."""
    before = set(_faketime_files())
    try:
        yield
    finally:
        for path, pid in _faketime_files().items():
            if path not in before and not _alive(pid):
                path.unlink(missing_ok=True)


def _faketime_files() -> dict[Path, int]:
    found: dict[Path, int] = {}
    for path in SHM.glob("*faketime_*"):
        tail = path.name.rsplit("_", 1)[-1]
        if path.name.startswith(("faketime_shm_", "sem.faketime_sem_")) and tail.isdigit():
            found[path] = int(tail)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def faketime_prefix(offset: str, *, monotonic: bool) -> tuple[str, ...]:
    """``env`` arguments that run a command under libfaketime ``offset`` (e.g. "+420s");
    ``monotonic=False`` leaves CLOCK_MONOTONIC alone (only the wall clock is off)."""
    env = ["env", f"LD_PRELOAD={FAKETIME_LIB}", f"FAKETIME={offset}"]
    if not monotonic:
        env.append("FAKETIME_DONT_FAKE_MONOTONIC=1")
    return tuple(env)
