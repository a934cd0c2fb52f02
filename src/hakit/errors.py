"""One exception root for everything hakit raises on purpose.

User-facing errors say what was attempted, what was wrong and what to do.
"""

from __future__ import annotations


class HakitError(Exception):
    """Root of every error hakit raises deliberately."""


class ConfigError(HakitError):
    """A configuration file is invalid.

    ``problems`` holds one line per mistake, each naming file, line and key.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class CoordinationError(HakitError):
    """The coordination store could not be read or written."""


class StoreReplacedError(CoordinationError):
    """The coordination store at the path is not the one this process knew.

    It has another cluster identity, none (a missing or fresh file), or a last
    epoch below the highest this process saw (an older copy: it went back in
    time). Using it could hand out an epoch again, so the process refuses it
    until a store it can trust is back at the path (the original, or one made by
    ``hakit init --reinit``); it checks again at each call and reconnects by itself.
    """

    def __init__(
        self,
        path: object,
        found: str,
        seen_identity: str,
        seen_epoch: int,
        *,
        config: str = "CONFIG",
        consequence: str = "the app on this node is fenced",
    ) -> None:
        self.path = path
        self.found = found
        self.seen_identity = seen_identity
        self.seen_epoch = seen_epoch
        super().__init__(
            f"the coordination store at {path} was replaced or went back in time ({found}; "
            f"this process saw identity {seen_identity} up to epoch {seen_epoch}): "
            f"{consequence}; if the store was lost, restore it or run "
            f"`hakit init --reinit -c {config}` to start a new one whose epochs continue "
            f"above {seen_epoch}, then the processes reconnect by themselves"
        )


class NoClusterState(CoordinationError):
    """A reader (``hakit status``, ``events``, ``why``) asked for a store that does not exist."""

    def __init__(self, path: object) -> None:
        self.path = path
        super().__init__(
            f"no cluster state at {path}: is -c right? (the agents create it when they first run)"
        )


class SupervisorError(HakitError):
    """A local app process could not be started or stopped."""


class InvalidTransition(HakitError):
    """The policy was fed an event its current state cannot take."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"policy: event {event} is impossible in state {state}")
