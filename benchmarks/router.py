"""The hakit router against HAProxy and nginx: throughput, p99, CPU per request, idle memory.

    .venv/bin/python benchmarks/router.py [--seconds 5] [--rounds 3] [--idle-clients 10000]
                                          [--backend nginx|python] [--profile-seconds 5]
                                          [--variant NAME="python -m hakit" ...] [--no-pure]

Needs wrk, haproxy and nginx (scripts/debian-packages.txt), two CPU cores, and
py-spy for the profile (pip install py-spy; skipped without it). Prints tables
with ratios; asserts nothing. Loopback only.

Setup: wrk (``-t1 -c50 --latency``, keep-alive) and the
backend pinned to core 0 (taskset), the proxy under test alone on core 1. The
backend is nginx serving static files (C speed, so it is not the bottleneck;
``--backend python`` uses benchmarks/backend.py instead). Targets, in front of
the same backend:

- direct: wrk straight to the backend (the floor for latency);
- hakit: ``hakit router -c <cfg>`` as users run it: cold standby, sticky
  lb-cookie, X-Forwarded-For, reading a real SQLite coordination store that
  holds a valid lease for node1 (epoch 1) and its RUNNING record; its per-request
  modules compiled with mypyc when a fresh build exists (``make native``;
  the first line printed says which);
- pure: the same router with ``HAKIT_PURE_PYTHON=1`` (the sources interpreted),
  when ``hakit`` is the compiled one and ``--no-pure`` is not given;
- haproxy: HAProxy 2.6, one thread, ``cookie SERVERID insert indirect nocache``,
  ``option forwardfor``, ``option http-keep-alive`` (tests/support/haproxy.py);
- nginx: one worker, ``proxy_pass`` to an upstream with ``keepalive 32``,
  X-Forwarded-For (open-source nginx has no sticky cookie).

``--variant NAME=COMMAND`` adds another hakit router to the same run (another
interpreter, or a snapshot of the code: ``env PYTHONPATH=/tmp/old python -m
hakit``), measured like ``hakit`` and interleaved with the rest.

All targets run for the whole benchmark; runs are interleaved (direct hakit
haproxy nginx, direct hakit ...) for each response size, ``--rounds`` times,
and each figure is the median over the rounds. CPU per request is the
proxy's user+system time from /proc/<pid>/stat (all threads) before and after
the run, divided by the requests wrk completed; "kernel" is the system-time part
of it (sends, receives, polling). "core 0" is how busy the load
side was (wrk + backend CPU / wall time): near 100 % means the load side, not
the proxy, limited that run.

Then, each proxy freshly started: ``--idle-clients`` keep-alive connections
each send one request and then stay idle; the proxy's RSS (VmRSS) and peak
(VmHWM) are read from /proc. Last, py-spy samples the hakit router during one
more wrk run and the hottest functions are listed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support.haproxy

from tests.support.haproxy import (  # noqa: E402
    STICKY_COOKIE,
    HAProxyOptions,
    Server,
    listens_on,
    start_haproxy,
)

import hakit.router  # noqa: E402, F401 (decides hakit_native.mode)
from hakit.coord.base import NodeRecord  # noqa: E402
from hakit.coord.sqlite import SqliteCoordinator  # noqa: E402
from hakit.demo.cluster import free_ports  # noqa: E402
from hakit.router import native as hakit_native  # noqa: E402

LOAD_CPU = "0"  # wrk and the backend
PROXY_CPU = "1"  # the proxy under test, alone
SMALL = b"hello from backend!\n"  # 20 bytes
LARGE = bytes(range(256)) * 64  # 16 KiB
PATHS = {"20 B": "/small", "16 KiB": "/16k"}
IDLE_SECONDS = 10.0  # /proc counts CPU in 10 ms ticks: a long window for ms/s figures
STATUS_JSON = '{"state": "RUNNING"}'  # the router's health checks read each node's /status
SECRET = "benchmark-secret-0123456789abcdef"

# wrk reports through this script: exact counts and percentiles in microseconds, as JSON.
WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"errors": %d, "status_errors": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# --- processes ------------------------------------------------------------------------------


class Proc:
    """A process we started; stopped by its PID only."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @classmethod
    def spawn(
        cls, name: str, argv: Sequence[str], log: Path, preexec: Callable[[], None] | None = None
    ) -> Proc:
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=preexec,
            )
        return cls(name, popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_listening(self, port: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.popen.returncode}); see {self.log}")
            if listens_on(self.pid, port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on {port} within {timeout} s")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def pinned(cpu: str, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` (all threads) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick  # utime, stime


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all threads)."""
    return sum(cpu_times(pid))


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of ``pid`` in KiB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0])
    return values


def nofile_soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise RuntimeError("no 'Max open files' in /proc/<pid>/limits")


def raise_nofile(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:  # root may raise the hard limit too
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            wanted = hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the backend and the proxies ---------------------------------------------------------------

NGINX_COMMON = """
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{server}
}}
"""

NGINX_BACKEND = """
    sendfile on;
    tcp_nodelay on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {dir}/www;
        location = /status {{ default_type application/json; return 200 '{status}'; }}
    }}
