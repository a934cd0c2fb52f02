"""Across hosts, per backend: node loss, the router following a leader change, idle cost.

    PYTHONPATH=src:. .venv/bin/python benchmarks/multihost.py [--trials 20]
        [--backends sqlite,etcd,zookeeper] [--idle-seconds 20]

Needs root (network namespaces). The setup of tests/e2e/test_multihost.py
(tests/support/hosts.py): one "host" namespace per node running its agent (hence
its shim and app), store namespaces, a bridge; the router, the CLI and this script
in the root namespace. Every backend runs in the same run, one after the other, on
the same namespaces, each with a fresh demo cluster (hakit.demo.cluster) in
warm-standby mode with hakit's default timers (lease_ttl 3 s, renew_interval 1 s,
router and [health] defaults):

- ``sqlite``: the store file in the cluster's state directory (the namespaces share
  the file system, so every "host" opens the same file);
- ``etcd``: three members, one per store namespace (tests/support/hosts.py), reached
  through a counting relay (below);
- ``zookeeper``: ONE server (a standalone ensemble of one) in the first store
  namespace, Debian's jars (tests/support/zookeeper.py's), session_timeout 10 s.

Measures:

1. node loss: SIGKILL of the active host's agent, shim and app together
   (``DemoCluster.lose_node``), then GET /status through the router every 20 ms
   (closed loop: a held request counts when it is answered) until the standby's app
   answers; N trials (``--trials``). Between trials the lost agent comes back as a
   warm standby (its app RUNNING), and 3 x lease_ttl pass since the last loss (the
   step-down cooldown).
2. leader change -> router: ``hakit failover --to <standby> --no-wait --force`` from the root
   namespace (the store path: no admin API; ``--force`` because without a fence
   command the new active's check can see the fenced old node's app, restarted as a
   warm standby, answer ``/status`` and refuse to promote, again and again). A thread
   reads the store every 5 ms (``read_cluster``) and notes when the store first says the target may serve
   (it holds the lease and its record is active under that epoch with a routable app:
   what the router routes on); another sends GET /status through the router in a
   closed loop (2 ms apart) and notes when the target's app first answers. The
   latency is the second minus the first (the commit time taken as the middle of the
   store poll that first saw it and the one before; its half-width is printed as the
   resolution). N trials, 3 x lease_ttl apart. How the router learns of a change:
   sqlite: ``PRAGMA data_version`` (a cheap token checked at every 100 ms poll); etcd
   and zookeeper: a change token kept by the store's watches, which also wakes the
   router at once (hakit.router.viewreader.ViewReader.follow) instead of at its next
   100 ms poll.
3. idle, per node: the agent process's CPU (psutil ``cpu_times``, user + system,
   over ``--idle-seconds``) as % of one core, and its store requests per second:
   etcd: HTTP requests counted per source address by a relay (a child process of
   this script in the root namespace: ``--relay``) that every etcd client of the
   cluster goes through (a long-lived watch counts once); zookeeper: the server's
   ``cons`` four-letter word (packets received per client connection, pings
   included), by client address; sqlite: no requests (a local file): the commits per
   second to the file, by everyone, seen as ``PRAGMA data_version`` changes polled
   every 5 ms, are printed instead.

Prints one table; asserts nothing. Every loop is bounded in count and time; every
process started here is ended by its PID, and the namespaces (with their veths,
bridge and nftables tables) are deleted at the end (tests/support/hosts.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from tests.support import zookeeper as zk_support
from tests.support.hosts import CLIENT_PORT, Host, Lan, etcd_members, hosts_unavailable, lan

from hakit.config import load_config
from hakit.coord.base import Coordinator
from hakit.coord.factory import open_coordinator
from hakit.coord.view import ClusterView, read_cluster
from hakit.demo.cluster import DemoCluster, DemoSettings, free_port, free_ports, wait_for

BACKENDS = ("sqlite", "etcd", "zookeeper")
TTL = 3.0  # hakit's default lease_ttl
COOLDOWN = 3 * TTL  # a node that stepped down waits this long before it takes the lease
WRITING = ("RUNNING", "FIRST_RUN")
ZK_PORT = 2181
LOSS_LIMIT = 60.0  # a node loss not served by then counts as not recovered
HANDOVER_LIMIT = 30.0
TARGET_LOSS = 5.0  # s, median (issue 13)
TARGET_CHANGE = 0.100  # s, median
TARGET_CPU = 1.0  # % of a core
TARGET_RPS = 10.0  # store requests per second per node
HTTP_REQUEST = re.compile(rb" HTTP/1\.[01]\r\n")
CONS_LINE = re.compile(r"/([0-9.]+):\d+\[\d+\]\(.*?recved=(\d+)")


# --- the counting relay (a child process) ------------------------------------------------------


async def _relay_main(spec: list[tuple[str, int, str, int]], out: Path, limit: float) -> None:
    """Forward each (listen host, port) to (target host, port); count the HTTP requests
    each client address sends; write the counts to ``out`` every 0.25 s."""
    counts: dict[str, int] = {}

    async def pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str | None
    ) -> None:
        tail = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if source is not None:
                    seen = tail + data
                    counts[source] = counts.get(source, 0) + len(HTTP_REQUEST.findall(seen))
                    tail = seen[-10:]  # shorter than a match: never counted twice
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with suppress(OSError):
                writer.close()

    def handler(host: str, port: int) -> Callable[..., Any]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            source = str(writer.get_extra_info("peername")[0])
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), 5
                )
            except (OSError, TimeoutError):
                writer.close()
                return
            await asyncio.gather(pump(reader, up_writer, source), pump(up_reader, writer, None))

        return handle

    servers = [
        await asyncio.start_server(handler(host, port), listen, listen_port)
        for listen, listen_port, host, port in spec
    ]
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(out)
        await asyncio.sleep(0.25)
    for server in servers:
        server.close()


@dataclass
class Relay:
    process: subprocess.Popen[bytes]
    counts_path: Path
    urls: list[str]

    def counts(self) -> dict[str, int]:
        try:
            found: dict[str, int] = json.loads(self.counts_path.read_text())
            return found
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


@contextmanager
def relay(net: Lan, root: Path, limit: float) -> Iterator[Relay]:
    """One relay port on the root namespace's bridge address per etcd member."""
    ports = free_ports(len(net.stores), net.client_ip)
    spec = [(net.client_ip, p, s.ip, CLIENT_PORT) for p, s in zip(ports, net.stores, strict=True)]
    out = root / "relay-counts.json"
    process = subprocess.Popen(
        [sys.executable, __file__, "--relay", json.dumps(spec), str(out), str(limit)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "relay.log", "wb"),  # noqa: SIM115 (closed with the process)
        start_new_session=True,
    )
    made = Relay(process, out, [f"http://{net.client_ip}:{p}" for p in ports])
    try:
        wait_for(lambda: out.exists() or process.poll() is not None, 20, "the relay to start")
        if process.poll() is not None:
            raise RuntimeError(f"the relay exited: {(root / 'relay.log').read_text()[-2000:]}")
        yield made
    finally:
        made.stop()


