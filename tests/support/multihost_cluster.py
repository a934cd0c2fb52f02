"""The whole multi-host setup of issue 13: three etcd members, two app nodes, two routers,
a PostgreSQL server, shared storage; what watches it: a writer and ``WriterWatch``.

The namespaces (tests/support/hosts.py, ``lan(hosts=4)``):

- ``hosts[0]``, ``hosts[1]``: node1 and node2, each its agent, shim and app;
- ``hosts[2]``, ``hosts[3]``: two "client" hosts, a router in each (``routers``),
  listening on their own address, each publishing its data-path report under its
  own name (``<address>:8080``);
- three store namespaces, one etcd member each;
- the root namespace: the PostgreSQL server the apps use (listening on the root's
  address on the bridge), the test itself, its writer and its watchers. No partition
  cuts the root namespace from the nodes: it is the observer.

The shared storage (the app's home) is one directory: every namespace shares the file
system, as NFS would let every host see it.

``Writer`` posts records through the routers (alternating) all along a scenario and
logs every write a router acknowledged (201 and the record's id); ``Writer.verify``
reads them all back at the end and asks ``/integrity``. ``WriterWatch`` samples every
app's ``/status`` directly every 20 ms (two apps answering RUNNING in one round is a
split brain), notes when a watched app process is gone and when the store stops
showing the lease alive.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hakit.config import Config, load_config
from hakit.coord.base import Coordinator
from hakit.coord.factory import open_coordinator
from hakit.demo.cluster import DemoCluster, DemoSettings, free_port
from hakit.supervisor import proctable
from tests.e2e.conftest import dump_history
from tests.pgserver import PostgresServer, _as_postgres_user, _bindir, _wait_ready
from tests.support.hosts import EtcdMember, Host, Lan, etcd_members, lan
from tests.support.relay import Relays, store_relays
from tests.support.waiting import wait_until

TTL = 3.0
WRITING = ("RUNNING", "FIRST_RUN")
ROUTER_PORT = 8080  # each router has its namespace's port space
TOKEN = "multihost-admin-token-0123456789"


# --- observation ---------------------------------------------------------------------------


@dataclass
class Round:
    start: float
    end: float
    writers: list[str]


@dataclass
class WriterWatch:
    """Samples the apps, the watched app processes and the store's lease (module doc)."""

    cluster: DemoCluster
    rounds: list[Round] = field(default_factory=list)
    gone_at: dict[int, float] = field(default_factory=dict)  # app pid -> when first seen gone
    watched: set[int] = field(default_factory=set)
    alive: list[tuple[float, bool]] = field(default_factory=list)  # (when, alive key exists)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _apps(self) -> None:
        urls = {
            node.route: f"http://{node.host}:{node.port}/status" for node in self.cluster.cfg.nodes
        }
        with httpx.Client(timeout=0.5) as client:
            while not self._stop.wait(0.02):
                start = time.monotonic()
                writers = []
                for route, url in urls.items():
                    try:
                        answer = client.get(url)
                    except httpx.HTTPError:
                        continue
                    if (
                        answer.status_code == 200
                        and answer.json().get("state") in WRITING
                        and answer.headers.get("X-Hakit-Node") == route
                    ):
                        writers.append(route)
                for pid in list(self.watched - self.gone_at.keys()):
                    stat = proctable.stat_of(pid)
                    if stat is None or stat.state == "Z":
                        self.gone_at[pid] = time.monotonic()
                self.rounds.append(Round(start, time.monotonic(), writers))

    def _lease(self) -> None:
        """The server's own judgement of the lease: its ``leader/alive`` key, attached to
        the etcd lease, exists until etcd expires it (``Lease.valid`` as a reader sees it
        rounds the TTL left down to whole seconds: up to a second early). Watched, not
        polled: a poll could miss the key's deletion when the heir's put follows it
        within one poll (a busy host), and a missed expiry fails the test as wrongly as
        an invented one. Every put and delete is noted as it arrives; a stream that
        breaks (its member killed, or cut from the root namespace) resumes on the next
        member after the last revision seen, so nothing between is lost."""
        cfg = self.cluster.cfg
        key = f"{cfg.coordination.etcd.prefix}/{cfg.cluster.name}/leader/alive".encode()
        encoded = base64.b64encode(key).decode()
        endpoints = list(reversed(cfg.coordination.etcd.endpoints))  # the last member first
        seen = [0]  # the store revision up to which every change was noted
        turn = 0
        with httpx.Client(timeout=httpx.Timeout(1.0, read=0.5)) as client:
            while not self._stop.is_set():
                base = endpoints[turn % len(endpoints)] + "/v3"
                try:
                    if not seen[0]:
                        answer = client.post(f"{base}/kv/range", json={"key": encoded})
                        doc = answer.json()
                        self.alive.append((time.monotonic(), bool(doc.get("kvs"))))
                        seen[0] = int(doc["header"]["revision"])
                    self._follow(client, base, encoded, seen)
                except httpx.ReadTimeout:
                    continue  # no change for a while: ask again (to look at _stop)
                except (httpx.HTTPError, KeyError, ValueError):
                    turn += 1  # this member does not answer: the next one
                    self._stop.wait(0.05)

    def _follow(self, client: httpx.Client, base: str, key: str, seen: list[int]) -> None:
        """Stream the changes of ``key`` after revision ``seen[0]`` into ``alive`` until
        the stream ends or stalls, moving ``seen[0]`` along."""
        request = {"create_request": {"key": key, "start_revision": seen[0] + 1}}
        with client.stream("POST", f"{base}/watch", json=request) as stream:
            for line in stream.iter_lines():
                if self._stop.is_set():
                    break
                result = json.loads(line).get("result", {}) if line.strip() else {}
                for event in result.get("events", []):
                    # The gateway leaves out a field at its default: PUT is type 0.
                    self.alive.append((time.monotonic(), event.get("type") != "DELETE"))
                    seen[0] = max(seen[0], int(event["kv"]["mod_revision"]))

    def __enter__(self) -> WriterWatch:
        for target in (self._apps, self._lease):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def overlaps(self) -> list[Round]:
        return [r for r in self.rounds if len(r.writers) > 1]

    def last_writing(self, route: str, before: float | None = None) -> Round:
        return [
            r for r in self.rounds if route in r.writers and (before is None or r.start < before)
        ][-1]

    def first_writing(self, route: str, after: float) -> Round | None:
        return next((r for r in self.rounds if route in r.writers and r.start > after), None)

    def writing(self, route: str) -> bool:
        return bool(self.rounds) and route in self.rounds[-1].writers

    def expired_since(self, after: float) -> float | None:
        """When the server was first seen without the lease's alive key after ``after``."""
        return next((at for at, found in self.alive if at > after and not found), None)


