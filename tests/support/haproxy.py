"""A real HAProxy in front of given backends, for differential tests and the benchmark.

``start_haproxy`` renders a config, runs ``haproxy -db -f <cfg>`` (foreground,
one process: its PID is the proxy, so /proc/<pid>/stat is the proxy's own CPU
time), waits until that very process listens on its port, and returns a handle
whose ``stop()`` ends it by PID. A port picked free may be taken by someone
else before HAProxy binds it (tests run in parallel): HAProxy then exits, and
the start is retried on new ports.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hakit.demo.cluster import free_port
from tests.support.procnet import listens_on

# The sticky cookie the way the vendor guides configure HAProxy for Jira/Bitbucket.
STICKY_COOKIE = "SERVERID insert indirect nocache"


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    host: str = "127.0.0.1"
    cookie: str = ""  # the SERVERID value for this server; default: its name


@dataclass(frozen=True)
class HAProxyOptions:
    cookie: str | None = STICKY_COOKIE  # `cookie ...` line of the backend; None: no stickiness
    forwardfor: bool = True  # option forwardfor (X-Forwarded-For appended)
    nbthread: int = 1  # the hakit router is one event loop: compare one thread with one
    maxconn: int = 4096
    timeout_client: str = "30s"
    timeout_server: str = "30s"
    extra_global: tuple[str, ...] = field(default=())  # more lines for the global section
    extra_defaults: tuple[str, ...] = field(default=())  # more lines for the defaults section


def render_config(
    port: int, servers: Sequence[Server], options: HAProxyOptions, host: str = "127.0.0.1"
) -> str:
    """An HAProxy 2.x config: one HTTP frontend on host:port, one backend with ``servers``."""
    lines = [
        "global",
        f"    nbthread {options.nbthread}",
        f"    maxconn {options.maxconn}",
        *(f"    {line}" for line in options.extra_global),
        "defaults",
        "    mode http",
        "    option http-keep-alive",
        "    timeout connect 5s",
        f"    timeout client {options.timeout_client}",
        f"    timeout server {options.timeout_server}",
        "    timeout http-request 10s",
        f"    maxconn {options.maxconn}",
        *(f"    {line}" for line in options.extra_defaults),
        "frontend web",
        f"    bind {host}:{port}",
        "    default_backend app",
        "backend app",
    ]
    if options.forwardfor:
        lines.append("    option forwardfor")
    if options.cookie is not None:
        lines.append(f"    cookie {options.cookie}")
    for server in servers:
        cookie = f" cookie {server.cookie or server.name}" if options.cookie is not None else ""
        lines.append(f"    server {server.name} {server.host}:{server.port}{cookie}")
    return "\n".join(lines) + "\n"


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise RuntimeError(
            "haproxy is not installed; it is listed in scripts/debian-packages.txt "
            "(apt-get install -y haproxy, or run `make bootstrap` as root)"
        )
    return found


class HAProxy:
    """One running HAProxy process (started by ``start_haproxy``)."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, config: Path, log: Path):
        self.process = process
        self.port = port
        self.config = config
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        """End this HAProxy by its PID: SIGTERM (immediate stop), SIGKILL if it lingers."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _launch(
    workdir: Path, port: int, text: str, prefix: Sequence[str], timeout: float
) -> HAProxy | None:
    """Start one HAProxy; None if it exited (its port was taken meanwhile)."""
    config = workdir / f"haproxy-{port}.cfg"
    config.write_text(text)
    log = workdir / f"haproxy-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*prefix, haproxy_binary(), "-db", "-f", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    haproxy = HAProxy(process, port, config, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        if listens_on(process.pid, port):
            return haproxy
        time.sleep(0.02)
    haproxy.stop()
    raise RuntimeError(f"haproxy did not listen on {port} within {timeout} s; see {log}")


def start_haproxy(
    workdir: Path,
    servers: Sequence[Server],
    options: HAProxyOptions | None = None,
    *,
    prefix: Sequence[str] = (),
    port: int | None = None,
    timeout: float = 10.0,
    attempts: int = 3,
) -> HAProxy:
    """Run HAProxy in front of ``servers``; ``prefix`` wraps the command (e.g. taskset -c 1).

    ``port`` None picks a free one (retried when someone else takes it first).
    """
    options = options or HAProxyOptions()
    workdir.mkdir(parents=True, exist_ok=True)
    last_log = ""
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        haproxy = _launch(workdir, chosen, render_config(chosen, servers, options), prefix, timeout)
        if haproxy is not None:
            return haproxy
        last_log = (workdir / f"haproxy-{chosen}.log").read_text(errors="replace")
        if port is not None:
            break
    raise RuntimeError(f"haproxy failed to start:\n{last_log[-2000:]}")
