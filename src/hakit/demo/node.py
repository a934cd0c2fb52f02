"""Everything one running sample app holds, shared by its request handlers."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from hakit.contract import AppState
from hakit.demo.attachments import Attachments
from hakit.demo.database import Database
from hakit.demo.log import LineLog
from hakit.demo.options import DemoOptions
from hakit.demo.sessions import Sessions
from hakit.demo.state import HangGate, Lifecycle, MaintenanceLock, Phase, decide_state


@dataclass
class DemoNode:
    options: DemoOptions
    log: LineLog
    database: Database
    attachments: Attachments
    sessions: Sessions
    name: str = "-"  # X-Hakit-Node: the route, or the port when there is none
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    maintenance: MaintenanceLock = field(default_factory=MaintenanceLock)
    hang: HangGate = field(default_factory=HangGate)
    _last_reported: AppState | None = field(default=None, init=False)
    _report_lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def current_state(self) -> AppState:
        """Read the world (the database, only when it matters), then decide."""
        phase = self.lifecycle.phase
        database = self.database.status() if phase is Phase.READY else None
        state = decide_state(phase, self.maintenance.held, database)
        with self._report_lock:
            changed = state is not self._last_reported
            self._last_reported = state
        if changed:
            # A state change is a lifecycle step: say it once, with the reason.
            reason = f" ({database.problem})" if database and database.problem else ""
            self.log(f"state {state}{reason}")
        return state
