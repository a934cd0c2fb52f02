"""Failover benchmark: time from a fault to the first successful client request, under load.

    .venv/bin/python benchmarks/failover.py [--trials 20] [--kinds crash,hang,...]
                                            [--holds 0s,default] [--pauses 20]
                                            [--pause-seconds 20] [--pause-patience 30s]

For each router hold setting (``--holds``: ``default`` = hakit's default
``router.hold_timeout``, 15 s; ``0s`` = no hold, the maintenance page at once;
``10s`` = requests may wait 10 s for a node) and
each failure kind, a fresh demo cluster (real agents, sample apps with their 1 s
startup delay, router) runs under steady open-loop load: a client thread sends
``GET /`` through the router at a fixed rate (``--rate``, 50 req/s) whatever the
answers, one connection per request, each with a hard deadline of 5 s + the hold
timeout, and records every request's send time, completion time, success (HTTP
200) and the node that served it (the sample app's index page names it). The
hang kind counts from after the app accepted the fault; the switchover kind
waits for a 200 from the target node.

Kinds (N trials each):

- ``crash``       kill -9 of the active app; restart budget 1000, so the agent restarts it.
- ``hang``        POST /faults/hang?seconds=60 to the active app directly; patience 2 s
                  (fall 2, probe timeout 500 ms), so the agent restarts it.
- ``node-cold``   SIGKILL of the active node's agent and app together, cold standby.
- ``node-warm``   the same in mode "warm-standby" (the standby's app already runs).
- ``switchover``  ``hakit switchover --to <standby>`` through the agents' admin API, cold
                  standby (skipped with a note if the command is absent).

Per trial: t0 = just before the fault; recovery = earliest completion of a
successful request sent at or after t0 (for switchover: served by the target
node) minus t0; failed requests = requests that failed (non-200, connection
error, no answer by the deadline) completing at or after t0 and sent up to 1 s after the
recovery. Between trials the cluster is steady again: an active node serving, the
other node a fresh standby (warm: its app RUNNING), and, after a failover kind,
the old node's step-down cooldown (3 x lease_ttl) passed.

Then K injected pauses shorter than patience on a steady cluster (defaults: the
target's 20 pauses of 20 s, against the default patience ``timeout = 30s``,
fall 2, probe timeout 500 ms; ``--pauses 1 --pause-seconds 4 --pause-patience 8s``
for a quick check): any restart, stop, failover or change of lease holder is a
false failover.

The hang kind takes about stop_timeout longer than its patience: the hung app's
graceful stop (SIGTERM) waits for the requests stuck in the hang, so the agent
kills its process group after ``stop_timeout`` (5 s in the demo cluster), as
the restart sequence is (graceful stop, wait stop_timeout, kill).

Every loop is bounded in count and time; every process is ended (DemoCluster.stop).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sample_app import startup_times  # benchmarks/sample_app.py, beside this script

from hakit.config import RouterConfig, parse_duration
from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports, wait_for
from hakit.history.eventlog import format_event

ALL_KINDS = ("crash", "hang", "node-cold", "node-warm", "switchover")
FAILOVER_KINDS = {"node-cold", "node-warm", "switchover"}  # the old node steps down
SERVED_BY = re.compile(rb"Served by node <b>([^<]{1,64})</b>")
ADMIN_TOKEN = "failover-benchmark-admin-token"
MAX_RESPONSE = 1 << 20  # bytes read of one answer
SETTLE = 1.0  # failures this long after the recovery still belong to the event
RECOVERY_LIMIT = 60.0  # a trial that has not recovered by then is recorded as not recovered
DEFAULT_HOLD = float(RouterConfig.model_fields["hold_timeout"].default)  # hakit's own default


def hold_seconds(hold: str | None) -> float:
    """``--holds`` value -> seconds (None: hakit's default)."""
    return DEFAULT_HOLD if hold is None else parse_duration(hold)


def hold_label(hold: str | None) -> str:
    return f"default ({DEFAULT_HOLD:g}s)" if hold is None else hold


# --- load ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    sent: float
    done: float | None = None  # set last, once ok/node/error are final
    ok: bool = False
    node: str | None = None
    error: str = ""


class Load:
    """Open-loop load: one request every 1/rate s in an asyncio loop in a thread, bounded."""

    def __init__(
        self,
        url: str,
        routes: dict[str, str],
        rate: float,
        timeout: float,
        max_seconds: float,
        max_outstanding: int = 1000,
    ) -> None:
        parsed = urlsplit(url)
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._path = parsed.path or "/"
        self.rate = rate
        self.timeout = timeout
        self.max_seconds = max_seconds
        self.max_outstanding = max_outstanding
        self.routes: dict[str, str] = dict(routes)  # route -> node name
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 10)

    async def _exchange(self) -> tuple[int, bytes]:
        """One GET on a fresh connection (``Connection: close``); status and body."""
        reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            writer.write(
                f"GET {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\n"
                "User-Agent: hakit-failover-bench\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read(MAX_RESPONSE)
            while len(data) < MAX_RESPONSE:
                more = await reader.read(MAX_RESPONSE - len(data))
                if not more:
                    break
                data += more
        finally:
            writer.close()
        status_line, _, rest = data.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ConnectionError(f"no HTTP response ({len(data)} bytes)")
        return int(parts[1]), rest.partition(b"\r\n\r\n")[2]

    async def _one(self, sample: Sample) -> None:
        try:
            # A hard deadline for the whole exchange: connect, send, answer.
            status, body = await asyncio.wait_for(self._exchange(), self.timeout)
            match = SERVED_BY.search(body)
            # The sample app names itself by its route ("n1"); map it to the node.
            sample.node = self.routes.get(match.group(1).decode()) if match else None
            sample.ok = status == 200
            sample.error = "" if sample.ok else f"HTTP {status}"
        except TimeoutError:
            sample.error = f"no answer within {self.timeout:g} s"
        except OSError as error:  # refused, reset, ...
            sample.error = type(error).__name__
        except Exception as error:
            sample.error = repr(error)
        sample.done = time.monotonic()

    async def _main(self) -> None:
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic()
        deadline = start + self.max_seconds
        sent = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            delay = start + sent / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # fell behind by over a second: do not burst to catch up
                start = time.monotonic() - sent / self.rate
            sent += 1
            sample = Sample(time.monotonic())
            self.samples.append(sample)
            if len(tasks) >= self.max_outstanding:
                sample.error = "client: too many outstanding requests"
                sample.done = sample.sent
                continue
            task = asyncio.create_task(self._one(sample))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=self.timeout + 2)

    # --- reading (from the main thread) ---

    def index_at(self, t: float) -> int:
        """Index of the first sample sent at or after ``t`` (samples are in send order)."""
        samples = self.samples
        lo, hi = 0, len(samples)
        while lo < hi:
            mid = (lo + hi) // 2
            if samples[mid].sent < t:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def first_success(self, t0: float, node: str | None = None) -> float | None:
        """Earliest completion of a successful request sent at or after ``t0``."""
        done = [
            s.done
            for s in self.samples[self.index_at(t0) :]
            if s.done is not None and s.ok and (node is None or s.node == node)
        ]
        return min(done) if done else None

    def failures(self, start: float, end: float) -> list[Sample]:
        """Failed requests completing at or after ``start`` and sent up to ``end``."""
        begin = self.index_at(start - self.timeout - 1)
        return [
            s
            for s in self.samples[begin : self.index_at(end)]
            if s.done is not None and not s.ok and s.done >= start
        ]

    def steady(self, quiet: float = 1.0) -> bool:
        """Every request sent in the last ``quiet`` s (but 0.5 s) succeeded; none older pending."""
        now = time.monotonic()
        recent = self.samples[self.index_at(now - quiet - 0.5) : self.index_at(now - 0.5)]
        return bool(recent) and all(s.ok for s in recent) and self.settled(now - quiet - 0.5)

    def settled(self, end: float) -> bool:
        """Every request sent before ``end`` has an answer (or gave up)."""
        begin = self.index_at(end - self.timeout - 1)
        return all(s.done is not None for s in self.samples[begin : self.index_at(end)])


