"""A three-server ZooKeeper ensemble across network namespaces, one server per store "host".

``zookeeper_ensemble(net, root)`` starts one ``QuorumPeerMain`` per store namespace of a
``Lan`` (tests/support/hosts.py), Debian's jars, each with its ``myid`` and the same
``server.N`` lines (quorum port 2888, election port 3888 on each server's own address,
the client port 2181), and yields once every server answers ``ruok`` and one says it
leads. ``ZkMember`` has the interface of ``EtcdMember`` that the chaos run's nemesis uses
(``name``, ``host``, ``kill()``, ``restart()``) and ``leads()``.

``tickTime`` 200 ms, ``syncLimit`` 10 ticks: a follower cut from the leader is dropped
within ~2 s and an election takes about as long; sessions between 400 ms and 60 s. The
servers are stopped by PID (SIGTERM, then SIGKILL) and their directories deleted.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import zookeeper as zk_support
from tests.support.hosts import Host, Lan

CLIENT_PORT = 2181
QUORUM_PORT = 2888
ELECTION_PORT = 3888


def four_letters(host: str, word: bytes, timeout: float = 1.0) -> str:
    """A four-letter word's answer ("" when the server does not answer)."""
    chunks = []
    try:
        with socket.create_connection((host, CLIENT_PORT), timeout=timeout) as conn:
            conn.sendall(word)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                data = conn.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError:
        pass
    return b"".join(chunks).decode(errors="replace")


@dataclass
class ZkMember:
    name: str
    host: Host
    base: Path
    process: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"{self.host.ip}:{CLIENT_PORT}"

    def leads(self) -> bool:
        return "Mode: leader" in four_letters(self.host.ip, b"srvr")

    def serving(self) -> bool:
        return "Mode: " in four_letters(self.host.ip, b"srvr")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL by its PID: a server lost at once, its data directory kept."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start it again on its data directory: it rejoins the ensemble."""
        assert self.process.poll() is not None
        with open(self.base / "zookeeper.log", "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )


def _config(base: Path, me: Host, stores: list[Host]) -> str:
    servers = [
        f"server.{i + 1}={store.ip}:{QUORUM_PORT}:{ELECTION_PORT}" for i, store in enumerate(stores)
    ]
    return "\n".join(
        [
            "tickTime=200",
            "initLimit=50",
            "syncLimit=10",
            f"dataDir={base / 'data'}",
            f"clientPort={CLIENT_PORT}",
            f"clientPortAddress={me.ip}",
            *servers,
            "minSessionTimeout=400",
            "maxSessionTimeout=60000",
            "maxClientCnxns=0",
            "admin.enableServer=false",
            "forceSync=no",
            "4lw.commands.whitelist=ruok,srvr,stat,cons,mntr",
            "",
        ]
    )


@contextmanager
def zookeeper_ensemble(net: Lan, root: Path, timeout: float = 120.0) -> Iterator[list[ZkMember]]:
    """One server per store namespace of ``net``; every one serving and a leader elected
    when it yields; all stopped (by PID) and removed when the block ends."""
    reason = zk_support.unavailable()
    if reason is not None:
        raise RuntimeError(reason)
    jars = [
        str(zk_support.ZOOKEEPER_JAR),
        *(j for j in zk_support.LOGGING_JARS if Path(j).exists()),
    ]
    members: list[ZkMember] = []
    try:
        for index, store in enumerate(net.stores):
            base = root / f"zk{index + 1}"
            (base / "data").mkdir(parents=True)
            (base / "data" / "myid").write_text(f"{index + 1}\n")
            (base / "zoo.cfg").write_text(_config(base, store, net.stores))
            argv = [
                *store.prefix(),
                "java",
                "-Xmx192m",
                "-XX:+UseSerialGC",
                "-Dzookeeper.admin.enableServer=false",
                "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
                "-cp",
                ":".join(jars),
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                str(base / "zoo.cfg"),
            ]
            with open(base / "zookeeper.log", "wb") as log:
                process = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
                )
            members.append(ZkMember(f"zk{index + 1}", store, base, process, argv))
        deadline = time.monotonic() + timeout
        while not (all(m.serving() for m in members) and any(m.leads() for m in members)):
            for member in members:
                if member.process.poll() is not None:
                    text = (member.base / "zookeeper.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"ZooKeeper {member.name} exited: {text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ZooKeeper ensemble did not elect a leader in {timeout} s")
            time.sleep(0.2)
        yield members
    finally:
        for member in members:
            with suppress(OSError, subprocess.SubprocessError):
                member.stop()
        for member in members:
            shutil.rmtree(member.base, ignore_errors=True)
