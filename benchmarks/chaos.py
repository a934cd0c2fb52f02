"""Chaos run: writers through the router while a nemesis breaks the cluster at random.

    .venv/bin/python benchmarks/chaos.py [--nodes 2|3] [--database sqlite|postgresql]
        [--duration 1800] [--seed N] [--faults app-kill,agent-kill,...] [--writers 4]
        [--rate 20] [--json result.json] [--keep DIR]

A demo cluster of real processes (one ``hakit agent`` per node, one ``hakit
router``; lease TTL 3 s) on shared storage: the app's database is a shared SQLite
file, or a throwaway PostgreSQL server (``tests/pgserver.py``) with ``--database
postgresql`` (``--database-url`` to use your own). A service manager restarts an
agent or the router that exits, 1 s later (systemd ``Restart=on-failure``,
``RestartSec=1``), without touching the app the dead agent left running: the
new agent has to clean up after the old one.

- **Writers** (``--writers`` tasks, ``--rate`` requests/s across them, half
  ``POST /records``, half ``GET /records/<id>`` of an acknowledged one) go through
  the router, one connection per request, ``CLIENT_TIMEOUT`` each. Every
  acknowledged write (2xx with an id) is logged with its times and the node that
  answered (``<state_dir>/chaos-writes.jsonl``); a failure is counted by method and
  status (or timeout, refused, reset) and attributed to the fault in progress.
- **Monitor**: every 50 ms, ``GET /status`` of every node directly (its own
  host:port, 0.5 s timeout). A node answering RUNNING (or FIRST_RUN) serves from
  that probe's send until the next probe's; the time two or more nodes serve at
  once is the double-active time.
- **Nemesis**: every 5-20 s (counted from the previous fault's recovery) one
  fault, chosen at random among ``--faults``, on the node holding the lease:

  ``app-kill``       SIGKILL of the active node's app (the process on its port)
  ``agent-kill``     SIGKILL of its agent; the service manager restarts the agent
  ``agent-app-kill`` SIGKILL of both (a node loss); the agent is restarted
  ``agent-stop``     SIGSTOP of its agent for 2-20 s, then SIGCONT
  ``app-stop``       SIGSTOP of its app for 2-20 s, then SIGCONT
  ``router-stop``    SIGSTOP of the router for 2-20 s, then SIGCONT
  ``store-delete``   the coordination store (and its -wal, -shm) unlinked
  ``store-replace``  the store replaced by a fresh empty one (made by hakit's own code)

  After a store fault the run acts as the operator: 5 s later it runs
  ``hakit init --reinit -c <config>`` (``--reinit-command``).
- **Recovery**: a fault is released at once (kills), at SIGCONT (stops) or when
  the operator's command returned (store faults). It is recovered when a write
  sent after the release is acknowledged while the store shows a valid lease,
  within ``RECOVERY_BOUND`` (60 s) of the release. Recovery time counts from the
  release (for a store fault: from the fault, the operator's 5 s included);
  ``outage`` is the longest time from the fault to its recovery without an
  acknowledged write completing. While the cluster recovers, a probe writes every
  0.2 s too (its acknowledged writes are logged like the writers').
- **At the end**: the writers stop, every acknowledged record is read back
  through the router (``GET /records``, then each one missing from it by id),
  ``GET /integrity``, then SIGTERM to every agent and the router (SIGKILL by pid
  after 20 s); any process of the cluster still alive after that (an app an
  agent left behind, anything on the nodes' or the router's ports) is leaked:
  reported, and killed by pid.

Exit code 0 only when: 0 acknowledged writes lost, 0 ms double-active, every fault
recovered, ``/integrity`` ok, nothing leaked. 1 otherwise, 2 when the run itself
could not be carried out. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
from cluster_runner import Leaked, ManagedCluster, Restart, ServiceManager, signal_pid

from hakit.coord.sqlite import SqliteCoordinator
from hakit.demo.cluster import DemoSettings, free_ports

REPO = Path(__file__).resolve().parents[1]
FAULTS = (
    "app-kill",
    "agent-kill",
    "agent-app-kill",
    "agent-stop",
    "app-stop",
    "router-stop",
    "store-delete",
    "store-replace",
)
STOPPED_PROCESS = {"agent-stop": "agent", "app-stop": "app", "router-stop": "router"}
STORE_FAULTS = {"store-delete", "store-replace"}
GAP_SECONDS = (5.0, 20.0)  # between a recovery and the next fault
STOP_SECONDS = (2.0, 20.0)  # how long a SIGSTOP lasts
OPERATOR_DELAY = 5.0  # after a store fault, the operator acts this much later
RECOVERY_BOUND = 60.0  # serving writes again within this long of the release, or not recovered
SETTLE = 1.0  # failures this long after a recovery still belong to its fault
RESTART_SEC = 1.0  # the service manager's delay before restarting an agent or the router
MONITOR_INTERVAL = 0.05
MONITOR_TIMEOUT = 0.5
CLIENT_TIMEOUT = 20.0  # one writer request: the router's 15 s hold and some
PROBE_INTERVAL = 0.2
PROBE_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 20.0
SERVING = frozenset({"RUNNING", "FIRST_RUN"})
FOREIGN = "FOREIGN"  # a process that is not the node's app answered on its port
MAX_BODY = 64 << 20
# Across hosts: the multi-host scenario tests' timers (tests/support/multihost_cluster.py),
# so a router's lost path to the active is handed over within a fault's hold.
HOSTS_TIMERS: dict[str, Any] = {
    "lease_ttl": "3s",
    "patience": "2s",
    "fall": 2,
    "health_interval": "250ms",
    "probe_timeout": "500ms",
    "check_interval": "250ms",
}
DEFAULT_REINIT = "{python} -m hakit init --reinit -c {config}"


# --- HTTP, one connection per request ---------------------------------------------------------


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class NoAnswer(ConnectionError):
    """The connection closed before an HTTP response (or with something else)."""


def _dechunk(data: bytes) -> bytes:
    out, rest = bytearray(), data
    for _ in range(1_000_000):
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        rest = rest[size + 2 :]
    return bytes(out)


async def http(
    host: str, port: int, method: str, path: str, body: bytes | None, timeout: float
) -> Reply:
    """One request on a fresh connection (``Connection: close``), the whole exchange
    within ``timeout``. Raises TimeoutError, OSError or ConnectionError."""

    async def exchange() -> Reply:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + (body or b""))
            await writer.drain()
            data = b""
            while len(data) < MAX_BODY:
                more = await reader.read(1 << 16)
                if not more:
                    break
                data += more
        finally:
            writer.close()
        head_bytes, _, payload = data.partition(b"\r\n\r\n")
        lines = head_bytes.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise NoAnswer(f"no HTTP response ({len(data)} bytes)")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                payload = _dechunk(payload)
            elif "content-length" in headers:
                length = int(headers["content-length"])
                if len(payload) < length:
                    raise ConnectionError(f"answer cut short ({len(payload)} of {length} bytes)")
        except ValueError as error:
            raise ConnectionError(f"malformed answer: {error}") from None
        return Reply(int(parts[1]), headers, payload)

    return await asyncio.wait_for(exchange(), timeout)


def failure_label(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if isinstance(error, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(error, NoAnswer):
        return "closed without an answer"
    if isinstance(error, ConnectionError):
        return "cut short"
    return type(error).__name__


# --- writers and their log --------------------------------------------------------------------


@dataclass(slots=True)
class Ack:
    id: str
    sent: float  # monotonic
    done: float
    node: str  # X-Hakit-Node: who answered
    source: str


@dataclass(slots=True)
class Outcome:
    sent: float
    done: float
    label: str  # "ok", or "POST 503", "GET timeout", ...


class Client:
    """The writers, the recovery probe and the log of acknowledged writes."""

    def __init__(self, address: tuple[str, int], log: TextIO, t0: float, rng: random.Random):
        self.host, self.port = address
        self.log = log
        self.t0 = t0
        self.rng = rng
        self.acks: list[Ack] = []  # in completion order
        self.outcomes: list[Outcome] = []
        self.read_misses: list[str] = []  # acknowledged ids a GET did not find
        self._serial = 0

    async def post(self, source: str, timeout: float = CLIENT_TIMEOUT) -> Ack | None:
        self._serial += 1
        serial = self._serial
        body = json.dumps(
            {"title": f"chaos {source} #{serial}", "attachment": f"chaos write {serial}"}
        ).encode()
        sent = time.monotonic()
        label, ack = "ok", None
        try:
            reply = await http(self.host, self.port, "POST", "/records", body, timeout)
            record_id = None
            if 200 <= reply.status < 300:
                try:
                    record_id = reply.json().get("id")
                except (ValueError, AttributeError):
                    record_id = None
            if record_id:
                done = time.monotonic()
                ack = Ack(
                    str(record_id), sent, done, reply.headers.get("x-hakit-node", "?"), source
                )
                self.acks.append(ack)
                self.log.write(
                    json.dumps(
                        {
                            "id": ack.id,
                            "sent": round(sent - self.t0, 3),
                            "acknowledged": round(done - self.t0, 3),
                            "wall": round(time.time(), 3),
                            "node": ack.node,
                            "source": source,
                        }
                    )
                    + "\n"
                )
                self.log.flush()
            else:
                label = f"POST {reply.status}" + ("" if reply.status >= 300 else " without id")
        except (OSError, TimeoutError, ConnectionError) as error:
            label = f"POST {failure_label(error)}"
        except Exception as error:
            label = f"POST {error!r}"
        self.outcomes.append(Outcome(sent, time.monotonic(), label))
        return ack

    async def get(self, record_id: str) -> None:
        sent = time.monotonic()
        label = "ok"
        try:
            reply = await http(
                self.host, self.port, "GET", f"/records/{record_id}", None, CLIENT_TIMEOUT
            )
            if reply.status == 404:
                label = "GET 404 of an acknowledged record"
                self.read_misses.append(record_id)
            elif reply.status != 200:
                label = f"GET {reply.status}"
        except (OSError, TimeoutError, ConnectionError) as error:
            label = f"GET {failure_label(error)}"
        except Exception as error:
            label = f"GET {error!r}"
        self.outcomes.append(Outcome(sent, time.monotonic(), label))

    async def writer(self, number: int, interval: float, stop: asyncio.Event) -> None:
        """Closed loop, paced: one request every ``interval`` s, or when the last returned."""
        next_at = time.monotonic() + self.rng.uniform(0, interval)
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    break
                except TimeoutError:
                    pass
            if self.acks and self.rng.random() < 0.5:
                await self.get(self.rng.choice(self.acks).id)
            else:
                await self.post(f"writer {number}")
            next_at += interval
            if next_at < time.monotonic() - 1.0:  # fell behind: do not burst to catch up
                next_at = time.monotonic()

    async def probe(self, stop: asyncio.Event) -> None:
        """A write every PROBE_INTERVAL (each its own task) until ``stop``."""
        tasks: set[asyncio.Task[Ack | None]] = set()
        while not stop.is_set() and len(tasks) < 100:
            task = asyncio.create_task(self.post("probe", PROBE_TIMEOUT))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), PROBE_INTERVAL)
        if tasks:
            await asyncio.wait(tasks, timeout=PROBE_TIMEOUT + 1)

    def first_ack(self, since: float, start: int = 0) -> Ack | None:
        """The first acknowledged write sent at or after ``since`` (acks[start:] only)."""
        for ack in self.acks[start:]:
            if ack.sent >= since:
                return ack
        return None


# --- monitor: who answers RUNNING --------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    sent: float
    done: float
    state: str


async def node_state(host: str, port: int, route: str) -> str:
    """What the node's app says, or how asking failed. An answer from a process that is
    not this node's app (another program that took the port while the app was down, on
    a machine shared with other work) is FOREIGN: the sample app names its route in
    every answer's X-Hakit-Node header."""
    try:
        reply = await http(host, port, "GET", "/status", None, MONITOR_TIMEOUT)
    except TimeoutError:
        return "TIMEOUT"
    except ConnectionRefusedError:
        return "DOWN"
    except (OSError, ConnectionError) as error:
        return failure_label(error).upper()
    if reply.headers.get("x-hakit-node") != route:
        return FOREIGN
    try:
        return str(reply.json()["state"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status}"


async def monitor(
    address: tuple[str, int], route: str, samples: list[Sample], stop: asyncio.Event
) -> None:
    next_at = time.monotonic()
    while not stop.is_set():
        sent = time.monotonic()
        state = await node_state(*address, route)
        samples.append(Sample(sent, time.monotonic(), state))
        next_at = max(next_at + MONITOR_INTERVAL, time.monotonic())
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


def serving_intervals(samples: list[Sample]) -> list[tuple[float, float]]:
    """A serving answer covers its probe's send until the next probe's send."""
    intervals = []
    for i, sample in enumerate(samples):
        if sample.state in SERVING:
            end = samples[i + 1].sent if i + 1 < len(samples) else sample.done + MONITOR_INTERVAL
            intervals.append((sample.sent, max(end, sample.sent)))
    return intervals


def double_active(per_node: dict[str, list[Sample]]) -> list[tuple[float, float, list[str]]]:
    """The windows in which two or more nodes served, with the nodes that did."""
    events: list[tuple[float, int, str]] = []
    for node, samples in per_node.items():
        for start, end in serving_intervals(samples):
            if end > start:
                events.append((start, 1, node))
                events.append((end, -1, node))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    serving: Counter[str] = Counter()
    windows: list[tuple[float, float, list[str]]] = []
    opened: float | None = None
    nodes: set[str] = set()
    for at, delta, node in events:
        serving[node] += delta
        count = sum(1 for n in serving.values() if n > 0)
        if count >= 2:
            nodes |= {n for n, c in serving.items() if c > 0}
            if opened is None:
                opened = at
        elif opened is not None:
            if windows and opened - windows[-1][1] < 1e-6:
                start, _, before = windows.pop()
                windows.append((start, at, sorted(set(before) | nodes)))
            else:
                windows.append((opened, at, sorted(nodes)))
            opened, nodes = None, set()
    return windows


# --- faults ------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    node: str | None
    injected: float  # seconds since the run started
    released: float | None = None
    held: float = 0.0  # how long a SIGSTOP lasted
    recovered: bool = False
    recovery: float | None = None  # seconds from the release (store faults: from the fault)
    outage: float | None = None  # longest time without an acknowledged write
    pids: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: Counter[str] = field(default_factory=Counter)
    window_end: float = 0.0  # failures sent before this belong to this fault
    lost: int = 0  # acknowledged writes (acknowledged in its window) not found at the end
    double_ms: int = 0  # time two or more nodes answered RUNNING, from within its window

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "node": self.node,
            "injected_s": round(self.injected, 3),
            "released_s": None if self.released is None else round(self.released, 3),
            "held_s": self.held,
            "recovered": self.recovered,
            "recovery_s": self.recovery,
            "outage_s": self.outage,
            "pids": self.pids,
            "notes": self.notes,
            "failed": dict(self.failed),
            "lost": self.lost,
            "double_ms": self.double_ms,
        }


