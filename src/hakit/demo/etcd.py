"""A local N-member etcd cluster on loopback, started and stopped by its owner.

Used by ``hakit demo --coordination etcd`` and by the tests
(tests/support/etcd.py ``start_etcd_cluster``). Each member runs ``/usr/bin/etcd``
(Debian package etcd-server) with its data under ``root/<name>/``, on a client
and a peer port found free on 127.0.0.1; all members are listed in
``--initial-cluster``. A member is ready when its own process (not a stranger
that took the port meanwhile) listens on its client port and ``/health``
answers. ``kill``/``restart`` end and restart one member by its PID (a restarted
member rejoins from its data dir); ``stop`` ends every member by PID.

``heartbeat_ms``/``election_ms``: etcd's timing flags; a lease's TTL is at least
1.5 election timeouts, so tests that want 1 s leases pass a short election
timeout (the defaults, 100/1000 ms, suit the demo's 3 s lease).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ETCD = Path("/usr/bin/etcd")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def listens_on(pid: int, port: int) -> bool:
    """Process ``pid`` itself has a listening TCP socket on ``port``."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


@dataclass
class EtcdMember:
    name: str
    datadir: Path
    client_port: int
    peer_port: int
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart) this member; returns at once (``EtcdCluster.wait_ready``)."""
        if self.running:
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        with open(self.datadir / "etcd.log", "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops it in order
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """End this member by its PID (SIGKILL by default: a crash) and reap it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def healthy(self) -> bool:
        if not self.running or self.pid is None or not listens_on(self.pid, self.client_port):
            return False
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as answer:
                return bool(json.loads(answer.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log_tail(self, chars: int = 2000) -> str:
        path = self.datadir / "etcd.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@dataclass
class EtcdCluster:
    root: Path
    members: list[EtcdMember] = field(default_factory=list)
    owns_root: bool = False  # stop() deletes root (a temp dir made for it)

    @property
    def endpoints(self) -> list[str]:
        return [member.endpoint for member in self.members]

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members if m.pid is not None and m.running]

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        self.members[index].kill(sig)

    def restart(self, *indices: int, timeout: float = 30.0) -> None:
        """Start the members at ``indices`` again (together: a member is healthy only once
        a quorum runs) and wait until they are ready."""
        members = [self.members[i] for i in indices]
        for member in members:
            member.start()
        self.wait_ready(members, timeout)

    def wait_ready(self, members: list[EtcdMember] | None = None, timeout: float = 30.0) -> None:
        """Until each member's own process listens and ``/health`` says true."""
        waiting = list(members if members is not None else self.members)
        deadline = time.monotonic() + timeout
        while waiting:
            for member in list(waiting):
                if not member.running:
                    code = member.process.returncode if member.process else None
                    raise RuntimeError(
                        f"etcd member {member.name} exited with {code}: {member.log_tail()}"
                    )
                if member.healthy():
                    waiting.remove(member)
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(m.name for m in waiting)
                raise RuntimeError(f"etcd members {names} not ready within {timeout:g} s")
            time.sleep(0.05)

    def stop(self, *, remove: bool | None = None) -> None:
        """End every member by its PID (SIGTERM, then SIGKILL); delete the data when
        ``remove`` (default: when the cluster made its root itself)."""
        for member in self.members:
            if member.running and member.process is not None:
                member.process.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.running and _wait(member, 10):
                member.kill(signal.SIGKILL)
        if remove if remove is not None else self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def _wait(member: EtcdMember, timeout: float) -> bool:
    """Wait for ``member`` to exit; True if it is still running after ``timeout``."""
    assert member.process is not None
    try:
        member.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return True
    return False


def start_etcd_cluster(
    root: Path,
    size: int = 3,
    *,
    heartbeat_ms: int = 100,
    election_ms: int = 1000,
    timeout: float = 30.0,
    owns_root: bool = False,
) -> EtcdCluster:
    """Start ``size`` members under ``root``; wait until all are ready (stopped on failure)."""
    if not ETCD.is_file():
        raise RuntimeError(f"{ETCD} is missing (Debian package etcd-server)")
    ports = _free_ports(2 * size)
    names = [f"etcd{i + 1}" for i in range(size)]
    peers = ",".join(f"{name}=http://127.0.0.1:{ports[2 * i + 1]}" for i, name in enumerate(names))
    token = f"hakit-{root.name}-{time.monotonic_ns()}"
    cluster = EtcdCluster(root, owns_root=owns_root)
    for i, name in enumerate(names):
        client, peer = ports[2 * i], ports[2 * i + 1]
        datadir = root / name
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        argv = [
            str(ETCD),
            f"--name={name}",
            f"--data-dir={datadir / 'data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster={peers}",
            f"--initial-cluster-token={token}",
            "--initial-cluster-state=new",
            f"--heartbeat-interval={heartbeat_ms}",
            f"--election-timeout={election_ms}",
            # A member back from a partition must not depose the leader (etcd 3.5's
            # default; 3.4's is off): tests/support/hosts.py etcd_members says why.
            "--pre-vote=true",
            "--logger=zap",
            "--log-level=error",
        ]
        cluster.members.append(EtcdMember(name, datadir, client, peer, argv))
    try:
        for member in cluster.members:
            member.start()
        cluster.wait_ready(timeout=timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
