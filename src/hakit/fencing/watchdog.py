"""The lease watchdog: the thread that kills this node's app at the lease deadline, even
when the agent's main loop is blocked (the last layer of self-fencing, hakit.fencing.fence).

:func:`kill_group_now` is the kill itself, done synchronously so nothing else of the
agent runs first; :class:`LeaseWatchdog` does it from a thread of its own, so a main loop
that is blocked (on a store that is locked or slow, say) cannot keep the app alive past
the lease. The shim (hakit.supervisor.shim) keeps the same deadline with the same rule
(hakit.supervisor.lifeline) from outside the agent.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from hakit.supervisor.lifeline import DeadlineKeeper

log = logging.getLogger("hakit.fence")  # the name it logged under in fence.py


def kill_group_now(pgid: int | None) -> bool:
    """SIGKILL the process group ``pgid`` synchronously; False when it is already gone."""
    if pgid is None or pgid <= 1:
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class LeaseWatchdog:
    """Kills the app's process group at the lease deadline, whatever the agent's main
    loop is doing.

    The agent's event loop checks the deadline every 50 ms too, but anything that
    blocks that loop (a synchronous write to a store that is locked or slow, a bug)
    would hold its self-fence back past the lease's end: a thread of its own is not
    held back. It cannot tell a blocked loop from a frozen process by itself, so:

    - it ran at the deadline (its own ticks are regular): kill, now;
    - it did not run at the deadline either (a gap of its own ticks longer than
      ``threshold`` spans it: the whole agent was frozen, hakit.agent.stall): leave the
      decision to the main loop, which renews the lease on waking when nobody took
      over (``LeaseKeeper.check_deadline``, hakit.agent.lease) and re-arms; kill only
      if it has done neither within ``grace`` after waking.

    ``arm``/``disarm`` come from the main loop; ``fired`` tells it the watchdog
    killed (the reason), so it fences itself in the policy too. ``step`` is the
    decision, fed the monotonic time of each tick; ``start`` runs it in a thread.
    """

    def __init__(
        self,
        pgid: Callable[[], int | None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        period: float = 0.05,
        threshold: float = 1.0,
        grace: float = 3.0,
        on_fire: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self._pgid = pgid
        self._monotonic = monotonic
        self._period = period
        self._on_fire = on_fire
        self._lock = threading.Lock()
        # The rule is the shim's too (hakit.supervisor.lifeline): one decision, two keepers.
        self._keeper = DeadlineKeeper(threshold=threshold, grace=grace)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    def arm(self, deadline: float) -> None:
        """The lease must be renewed by ``deadline`` (monotonic), or the app dies then."""
        with self._lock:
            self._keeper.arm(deadline)

    def disarm(self) -> None:
        """No lease to guard (standby, or the main loop fenced itself): forget a kill too."""
        with self._lock:
            self._keeper.disarm()
            self.fired = None

    def take_fired(self) -> str | None:
        """Why the watchdog killed the app since the last call (None: it did not)."""
        with self._lock:
            fired, self.fired = self.fired, None
            return fired

    def step(self, now: float) -> bool:
        """One tick at ``now``: True when the app's group must be killed now."""
        with self._lock:
            late = self._keeper.step(now)
            if late is None:
                return False
            self.fired = (
                f"lease not renewed before its deadline ({late:.1f} s late: the store was too "
                "slow or unreachable; killed by the agent's watchdog thread)"
            )
            return True

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            if self.step(self._monotonic()):
                pgid = self._pgid()
                if kill_group_now(pgid):
                    log.warning("self-fencing (watchdog): killed app process group %s", pgid)
                reason = self.fired
                if reason is not None:
                    self._on_fire(reason)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
