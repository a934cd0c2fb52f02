"""The sd_notify protocol: tell systemd we are ready, what we are doing, and that we live.

systemd passes ``NOTIFY_SOCKET`` (a datagram socket path; ``@`` starts an abstract
one) to a ``Type=notify`` service, and ``WATCHDOG_USEC`` (with ``WATCHDOG_PID``)
when the unit sets ``WatchdogSec=``. A message is a few ``KEY=value`` lines in
one datagram (sd_notify(3)). Written here rather than taken from a library: it is
one ``sendto`` (python-systemd needs libsystemd's headers to build, sdnotify is
unmaintained), and it must never block or fail the agent: a full or missing
socket loses a ping, never a turn of the agent's loop.

Why the watchdog matters for hakit: an agent whose event loop is stuck (a bug, a
deadlock in a library) cannot renew, fence or restart anything, yet its app and
lease would otherwise be judged by its stale words. Pinging from the agent's
50 ms heartbeat (the task that also checks the lease deadline) means the pings
stop exactly when that loop stops; systemd then kills the agent, the shim kills
the app with it (hakit.supervisor), and ``Restart=on-failure`` brings a fresh
agent that sweeps what is left and comes back as a standby.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("hakit.service")

# What systemd hands to the service's main process alone: the app (and its stop
# command) must not inherit them, or it could speak for the agent.
SERVICE_VARIABLES = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)


def without_service_variables(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` minus what systemd meant for this process only (SERVICE_VARIABLES)."""
    return {key: value for key, value in env.items() if key not in SERVICE_VARIABLES}


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings systemd expects (half its ``WatchdogSec``), or None.

    ``WATCHDOG_PID``, when set, names the process the watchdog is for: a child that
    inherited the environment (the app, through the shim) must not ping for us.
    """
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None
    return int(usec) / 1e6 / 2


def socket_address(env: Mapping[str, str]) -> str | bytes | None:
    """Where to send: ``NOTIFY_SOCKET`` as a path, or an abstract address as bytes."""
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        return None  # vsock and other families: not for a local service
    return path


class ServiceNotifier:
    """sd_notify for one process; every method is a no-op outside systemd."""

    def __init__(self, address: str | bytes | None, interval: float | None) -> None:
        self.address = address
        self.interval = interval  # watchdog: seconds between pings, None: no watchdog
        self._last_ping = float("-inf")
        self._failed = False
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> ServiceNotifier:
        env = os.environ if env is None else env
        return cls(socket_address(env), watchdog_interval(env, os.getpid()))

    @property
    def active(self) -> bool:
        return self._sock is not None

    def send(self, message: str) -> bool:
        """One datagram; False (logged once) when it could not be sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError as error:
            if not self._failed:
                log.warning("cannot notify systemd at %r: %s", self.address, error)
            self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send(f"STOPPING=1\nSTATUS={status}")

    def watchdog(self, now: float) -> None:
        """Ping if ``interval`` (half of WatchdogSec) passed since the last one (monotonic)."""
        if self.interval is None or now - self._last_ping < self.interval:
            return
        if self.send("WATCHDOG=1"):
            self._last_ping = now

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
