"""The policy's vocabulary: settings, the events it is fed, the actions it returns.

Plain frozen data, no behaviour beyond formatting, so the agent, the demo's
event log and the tests can share it without importing the state machine.
``hakit.policy`` re-exports the events, actions and settings.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hakit.config import Config, Mode, OnFailedStart, derived_timings
from hakit.contract import AppState
from hakit.history.kinds import AlertKind, EventKind

# --- settings -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicySettings:
    mode: Mode
    restart_attempts: int  # restarts allowed within failure_window before failing over
    failure_window: float  # seconds; failures older than this are forgotten
    startup_timeout: float  # seconds from StartApp to RUNNING before it is a failed start
    health_timeout: float  # patience: timeouts must span at least this long ...
    fall: int  # ... and be this many consecutive ones
    step_down_cooldown: float  # after stepping down, do not take the lease again for this long
    # Cold start: a node that was not the last active waits this long before competing.
    boot_grace: float = 0.0
    no_failover: bool = False  # the node's `nofailover` tag: it never takes the lease
    # failover.on_failed_start = "failover": an active node whose app failed to start
    # restart_attempts times in a row steps down (once) instead of waiting for a human.
    failover_on_failed_start: bool = False

    @classmethod
    def from_config(cls, cfg: Config, node: str | None = None) -> PolicySettings:
        timings = derived_timings(cfg)  # hakit.config.derived: why each multiple of lease_ttl
        return cls(
            mode=cfg.cluster.mode,
            restart_attempts=cfg.failover.restart_attempts,
            failure_window=cfg.failover.failure_window,
            startup_timeout=cfg.app.startup_timeout,
            health_timeout=cfg.health.timeout,
            fall=cfg.health.fall,
            step_down_cooldown=timings.step_down_cooldown,
            boot_grace=timings.boot_grace,
            no_failover=cfg.node(node).no_failover if node is not None else False,
            failover_on_failed_start=cfg.failover.on_failed_start is OnFailedStart.FAILOVER,
        )


# --- events (fed to Policy.handle) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Boot:
    """The agent started; the app is not running.

    What the store remembers for a cold start: ``served_epoch`` is the highest
    epoch this node was ever active under, ``newest_epoch`` the highest any
    node was (``newest_node``). A node that was not the last active waits
    ``boot_grace`` before competing, so the last active (newest data) wins.
    """

    served_epoch: int = 0
    newest_epoch: int = 0
    newest_node: str = ""


@dataclass(frozen=True, slots=True)
class LeaseGained:
    """This node now holds the leader lease (promotion).

    ``takeover``: when the lease was taken over after its holder's lease EXPIRED (node
    loss: the holder did not release it), one clause saying so ("node1's lease of epoch
    3 expired at 12:00:01 without being released"); the promotion is then a failover,
    alerted. Empty for a released lease (switchover, step-down), a cold start, or a
    forced failover (the operator's own action).
    """

    epoch: int
    takeover: str = ""


@dataclass(frozen=True, slots=True)
class LeaseLost:
    """The lease could not be renewed in time, or another node holds it."""

    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class AppStarted:
    """The supervisor started the process asked for by the last StartApp."""

    pid: int


@dataclass(frozen=True, slots=True)
class AppStartFailed:
    """The supervisor could not even start the process (missing executable, ...)."""

    error: str


@dataclass(frozen=True, slots=True)
class AppExited:
    """The app's process is gone. ``expected`` is True when the agent stopped it."""

    pid: int
    returncode: int | None
    oom: bool
    expected: bool
    description: str


@dataclass(frozen=True, slots=True)
class StatusObserved:
    """One probe result. ``database_reachable`` is filled by the agent for ERROR."""

    state: AppState
    detail: str
    database_reachable: bool | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passes: lets deadlines (startup_timeout) fire without another event."""


@dataclass(frozen=True, slots=True)
class Paused:
    """An operator paused the cluster: monitor and report, take no action."""

    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """An operator resumed the cluster: act again."""

    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class HandoverRequested:
    """An operator moves the active role to ``target``.

    ``forced`` False: a switchover (``source``, the active under ``epoch``, drains,
    stops its app and releases the lease; only ``target`` may take it). True: a
    forced failover (``target`` takes the lease at once; the old active fences
    itself when its renewal fails).
    """

    target: str
    source: str  # the lease holder when requested ("" if none)
    epoch: int  # the lease's epoch when requested
    forced: bool
    actor: str
    reason: str
    # "path-loss": not an operator's switchover but the active's own agent handing over,
    # because the routers lost their path to it (hakit.health.datapath); same steps.
    label: str = ""

    @property
    def kind(self) -> EventKind:
        if self.forced:
            return EventKind.FAILOVER
        return EventKind(self.label) if self.label else EventKind.SWITCHOVER

    @property
    def automatic(self) -> bool:
        """Asked by an agent (path loss), not an operator: a failover in the history."""
        return self.label == PATH_LOSS


PATH_LOSS = EventKind.PATH_LOSS


@dataclass(frozen=True, slots=True)
class PathLost:
    """Every fresh router has lost its path to this (active) node while some standby,
    ``target``, is reachable from them (hakit.health.datapath.path_lost)."""

    target: str
    reason: str


@dataclass(frozen=True, slots=True)
class HandoverEnded:
    """The operator's handover intent is gone (done, refused or expired)."""

    reason: str


@dataclass(frozen=True, slots=True)
class LeaseVacant:
    """Nobody holds the lease (fed while paused, so the policy says what it would do)."""


PolicyEvent = (
    Boot
    | LeaseGained
    | LeaseLost
    | AppStarted
    | AppStartFailed
    | AppExited
    | StatusObserved
    | Tick
    | Paused
    | Resumed
    | HandoverRequested
    | HandoverEnded
    | LeaseVacant
    | PathLost
)

# --- actions (returned by Policy.handle, carried out by the agent in order) ----
#
# ``actor``: who caused the action when it is not the node's own agent (an
# operator's command: "operator:alice"); the history records it.


@dataclass(frozen=True, slots=True)
class StartApp:
    reason: str
    actor: str = ""


@dataclass(frozen=True, slots=True)
class StopApp:
    """Graceful stop; ``kill`` = SIGKILL the group at once (self-fencing).

    The agent reports the end with ``AppExited(expected=True)``.
    """

    reason: str
    kill: bool = False
    actor: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)  # facts for programs (hakit why)


@dataclass(frozen=True, slots=True)
class StepDown:
    """Release the leader lease so a standby takes over (the app is already stopped).

    ``kind`` names it in the history: "failover" (after failures) or "switchover".
    ``data``: the facts of the failure it follows (hakit.history.facts), for ``hakit why``.
    """

    reason: str
    kind: EventKind = EventKind.FAILOVER
    actor: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Drain:
    """Take no new users (the router holds them), and let the router see it, before a stop."""

    reason: str
    actor: str = ""


@dataclass(frozen=True, slots=True)
class TakeLease:
    """Forced failover: take the leader lease from its holder under a new epoch."""

    reason: str
    actor: str = ""


@dataclass(frozen=True, slots=True)
class RequestHandover:
    """Write a handover intent to ``target`` (hakit.operator.intents), as an operator's switchover
    would: this node then drains, stops and releases the lease, and only ``target`` may
    take it. ``kind``: what the history calls it ("path-loss")."""

    target: str
    reason: str
    kind: EventKind = PATH_LOSS


@dataclass(frozen=True, slots=True)
class EndHandover:
    """Clear the operator's handover intent: done, or refused by its target."""

    reason: str
    actor: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    """Notify a human. ``cause``: EventCause.STEP_DOWN when the node steps down after it;
    ``data``: the facts of the failure (hakit.history.facts: the restart budget, the
    failed starts, why no failover). The agent records both in the event's data, where
    ``hakit why`` reads them."""

    kind: AlertKind
    reason: str
    manual_intervention: bool = False
    cause: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Record:
    """Informational history entry (boot, detected, running, promoted, status...).
    ``data``: facts for programs (``hakit why``), beside the sentence for people."""

    kind: EventKind
    reason: str
    actor: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


Action = (
    StartApp
    | StopApp
    | StepDown
    | Alert
    | Record
    | Drain
    | TakeLease
    | EndHandover
    | RequestHandover
)

# --- states and the read-only view ---------------------------------------------


class PolicyState(enum.StrEnum):
    INIT = "INIT"  # constructed, Boot not yet fed
    STANDBY = "STANDBY"  # not active, no app process on this node
    STARTING = "STARTING"  # StartApp sent, waiting for RUNNING (active, or a warm standby)
    RUNNING = "RUNNING"  # the app answered; health is watched
    RESTARTING = "RESTARTING"  # StopApp sent; StartApp follows the exit
    STEPPING_DOWN = "STEPPING_DOWN"  # StopApp sent; StepDown follows the exit (shared storage)
    FENCED = "FENCED"  # lease lost: app killed, waiting for its exit
    MANUAL = "MANUAL"  # gave up: manual intervention needed
    PAUSED = "PAUSED"  # operator pause: the app is not running here; acting again on resume


class Role(enum.StrEnum):
    ACTIVE = "active"
    STANDBY = "standby"


@dataclass(frozen=True, slots=True)
class PolicyView:
    node: str
    mode: Mode
    state: PolicyState
    role: Role
    epoch: int  # the epoch this node acts under; 0 when not active
    pid: int | None  # the app process this policy believes alive (None: none or unknown)
    app_running: bool  # a process is believed to exist (starting, running or stopping)
    failure_times: tuple[float, ...]  # failures inside failure_window, oldest first
    restarts: int  # restarts after failures since boot (failed-start retries included)
    failed_starts: int  # consecutive failed starts
    cooldown_until: float | None  # may_lead is False before this (after a step-down)
    last_reason: str  # reason of the last action returned
    paused: bool = False  # an operator paused the cluster: no action is taken
    handover_target: str | None = None  # an operator's switchover / failover in progress


# --- wording ---------------------------------------------------------------------


def describe_exit(event: AppExited) -> str:
    """The supervisor's description, or one built from the return code."""
    if event.description:
        return event.description
    code = event.returncode
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