"""

NGINX_PROXY = """
    upstream app {{
        server 127.0.0.1:{backend};
        keepalive 64;  # more than wrk's 50 connections: no reconnects
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
"""


def start_nginx(workdir: Path, name: str, server: str, port: int, connections: int) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    config = NGINX_COMMON.format(
        dir=workdir, server=server, nofile=2 * connections + 100, connections=connections
    )
    (workdir / "nginx.conf").write_text(config)
    argv = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf")]
    cpu = LOAD_CPU if name == "backend" else PROXY_CPU
    proc = Proc.spawn(name, pinned(cpu, argv), workdir / "stdout.log")
    proc.wait_listening(port)
    return proc


def start_backend(workdir: Path, kind: str) -> tuple[Proc, int]:
    if kind == "python":
        log = workdir / "backend.log"
        workdir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, str(ROOT / "benchmarks" / "backend.py")]
        proc = Proc.spawn("backend", pinned(LOAD_CPU, argv), log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not log.read_text().strip():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"backend exited; see {log}")
            time.sleep(0.05)
        port = int(log.read_text().split()[0])
        proc.wait_listening(port)
        return proc, port
    (port,) = free_ports(1)
    www = workdir / "www"
    www.mkdir(parents=True, exist_ok=True)
    (www / "small").write_bytes(SMALL)
    (www / "16k").write_bytes(LARGE)
    server = NGINX_BACKEND.format(port=port, dir=workdir, status=STATUS_JSON)
    return start_nginx(workdir, "backend", server, port, connections=30000), port


HAKIT_CONFIG = """
[cluster]
name = "bench"
mode = "cold-standby"
state_dir = "state"

[app]
start = ["true"]
home = "home"
database_url = "sqlite:///state/app.db"

[router]
listen = "127.0.0.1:{port}"
sticky = "lb-cookie"
secret = "{secret}"

[[nodes]]
name = "node1"
port = {backend}
route = "n1"

[[nodes]]
name = "node2"
port = {standby}
route = "n2"
"""


# How `hakit` is run; --hakit-command replaces it (e.g. to measure an experimental patch).
HAKIT_COMMAND = [sys.executable, "-m", "hakit"]


def start_hakit(
    workdir: Path,
    backend: int,
    nofile: int | None = None,
    command: Sequence[str] | None = None,
    name: str = "hakit",
    listen_timeout: float = 20.0,
) -> tuple[Proc, int]:
    """``hakit router`` reading a real SQLite store: node1 holds a valid lease and runs."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, standby = free_ports(2)  # nothing listens on the standby's port (cold standby)
    config = workdir / "hakit.toml"
    config.write_text(
        HAKIT_CONFIG.format(port=port, backend=backend, standby=standby, secret=SECRET)
    )
    store = SqliteCoordinator(workdir / "state" / "coordination.db")
    (workdir / "state").mkdir(exist_ok=True)
    lease = store.acquire_or_renew("node1", ttl=7 * 24 * 3600)
    assert lease is not None
    store.publish_node(NodeRecord("node1", "active", "RUNNING", lease.epoch, time.time()))
    store.close()

    def limit() -> None:
        if nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))

    argv = [*(command or HAKIT_COMMAND), "router", "-c", str(config)]
    proc = Proc.spawn(name, pinned(PROXY_CPU, argv), workdir / "router.log", preexec=limit)
    proc.wait_listening(port, listen_timeout)
    return proc, port


