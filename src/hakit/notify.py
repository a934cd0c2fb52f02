"""Notifications: log lines always; webhook and e-mail come with the manager issue.

A ``Notifier`` is an edge: the agent hands it alerts the policy decided on.
"""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger("hakit.notify")


class Notifier(Protocol):
    async def alert(self, kind: str, node: str, reason: str) -> None:
        """Deliver one alert; must not raise (a failed delivery is logged)."""
        ...


class LogNotifier:
    """Writes every alert as a WARNING log line."""

    async def alert(self, kind: str, node: str, reason: str) -> None:
        log.warning("ALERT %s on %s: %s", kind, node, reason)
