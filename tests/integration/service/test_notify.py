"""A real agent and router started the way systemd starts a Type=notify service with
WatchdogSec=: they say READY once started, ping while their event loop runs, stop
pinging when it is frozen, say STOPPING on SIGTERM, and the app inherits none of it."""

from __future__ import annotations

import itertools
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hakit.demo.cluster import DemoCluster, DemoSettings, free_port
from tests.support.waiting import wait_until

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4s: a ping every 0.2 s


@dataclass
class Systemd:
    """The notify socket's listening end, as systemd holds it: every message, when it came."""

    path: Path
    sock: socket.socket = field(init=False)
    messages: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self.stopped:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append((time.monotonic(), data.decode()))

    def mark(self, text: str) -> None:
        """Put ``text`` in the socket's queue, behind every message sent before it, and wait
        until it is read: the datagrams of one socket are received in the order sent."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.sendto(text.encode(), str(self.path))
        wait_until(lambda: self.said(text), 5, f"{text} read back")

    def said_between(self, first: str, last: str, text: str) -> list[str]:
        """The messages containing ``text`` that came after ``first`` and before ``last``."""
        with self.lock:
            messages = [message for _, message in self.messages]
        start, end = messages.index(first), messages.index(last)
        return [message for message in messages[start + 1 : end] if text in message]

    def said(self, text: str) -> list[float]:
        """When a message containing ``text`` came."""
        with self.lock:
            return [at for at, message in self.messages if text in message]

    def close(self) -> None:
        self.stopped = True
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Systemd]:
    listener = Systemd(tmp_path / "notify")
    # What systemd puts in a notify service's environment (the spawned processes inherit it).
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    try:
        yield listener
    finally:
        listener.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DemoCluster]:
    made = DemoCluster(
        tmp_path / "cluster", DemoSettings(router_port=free_port(), startup_delay=0.2)
    )
    try:
        yield made
    finally:
        made.stop()
        made.close()


def _state(pid: int) -> str:
    """The process's state letter (``T``: stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def largest_gap(times: list[float], start: float, end: float) -> float:
    inside = [t for t in times if start <= t <= end]
    marks = [start, *inside, end]
    return max(b - a for a, b in itertools.pairwise(marks))


def test_the_agent_notifies_pings_and_stops_pinging_when_frozen(
    cluster: DemoCluster, systemd: Systemd
) -> None:
    agent = cluster.start_agent("node1")
    wait_until(lambda: systemd.said("READY=1"), 30, "the agent's READY=1")
    app_pid = wait_until(
        lambda: cluster.active_running() == "node1" and cluster.app_pid("node1"),
        60,
        "node1's app running",
    )
    # Pings while the agent's loop runs: every 0.2 s, never a gap systemd would kill for.
    before = time.monotonic()
    time.sleep(1.0)
    assert largest_gap(systemd.said("WATCHDOG=1"), before, time.monotonic()) < 0.4
    # Frozen (its event loop with it): the pings stop; a watchdog would kill it now.
    # Judged by the messages' order, not by when the listener read them: a marker sent
    # once the agent is stopped comes after every ping it sent before.
    agent.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: _state(agent.pid) == "T", 5, "the agent stopped")
        systemd.mark("MARK=frozen")
        time.sleep(1.0)  # five ping intervals frozen
        systemd.mark("MARK=thawing")
    finally:
        agent.send_signal(signal.SIGCONT)
    thawed = time.monotonic()
    assert systemd.said_between("MARK=frozen", "MARK=thawing", "WATCHDOG=1") == []
    wait_until(
        lambda: [t for t in systemd.said("WATCHDOG=1") if t > thawed], 5, "pings after SIGCONT"
    )
    # The app got none of what systemd meant for the agent.
    environ = Path(f"/proc/{app_pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0] for entry in environ if entry}
    assert b"NOTIFY_SOCKET" not in names and b"WATCHDOG_USEC" not in names
    assert b"HAKIT_NODE" in names  # the environment hakit does give it
    # A planned stop says so first.
    agent.send_signal(signal.SIGTERM)
    wait_until(lambda: systemd.said("STOPPING=1"), 30, "the agent's STOPPING=1")
    agent.wait(60)


def test_the_router_notifies_once_it_listens_and_pings(
    cluster: DemoCluster, systemd: Systemd
) -> None:
    router = cluster.start_router()
    ready = wait_until(lambda: systemd.said("READY=1"), 30, "the router's READY=1")
    with systemd.lock:
        status = next(message for _, message in systemd.messages if "READY=1" in message)
    assert "routing on 127.0.0.1:" in status
    port = int(status.rsplit(":", 1)[1])
    socket.create_connection(("127.0.0.1", port), timeout=5).close()  # listening when it said so
    time.sleep(1.0)
    assert largest_gap(systemd.said("WATCHDOG=1"), ready[0], time.monotonic()) < 0.4
    router.send_signal(signal.SIGTERM)
    wait_until(lambda: systemd.said("STOPPING=1"), 30, "the router's STOPPING=1")
    router.wait(30)
