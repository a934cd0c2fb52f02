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


class SupervisorError(HakitError):
    """A local app process could not be started or stopped."""


class InvalidTransition(HakitError):
    """The policy was fed an event its current state cannot take."""

    def __init__(self, state: str, event: str) -> None:
        self.state = state
        self.event = event
        super().__init__(f"policy: event {event} is impossible in state {state}")
