"""A throwaway standalone ZooKeeper for tests: java with Debian's jars, loopback, free port.

Like tests/mariadbserver.py: a generated ``zoo.cfg`` in a temporary directory, the
client port a free one on 127.0.0.1 (checked to be this server's own listening
socket, tests/support/procnet.py), the admin server off, and no system service
involved (Debian's ``zookeeper`` service is never used). The server is stopped by
its pid (SIGTERM, then SIGKILL) and its directory deleted.

``tickTime`` is short (200 ms) and the session bounds wide (400 ms .. 60 s), so a
test may ask for a short session and the contract tests for one longer than their
lease TTL. ``forceSync=no``: the data is thrown away.

``shared_server()`` starts one server per test process, lazily, the first time a
test needs it; the session fixture ``zookeeper_server_lifetime``
(tests/unit/coord/conftest.py) stops it when the session ends.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hakit.demo.cluster import free_ports
from tests.support.procnet import listens_on

if TYPE_CHECKING:
    from hakit.coord.zookeeper import ZooKeeperCoordinator

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # Debian's libzookeeper-java
TEST_PREFIX = "/hakit-test"  # each test's cluster under it
MAIN_CLASS = "org.apache.zookeeper.server.ZooKeeperServerMain"
# The jar's manifest lists its dependencies (Class-Path); a logging binding is added
# so that the server logs to its own file instead of warning about a missing one.
LOGGING_JARS = ("/usr/share/java/slf4j-simple.jar",)


def unavailable() -> str | None:
    """Why no ZooKeeper can be started here (None: it can)."""
    if shutil.which("java") is None:
        return "java is not installed (Debian: default-jre-headless)"
    if not ZOOKEEPER_JAR.is_file():
        return f"ZooKeeper is not installed ({ZOOKEEPER_JAR} missing; Debian: libzookeeper-java)"
    return None


@dataclass
class ZooKeeperServer:
    base: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.base / "zookeeper.log"

    def stop(self) -> None:
        """Stop the server by its pid and delete its data."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.base, ignore_errors=True)


def _config(base: Path, port: int) -> str:
    return "\n".join(
        [
            "tickTime=200",
            f"dataDir={base / 'data'}",
            f"clientPort={port}",
            "clientPortAddress=127.0.0.1",
            "minSessionTimeout=400",
            "maxSessionTimeout=60000",
            "maxClientCnxns=0",
            "admin.enableServer=false",
            "forceSync=no",
            "4lw.commands.whitelist=ruok",
            "",
        ]
    )


def _answers(port: int) -> bool:
    """The server answers ``ruok`` with ``imok``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"ruok")
            return conn.recv(16) == b"imok"
    except OSError:
        return False


def start_zookeeper(timeout: float = 60.0) -> ZooKeeperServer:
    reason = unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    base = Path(tempfile.mkdtemp(prefix="hakit-zookeeper-"))
    (base / "data").mkdir()
    (port,) = free_ports(1)
    (base / "zoo.cfg").write_text(_config(base, port))
    classpath = ":".join([str(ZOOKEEPER_JAR), *(j for j in LOGGING_JARS if os.path.exists(j))])
    with open(base / "zookeeper.log", "wb") as log:
        process = subprocess.Popen(
            [
                "java",
                "-Xmx256m",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",  # starts faster; the tests are not a benchmark
                "-Dzookeeper.admin.enableServer=false",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                classpath,
                MAIN_CLASS,
                str(base / "zoo.cfg"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ZooKeeperServer(base, port, process)
    try:
        deadline = time.monotonic() + timeout
        while not (listens_on(process.pid, port) and _answers(port)):
            if process.poll() is not None:
                raise RuntimeError(f"ZooKeeper exited: {server.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ZooKeeper did not answer within {timeout} s")
            time.sleep(0.1)
        _first_session(server.hosts, deadline)
    except BaseException:
        server.stop()
        raise
    return server


def _first_session(hosts: str, deadline: float) -> None:
    """Open and close one session: a JVM that just answered ``ruok`` on a loaded machine
    may take seconds more for its first session, which a test's call timeout must not
    pay for (seen: a 10 s connection time-out in the first test of a worker)."""
    from kazoo.client import KazooClient

    client = KazooClient(hosts=hosts, timeout=10.0)
    try:
        client.start(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        client.stop()
        client.close()


_lock = threading.Lock()
_shared: ZooKeeperServer | None = None


def shared_server() -> ZooKeeperServer:
    """This process's test server, started at the first call."""
    global _shared
    with _lock:
        if _shared is None or _shared.process.poll() is not None:
            _shared = start_zookeeper()
        return _shared


def stop_shared_server() -> None:
    global _shared
    with _lock:
        server, _shared = _shared, None
    if server is not None:
        server.stop()


def contract_store(directory: Path, clock: Callable[[], float]) -> ZooKeeperCoordinator:
    """A store for the backend contract tests (tests/unit/coord/test_contract.py): one
    cluster per test directory on this process's server, ``clock`` standing in for the
    server's clock (the tests move it), a session longer than their lease TTL."""
    import pytest

    from hakit.coord.zookeeper import ZooKeeperCoordinator

    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    server = shared_server()
    cluster = "t-" + hashlib.sha1(str(directory).encode()).hexdigest()[:16]
    return ZooKeeperCoordinator(
        server.hosts, f"{TEST_PREFIX}/{cluster}", session_timeout=30.0, timeout=10.0, clock=clock
    )