# --- one cluster, one kind ---------------------------------------------------------------


@dataclass
class Trial:
    recovery: float | None  # seconds; None: no success within RECOVERY_LIMIT
    failed: int
    note: str = ""


@dataclass
class KindResult:
    kind: str
    trials: list[Trial] = field(default_factory=list)
    skipped: str = ""
    background_failures: int = 0  # failed requests outside every trial's window
    errors: Counter[str] = field(default_factory=Counter)  # what the failed requests saw
    total_requests: int = 0


def settings_for(kind: str, hold: str | None) -> DemoSettings:
    router_port, *node_ports = free_ports(3)
    common: dict[str, object] = {
        "router_port": router_port,
        "node_ports": tuple(node_ports),
        "hold_timeout": hold,
    }
    if kind == "crash":
        return DemoSettings(restart_attempts=1000, **common)  # type: ignore[arg-type]
    if kind == "hang":
        return DemoSettings(
            restart_attempts=1000, patience="2s", fall=2, probe_timeout="500ms", **common
        )  # type: ignore[arg-type]
    if kind == "switchover" and "admin_ports" in {f.name for f in fields(DemoSettings)}:
        # The CLI's usual path: the agents' authenticated admin API.
        return DemoSettings(admin_ports=tuple(free_ports(2)), admin_token=ADMIN_TOKEN, **common)  # type: ignore[arg-type]
    if kind == "node-warm":
        return DemoSettings(mode="warm-standby", **common)  # type: ignore[arg-type]
    return DemoSettings(**common)  # type: ignore[arg-type]


