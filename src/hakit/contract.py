"""The application's ``/status`` contract (docs/architecture.md, "The /status contract") as data.

Every part that interprets an app's health (probe, router, policy) reads the
meaning of a state from here, so the table exists exactly once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# The environment the agent starts the app with, besides the config's [app] env: the node,
# the cluster and the lease epoch this start serves under (0: started without the lease,
# as a warm standby's app is). An app that logs the epoch beside each write lets a checker
# see a write made under an older epoch after a newer epoch's first write: two writers.
NODE_VARIABLE = "HAKIT_NODE"
CLUSTER_VARIABLE = "HAKIT_CLUSTER"
EPOCH_VARIABLE = "HAKIT_EPOCH"


class AppState(enum.StrEnum):
    """What a node's app reports, plus what a probe can observe without an answer."""

    RUNNING = "RUNNING"
    FIRST_RUN = "FIRST_RUN"
    STARTING = "STARTING"
    STOPPING = "STOPPING"
    MAINTENANCE = "MAINTENANCE"
    ERROR = "ERROR"
    # Observations, not states the app reports itself:
    NOT_DEPLOYED = "NOT_DEPLOYED"  # 404 or no JSON: the webapp failed to deploy
    DOWN = "DOWN"  # connection refused while the host answers: server process not up
    TIMEOUT = "TIMEOUT"  # no answer within the probe timeout: slow or dead
    STOPPED = "STOPPED"  # the supervisor knows no process is running


@dataclass(frozen=True, slots=True)
class StateMeaning:
    http_status: int | None
    routable: bool  # the router may send users there
    healthy: bool  # the manager counts it as healthy
    patience: bool  # the manager waits instead of acting (never a failure by itself)
    maintenance_page: bool  # the router shows the maintenance page instead of an error


MEANING: dict[AppState, StateMeaning] = {
    AppState.RUNNING: StateMeaning(200, True, True, False, False),
    AppState.FIRST_RUN: StateMeaning(200, True, True, False, False),
    AppState.STARTING: StateMeaning(503, False, False, True, True),
    AppState.STOPPING: StateMeaning(503, False, False, True, True),
    AppState.MAINTENANCE: StateMeaning(503, False, False, True, True),
    AppState.ERROR: StateMeaning(500, False, False, False, False),
    AppState.NOT_DEPLOYED: StateMeaning(None, False, False, False, False),
    AppState.DOWN: StateMeaning(None, False, False, False, False),
    AppState.TIMEOUT: StateMeaning(None, False, False, True, True),
    AppState.STOPPED: StateMeaning(None, False, False, False, False),
}

REPORTED_STATES = frozenset(
    {
        AppState.RUNNING,
        AppState.FIRST_RUN,
        AppState.STARTING,
        AppState.STOPPING,
        AppState.MAINTENANCE,
        AppState.ERROR,
    }
)


def http_status_for(state: AppState) -> int:
    """The HTTP status an app must answer ``/status`` with in ``state``."""
    status = MEANING[state].http_status
    if status is None:
        raise ValueError(f"{state} is an observation, not a state an app reports")
    return status


def is_routable(state: AppState) -> bool:
    return MEANING[state].routable


def is_healthy(state: AppState) -> bool:
    return MEANING[state].healthy