def start_haproxy_target(workdir: Path, backend: int, maxconn: int = 4096) -> tuple[Proc, int]:
    # HAProxy reserves 2 descriptors per connection and by default refuses to start
    # when the limit is lower; idle clients need one each, so ours is enough.
    options = HAProxyOptions(
        cookie=STICKY_COOKIE,
        forwardfor=True,
        maxconn=maxconn,
        timeout_client="300s",
        extra_global=("no strict-limits",),
    )
    haproxy = start_haproxy(
        workdir, [Server("node1", backend, cookie="n1")], options, prefix=pinned(PROXY_CPU, [])
    )
    return Proc("haproxy", haproxy.process, haproxy.log), haproxy.port


def start_nginx_proxy(workdir: Path, backend: int, connections: int = 4096) -> tuple[Proc, int]:
    (port,) = free_ports(1)
    server = NGINX_PROXY.format(port=port, backend=backend)
    return start_nginx(workdir, "nginx", server, port, connections), port


# --- load ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    rps: float
    p99_ms: float
    cpu_us: float | None  # proxy CPU per request; None for direct
    sys_us: float | None  # of which in the kernel (system time)
    core0: float  # load side busy fraction
    errors: int


def run_wrk(port: int, path: str, seconds: int, script: Path) -> dict[str, int]:
    argv = pinned(LOAD_CPU, ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", "-s", str(script)])
    argv.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("JSON "):
            return dict(json.loads(line[5:]))
    raise RuntimeError(f"no report from wrk:\n{out.stdout}\n{out.stderr}")


def measure(
    proxy_pid: int | None, backend_pid: int, port: int, path: str, seconds: int, script: Path
) -> Sample:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it is reaped
    backend_before = cpu_seconds(backend_pid)
    proxy_before = cpu_times(proxy_pid) if proxy_pid else (0.0, 0.0)
    report = run_wrk(port, path, seconds, script)
    proxy_after = cpu_times(proxy_pid) if proxy_pid else (0.0, 0.0)
    proxy_sys = proxy_after[1] - proxy_before[1]
    proxy_cpu = proxy_after[0] - proxy_before[0] + proxy_sys
    backend_cpu = cpu_seconds(backend_pid) - backend_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    requests = max(report["requests"], 1)
    duration = report["duration_us"] / 1e6
    return Sample(
        rps=requests / duration,
        p99_ms=report["p99_us"] / 1000,
        cpu_us=proxy_cpu / requests * 1e6 if proxy_pid else None,
        sys_us=proxy_sys / requests * 1e6 if proxy_pid else None,
        core0=(wrk_cpu + backend_cpu) / duration,
        errors=report["errors"] + report["status_errors"],
    )


def check_target(name: str, port: int) -> str:
    """One request through ``port``: its status and the sticky cookie it set, for the log."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/small")
        response = conn.getresponse()
        body = response.read()
        cookies = [
            v.split(";")[0].split("=")[0] for v in response.headers.get_all("Set-Cookie", [])
        ]
    finally:
        conn.close()
    if response.status != 200 or body != SMALL:
        raise RuntimeError(f"{name}: GET /small answered {response.status} {body[:100]!r}")
    return f"{name}: 200, sticky cookie {', '.join(cookies) or '(none)'}"


# --- idle keep-alive clients -----------------------------------------------------------------


async def _open_idle(port: int, count: int, deadline: float) -> list[asyncio.StreamWriter]:
    request = b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n"
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(200)

    async def one() -> None:
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
            writers.append(writer)
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), max(deadline - time.monotonic(), 1))
    except BaseException:
        for writer in writers:
            writer.transport.abort()
        raise
    return writers


def idle_memory(pid: int, port: int, count: int) -> dict[str, float]:
    """RSS of ``pid`` before and with ``count`` idle keep-alive clients (MiB)."""
    before = memory_kib(pid)

    async def run() -> dict[str, float]:
        deadline = time.monotonic() + 120
        writers = await _open_idle(port, count, deadline)
        try:
            await asyncio.sleep(1.0)  # let the proxy settle (timers armed, buffers freed)
            during = memory_kib(pid)
        finally:
            for writer in writers:
                writer.transport.abort()
        return {
            "rss_before": before["VmRSS"] / 1024,
            "rss_idle": during["VmRSS"] / 1024,
            "peak": during["VmHWM"] / 1024,
        }

    return asyncio.run(run())


# --- profile ----------------------------------------------------------------------------------


def profile_hakit(pid: int, port: int, seconds: int, script: Path, out: Path) -> str:
    """py-spy samples the router (not pausing it) during a wrk run; the hottest functions."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return "py-spy not installed (.venv/bin/pip install py-spy): no profile"
    raw = out.with_suffix(".folded")
    # --native: the compiled router modules, the parser and the event loop are C.
    argv = [py_spy, "record", "--native", "--pid", str(pid), "--duration", str(seconds + 1)]
    argv += ["--rate", "200", "--format", "raw", "-o", str(raw)]  # (--native cannot be nonblocking)
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attaches
    run_wrk(port, "/small", seconds, script)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}"
    svg = subprocess.run(  # the same samples as a flame graph, for people
        [py_spy, "record", "--native", "--pid", str(pid), "--duration", "2", "-o", str(out)],
        capture_output=True,
        timeout=60,
    )
    return summarize_profile(raw.read_text(), svg_note=str(out) if svg.returncode == 0 else "")