def app_url(cluster: DemoCluster, node: str) -> str:
    config = cluster.cfg.node(node)
    return f"http://{config.host}:{config.port}"


def routes(cluster: DemoCluster) -> dict[str, str]:
    """What the sample app calls itself (its route, or its name) -> node name."""
    return {
        **{n.name: n.name for n in cluster.cfg.nodes},
        **{n.route: n.name for n in cluster.cfg.nodes},
    }


def others(cluster: DemoCluster, node: str) -> list[str]:
    return [n.name for n in cluster.cfg.nodes if n.name != node]


def wait_steady(cluster: DemoCluster, load: Load, warm: bool) -> str:
    """An active node serving through the router; every other node a live standby."""
    active = wait_for(cluster.active_running, 60, "an active node RUNNING")

    def standbys_ready() -> bool:
        for name in others(cluster, active):
            record = cluster.node_record(name)
            # Published by the agent process running now (not one killed in a trial).
            if (
                record is None
                or record.role != "standby"
                or record.detail.get("agent_pid") != cluster.agent_pid(name)
            ):
                return False
            if warm and record.app_state not in ("RUNNING", "FIRST_RUN"):
                return False
        return True

    wait_for(standbys_ready, 60, "the standby to be ready")
    wait_for(load.steady, load.timeout + 30, "every client request to succeed for 1 s")
    return wait_for(cluster.active_running, 10, "an active node RUNNING")


def keep_logs(cluster: DemoCluster, name: str) -> Path:
    """Copy a failed run's process logs and event history out of its temporary directory."""
    kept = Path(tempfile.gettempdir()) / f"hakit-failover-logs-{name}-{os.getpid()}"
    shutil.copytree(cluster.cfg.cluster.state_dir / "logs", kept, dirs_exist_ok=True)
    (kept / "events.txt").write_text(
        "".join(f"{format_event(event)}\n" for event in cluster.events())
    )
    return kept