def remove_store(path: Path) -> None:
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


def replace_store(path: Path) -> None:
    """A fresh, empty store made by hakit's own code, moved over the live one."""
    fresh = path.with_name(path.name + ".chaos-fresh")
    remove_store(fresh)
    coordinator = SqliteCoordinator(fresh)
    try:
        coordinator.last_epoch()  # creates the schema
    finally:
        coordinator.close()
    Path(f"{path}-wal").unlink(missing_ok=True)
    Path(f"{path}-shm").unlink(missing_ok=True)
    os.replace(fresh, path)
    remove_store(fresh)


class Chaos:
    def __init__(
        self,
        args: argparse.Namespace,
        cluster: ManagedCluster,
        log: TextIO,
        nemesis: Any = None,
    ) -> None:
        self.args = args
        self.nemesis = nemesis  # chaos_hosts.Nemesis across hosts: the network faults
        self.cluster = cluster
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.client = Client(cluster.router_address, log, self.t0, random.Random(args.seed + 1))
        self.samples: dict[str, list[Sample]] = {n.name: [] for n in cluster.cfg.nodes}
        self.faults: list[Fault] = []
        self.stopped: set[int] = set()  # pids under SIGSTOP right now
        self.operator_runs: list[str] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[{self.now():7.1f} s] {text}", flush=True)

    # --- the cluster's state ---

    def serving_now(self) -> list[str]:
        return [
            node
            for node, samples in self.samples.items()
            if samples and samples[-1].state in SERVING
        ]

    async def active_node(self) -> str | None:
        leader = await asyncio.to_thread(self.cluster.leader)
        if leader is not None:
            return leader
        serving = self.serving_now()
        return serving[0] if len(serving) == 1 else None

    async def wait_serving(self, timeout: float) -> bool:
        """Until a write through the router is acknowledged and the store has a leader."""
        deadline = time.monotonic() + timeout
        stop = asyncio.Event()
        start = len(self.client.acks)
        since = time.monotonic()
        probe = asyncio.create_task(self.client.probe(stop))
        try:
            while time.monotonic() < deadline:
                if (
                    self.client.first_ack(since, start)
                    and await asyncio.to_thread(self.cluster.leader) is not None
                ):
                    return True
                await asyncio.sleep(0.1)
            return False
        finally:
            stop.set()
            await probe

    # --- the nemesis ---

    async def run_faults(self, deadline: float) -> None:
        kinds = self.args.faults
        for _ in range(100_000):
            gap = self.rng.uniform(*GAP_SECONDS)
            if time.monotonic() + gap >= deadline:
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
                return
            await asyncio.sleep(gap)
            kind = self.rng.choice(kinds)
            fault = await self.inject(kind)
            self.faults.append(fault)
            if fault.released is None:
                self.say(f"{kind}: not injected ({'; '.join(fault.notes)})")
                fault.window_end = self.now()
                continue
            await self.recover(fault)

    async def inject(self, kind: str) -> Fault:
        if self.nemesis is not None and kind in self.args.net_faults:
            return await self.inject_net(kind)
        node = None if kind == "router-stop" or kind in STORE_FAULTS else await self.active_node()
        fault = Fault(kind, node, self.now())
        if node is None and kind not in STORE_FAULTS and kind != "router-stop":
            fault.notes.append("no active node found")
            return fault
        target = "router" if kind == "router-stop" else f"{node}"
        if kind in ("app-kill", "agent-app-kill", "app-stop"):
            assert node is not None
            app = await asyncio.to_thread(self.cluster.app_pid, node)
            if app is None:
                fault.notes.append(f"no app pid found for {node}")
                return fault
            fault.pids["app"] = app
        if kind in ("agent-kill", "agent-app-kill", "agent-stop"):
            assert node is not None
            fault.pids["agent"] = self.cluster.agent_pid(node)
        if kind == "router-stop":
            fault.pids["router"] = self.cluster.router_pid
        fault.injected = self.now()
        if kind in ("app-kill", "agent-kill", "agent-app-kill"):
            for pid in fault.pids.values():
                signal_pid(pid, signal.SIGKILL)
            fault.released = fault.injected
            self.say(f"{kind} on {target} {fault.pids}")
        elif kind in STOPPED_PROCESS:
            pid = fault.pids[STOPPED_PROCESS[kind]]
            fault.held = round(self.rng.uniform(*STOP_SECONDS), 1)
            self.say(f"{kind} on {target} {fault.pids} for {fault.held:g} s")
            self.stopped.add(pid)
            signal_pid(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(fault.held)
            finally:
                if not signal_pid(pid, signal.SIGCONT):
                    fault.notes.append(f"pid {pid} was gone at SIGCONT")
                self.stopped.discard(pid)
            fault.released = self.now()
        else:
            path = self.cluster.store_path
            if kind == "store-delete":
                await asyncio.to_thread(remove_store, path)
            else:
                await asyncio.to_thread(replace_store, path)
            self.say(f"{kind}: {path}")
            await asyncio.sleep(OPERATOR_DELAY)
            ok, note = await asyncio.to_thread(self.operator_reinit)
            if not ok:
                fault.notes.append(note)
            fault.released = self.now()
        return fault

    async def inject_net(self, kind: str) -> Fault:
        """A network or store-member fault (chaos_hosts.Nemesis), held, then healed."""
        node = await self.active_node() if kind in self.args.needs_active else None
        fault = Fault(kind, node, self.now())
        if node is None and kind in self.args.needs_active:
            fault.notes.append("no active node found")
            return fault
        try:
            await self.nemesis.apply(kind, node, fault, self.rng, self.say)
        except (RuntimeError, OSError, subprocess.SubprocessError) as error:
            fault.notes.append(f"not injected: {error}")
            return fault
        fault.released = self.now()
        return fault

    def operator_reinit(self) -> tuple[bool, str]:
        """Run the operator's command; (it exited 0, what happened)."""
        argv = [
            part.format(python=sys.executable, config=self.cluster.config_path)
            for part in shlex.split(self.args.reinit_command)
        ]
        shown = " ".join(argv[1:] if argv and argv[0] == sys.executable else argv)
        ok = False
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        except (OSError, subprocess.TimeoutExpired) as error:
            note = f"operator: `{shown}` failed: {error}"
        else:
            ok = done.returncode == 0
            output = (done.stderr or done.stdout).strip().splitlines()
            note = f"operator: `{shown}` exited {done.returncode}" + (
                f": {output[-1][:200]}" if output and not ok else ""
            )
        self.operator_runs.append(note)
        self.say(note)
        return ok, note

    async def recover(self, fault: Fault) -> None:
        """Wait until a write sent after the release is acknowledged with a valid lease."""
        assert fault.released is not None
        released = self.t0 + fault.released
        deadline = released + RECOVERY_BOUND
        start = next(
            (i for i, ack in enumerate(self.client.acks) if ack.sent >= released),
            len(self.client.acks),
        )
        stop = asyncio.Event()
        probe = asyncio.create_task(self.client.probe(stop))
        ack = None
        try:
            leader_since: float | None = None
            while time.monotonic() < deadline:
                if leader_since is None:
                    if await asyncio.to_thread(self.cluster.leader) is not None:
                        leader_since = time.monotonic()
                else:
                    ack = self.client.first_ack(max(released, leader_since), start)
                    if ack is not None:
                        break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await probe
        counted_from = fault.injected if fault.kind in STORE_FAULTS else fault.released
        if ack is not None:
            fault.recovered = True
            fault.recovery = round(ack.done - self.t0 - counted_from, 3)
            done_times = [
                a.done - self.t0
                for a in self.client.acks
                if self.t0 + fault.injected <= a.done <= ack.done
            ]
            marks = [fault.injected, *sorted(done_times), ack.done - self.t0]
            fault.outage = round(max(b - a for a, b in itertools.pairwise(marks)), 3)
            fault.window_end = ack.done - self.t0 + SETTLE
            self.say(
                f"{fault.kind}: recovered {fault.recovery:.2f} s after "
                f"{'the fault' if fault.kind in STORE_FAULTS else 'its release'}"
                f" (outage {fault.outage:.2f} s, served by {ack.node})"
            )
        else:
            fault.window_end = self.now()
            fault.notes.append(f"not serving writes {RECOVERY_BOUND:g} s after the release")
            self.say(f"{fault.kind}: NOT recovered within {RECOVERY_BOUND:g} s")

    def continue_stopped(self) -> None:
        for pid in list(self.stopped):
            signal_pid(pid, signal.SIGCONT)
        self.stopped.clear()


# --- the end: read back, integrity ------------------------------------------------------------


def read_back(url: str, acked: list[str], patience: float) -> tuple[list[str], str]:
    """(acknowledged ids not found, an error if the check could not be made)."""
    listed: set[str] | None = None
    error = ""
    deadline = time.monotonic() + patience
    for _ in range(100):
        try:
            response = httpx.get(url + "/records", timeout=max(1.0, deadline - time.monotonic()))
            if response.status_code == 200:
                listed = {str(r["id"]) for r in response.json()["records"]}
                break
            error = f"GET /records answered {response.status_code}"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            error = f"GET /records: {exc!r}"
        if time.monotonic() + 2 >= deadline:
            break
        time.sleep(2)
    if listed is None:
        return [], error or "GET /records failed"
    missing = [record_id for record_id in acked if record_id not in listed]
    lost = []
    for record_id in missing[:1000]:  # each confirmed by id (bounded)
        try:
            response = httpx.get(f"{url}/records/{record_id}", timeout=10)
            if response.status_code != 200:
                lost.append(record_id)
        except httpx.HTTPError:
            lost.append(record_id)
    return lost + missing[1000:], ""


def integrity(url: str, patience: float) -> dict[str, Any]:
    error = ""
    deadline = time.monotonic() + patience
    for _ in range(100):
        try:
            response = httpx.get(url + "/integrity", timeout=max(1.0, deadline - time.monotonic()))
            if response.status_code == 200:
                report: dict[str, Any] = response.json()
                return report
            error = f"GET /integrity answered {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            error = f"GET /integrity: {exc!r}"
        if time.monotonic() + 2 >= deadline:
            break
        time.sleep(2)
    return {"ok": False, "error": error}


# --- report ------------------------------------------------------------------------------------


def attribute(outcomes: list[Outcome], faults: list[Fault], t0: float) -> Counter[str]:
    """Each failed request to the fault whose window holds its send (or completion)."""
    between: Counter[str] = Counter()
    windows = [(f.injected, f.window_end, f) for f in faults]
    for outcome in outcomes:
        if outcome.label == "ok":
            continue
        sent, done = outcome.sent - t0, outcome.done - t0
        owner = next((f for a, b, f in windows if a <= sent <= b), None) or next(
            (f for a, b, f in windows if a <= done <= b), None
        )
        if owner is None:
            between[outcome.label] += 1
        else:
            owner.failed[outcome.label] += 1
    return between


def summary(counter: Counter[str]) -> str:
    return ", ".join(f"{label} x{n}" for label, n in counter.most_common()) or "-"


def p95(values: list[float]) -> float:
    """Nearest rank: with fewer than 20 values, the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def fault_table(faults: list[Fault], between: Counter[str], lost_between: int = 0) -> list[str]:
    """Per fault kind: count, recovered, median / p95 recovery, longest outage, acknowledged
    writes lost, time two nodes served at once, failed requests."""
    lines = [
        f"{'fault':<18} {'n':>3} {'recovered':>9} {'median s':>8} {'p95 s':>6} "
        f"{'outage max s':>12} {'lost':>4} {'dual ms':>7}  failed requests"
    ]
    total_failed: Counter[str] = Counter()
    for kind in dict.fromkeys(f.kind for f in faults):
        of_kind = [f for f in faults if f.kind == kind and f.released is not None]
        times = [f.recovery for f in of_kind if f.recovery is not None]
        outages = [f.outage for f in of_kind if f.outage is not None]
        failed: Counter[str] = Counter()
        for f in of_kind:
            failed += f.failed
        total_failed += failed
        skipped = sum(1 for f in faults if f.kind == kind and f.released is None)
        stats = (
            f"{statistics.median(times):8.2f} {p95(times):6.2f}" if times else f"{'-':>8} {'-':>6}"
        )
        lines.append(
            f"{kind:<18} {len(of_kind):>3} {len(times):>9} {stats} "
            f"{(max(outages) if outages else float('nan')):12.2f} "
            f"{sum(f.lost for f in of_kind):>4} {sum(f.double_ms for f in of_kind):>7}  "
            f"{summary(failed)}" + (f" ({skipped} not injected)" if skipped else "")
        )
    lines.append(
        f"{'between faults':<18} {'':>3} {'':>9} {'':>8} {'':>6} {'':>12} {lost_between:>4} "
        f"{'':>7}  {summary(between)}"
    )
    injected = [f for f in faults if f.released is not None]
    recovered = [f for f in injected if f.recovered]
    times = [f.recovery for f in recovered if f.recovery is not None]
    total_failed += between
    lines.append(
        f"{'total':<18} {len(injected):>3} {len(recovered):>9} "
        + (f"{statistics.median(times):8.2f} {p95(times):6.2f}" if times else f"{'-':>8} {'-':>6}")
        + f" {'':>12} {sum(f.lost for f in injected) + lost_between:>4} "
        f"{sum(f.double_ms for f in injected):>7}  {summary(total_failed)}"
    )
    return lines


# --- main --------------------------------------------------------------------------------------


def start_database(args: argparse.Namespace) -> tuple[str, Any]:
    """(app.database_url, a callable that stops what was started, or None)."""
    if args.database == "sqlite":
        return "", None
    if args.database_url:
        return args.database_url, None
    sys.path.insert(0, str(REPO))
    from tests.pgserver import start_postgres  # a throwaway server, as the tests use

    server = start_postgres()
    return server.url, server.stop


@dataclass
class Ending:
    """What a run saw, for the verdict and the report."""

    chaos: Chaos
    serving: bool  # writes acknowledged again after the fault phase
    lost: list[str]
    read_error: str
    integrity: dict[str, Any]
    leaked: list[Leaked]
    restarts: list[Restart]
    seconds: float


async def run(args: argparse.Namespace, cluster: ManagedCluster, nemesis: Any = None) -> Ending:
    log_path = cluster.cfg.cluster.state_dir / "chaos-writes.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "a") as log,
        ServiceManager(cluster, RESTART_SEC, args.duration + 3600) as manager,
    ):
        chaos = Chaos(args, cluster, log, nemesis)
        where = (
            f"across hosts, {args.backend} store, node2's clock {args.skew:+g} s"
            if args.hosts
            else args.database
        )
        chaos.say(
            f"cluster of {args.nodes} nodes ({where}) in {cluster.root}; "
            f"router {cluster.router_url}; seed {args.seed}; faults {','.join(args.faults)}"
        )
        stop_monitor = asyncio.Event()
        monitors = [
            asyncio.create_task(
                monitor(
                    cluster.node_address(node),
                    cluster.cfg.node(node).route_name,
                    samples,
                    stop_monitor,
                )
            )
            for node, samples in chaos.samples.items()
        ]
        stop_writers = asyncio.Event()
        writers: list[asyncio.Task[None]] = []
        try:
            if not await chaos.wait_serving(120):
                raise RuntimeError("the cluster did not serve a write within 120 s of its start")
            setup = await http(*cluster.router_address, "POST", "/setup", b"{}", 30)
            chaos.client.outcomes.clear()  # the start's failed probes are no fault's
            chaos.say(f"serving; POST /setup answered {setup.status}; writers start")
            interval = args.writers / args.rate
            writers = [
                asyncio.create_task(chaos.client.writer(i + 1, interval, stop_writers))
                for i in range(args.writers)
            ]
            await chaos.run_faults(time.monotonic() + args.duration)
            chaos.say("fault phase over; writers stop")
            stop_writers.set()
            await asyncio.wait(writers, timeout=CLIENT_TIMEOUT + 5)
            serving = await chaos.wait_serving(RECOVERY_BOUND)
            acked = [ack.id for ack in chaos.client.acks]
            chaos.say(f"reading back {len(acked)} acknowledged writes through the router")
            patience = 60.0 if serving else 10.0
            lost, read_error = await asyncio.to_thread(
                read_back, cluster.router_url, acked, patience
            )
            report = await asyncio.to_thread(integrity, cluster.router_url, patience)
            chaos.say(f"read back: {len(lost)} lost{'; ' + read_error if read_error else ''}")
        finally:
            chaos.continue_stopped()
            stop_writers.set()
            for task in writers:
                task.cancel()
            stop_monitor.set()
            await asyncio.wait(monitors, timeout=5)
            manager.stop()
        seconds = chaos.now()
        chaos.say(f"stopping the cluster (SIGTERM, SIGKILL by pid after {SHUTDOWN_TIMEOUT:g} s)")
        leaked = await asyncio.to_thread(cluster.shutdown, SHUTDOWN_TIMEOUT)
    return Ending(chaos, serving, lost, read_error, report, leaked, manager.restarts, seconds)


def owner_at(faults: list[Fault], at: float) -> Fault | None:
    """The fault whose window holds ``at`` (seconds since the start)."""
    return next((f for f in faults if f.injected <= at <= f.window_end), None)


def attribute_damage(
    chaos: Chaos, lost: list[str], windows: list[tuple[float, float, list[str]]]
) -> int:
    """Each lost write (by when it was acknowledged) and each double-active window (by its
    start) to its fault; the lost writes of no fault's window."""
    lost_between = 0
    lost_ids = set(lost)
    for ack in chaos.client.acks:
        if ack.id in lost_ids:
            owner = owner_at(chaos.faults, ack.done - chaos.t0)
            if owner is None:
                lost_between += 1
            else:
                owner.lost += 1
    for start, stop, _ in windows:
        owner = owner_at(chaos.faults, start - chaos.t0)
        if owner is not None:
            owner.double_ms += round((stop - start) * 1000)
    return lost_between


def verdict(end: Ending) -> dict[str, Any]:
    """The machine-readable result, ``passed`` and the ``reasons`` it did not."""
    chaos = end.chaos
    windows = double_active(chaos.samples)
    between = attribute(chaos.client.outcomes, chaos.faults, chaos.t0)
    outcomes = chaos.client.outcomes
    injected = [f for f in chaos.faults if f.released is not None]
    unrecovered = [f for f in injected if not f.recovered]
    double_ms = round(sum(stop - start for start, stop, _ in windows) * 1000)

    def fault_of(at: float) -> str:
        owner = owner_at(chaos.faults, at)
        return f"{owner.kind} at {owner.injected:.1f} s" if owner else "between faults"

    lost_between = attribute_damage(chaos, end.lost, windows)

    reasons = []
    if end.lost:
        reasons.append(f"{len(end.lost)} acknowledged writes lost")
    if end.read_error:
        reasons.append(f"read-back not done: {end.read_error}")
    if double_ms:
        reasons.append(f"{double_ms} ms with two or more nodes answering RUNNING")
    if unrecovered:
        reasons.append(f"{len(unrecovered)} faults not recovered within {RECOVERY_BOUND:g} s")
    stale = end.integrity.get("stale_epoch_writes") or []
    if stale:
        reasons.append(
            f"{len(stale)} writes under an older epoch after a newer one's (two writers)"
        )
    if not end.integrity.get("ok"):
        reasons.append("integrity not ok")
    if end.leaked:
        reasons.append(f"{len(end.leaked)} processes leaked after the stop")
    if not end.serving:
        reasons.append("the cluster did not serve writes at the end")
    return {
        "passed": not reasons,
        "reasons": reasons,
        "seconds": round(end.seconds, 1),
        "recovery_bound_s": RECOVERY_BOUND,
        "acknowledged_writes": len(chaos.client.acks),
        "acknowledged_by_node": dict(sorted(Counter(a.node for a in chaos.client.acks).items())),
        "lost_writes": len(end.lost),
        "lost_ids": end.lost[:100],
        "read_back_error": end.read_error,
        "read_misses": len(chaos.client.read_misses),
        "double_active_ms": double_ms,
        "double_active": [
            {
                "from_s": round(start - chaos.t0, 3),
                "ms": round((stop - start) * 1000),
                "nodes": nodes,
                "during": fault_of(start - chaos.t0),
            }
            for start, stop, nodes in windows
        ],
        "integrity": end.integrity,
        "integrity_ok": bool(end.integrity.get("ok")),
        "stale_epoch_writes": len(stale),
        "write_epochs": end.integrity.get("write_epochs", {}),
        "faults_injected": len(injected),
        "faults_recovered": len(injected) - len(unrecovered),
        "all_recovered": not unrecovered,
        "faults": [f.as_json() for f in chaos.faults],
        "table": fault_table(chaos.faults, between, lost_between),
        "failed_between_faults": dict(between),
        "requests": len(outcomes),
        "failed_requests": dict(Counter(o.label for o in outcomes if o.label != "ok")),
        "monitor_states": {
            node: dict(Counter(sample.state for sample in samples))
            for node, samples in chaos.samples.items()
        },
        "service_restarts": [
            {"name": r.name, "at_s": round(r.at - chaos.t0, 2), "exit_code": r.exit_code}
            for r in end.restarts
        ],
        "leaked": [asdict(entry) for entry in end.leaked],
        "operator": chaos.operator_runs,
    }


def report_lines(result: dict[str, Any], end: Ending) -> list[str]:
    integrity_report = end.integrity
    lines = [
        "",
        "recovery: from the release (a kill; SIGCONT after a stop) or, for a store fault, from",
        "the fault (the operator's 5 s included), to the first acknowledged write sent after it;",
        "outage: the longest time from the fault to its recovery with no write acknowledged.",
        *result["table"],
        "",
        f"requests {result['requests']} ({sum(result['failed_requests'].values())} failed); "
        f"acknowledged writes {result['acknowledged_writes']} "
        f"(by node {result['acknowledged_by_node']}), lost {result['lost_writes']}; "
        f"GETs of acknowledged records not found {result['read_misses']}",
        f"double-active {result['double_active_ms']} ms in {len(result['double_active'])} windows",
    ]
    lines += [
        f"    at {w['from_s']:.1f} s for {w['ms']} ms: {', '.join(w['nodes'])} ({w['during']})"
        for w in result["double_active"][:20]
    ]
    lines += [
        f"note: {states[FOREIGN]} answers on {node}'s port came from a process that is not "
        "its app (the port was taken while the app was down); not counted as serving"
        for node, states in result["monitor_states"].items()
        if states.get(FOREIGN)
    ]
    lines.append(
        f"integrity: {'ok' if result['integrity_ok'] else 'NOT ok'} "
        f"(rows {integrity_report.get('rows', '?')}, files {integrity_report.get('files', '?')}, "
        f"missing {len(integrity_report.get('missing', []))}, "
        f"orphans {len(integrity_report.get('orphans', []))}, "
        f"writes under an older epoch after a newer one's {result['stale_epoch_writes']}; "
        f"writes per epoch {result['write_epochs']})"
    )
    restarts = Counter(r.name for r in end.restarts)
    lines.append(
        f"recovery bound {RECOVERY_BOUND:g} s; service restarts: "
        + (summary(restarts) if restarts else "none")
    )
    lines += [
        f"LEAKED pid {entry.pid} ({entry.why}): {entry.cmdline[:160]} - killed"
        for entry in end.leaked
    ]
    lines += [
        f"note: {f.kind} at {f.injected:.1f} s: {note}"
        for f in end.chaos.faults
        for note in f.notes
    ]
    lines.append("PASS" if result["passed"] else "FAIL: " + "; ".join(result["reasons"]))
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--nodes", type=int, choices=(2, 3), default=2)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--database-url", default="", help="an existing PostgreSQL database")
    parser.add_argument("--duration", type=float, default=1800.0, help="fault phase, seconds")
    parser.add_argument("--seed", type=int, default=None, help="default: from the clock")
    parser.add_argument(
        "--faults",
        help=f"default: all; {','.join(FAULTS)} (--hosts: also the network faults)",
    )
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=20.0, help="requests/s across writers")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--keep", type=Path, default=None, help="copy the state dir here")
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="across hosts: nodes, router and store in network namespaces (root); "
        "network faults too (benchmarks/chaos_hosts.py)",
    )
    parser.add_argument("--backend", choices=("sqlite", "etcd", "zookeeper"), default="etcd")
    parser.add_argument(
        "--skew", type=float, default=420.0, help="--hosts: node2's wall clock ahead by (s)"
    )
    parser.add_argument(
        "--reinit-command",
        default=DEFAULT_REINIT,
        help="what the operator runs after a store fault ({python}, {config} filled in)",
    )
    parser.set_defaults(faults=None)
    args = parser.parse_args(argv)
    known: tuple[str, ...] = FAULTS
    args.net_faults, args.needs_active = (), frozenset()
    if args.hosts:
        from chaos_hosts import NEEDS_ACTIVE, available_faults

        args.net_faults, args.needs_active = available_faults(args.backend), NEEDS_ACTIVE
        # The store faults unlink or replace a file the observer reads through hakit's own
        # store client across hosts: the local run covers them.
        known = tuple(kind for kind in FAULTS if kind not in STORE_FAULTS) + args.net_faults
        if args.nodes != 2:
            parser.error("--hosts runs two nodes")
    if args.faults is None:
        args.faults = ",".join(known)
    args.faults = [kind.strip() for kind in args.faults.split(",") if kind.strip()]
    unknown = sorted(set(args.faults) - set(known))
    if unknown or not args.faults:
        parser.error(f"--faults: unknown {unknown}; choose from {','.join(known)}")
    if args.writers < 1 or args.rate <= 0 or args.duration < 0:
        parser.error("--writers must be 1 or more, --rate above 0, --duration 0 or more")
    if args.seed is None:
        args.seed = int(time.time()) % 1_000_000
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: the cluster is stopped


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "database": "postgresql" if args.hosts else args.database,
        "hosts": args.hosts,
        "backend": args.backend if args.hosts else "sqlite",
        "skew_s": args.skew if args.hosts else 0,
        "duration_s": args.duration,
        "seed": args.seed,
        "faults_enabled": args.faults,
        "writers": args.writers,
        "rate": args.rate,
        "passed": False,
    }
    code = 2
    root = Path(tempfile.mkdtemp(prefix="hakit-chaos-"))
    cluster: ManagedCluster | None = None
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
            nemesis = None
            if args.hosts:
                from chaos_hosts import hosts_cluster

                cluster, nemesis = stack.enter_context(
                    hosts_cluster(root, args.backend, args.skew, HOSTS_TIMERS)
                )
                stack.callback(nemesis.heal)
            else:
                database_url, stop_database = start_database(args)
                if stop_database is not None:
                    stack.callback(stop_database)
                router_port, *node_ports = free_ports(args.nodes + 1)
                settings = DemoSettings(
                    nodes=args.nodes,
                    router_port=router_port,
                    node_ports=tuple(node_ports),
                    database_url=database_url,
                    lease_ttl="3s",
                )
                cluster = ManagedCluster(root, settings)
                stack.callback(cluster.close)
            stack.callback(finish, args, cluster, result, lambda: code)
            cluster.start()
            end = asyncio.run(run(args, cluster, nemesis))
            result.update(verdict(end))
            print("\n".join(report_lines(result, end)), flush=True)
            code = 0 if result["passed"] else 1
    except (RuntimeError, OSError) as error:
        result["error"] = repr(error)
        print(f"chaos run could not be carried out: {error!r}", file=sys.stderr, flush=True)
    finally:
        if args.json is not None:
            args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return code


def finish(
    args: argparse.Namespace,
    cluster: ManagedCluster,
    result: dict[str, Any],
    code: Callable[[], int],
) -> None:
    """Stop what still runs; keep the state dir when asked or when the run failed."""
    if cluster.processes and any(p.poll() is None for p in cluster.all_processes):
        cluster.shutdown(SHUTDOWN_TIMEOUT)
    keep = args.keep or (
        None if code() == 0 else Path(tempfile.gettempdir()) / f"hakit-chaos-{os.getpid()}"
    )
    if keep is not None:
        shutil.copytree(cluster.cfg.cluster.state_dir, keep, dirs_exist_ok=True)
        shutil.copy(cluster.config_path, keep / "hakit.toml")
        result["kept"] = str(keep)
        print(f"state, logs and the write log kept in {keep}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