def _short(frame: str) -> str:
    """A py-spy frame (``function (file:line)``) as ``function (file)``; compiled router
    functions (mypyc's ``CPyDef_<module>___<Class>___<method>``) as ``module.Class.method``."""
    name, _, where = frame.partition(" (")
    if name.startswith(("CPyDef_", "CPyPy_")):
        return ".".join(name.split("_", 1)[1].split("___")) + " (compiled)"
    where = where.rstrip(")")
    file = where.rsplit("/", 1)[-1].split(":")[0] if where else ""
    return f"{name} ({file})" if file else name


# Where a sample's time went, by the file of its innermost frame that tells (an inlined
# CPython helper such as Py_DECREF counts for the code that called it).
_COMPONENTS = (
    ("libc: system calls (send, recv, epoll: kernel time), malloc", ("libc.so", "[vdso]")),
    ("router, compiled (mypyc)", ("__native_", "CPyDef_", "CPyPy_")),
    ("router, interpreted", ("hakit/",)),
    ("HTTP parser (httptools/llhttp)", ("parser.c", "llhttp.c", "api.c", "http.c")),
    ("event loop (uvloop/libuv)", ("loop.c", "uv__", "uv_")),
)
_OTHER = "CPython runtime and the rest"


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for component, marks in _COMPONENTS:
            if any(mark in frame for mark in marks):
                return component
    return _OTHER


# A thread waiting for work (the access-log writer, the resolver pool) is sampled too; those
# samples say nothing about where a request's time goes.
_IDLE_MARKERS: Final = ("PyThread_acquire_lock", "pthread_cond_", "sem_clockwait", "sem_timedwait")


def _idle(frames: list[str]) -> bool:
    return any(marker in frame for frame in frames for marker in _IDLE_MARKERS)