def route_of(cluster: DemoCluster, node: str) -> str:
    return next(n.route for n in cluster.cfg.nodes if n.name == node)


def other(cluster: DemoCluster, node: str) -> str:
    return next(n.name for n in cluster.cfg.nodes if n.name != node)


def host_of(net: Lan, node: str) -> Host:
    return net.hosts[int(node.removeprefix("node")) - 1]


# --- the writer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    id: str
    title: str
    router: str
    node: str  # X-Hakit-Node of the answer
    at: float  # monotonic, when the answer came
    took: float


@dataclass
class Checked:
    acknowledged: int
    lost: list[Ack]
    integrity: dict[str, Any]


class Writer:
    """POSTs a record every ``pause`` seconds, alternating between ``routers``; logs
    every acknowledged write (``acks``) and counts the rest (``failed``)."""

    def __init__(self, routers: list[str], pause: float = 0.05, timeout: float = 2.0) -> None:
        self.routers = routers
        self.pause = pause
        self.timeout = timeout
        self.acks: list[Ack] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=self.timeout) for url in self.routers]
        try:
            for index in range(1_000_000):  # bounded; stopped long before
                if self._stop.wait(self.pause):
                    return
                router = index % len(clients)
                title = f"w{index}"
                sent = time.monotonic()
                try:
                    answer = clients[router].post(
                        "/records", json={"title": title, "attachment": f"payload of {title}"}
                    )
                except httpx.HTTPError:
                    self.failed += 1
                    continue
                if answer.status_code != 201:
                    self.failed += 1
                    continue
                now = time.monotonic()
                self.acks.append(
                    Ack(
                        answer.json()["id"],
                        title,
                        self.routers[router],
                        answer.headers.get("X-Hakit-Node", "?"),
                        now,
                        now - sent,
                    )
                )
        finally:
            for client in clients:
                client.close()

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def acked_between(self, start: float, end: float) -> list[Ack]:
        return [ack for ack in self.acks if start <= ack.at <= end]

    def verify(self, router: str) -> Checked:
        """Read every acknowledged record back through ``router``; the app's /integrity."""
        with httpx.Client(base_url=router, timeout=10) as client:
            listing = client.get("/records")
            assert listing.status_code == 200, listing.text
            rows = {row["id"]: row for row in listing.json()["records"]}
            lost = [
                ack
                for ack in self.acks
                if ack.id not in rows or rows[ack.id].get("title") != ack.title
            ]
            # A few read one by one, attachment included (the listing is the rest's proof).
            for ack in self.acks[:: max(1, len(self.acks) // 20)]:
                got = client.get(f"/records/{ack.id}/attachment")
                assert got.status_code == 200 and got.text == f"payload of {ack.title}", got.text
            integrity = client.get("/integrity")
            assert integrity.status_code == 200, integrity.text
        return Checked(len(self.acks), lost, integrity.json())


def latencies(acks: list[Ack]) -> str:
    """p50 / p99 / max of the writes' round trips, for the report."""
    if not acks:
        return "no writes"
    took = sorted(ack.took for ack in acks)
    p50, p99 = took[len(took) // 2], took[min(len(took) - 1, int(len(took) * 0.99))]
    return f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {took[-1] * 1000:.0f} ms"


# --- PostgreSQL on the bridge ----------------------------------------------------------------


@contextmanager
def postgres_on(net: Lan) -> Iterator[tuple[PostgresServer, str]]:
    """A PostgreSQL server in the root namespace listening on loopback and on the root's
    address on the bridge (trusting the bridge's /24); (server, the apps' URL)."""
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make bootstrap` (as root on Debian)")
    owner = _as_postgres_user()
    base = Path(tempfile.mkdtemp(prefix="hakit-pg-"))
    datadir = base / "data"
    as_owner: dict[str, Any] = {"user": owner[0], "group": owner[1]} if owner else {}
    server: PostgresServer | None = None
    try:
        if owner:
            os.chown(base, *owner)
        subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            **as_owner,
        )
        subnet = ipaddress.ip_network(f"{net.client_ip}/24", strict=False)
        with open(datadir / "pg_hba.conf", "a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        port = free_port()
        with open(base / "postgres.log", "ab") as log:
            process = subprocess.Popen(
                [
                    *(str(bindir / "postgres"), "-D", str(datadir), "-p", str(port)),
                    *("-h", f"127.0.0.1,{net.client_ip}", "-k", str(base)),
                    *("-c", "fsync=off", "-c", "max_connections=50"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                **as_owner,
            )
        server = PostgresServer(datadir, port, process, owner)
        _wait_ready(server, 30)
        yield server, f"postgresql://postgres@{net.client_ip}:{port}/postgres"
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- the setup ---------------------------------------------------------------------------------


@dataclass
class Multihost:
    net: Lan
    members: list[EtcdMember]
    cluster: DemoCluster
    router_hosts: list[Host]
    database_url: str
    relays: Relays | None = None

    @property
    def routers(self) -> list[str]:
        return [f"http://{host.ip}:{ROUTER_PORT}" for host in self.router_hosts]

    @property
    def router_ips(self) -> list[str]:
        return [host.ip for host in self.router_hosts]

    def served_by(self, router: str) -> str | None:
        """The route of a successful GET /status through ``router``."""
        try:
            answer = httpx.get(router + "/status", timeout=2)
        except httpx.HTTPError:
            return None
        return answer.headers.get("X-Hakit-Node") if answer.status_code == 200 else None

    def served_everywhere_by(self, node: str) -> bool:
        route = route_of(self.cluster, node)
        return all(self.served_by(router) == route for router in self.routers)

    def serving(self, timeout: float = 40.0) -> str:
        """Wait until both routers answer from the lease holder's app; that node."""

        def ready() -> str | None:
            leader = self.cluster.active_running()
            return leader if leader and self.served_everywhere_by(leader) else None

        return wait_until(ready, timeout, "both routers serving from the active")


def _config_text(
    cluster: DemoCluster, net: Lan, failsafe: bool, listen: str, etcd_timeout: float
) -> str:
    text = cluster.config_path.read_text()
    etcd = (
        f"[coordination.etcd]\nendpoints = {json.dumps(net.endpoints())}\n"
        f'prefix = "/hakit-{net.tag}"\ntimeout = {etcd_timeout}\n\n'
    )
    text = text.replace('backend = "sqlite"', 'backend = "etcd"').replace(
        "[app]\n", etcd + "[app]\n", 1
    )
    if failsafe:
        text = text.replace("[coordination]\n", "[coordination]\nfailsafe = true\n", 1)
    before = f'listen = "127.0.0.1:{cluster.settings.router_port}"'
    assert before in text
    return text.replace(before, f'listen = "{listen}"', 1)


OBSERVER_TIMEOUT = 10.0


def observer(cfg: Config) -> Coordinator:
    """The test's own view of the etcd store: ``cfg``'s, with a store-call timeout of
    OBSERVER_TIMEOUT instead of the agents' 1 s. The agents' timeouts are what the tests
    exercise; the observer's reads only watch them, and on a loaded 2-core CI machine one of
    them waited out its 1 s while every process of the cluster was starting (CI failed in
    ``serving()`` before any partition was made)."""
    etcd = cfg.coordination.etcd.model_copy(update={"timeout": OBSERVER_TIMEOUT})
    coordination = cfg.coordination.model_copy(update={"etcd": etcd})
    return open_coordinator(cfg.model_copy(update={"coordination": coordination}))


@contextmanager
def multihost(
    tmp_path: Path,
    *,
    failsafe: bool = False,
    relays: bool = False,
    relay_delay: float = 0.2,
    etcd_timeout: float = 1.0,
    lease_ttl: float = TTL,
    renew_interval: str = "500ms",
) -> Iterator[Multihost]:
    """The setup of the module doc, serving (both routers answering from the active) when
    it yields; everything stopped and removed when the block ends, however it ends.
    ``relays``: each node reaches the members through a relay (tests/support/relay.py),
    passing chunks on at once until ``relays.slow()``, then ``relay_delay`` later (each
    way); ``etcd_timeout``: the
    ``[coordination.etcd] timeout`` of every store call; ``lease_ttl`` and
    ``renew_interval``: the lease's."""
    with ExitStack() as stack:
        net = stack.enter_context(lan(hosts=4))
        stack.callback(net.heal_all)
        members = stack.enter_context(etcd_members(net))
        _, database_url = stack.enter_context(postgres_on(net))
        nodes, router_hosts = net.hosts[:2], net.hosts[2:]
        relayed = stack.enter_context(store_relays(net, nodes, relay_delay)) if relays else None
        settings = DemoSettings(
            router_port=ROUTER_PORT,
            node_ports=(8101, 8102),  # each host is a namespace: its own port space
            node_hosts=tuple(host.ip for host in nodes),
            node_prefix={f"node{i + 1}": host.prefix() for i, host in enumerate(nodes)},
            database_url=database_url,
            admin_ports=(8201, 8202) if failsafe else (),
            admin_token=TOKEN if failsafe else "",
            lease_ttl=f"{lease_ttl:g}s",
            renew_interval=renew_interval,
            patience="2s",
            fall=2,
            health_interval="250ms",
            probe_timeout="500ms",
            check_interval="250ms",
            startup_delay=0.2,
        )
        cluster = DemoCluster(tmp_path / "cluster", settings)
        cluster.close()  # the SQLite store the demo opened: this cluster's store is etcd
        configs = [
            _config_text(cluster, net, failsafe, f"{host.ip}:{ROUTER_PORT}", etcd_timeout)
            for host in router_hosts
        ]
        cluster.config_path.write_text(configs[0])  # the CLI's and router 1's
        cluster.cfg = load_config(cluster.config_path)
        cluster.coordinator = observer(cluster.cfg)

        def stop() -> None:
            net.heal_all()  # the history is read from the store, every agent stops cleanly
            if relayed is not None:
                relayed.clear()
            cluster.stop()
            dump_history(cluster)
            cluster.close()

        stack.callback(stop)
        logs = cluster.cfg.cluster.state_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for index, (host, text) in enumerate(zip(router_hosts, configs, strict=True)):
            path = cluster.config_path
            if index:
                path = cluster.root / f"hakit-router{index + 1}.toml"
                path.write_text(text)
            with open(logs / f"router{index + 1}.out", "ab") as out:
                cluster.processes[f"router{index + 1}"] = subprocess.Popen(
                    [
                        *host.prefix(),
                        sys.executable,
                        "-m",
                        "hakit",
                        "router",
                        "--config",
                        str(path),
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
        for node in cluster.cfg.nodes:
            cluster.start_agent(node.name)
        made = Multihost(net, members, cluster, list(router_hosts), database_url, relayed)
        made.serving()
        yield made
