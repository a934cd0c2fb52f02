"""The history's vocabulary, defined once: event kinds, alert kinds, the causes events
carry in ``data``, and what ``[notify] events`` may select (and selects by default).

StrEnums whose values are the strings stored events and configs have always used,
so an old history and an old config read the same. No hakit imports: the policy,
the agent, the config, notify and ``hakit why`` all take their words from here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final


class EventKind(enum.StrEnum):
    """``Event.kind``: what an entry of the history is about."""

    # the agent itself
    AGENT = "agent"  # started; what it found left by an earlier agent (data: UNCLEAN_END, ...)
    BOOT = "boot"  # the policy's first word: the mode it runs in
    STALL = "stall"  # the agent was frozen (data: seconds)
    INTERNAL = "internal"  # a bug in hakit, or an edge that failed: the node stays supervised
    # the app
    START = "start"  # asked to start
    STARTED = "started"  # its process runs
    RUNNING = "running"  # it answered RUNNING / FIRST_RUN after a start
    STATUS = "status"  # its /status changed
    DETECTED = "detected"  # a first bad /status, not yet a failure
    STOP = "stop"  # asked to stop (or killed: self-fencing)
    STOPPED = "stopped"  # gone while hakit waits for a human
    # the lease and the active role
    LEASE = "lease"  # lost or released (data: cause)
    PROMOTED = "promoted"
    FENCE = "fence"  # fencing before a promotion (data: target, result, epoch, ...)
    FENCED = "fenced"  # the app is gone after self-fencing
    RESET = "reset"  # an operator reset the node
    FAILOVER = "failover"  # a step-down after failures, or an operator's forced failover
    SWITCHOVER = "switchover"  # an operator's planned move
    PATH_LOSS = "path-loss"  # the active hands over: the routers lost their path to it
    DATA_PATH = "data-path"  # what the routers report of their path to the lease holder
    DRAIN = "drain"  # the app takes no new users before a planned stop
    ALERT = "alert"  # a human is told (data: alert = an AlertKind, manual_intervention, cause)
    # the pause
    PAUSE = "pause"  # an operator paused the cluster
    RESUME = "resume"
    PAUSED = "paused"  # what an agent would have done while paused
    # neither a node's nor the policy's
    OPERATOR = "operator"  # an operator's command without a kind of its own
    STORE = "store"  # the coordination store was created or replaced
    # failsafe mode (hakit.policy.failsafe; data: failsafe = which case, confirmed, missing)
    FAILSAFE = "failsafe"
    # replicated storage (hakit.agent.replication; data: generation, data_loss_window, forced,
    # error): a promotion's data-loss window, a refused promotion, a failed pull or apply
    REPLICATION = "replication"
    # scheduled snapshots by the active's agent (hakit.agent.snapshots; data: generation,
    # files, bytes_written, seconds, pruned / error)
    SNAPSHOT = "snapshot"  # a generation was captured (and retention applied)
    SNAPSHOT_FAILED = "snapshot-failed"  # a capture failed or was abandoned (lease lost)
    # scheduled backups by the active's agent, health checks by every agent
    # (hakit.agent.backups; data: generation, seconds / error, failures / status, messages)
    BACKUP = "backup"  # a generation was backed up to the backup target
    BACKUP_FAILED = "backup-failed"  # a backup failed or was abandoned (lease lost)
    BACKUP_STALE = "backup-stale"  # the newest backup is older than [backup] stale_after
    BACKUP_CHECK = "backup-check"  # the backup health check's result (when not ok, or changed)
    # scheduled restore drills by the standbys' agents (hakit.agent.drills; data: the drill's
    # record: generation, taken_ns, checks / error, failures / abandoned)
    BACKUP_DRILL = "backup-drill"  # a drill passed
    BACKUP_DRILL_FAILED = "backup-drill-failed"  # a drill failed or was abandoned


class AlertKind(enum.StrEnum):
    """The policy's ``Alert.kind``: what went wrong (``data["alert"]`` of an alert event)."""

    FAILOVER = "failover"
    FENCE = "fence"
    DATABASE = "database"
    OOM = "oom"
    FAILED_START = "failed-start"
    CRASH = "crash"
    HANG = "hang"
    ERROR = "error"
    FAILSAFE = "failsafe"  # the store is unreachable: serving on confirmations, or no promotion
    SNAPSHOT = "snapshot"  # a scheduled capture of the home and database failed
    # a scheduled backup failed, backups are stale, the health check warns, or a scheduled
    # restore drill failed (and when it passes again)
    BACKUP = "backup"


class EventCause(enum.StrEnum):
    """``data["cause"]``: the fact ``hakit why`` reads, so it never parses the sentence."""

    SHUTDOWN = "shutdown"  # the agent shut down: stopped its app, released the lease
    LEASE_LOST = "lease-lost"  # data["lost_epoch"]: the epoch whose lease was lost
    STEP_DOWN = "step-down"  # an alert after which the node steps down (restarts used up)


CAUSE = "cause"  # the data key of an EventCause
LOST_EPOCH = "lost_epoch"  # with EventCause.LEASE_LOST: the epoch the node lost

# Failures corrected by a restart (or, once restart_attempts is used up, by a failover).
RESTART_KINDS: Final = frozenset({AlertKind.CRASH, AlertKind.OOM, AlertKind.HANG, AlertKind.ERROR})
FAILURE_KINDS: Final = RESTART_KINDS | {AlertKind.FAILED_START}


class NotifyGroup(enum.StrEnum):
    """``[notify] events`` names that stand for several alerts."""

    RESTART = "restart"  # every alert in RESTART_KINDS
    MANUAL_INTERVENTION = "manual-intervention"  # any alert after which hakit stops acting


# What ``[notify] events`` may select, in the order listed to a user, each with whether
# it is selected by default. Every AlertKind and NotifyGroup has an entry (a unit test
# checks): a new kind needs its default chosen here, not inherited from its position.
NOTIFY_EVENTS: Final[Mapping[str, bool]] = {
    AlertKind.FAILOVER: True,
    NotifyGroup.RESTART: True,
    NotifyGroup.MANUAL_INTERVENTION: True,
    AlertKind.FENCE: True,
    AlertKind.DATABASE: True,
    AlertKind.OOM: True,
    AlertKind.FAILED_START: True,
    AlertKind.CRASH: True,
    AlertKind.HANG: True,
    AlertKind.FAILSAFE: True,
    AlertKind.SNAPSHOT: True,
    AlertKind.BACKUP: True,
    AlertKind.ERROR: False,  # covered by "restart"
}