def summarize_profile(folded: str, svg_note: str = "", top: int = 15) -> str:
    """Where the router's time goes, from py-spy's collapsed stacks (recorded with --native).

    By component (system calls, compiled and interpreted router code, parser,
    event loop), then the hottest functions by own time and the router's
    functions with their callees. py-spy sees no kernel frames: the time in
    the kernel is the time of the libc call that entered it.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    total = 0
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f]
        if _idle(frames):
            continue
        total += count
        own[_short(frames[-1])] += count
        components[_component(frames)] += count
        router = {_short(f) for f in frames if "hakit/router/" in f or f.startswith("CPyDef_")}
        for frame in router:
            inclusive[frame] += count
    if not total:
        return "py-spy: no samples"
    lines = [f"py-spy --native: {total} samples of the router's threads while not idle"]
    if svg_note:
        lines.append(f"flame graph: {svg_note}")
    lines.append(f"{'share %':>7}  component")
    for component, count in components.most_common():
        lines.append(f"{100 * count / total:7.1f}  {component}")
    lines.append(f"{'self %':>7}  function (file)")
    for frame, count in own.most_common(top):
        lines.append(f"{100 * count / total:7.1f}  {frame}")
    lines.append(f"{'total %':>7}  router function, callees included")
    for frame, count in inclusive.most_common(top):
        lines.append(f"{100 * count / total:7.1f}  {frame}")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------


def median_sample(samples: list[Sample]) -> Sample:
    cpu = [s.cpu_us for s in samples if s.cpu_us is not None]
    system = [s.sys_us for s in samples if s.sys_us is not None]
    return Sample(
        rps=statistics.median(s.rps for s in samples),
        p99_ms=statistics.median(s.p99_ms for s in samples),
        cpu_us=statistics.median(cpu) if cpu else None,
        sys_us=statistics.median(system) if system else None,
        core0=statistics.median(s.core0 for s in samples),
        errors=sum(s.errors for s in samples),
    )


def throughput_table(results: dict[tuple[str, str], list[Sample]], names: list[str]) -> str:
    lines = [
        f"{'size':<7} {'target':<8} {'req/s':>9} {'p99 ms':>7} {'CPU µs/req':>11} {'kernel':>7} "
        f"{'req/s ÷ HAProxy':>16} {'CPU ÷ HAProxy':>14} {'p99 added ms':>13} {'core 0':>7} {'errors':>7}"
    ]
    for size in PATHS:
        direct = median_sample(results[(size, "direct")])
        haproxy = median_sample(results[(size, "haproxy")])
        for name in names:
            s = median_sample(results[(size, name)])
            cpu = f"{s.cpu_us:.1f}" if s.cpu_us is not None else "-"
            kernel = f"{s.sys_us:.1f}" if s.sys_us is not None else "-"
            cpu_ratio = (
                f"{s.cpu_us / haproxy.cpu_us:.2f}x"
                if s.cpu_us is not None and haproxy.cpu_us
                else "-"
            )
            added = f"{s.p99_ms - direct.p99_ms:+.2f}" if name != "direct" else "-"
            lines.append(
                f"{size:<7} {name:<8} {s.rps:>9.0f} {s.p99_ms:>7.2f} {cpu:>11} {kernel:>7} "
                f"{s.rps / haproxy.rps:>15.2f}x {cpu_ratio:>14} {added:>13} "
                f"{100 * s.core0:>6.0f}% {s.errors:>7}"
            )
    return "\n".join(lines)


def verdicts(results: dict[tuple[str, str], list[Sample]], router: str = "hakit") -> str:
    lines = []
    for size in PATHS:
        hakit = median_sample(results[(size, router)])
        haproxy = median_sample(results[(size, "haproxy")])
        direct = median_sample(results[(size, "direct")])
        assert hakit.cpu_us is not None and haproxy.cpu_us is not None
        cpu = hakit.cpu_us / haproxy.cpu_us
        rps = hakit.rps / haproxy.rps
        added = hakit.p99_ms - direct.p99_ms
        lines.append(
            f"{size}: {router} CPU/request {cpu:.2f}x HAProxy (target <= 1.5x: "
            f"{'met' if cpu <= 1.5 else 'NOT met'}); req/s {rps:.2f}x HAProxy (target >= 0.8x: "
            f"{'met' if rps >= 0.8 else 'NOT met'}); p99 added {added:.2f} ms (target <= 2 ms: "
            f"{'met' if added <= 2 else 'NOT met'})"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="each wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median of)")
    parser.add_argument("--idle-clients", type=int, default=10_000, help="0: skip")
    parser.add_argument("--backend", choices=("nginx", "python"), default="nginx")
    parser.add_argument("--profile-seconds", type=int, default=5, help="0: no profile")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--hakit-command",
        help='how to run hakit instead of "python -m hakit" (split on spaces)',
    )
    parser.add_argument(
        "--no-pure",
        action="store_true",
        help="do not also measure the router uncompiled (HAKIT_PURE_PYTHON=1) as 'pure'",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="also measure another hakit (e.g. another interpreter: "
        '"deb=/tmp/venv-deb/bin/python -m hakit"), interleaved with the others; repeatable',
    )
    args = parser.parse_args(argv)
    for variant in args.variant:
        if "=" not in variant or not variant.split("=", 1)[1].strip():
            parser.error(f"--variant {variant!r}: expected NAME=COMMAND")
    if args.hakit_command:
        HAKIT_COMMAND[:] = args.hakit_command.split()
    for tool in ("wrk", "nginx", "haproxy", "taskset"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin") is None:
            sys.exit(f"{tool} is not installed (see scripts/debian-packages.txt)")
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two CPU cores (load on core 0, the proxy on core 1)")
    nofile = raise_nofile(max(65536, 2 * args.idle_clients + 1000))
    print(f"loadavg at start: {os.getloadavg()[0]:.2f}  (other work on this machine adds noise)")
    print(f"RLIMIT_NOFILE of this script and its children: {nofile}")
    print(f"hakit router modules: {hakit_native.mode}")

    with tempfile.TemporaryDirectory(prefix="hakit-bench-router-") as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "report.lua"
        script.write_text(WRK_REPORT)
        procs: list[Proc] = []
        try:
            backend, backend_port = start_backend(tmp / "backend", args.backend)
            procs.append(backend)
            if not args.skip_throughput:
                run_throughput(tmp, args, backend, backend_port, script, procs)
            if args.idle_clients > 0:
                run_idle(tmp, args, backend_port, procs)
            if args.profile_seconds > 0:
                hakit, port = start_hakit(tmp / "hakit-profile", backend_port)
                procs.append(hakit)
                run_wrk(port, "/small", 1, script)  # warm up
                print()
                print(
                    profile_hakit(
                        hakit.pid, port, args.profile_seconds, script, Path("/tmp/router.svg")
                    )
                )
        finally:
            for proc in reversed(procs):
                proc.stop()
    print(f"loadavg at end: {os.getloadavg()[0]:.2f}")


def run_throughput(
    tmp: Path,
    args: argparse.Namespace,
    backend: Proc,
    backend_port: int,
    script: Path,
    procs: list[Proc],
) -> None:
    hakit, hakit_port = start_hakit(tmp / "hakit", backend_port)
    procs.append(hakit)
    variants: dict[str, tuple[int | None, int]] = {}
    if not args.no_pure and hakit_native.mode.startswith("compiled"):
        # The same sources uncompiled, in the same run: what mypyc gains.
        pure = ["env", f"{hakit_native.PURE_ENV}=1", *HAKIT_COMMAND]
        proc, port = start_hakit(tmp / "hakit-pure", backend_port, None, pure, "pure")
        procs.append(proc)
        variants["pure"] = (proc.pid, port)
    for variant in args.variant:
        name, command = variant.split("=", 1)
        proc, port = start_hakit(tmp / f"hakit-{name}", backend_port, None, command.split(), name)
        procs.append(proc)
        variants[name] = (proc.pid, port)
    haproxy, haproxy_port = start_haproxy_target(tmp / "haproxy", backend_port)
    procs.append(haproxy)
    nginx, nginx_port = start_nginx_proxy(tmp / "nginx", backend_port)
    procs.append(nginx)
    targets: dict[str, tuple[int | None, int]] = {
        "direct": (None, backend_port),
        "hakit": (hakit.pid, hakit_port),
        **variants,
        "haproxy": (haproxy.pid, haproxy_port),
        "nginx": (nginx.pid, nginx_port),
    }
    for name, (_, port) in targets.items():
        print(check_target(name, port))
    routers = {"hakit": hakit.pid} | {name: pid for name, (pid, _) in variants.items() if pid}
    idle_before = {name: cpu_seconds(pid) for name, pid in routers.items()}
    time.sleep(IDLE_SECONDS)
    for name, pid in routers.items():
        idle_cpu = (cpu_seconds(pid) - idle_before[name]) / IDLE_SECONDS
        print(f"{name} router idle CPU: {1000 * idle_cpu:.1f} ms/s (store poll, health checks)")
    for _, port in targets.values():  # warm up: connections, caches, pools
        run_wrk(port, "/small", 1, script)
    results: dict[tuple[str, str], list[Sample]] = {}
    for round_number in range(args.rounds):
        for size, path in PATHS.items():
            for name, (target_pid, port) in targets.items():
                sample = measure(target_pid, backend.pid, port, path, args.seconds, script)
                results.setdefault((size, name), []).append(sample)
                print(
                    f"  round {round_number + 1} {size:<6} {name:<8} {sample.rps:9.0f} req/s "
                    f"p99 {sample.p99_ms:6.2f} ms  CPU "
                    f"{'-' if sample.cpu_us is None else f'{sample.cpu_us:.1f} µs/req':>12}"
                    f"  core 0 {100 * sample.core0:.0f}%",
                    flush=True,
                )
    print()
    print(
        f"wrk -t1 -c50 -d{args.seconds:g}s --latency, keep-alive; medians of {args.rounds} "
        f"interleaved rounds; backend: {args.backend}; load on core 0, proxy alone on core 1"
    )
    print(throughput_table(results, list(targets)))
    for router in ("hakit", *variants):
        print(verdicts(results, router))


def run_idle(tmp: Path, args: argparse.Namespace, backend_port: int, procs: list[Proc]) -> None:
    count = args.idle_clients
    print()
    print(f"{count} idle keep-alive clients (one request each, then idle), each proxy fresh:")
    # What hakit does about its own descriptor limit: start it with a soft limit of 1024.
    probe, _ = start_hakit(tmp / "hakit-nofile", backend_port, nofile=1024)
    try:
        own = nofile_soft_limit(probe.pid)
    finally:
        probe.stop()
    print(
        f"  hakit router started with RLIMIT_NOFILE soft 1024 runs with {own}: "
        + ("it raises its own limit" if own > 1024 else "it does NOT raise its own limit")
    )
    starters: list[tuple[str, Callable[[], tuple[Proc, int]]]] = [
        ("hakit", lambda: start_hakit(tmp / "hakit-idle", backend_port)),
        (
            "haproxy",
            lambda: start_haproxy_target(tmp / "haproxy-idle", backend_port, maxconn=count + 1000),
        ),
        (
            "nginx",
            lambda: start_nginx_proxy(tmp / "nginx-idle", backend_port, connections=count + 1000),
        ),
    ]
    print(f"  {'target':<8} {'RSS before MiB':>15} {'RSS idle MiB':>13} {'peak MiB':>9}")
    for name, start in starters:
        proc, port = start()
        procs.append(proc)
        try:
            check_target(name, port)
            memory = idle_memory(proc.pid, port, count)
        except Exception as error:  # report and go on: one proxy failing is a result too
            print(f"  {name:<8} failed: {type(error).__name__}: {error}")
            continue
        finally:
            proc.stop()
            procs.remove(proc)
        print(
            f"  {name:<8} {memory['rss_before']:>15.1f} {memory['rss_idle']:>13.1f} "
            f"{memory['peak']:>9.1f}"
        )


if __name__ == "__main__":
    main()
