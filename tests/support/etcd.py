"""A throwaway single-member etcd for tests: a temp data dir, loopback, free ports.

``start_etcd()`` runs Debian's ``/usr/bin/etcd`` (package etcd-server, see
scripts/debian-packages.txt) on two free loopback ports (client, peer), waits
until it answers, and checks that the client port is this very process's (not a
stranger's that took the port meanwhile). ``EtcdServer.stop`` ends it by its PID
and deletes its data. Tests that share one server keep apart by key prefix
(``unique_prefix``).

``start_etcd_cluster()``: an N-member cluster (three by default) on loopback, its
members killed and restarted by PID (hakit.demo.etcd, which the demo uses too).

Timing flags: a 10 ms heartbeat and 100 ms election timeout make etcd's
minimum lease TTL (1.5 election timeouts) 150 ms, so tests can ask for 1 s
leases and etcd grants exactly that (with the defaults the minimum is 2 s).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from etcd3gw.client import Etcd3Client

from hakit.demo.cluster import free_ports
from hakit.demo.etcd import EtcdCluster
from hakit.demo.etcd import start_etcd_cluster as start_etcd_cluster_in
from tests.support.procnet import listens_on

ETCD = Path("/usr/bin/etcd")
MISSING = f"{ETCD} is missing (Debian package etcd-server; `make test` installs it)"
_prefixes = itertools.count(1)


def etcd_available() -> bool:
    return ETCD.is_file() and os.access(ETCD, os.X_OK)


@dataclass
class EtcdServer:
    datadir: Path
    client_port: int
    peer_port: int
    process: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def client(self) -> Etcd3Client:
        """A plain etcd3gw client of this server (for tests looking at keys directly)."""
        return Etcd3Client(host="127.0.0.1", port=self.client_port, timeout=5, api_path="/v3/")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL) by its PID; delete its data."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        shutil.rmtree(self.datadir, ignore_errors=True)


def unique_prefix(tag: str = "t") -> str:
    """A key prefix no other test in this process (nor other workers) uses."""
    return f"/hakit-test-{os.getpid()}-{next(_prefixes)}-{tag}"


SHM = Path("/dev/shm")  # tmpfs on Linux
SHM_NEEDED = 2 << 30  # a few clusters of three members at once, with room to spare


def data_root(prefix: str) -> Path:
    """A new directory for etcd data, on tmpfs (/dev/shm) where there is one: the tests
    are about hakit's use of etcd, and an fsync stalled by a busy CI disk past a store
    call's timeout would fail them for a reason they do not test. A small /dev/shm (a
    container's 64 MB) would not hold a member's 64 MB preallocated WAL: below
    SHM_NEEDED free, the temp directory's disk it is."""
    try:
        usable = os.access(SHM, os.W_OK) and _free_bytes(SHM) >= SHM_NEEDED
    except OSError:
        usable = False
    return Path(tempfile.mkdtemp(prefix=prefix, dir=SHM if usable else None))


def _free_bytes(path: Path) -> int:
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


def start_etcd(timeout: float = 30.0) -> EtcdServer:
    datadir = data_root("hakit-etcd-")
    client, peer = free_ports(2)
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    argv = [
        str(ETCD),
        "--name=test",
        f"--data-dir={datadir / 'data'}",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=test={peer_url}",
        "--initial-cluster-state=new",
        "--heartbeat-interval=10",
        "--election-timeout=100",
        "--logger=zap",
        "--log-level=error",
    ]
    log = open(datadir / "etcd.log", "wb")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()
    server = EtcdServer(datadir, client, peer, process)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: EtcdServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not server.running:
            text = (server.datadir / "etcd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd exited with {server.process.returncode}: {text}")
        if listens_on(server.process.pid, server.client_port):
            try:
                with urllib.request.urlopen(server.endpoint + "/health", timeout=1) as answer:
                    if b'"true"' in answer.read():
                        return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"etcd did not become ready on {server.endpoint} in {timeout} s")
        time.sleep(0.05)


def start_etcd_cluster(size: int = 3, timeout: float = 60.0) -> EtcdCluster:
    """A throwaway ``size``-member etcd cluster on loopback (hakit.demo.etcd): a temp
    root deleted by ``stop()``; ``endpoints``, ``members[i]`` (``endpoint``, ``pid``,
    ``running``), ``kill(i)`` (SIGKILL by PID), ``restart(*indices)``, ``stop()``.

    Timing: 50 ms heartbeat, 500 ms election timeout (leases of 1 s are granted as
    asked; the 2-core test machine keeps its leader at that pace)."""
    root = data_root("hakit-etcd-cluster-")
    cluster = start_etcd_cluster_in(
        root, size, heartbeat_ms=50, election_ms=500, timeout=timeout, owns_root=True
    )
    for member in cluster.members:
        assert member.pid is not None and listens_on(member.pid, member.client_port)
    return cluster
