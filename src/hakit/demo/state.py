"""Which contract state the app is in, and the thread-safe pieces it is decided from."""

from __future__ import annotations

import enum
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hakit.contract import AppState
from hakit.demo.database import DatabaseStatus
from hakit.errors import HakitError


class Phase(enum.Enum):
    STARTING = "starting"  # port open, startup delay running
    READY = "ready"  # serving
    STOPPING = "stopping"  # SIGTERM received, draining


def decide_state(phase: Phase, maintenance: bool, database: DatabaseStatus | None) -> AppState:
    """The state ``/status`` reports. ``database`` is only read while READY.

    A lost database wins over maintenance: hiding an ERROR behind MAINTENANCE
    would keep the manager from alerting.
    """
    if phase is Phase.STARTING:
        return AppState.STARTING
    if phase is Phase.STOPPING:
        return AppState.STOPPING
    if database is None or not database.reachable:
        return AppState.ERROR
    if maintenance:
        return AppState.MAINTENANCE
    return AppState.RUNNING if database.configured else AppState.FIRST_RUN


class Lifecycle:
    """The phase plus a count of requests in flight, so a stop can drain them."""

    def __init__(self) -> None:
        self._phase = Phase.STARTING
        self._in_flight = 0
        self._changed = threading.Condition()

    @property
    def phase(self) -> Phase:
        return self._phase

    def enter(self, phase: Phase) -> None:
        with self._changed:
            self._phase = phase

    @contextmanager
    def request(self) -> Iterator[None]:
        with self._changed:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def wait_idle(self, timeout: float) -> int:
        """Wait until no request is in flight or ``timeout`` passes; returns those left."""
        with self._changed:
            self._changed.wait_for(lambda: self._in_flight == 0, timeout=timeout)
            return self._in_flight


class MaintenanceActive(HakitError):
    """A write was refused because the maintenance lock is held."""


class LockHeld(HakitError):
    """The maintenance lock is already held by someone else."""


class MaintenanceLock:
    """Bitbucket-backup-client style lock: while held, writes are refused.

    Acquiring waits for writes already in progress, so a snapshot taken under
    the lock sees no half-done write (attachment without its row).
    """

    def __init__(self) -> None:
        self._token: str | None = None
        self._writes = 0
        self._changed = threading.Condition()

    @property
    def held(self) -> bool:
        return self._token is not None

    @property
    def writes_in_progress(self) -> int:
        return self._writes

    def acquire(self, timeout: float) -> str:
        with self._changed:
            if self._token is not None:
                raise LockHeld("the maintenance lock is already held; release it first")
            token = secrets.token_hex(16)
            self._token = token  # new writes are refused from here on
            if not self._changed.wait_for(lambda: self._writes == 0, timeout=timeout):
                self._token = None
                raise LockHeld(
                    f"{self._writes} writes still in progress after {timeout:.0f} s; try again"
                )
            return token

    def release(self, token: str) -> bool:
        with self._changed:
            held = self._token
            if held is None or not token.isascii() or not secrets.compare_digest(token, held):
                return False
            self._token = None
            return True

    @contextmanager
    def write(self) -> Iterator[None]:
        """Hold a write slot; raises MaintenanceActive while the lock is held."""
        with self._changed:
            if self._token is not None:
                raise MaintenanceActive(
                    "maintenance in progress (a backup holds the lock): writes are refused "
                    "until it is released; try again later"
                )
            self._writes += 1
        try:
            yield
        finally:
            with self._changed:
                self._writes -= 1
                self._changed.notify_all()


class HangGate:
    """The hang fault: every request passes this gate, and a hang closes it for N s,
    like a stop-the-world GC pause in which no thread answers anything."""

    def __init__(self) -> None:
        self._gate = threading.Lock()

    def pass_through(self) -> None:
        with self._gate:
            pass

    def close_for(self, seconds: float) -> None:
        # Closed before returning, so no request sneaks through between the fault
        # being accepted and the pause starting. A plain Lock may be released by
        # another thread, which the timer does.
        self._gate.acquire()
        timer = threading.Timer(seconds, self._gate.release)
        timer.daemon = True
        timer.start()