# --- ZooKeeper in a store namespace ------------------------------------------------------------


def _zk_answer(host: str, word: bytes, timeout: float = 2.0) -> str:
    with socket.create_connection((host, ZK_PORT), timeout=timeout) as conn:
        conn.sendall(word)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = conn.recv(65536)
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode(errors="replace")


@contextmanager
def zookeeper_in(store: Host, root: Path, timeout: float = 90.0) -> Iterator[str]:
    """A standalone ZooKeeper server in ``store``'s namespace; yields ``host:port``."""
    reason = zk_support.unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    base = root / "zookeeper"
    (base / "data").mkdir(parents=True)
    (base / "zoo.cfg").write_text(
        "\n".join(
            [
                "tickTime=200",
                f"dataDir={base / 'data'}",
                f"clientPort={ZK_PORT}",
                f"clientPortAddress={store.ip}",
                "minSessionTimeout=400",
                "maxSessionTimeout=60000",
                "maxClientCnxns=0",
                "admin.enableServer=false",
                "forceSync=no",
                "4lw.commands.whitelist=ruok,cons,mntr,stat",
                "",
            ]
        )
    )
    jars = [
        str(zk_support.ZOOKEEPER_JAR),
        *(j for j in zk_support.LOGGING_JARS if Path(j).exists()),
    ]
    with open(base / "zookeeper.log", "wb") as log:
        process = subprocess.Popen(
            [
                *store.prefix(),
                "java",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-Dzookeeper.admin.enableServer=false",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                ":".join(jars),
                zk_support.MAIN_CLASS,
                str(base / "zoo.cfg"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            with suppress(OSError):
                if _zk_answer(store.ip, b"ruok", 1.0) == "imok":
                    break
            if process.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited: {(base / 'zookeeper.log').read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper did not answer within {timeout} s")
            time.sleep(0.2)
        yield f"{store.ip}:{ZK_PORT}"
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def zk_received(store_ip: str) -> dict[str, int]:
    """Packets received from each client address, summed over its open connections."""
    totals: dict[str, int] = {}
    for address, received in CONS_LINE.findall(_zk_answer(store_ip, b"cons")):
        totals[address] = totals.get(address, 0) + int(received)
    return totals


# --- the cluster ---------------------------------------------------------------------------------


def settings_for(net: Lan) -> DemoSettings:
    return DemoSettings(
        mode="warm-standby",
        router_port=free_port(),
        node_ports=(8101, 8102),  # each host is a namespace: its own port space
        node_hosts=tuple(host.ip for host in net.hosts),
        node_prefix={f"node{i + 1}": host.prefix() for i, host in enumerate(net.hosts)},
        lease_ttl=f"{TTL:g}s",
        renew_interval="1s",  # hakit's default (the demo's is 500 ms)
        # hakit's [health] defaults too (the demo's are snappier)
        health_interval="1s",
        probe_timeout="2s",
        patience="30s",
        fall=3,
    )


def make_cluster(root: Path, net: Lan, store_section: str, backend: str) -> DemoCluster:
    """A demo cluster on ``backend`` (``store_section``: its [coordination.X] table)."""
    cluster = DemoCluster(root, settings_for(net))
    if backend == "sqlite":
        return cluster
    cluster.close()  # the SQLite store the demo opened: this cluster's store is another
    text = cluster.config_path.read_text()
    text = text.replace('backend = "sqlite"', f'backend = "{backend}"').replace(
        "[app]\n", store_section + "\n[app]\n"
    )
    cluster.config_path.write_text(text)
    cluster.cfg = load_config(cluster.config_path)
    cluster.coordinator = open_coordinator(cluster.cfg)
    return cluster


def route_of(cluster: DemoCluster, node: str) -> str:
    return str(next(n.route for n in cluster.cfg.nodes if n.name == node))


def other(cluster: DemoCluster, node: str) -> str:
    return str(next(n.name for n in cluster.cfg.nodes if n.name != node))


def served_by(client: httpx.Client, cluster: DemoCluster) -> str | None:
    try:
        answer = client.get(cluster.router_url + "/status")
    except httpx.HTTPError:
        return None
    return answer.headers.get("X-Hakit-Node") if answer.status_code == 200 else None


def wait_steady(cluster: DemoCluster, client: httpx.Client, timeout: float = 120.0) -> str:
    """An active node serving through the router; the other a warm standby whose record
    comes from the agent running now. All judged together, again at every poll: the
    active may still change meanwhile (a late renewal on a loaded machine)."""

    def steady() -> str | None:
        active = cluster.active_running()
        if active is None:
            return None
        standby = other(cluster, active)
        record = cluster.node_record(standby)
        if (
            record is None
            or record.role != "standby"
            or record.app_state not in WRITING
            or record.detail.get("agent_pid") != cluster.agent_pid(standby)
        ):
            return None
        if served_by(client, cluster) != route_of(cluster, active):
            return None
        return active if cluster.active_running() == active else None

    found: str = wait_for(steady, timeout, "an active serving via the router, a warm standby")
    return found


# --- 1. node loss --------------------------------------------------------------------------------


def node_losses(
    cluster: DemoCluster, trials: int, log: Callable[[str], None], times: list[float | None]
) -> None:
    """Appends each trial's seconds (None: not served within LOSS_LIMIT) to ``times``."""
    last_loss = -math.inf
    with httpx.Client(timeout=LOSS_LIMIT) as client:
        for number in range(trials):
            active = wait_steady(cluster, client)
            wait = last_loss + COOLDOWN - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                active = wait_steady(cluster, client)
            heir = route_of(cluster, other(cluster, active))
            t0 = time.monotonic()
            cluster.lose_node(active)
            last_loss = t0
            took: float | None = None
            while time.monotonic() < t0 + LOSS_LIMIT:
                if served_by(client, cluster) == heir:
                    took = time.monotonic() - t0
                    break
                time.sleep(0.02)
            times.append(took)
            log(f"node loss {number + 1}/{trials}: " + (f"{took:.2f} s" if took else "none"))
            cluster.start_agent(active)  # back as a standby


# --- 2. leader change in the store -> router -----------------------------------------------------


def may_serve(view: ClusterView, node: str) -> bool:
    lease = view.lease
    record = view.nodes.get(node)
    return (
        lease is not None
        and lease.holder == node
        and record is not None
        and record.role == "active"
        and record.epoch == lease.epoch
        and record.app_state in WRITING
    )


@dataclass
class Change:
    latency: float | None  # s, router first forwarded to the target minus the commit
    resolution: float  # s, half the store poll window around the commit
    note: str = ""


def one_change(
    cluster: DemoCluster, observer: Coordinator, target: str, log: Callable[[str], None]
) -> Change:
    route = route_of(cluster, target)
    stop = threading.Event()
    polls: list[tuple[float, float, bool]] = []  # (start, end, target may serve)
    answers: list[tuple[float, float]] = []  # (sent, done) of answers from the target
    errors: list[str] = []  # the store poller's failed reads
    deadline = time.monotonic() + HANDOVER_LIMIT

    def poll_store() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                ok = may_serve(read_cluster(observer, time.time()), target)
            except Exception as error:  # a failed read is a missing sample
                errors.append(repr(error)[:200])
                time.sleep(0.01)
                continue
            polls.append((start, time.monotonic(), ok))
            if ok:
                return
            # Not a busy loop: a read may lock the store (SQLite) or write to it (the
            # ZooKeeper backend's clock znode), and the agents must get their turn.
            time.sleep(0.005)

    def probe_router() -> None:
        with httpx.Client(timeout=HANDOVER_LIMIT) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                sent = time.monotonic()
                if served_by(client, cluster) == route:
                    answers.append((sent, time.monotonic()))
                    return
                time.sleep(0.002)

    threads = [threading.Thread(target=f, daemon=True) for f in (poll_store, probe_router)]
    for thread in threads:
        thread.start()
    command = subprocess.run(
        [
            sys.executable,
            "-m",
            "hakit",
            "failover",
            "--to",
            target,
            "--no-wait",
            # The fence check without a fence command can refuse the promotion when the
            # old active's app, fenced, restarts as a warm standby before the check runs
            # (it answers /status): --force skips it; the old agent fences itself anyway.
            "--force",
            "--reason",
            "multihost benchmark",
            "--config",
            str(cluster.config_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    note = ""
    if command.returncode != 0:
        note = f"failover exited {command.returncode}: {(command.stderr or command.stdout)[-200:]}"
    for thread in threads:
        thread.join(timeout=max(0.1, deadline - time.monotonic()) + 1)
    stop.set()
    seen = next((i for i, p in enumerate(polls) if p[2]), None)
    if seen is None or not answers:
        why = (
            f"{len(polls)} store polls ({'saw' if seen is not None else 'no'} change), "
            f"{len(answers)} answers from {target}, {len(errors)} failed polls"
            + (f" (last: {errors[-1]})" if errors else "")
            + f"; failover said: {(command.stdout + command.stderr).strip()[-200:]}"
        )
        return Change(None, 0.0, (note + "; " if note else "") + why)
    before = polls[seen - 1][0] if seen > 0 else polls[seen][0]
    commit = (before + polls[seen][1]) / 2
    half = (polls[seen][1] - before) / 2
    latency = answers[0][1] - commit
    log(f"leader change -> router: {latency * 1000:.0f} ms (+/- {half * 1000:.0f} ms)")
    return Change(latency, half, note)


def leader_changes(
    cluster: DemoCluster,
    observer: Coordinator,
    trials: int,
    log: Callable[[str], None],
    changes: list[Change],
) -> None:
    """Appends each trial's ``Change`` to ``changes``."""
    with httpx.Client(timeout=10) as client:
        last = time.monotonic()  # the node losses just before: their cooldown
        for _ in range(trials):
            wait_steady(cluster, client)
            wait = last + COOLDOWN - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            active = wait_steady(cluster, client)
            last = time.monotonic()
            changes.append(one_change(cluster, observer, other(cluster, active), log))


# --- 3. idle --------------------------------------------------------------------------------------


@dataclass
class Idle:
    cpu: dict[str, float] = field(default_factory=dict)  # node -> % of a core
    rps: dict[str, float | None] = field(default_factory=dict)  # node -> store requests/s
    router_cpu: float = 0.0
    router_rps: float | None = None
    note: str = ""


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def idle(
    cluster: DemoCluster,
    net: Lan,
    backend: str,
    seconds: float,
    counter: Callable[[], dict[str, int]] | None,
) -> Idle:
    with httpx.Client(timeout=10) as client:
        wait_steady(cluster, client)
    time.sleep(2.0)  # the probes' traffic has passed
    nodes = [n.name for n in cluster.cfg.nodes]
    pids = {name: cluster.agent_pid(name) for name in nodes}
    router_pid = cluster.processes["router"].pid
    ips = {name: net.hosts[i].ip for i, name in enumerate(nodes)}
    found = Idle()
    before_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
    router_before = cpu_seconds(router_pid)
    before_counts = counter() if counter else {}
    start = time.monotonic()
    commits = 0
    if backend == "sqlite":
        version = getattr(cluster.coordinator, "data_version")  # noqa: B009
        token = version()
        while time.monotonic() < start + seconds:
            time.sleep(0.005)
            now = version()
            if now != token:
                commits += 1
                token = now
    else:
        time.sleep(seconds)
    elapsed = time.monotonic() - start
    after_counts = counter() if counter else {}
    for name, pid in pids.items():
        found.cpu[name] = 100 * (cpu_seconds(pid) - before_cpu[name]) / elapsed
    found.router_cpu = 100 * (cpu_seconds(router_pid) - router_before) / elapsed
    if counter is None:
        found.rps = {name: None for name in nodes}
        found.note = f"SQLite file: {commits / elapsed:.1f} commits/s to it in all (data_version)"
    else:

        def rate(address: str) -> float:
            delta = after_counts.get(address, 0) - before_counts.get(address, 0)
            return delta / elapsed

        found.rps = {name: rate(ips[name]) for name in nodes}
        found.router_rps = rate(net.client_ip)
    return found


# --- one backend ----------------------------------------------------------------------------------


@dataclass
class BackendResult:
    backend: str
    losses: list[float | None] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    idle: Idle | None = None
    roles: dict[str, str] = field(default_factory=dict)  # node -> role at idle
    error: str = ""


def run_backend(backend: str, net: Lan, args: argparse.Namespace) -> BackendResult:
    result = BackendResult(backend)

    def log(line: str) -> None:
        print(f"  {backend:<9} {line}", file=sys.stderr, flush=True)

    with (
        tempfile.TemporaryDirectory(prefix=f"hakit-multihost-{backend}-") as tmp,
        ExitStack() as stack,
    ):
        root = Path(tmp)
        counter: Callable[[], dict[str, int]] | None = None
        observer_section = section = ""
        if backend == "etcd":
            stack.enter_context(etcd_members(net))
            limit = 4 * 3600.0
            relayed = stack.enter_context(relay(net, root, limit))
            counter = relayed.counts
            prefix = f'prefix = "/hakit-bench-{net.tag}"\n'
            section = f"[coordination.etcd]\nendpoints = {json.dumps(relayed.urls)}\n{prefix}"
            observer_section = (
                f"[coordination.etcd]\nendpoints = {json.dumps(net.endpoints())}\n{prefix}"
            )
        elif backend == "zookeeper":
            hosts = stack.enter_context(zookeeper_in(net.stores[0], root))
            section = (
                f"[coordination.zookeeper]\nhosts = {json.dumps([hosts])}\n"
                f'prefix = "/hakit-bench-{net.tag}"\n'
            )
            observer_section = section
            store_ip = net.stores[0].ip
            counter = lambda: zk_received(store_ip)  # noqa: E731
        cluster = make_cluster(root / "cluster", net, section, backend)
        # This script's own store clients: the poller of the leader changes has one of its
        # own; with etcd both go to the members directly (not counted by the relay).
        text = cluster.config_path.read_text()
        observed_path = cluster.root / "observer.toml"  # beside it: the same state_dir
        observed_path.write_text(text.replace(section, observer_section))
        observed = load_config(observed_path)
        if backend == "etcd":
            cluster.coordinator.close()
            cluster.coordinator = open_coordinator(observed)
        observer = open_coordinator(observed)
        stack.callback(observer.close)
        try:
            cluster.start()
            log("started; waiting for a steady cluster")
            if args.trials > 0:
                node_losses(cluster, args.trials, log, result.losses)
                leader_changes(cluster, observer, args.trials, log, result.changes)
            if args.idle_seconds > 0:
                log(f"idle for {args.idle_seconds:g} s")
                result.idle = idle(cluster, net, backend, args.idle_seconds, counter)
                for name in result.idle.cpu:
                    record = cluster.node_record(name)
                    result.roles[name] = record.role if record else "?"
        except (TimeoutError, RuntimeError, OSError, httpx.HTTPError) as error:
            result.error = f"stopped: {error}"
            kept = Path(tempfile.gettempdir()) / f"hakit-multihost-logs-{backend}-{os.getpid()}"
            subprocess.run(["cp", "-r", str(cluster.cfg.cluster.state_dir / "logs"), str(kept)])
            result.error += f" (logs: {kept})"
            log(result.error)
        finally:
            cluster.stop()
            cluster.close()
    return result


# --- report ---------------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


HOW = {
    "sqlite": "data_version token",
    "etcd": "watch wakes router",
    "zookeeper": "watch wakes router",
}


def table(results: list[BackendResult]) -> list[str]:
    head = f"{'backend':<10} {'measure':<56} {'n':>3} {'median':>9} {'p95':>9}  {'target':<18} met?"
    lines = [head, "-" * len(head)]

    def row(backend: str, measure: str, n: str, med: str, hi: str, target: str, met: str) -> None:
        lines.append(f"{backend:<10} {measure:<56} {n:>3} {med:>9} {hi:>9}  {target:<18} {met}")

    for r in results:
        b = r.backend
        done = [t for t in r.losses if t is not None]
        if r.losses:
            met = (
                "yes"
                if len(done) == len(r.losses) and statistics.median(done) <= TARGET_LOSS
                else "no"
            )
            row(
                b,
                "node loss -> standby serves via router",
                str(len(r.losses)),
                f"{statistics.median(done):.2f} s" if done else "-",
                f"{p95(done):.2f} s" if done else "-",
                f"median <= {TARGET_LOSS:g} s",
                met
                + ("" if len(done) == len(r.losses) else f" ({len(r.losses) - len(done)} lost)"),
            )
        seen = [c.latency for c in r.changes if c.latency is not None]
        if r.changes:
            met = (
                "yes"
                if len(seen) == len(r.changes) and statistics.median(seen) <= TARGET_CHANGE
                else "no"
            )
            res = (
                statistics.median(c.resolution for c in r.changes if c.latency is not None)
                if seen
                else 0
            )
            row(
                b,
                f"leader change in store -> router ({HOW[b]})",
                str(len(r.changes)),
                f"{statistics.median(seen) * 1000:.0f} ms" if seen else "-",
                f"{p95(seen) * 1000:.0f} ms" if seen else "-",
                f"median <= {TARGET_CHANGE * 1000:g} ms",
                met + f" (+/- {res * 1000:.0f} ms)",
            )
        if r.idle is not None:
            for name, cpu in r.idle.cpu.items():
                role = r.roles.get(name, "?")
                row(
                    b,
                    f"idle agent CPU, {name} ({role})",
                    "-",
                    f"{cpu:.2f} %",
                    "",
                    f"< {TARGET_CPU:g} % of a core",
                    "yes" if cpu < TARGET_CPU else "no",
                )
            for name, rps in r.idle.rps.items():
                role = r.roles.get(name, "?")
                row(
                    b,
                    f"idle store requests/s, {name} ({role})",
                    "-",
                    "n/a" if rps is None else f"{rps:.1f}/s",
                    "",
                    f"< {TARGET_RPS:g}/s per node",
                    "-" if rps is None else ("yes" if rps < TARGET_RPS else "no"),
                )
            router = f"router (root ns): CPU {r.idle.router_cpu:.2f} %"
            if r.idle.router_rps is not None:
                router += f", {r.idle.router_rps:.1f} store requests/s"
            lines.append(f"{'':<10}   note: {router}" + (f"; {r.idle.note}" if r.idle.note else ""))
        for c in r.changes:
            if c.note:
                lines.append(f"{'':<10}   note: {c.note}")
        if r.error:
            lines.append(f"{b:<10}   note: {r.error}")
    return lines


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--relay":
        spec = [(str(a), int(b), str(c), int(d)) for a, b, c, d in json.loads(sys.argv[2])]
        asyncio.run(_relay_main(spec, Path(sys.argv[3]), float(sys.argv[4])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="node losses and leader changes")
    parser.add_argument("--backends", default=",".join(BACKENDS), help=",".join(BACKENDS))
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; choose from {','.join(BACKENDS)}")
    reason = hosts_unavailable()
    if reason is not None:
        sys.exit(f"multihost benchmark: the namespace harness cannot run here: {reason}")
    if "zookeeper" in backends and zk_support.unavailable():
        print(f"zookeeper skipped: {zk_support.unavailable()}", file=sys.stderr)
        backends.remove("zookeeper")
    load_start = os.getloadavg()[0]
    results = []
    with lan(hosts=2, stores=3) as net:
        for backend in backends:
            results.append(run_backend(backend, net, args))
    print(
        f"2 host namespaces (one agent + app each, warm standby), router in the root namespace; "
        f"hakit's default timers (lease_ttl {TTL:g} s, renew 1 s, health, router); "
        f"{args.trials} trials per timed measure, idle "
        f"{args.idle_seconds:g} s; etcd: 3 members, zookeeper: 1 server"
    )
    print("\n".join(table(results)))
    print(
        f"loadavg (1 min) at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}; "
        f"{os.cpu_count() or 0} CPUs (shared with other runs: the numbers are noisy)"
    )


if __name__ == "__main__":
    main()