def switchover_command() -> tuple[list[str] | None, str]:
    """The `hakit switchover` argv prefix if the command exists, else None and why."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hakit", "switchover", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return None, "`hakit switchover --help` did not answer within 30 s"
    if done.returncode != 0:
        return None, "`hakit switchover` does not exist yet (`--help` exited non-zero)"
    if "--to" not in done.stdout or "--reason" not in done.stdout:
        return None, "`hakit switchover --help` shows no --to or --reason option"
    return [sys.executable, "-m", "hakit", "switchover"], ""


def inject(
    kind: str, cluster: DemoCluster, active: str, target: str, argv: list[str] | None
) -> str:
    """Cause the fault of ``kind`` on ``active``; return a note if something was odd."""
    if kind == "crash":
        pid = cluster.app_pid(active)
        if pid is None:
            raise RuntimeError(f"no app pid published for {active}")
        os.kill(pid, signal.SIGKILL)
    elif kind == "hang":
        httpx.post(app_url(cluster, active) + "/faults/hang", params={"seconds": 60}, timeout=5)
    elif kind in ("node-cold", "node-warm"):
        cluster.lose_node(active)
    elif kind == "switchover":
        assert argv is not None
        try:
            done = subprocess.run(
                [
                    *argv,
                    "--to",
                    target,
                    "--reason",
                    "failover benchmark",
                    "--config",
                    str(cluster.config_path),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            return "switchover command ran over 60 s"
        if done.returncode != 0:
            return f"switchover exited {done.returncode}: {(done.stderr or done.stdout).strip()[-200:]}"
    return ""


def run_kind(
    kind: str, hold: str | None, trials: int, rate: float, switchover: list[str] | None
) -> KindResult:
    result = KindResult(kind)
    client_timeout = 5.0 + hold_seconds(hold)
    budget = trials * (RECOVERY_LIMIT + 200) + 120  # the load thread's own bound
    with tempfile.TemporaryDirectory(prefix=f"hakit-failover-{kind}-") as tmp:
        cluster = DemoCluster(Path(tmp), settings_for(kind, hold))
        cooldown = 3 * cluster.cfg.coordination.lease_ttl
        windows: list[tuple[float, float]] = []
        try:
            cluster.start()
            with Load(
                cluster.router_url + "/", routes(cluster), rate, client_timeout, budget
            ) as load:
                last_step_down = -math.inf
                wait_steady(cluster, load, warm=kind == "node-warm")
                measured_from = time.monotonic()  # failures while the cluster started are not ours
                for number in range(trials):
                    active = wait_steady(cluster, load, warm=kind == "node-warm")
                    wait = last_step_down + cooldown - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                        active = wait_steady(cluster, load, warm=kind == "node-warm")
                    target = others(cluster, active)[0]
                    t0 = time.monotonic()
                    note = inject(kind, cluster, active, target, switchover)
                    # The hang starts when the app has accepted the fault (its answer
                    # comes after the gate closed): requests sent before that may
                    # still succeed and say nothing about recovery.
                    since = time.monotonic() if kind == "hang" else t0
                    expect = target if kind in FAILOVER_KINDS else None
                    deadline = t0 + RECOVERY_LIMIT
                    first = load.first_success(since, expect)
                    while first is None and time.monotonic() < deadline:
                        time.sleep(0.02)
                        first = load.first_success(since, expect)
                    end = (first if first is not None else deadline) + SETTLE
                    settle_by = time.monotonic() + client_timeout + 3
                    while (time.monotonic() < end or not load.settled(end)) and (
                        time.monotonic() < settle_by + SETTLE
                    ):
                        time.sleep(0.05)
                    windows.append((t0, end))
                    failed = load.failures(t0, end)
                    result.errors.update(s.error for s in failed)
                    served = {
                        s.node for s in load.samples[load.index_at(t0) : load.index_at(end)] if s.ok
                    }
                    if kind in ("crash", "hang") and served - {active}:
                        note = (note + "; " if note else "") + f"moved to {served - {active}}"
                    result.trials.append(
                        Trial(None if first is None else first - t0, len(failed), note)
                    )
                    print(
                        f"  {kind:<10} hold={hold_label(hold)} trial {number + 1}/{trials}: "
                        + (f"{first - t0:6.2f} s" if first is not None else "  none  ")
                        + f", {len(failed)} failed requests"
                        + (
                            f" sent {min(f.sent for f in failed) - t0:+.2f}..{max(f.sent for f in failed) - t0:+.2f} s,"
                            f" {dict(Counter(f.error for f in failed))}"
                            f", longest {max((f.done or f.sent) - f.sent for f in failed):.1f} s"
                            if failed
                            else ""
                        )
                        + (f" ({note})" if note else ""),
                        file=sys.stderr,
                        flush=True,
                    )
                    if kind in FAILOVER_KINDS:
                        last_step_down = t0
                    if kind in ("node-cold", "node-warm"):
                        cluster.start_agent(active)  # the lost node comes back as a standby
                wait_steady(cluster, load, warm=kind == "node-warm")
            result.total_requests = len(load.samples)
            result.background_failures = sum(
                1
                for s in load.samples[load.index_at(measured_from) :]
                if not s.ok
                and not any(a <= s.sent <= b or a <= (s.done or 0) <= b for a, b in windows)
            )
        except (TimeoutError, RuntimeError, OSError, httpx.HTTPError) as error:
            kept = keep_logs(cluster, f"{kind}-{hold or 'default'}")
            result.skipped = f"stopped after {len(result.trials)} trials: {error} (logs: {kept})"
        finally:
            cluster.stop()
            cluster.close()
    return result


# --- false failovers ---------------------------------------------------------------------------


@dataclass
class PauseResult:
    pauses: int = 0
    false_failovers: int = 0  # restarts, stops, failovers, lease holder changes
    failed_requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    error: str = ""


def run_pauses(
    count: int, hang: float, patience: str, hold: str | None, rate: float
) -> PauseResult:
    result = PauseResult()
    client_timeout = 5.0 + hold_seconds(hold)
    with tempfile.TemporaryDirectory(prefix="hakit-failover-pause-") as tmp:
        router_port, *node_ports = free_ports(3)
        settings = DemoSettings(
            router_port=router_port,
            node_ports=tuple(node_ports),
            hold_timeout=hold,
            patience=patience,
            fall=2,
            probe_timeout="500ms",
        )
        cluster = DemoCluster(Path(tmp), settings)
        try:
            cluster.start()
            budget = count * (hang + 60) + 120
            with Load(
                cluster.router_url + "/", routes(cluster), rate, client_timeout, budget
            ) as load:
                for _ in range(count):
                    active = wait_steady(cluster, load, warm=False)
                    last_id = max((e.id for e in cluster.events()), default=0)
                    t0 = time.monotonic()
                    httpx.post(
                        app_url(cluster, active) + "/faults/hang",
                        params={"seconds": hang},
                        timeout=5,
                    )
                    holders = set()
                    observe_until = t0 + hang + 5.0  # the pause, then 5 s of quiet
                    while time.monotonic() < observe_until:
                        holders.add(cluster.leader())
                        time.sleep(0.2)
                    end = time.monotonic()
                    settle_by = end + client_timeout + 3
                    while not load.settled(end) and time.monotonic() < settle_by:
                        time.sleep(0.05)
                    acted = [
                        e
                        for e in cluster.events(last_id)
                        if e.kind in ("start", "stop", "failover")
                    ]
                    result.pauses += 1
                    failed = load.failures(t0, end)
                    result.failed_requests += len(failed)
                    result.errors.update(s.error for s in failed)
                    if acted or holders - {active}:
                        result.false_failovers += 1
        except (TimeoutError, RuntimeError, OSError, httpx.HTTPError) as error:
            kept = keep_logs(cluster, f"pauses-{hold or 'default'}")
            result.error = f"stopped after {result.pauses} pauses: {error} (logs: {kept})"
        finally:
            cluster.stop()
            cluster.close()
    return result


# --- the peer: the sample app's own startup ----------------------------------------------------


def app_startup(samples: int) -> float:
    """Median seconds from exec to a 200 from /status of a lone sample app (startup 1 s)."""
    times = startup_times(samples)
    return statistics.median(times) if times else float("nan")


# --- report -----------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


Target = tuple[str, Callable[[list[float], list[int]], bool]]


def targets(startup: float) -> dict[str, Target]:
    cold = 5.0 + startup
    return {
        "crash": ("median <= 2 s", lambda r, f: statistics.median(r) <= 2.0),
        "hang": ("(none; 2s patience+5s stop)", lambda r, f: True),
        "node-cold": (
            f"median <= 5 s + startup = {cold:.1f} s",
            lambda r, f: statistics.median(r) <= cold,
        ),
        "node-warm": ("median <= 5 s", lambda r, f: statistics.median(r) <= 5.0),
        "switchover": ("0 failed requests", lambda r, f: sum(f) == 0),
    }


def table(results: list[KindResult], startup: float) -> list[str]:
    goals = targets(startup)
    lines = [
        f"{'kind':<11} {'n':>3} {'recovered':>9} {'median s':>8} {'p95 s':>6} {'max s':>6} "
        f"{'failed/event med':>16} {'max':>4} {'total':>5}  {'target':<28} met?"
    ]
    for r in results:
        if not r.trials:
            lines.append(f"{r.kind:<11} skipped: {r.skipped}")
            continue
        rec = [t.recovery for t in r.trials if t.recovery is not None]
        failed = [t.failed for t in r.trials]
        goal, check = goals[r.kind]
        met = "yes" if rec and len(rec) == len(r.trials) and check(rec, failed) else "no"
        if r.kind == "hang":
            met = "-"
        stats = (
            f"{statistics.median(rec):8.2f} {p95(rec):6.2f} {max(rec):6.2f}"
            if rec
            else f"{'-':>8} {'-':>6} {'-':>6}"
        )
        lines.append(
            f"{r.kind:<11} {len(r.trials):>3} {len(rec):>9} {stats} "
            f"{statistics.median(failed):16.1f} {max(failed):>4} {sum(failed):>5}  {goal:<28} {met}"
        )
        notes = sorted({t.note for t in r.trials if t.note})
        for note in notes:
            lines.append(f"    note: {note}")
        if r.skipped:
            lines.append(f"    note: {r.skipped}")
        if r.errors:
            seen = ", ".join(f"{error} x{n}" for error, n in r.errors.most_common(4))
            lines.append(f"    failed requests saw: {seen}")
        if r.background_failures:
            lines.append(
                f"    note: {r.background_failures} of {r.total_requests} requests failed "
                "outside the trials' windows (between trials)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--kinds", default=",".join(ALL_KINDS), help=",".join(ALL_KINDS))
    parser.add_argument(
        "--holds",
        default="0s,default",
        help="router.hold_timeout values; 'default' = hakit's default "
        f"({DEFAULT_HOLD:g}s), '0s' = no hold",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="client requests per second")
    parser.add_argument(
        "--pauses", type=int, default=20, help="K pauses shorter than patience (issue: 20)"
    )
    parser.add_argument(
        "--pause-seconds", type=float, default=20.0, help="each pause (issue: 20 s)"
    )
    parser.add_argument(
        "--pause-patience",
        default="30s",
        help="health.timeout during the pauses (the default: 30s)",
    )
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(ALL_KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {','.join(ALL_KINDS)}")
    holds = [None if h.strip() == "default" else h.strip() for h in args.holds.split(",")]

    load_start = os.getloadavg()[0]
    switchover, missing = switchover_command() if "switchover" in kinds else (None, "")
    startup = app_startup(3)
    output = [
        f"trials {args.trials} per kind, load GET / through the router at {args.rate:g} req/s "
        f"(open loop); sample app startup (peer) {startup:.2f} s median",
    ]
    for hold in holds:
        results = []
        for kind in kinds:
            if kind == "switchover" and switchover is None:
                results.append(KindResult(kind, skipped=missing))
                continue
            results.append(run_kind(kind, hold, args.trials, args.rate, switchover))
        pauses = (
            run_pauses(args.pauses, args.pause_seconds, args.pause_patience, hold, args.rate)
            if args.pauses > 0
            else None
        )
        output.append("")
        output.append(
            f"router.hold_timeout = {hold}"
            if hold
            else f"router.hold_timeout: hakit's default ({DEFAULT_HOLD:g}s)"
        )
        output.extend(table(results, startup))
        if pauses is not None:
            full = pauses.pauses >= 20 and args.pause_seconds >= 20
            met = "no" if pauses.false_failovers or pauses.error else "yes"
            if met == "yes" and not full:
                met = "yes, on a shorter run than the issue's"
            output.append(
                f"false failovers in {pauses.pauses} injected pauses "
                f"({args.pause_seconds:g} s hang, patience {args.pause_patience}): "
                f"{pauses.false_failovers} (target: 0 in 20 pauses of 20 s; met? {met}); "
                f"{pauses.failed_requests} failed requests"
                + (
                    " (" + ", ".join(f"{e} x{n}" for e, n in pauses.errors.most_common(3)) + ")"
                    if pauses.errors
                    else ""
                )
                + (f"; {pauses.error}" if pauses.error else "")
            )
    output.append("")
    output.append(
        f"loadavg (1 min) at start {load_start:.2f}, at end {os.getloadavg()[0]:.2f}; "
        f"{os.cpu_count() or 0} CPUs"
    )
    print("\n".join(output))


if __name__ == "__main__":
    main()
