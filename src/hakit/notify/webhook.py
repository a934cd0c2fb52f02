"""Webhook notifications: one JSON POST per alert, retried while the receiver may recover.

Retried: connection errors, timeouts and 5xx answers (the receiver is down or
overloaded; it may be back in a second). Not retried: 4xx (a wrong URL or
token stays wrong) and redirects (a POST is not followed blindly). Attempts
are spaced by exponential backoff; nothing here raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from hakit import __version__
from hakit.notify.base import Notification, SendsDirectly

log = logging.getLogger("hakit.notify")

BACKOFF_START = 0.5  # seconds before the first retry; doubled for each next one


def payload(note: Notification) -> dict[str, Any]:
    """The JSON body: one flat object a chat bot or an incident tool can read."""
    body: dict[str, Any] = {
        "cluster": note.cluster,
        "node": note.node,
        "kind": note.kind,
        "reason": note.reason,
        "time": iso_time(note.time),
        "manual_intervention": note.manual_intervention,
    }
    if note.epoch:
        body["epoch"] = note.epoch
    return body


def iso_time(seconds: float) -> str:
    """Wall-clock seconds -> '2026-11-22T04:41:03.398Z' (UTC, milliseconds)."""
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def backoff_delays(retries: int, start: float = BACKOFF_START) -> tuple[float, ...]:
    """The waits before each retry: 0.5, 1, 2, ... seconds."""
    return tuple(start * 2**n for n in range(retries))


def retryable(status: int) -> bool:
    return status >= 500


class WebhookNotifier(SendsDirectly):
    """POSTs each alert as JSON to ``url``; a ``Notifier`` and a ``MultiNotifier`` target."""

    def __init__(
        self,
        url: str,
        *,
        cluster: str,
        timeout: float = 5.0,
        retries: int = 3,
        headers: Mapping[str, str] | None = None,
        backoff: float = BACKOFF_START,
    ) -> None:
        self.url = url
        self.cluster = cluster
        self.timeout = timeout
        self.delays = backoff_delays(retries, backoff)
        self.headers = {
            "Content-Type": "application/json",
            "User-Agent": f"hakit/{__version__}",
            **(headers or {}),
        }
        # Never log the query string: webhook URLs often carry their token there.
        self.name = f"webhook {url.split('?', 1)[0]}"

    @property
    def budget(self) -> float:
        """Every attempt timing out, plus every backoff wait, plus a little slack."""
        return (len(self.delays) + 1) * self.timeout + sum(self.delays) + 1.0

    async def send(self, note: Notification) -> bool:
        body = json.dumps(payload(note)).encode()
        attempts = len(self.delays) + 1
        async with httpx.AsyncClient(timeout=self.timeout, follow_redirects=False) as client:
            for attempt in range(1, attempts + 1):
                problem = await self._attempt(client, body)
                if problem is None:
                    return True
                final = attempt == attempts or not problem.retry
                log.log(
                    logging.ERROR if final else logging.WARNING,
                    "%s: %s on %s: attempt %d of %d failed: %s%s",
                    self.name,
                    note.kind,
                    note.node,
                    attempt,
                    attempts,
                    problem.text,
                    "; giving up" if final else f"; retrying in {self.delays[attempt - 1]:g}s",
                )
                if final:
                    return False
                await asyncio.sleep(self.delays[attempt - 1])
        return False

    async def _attempt(self, client: httpx.AsyncClient, body: bytes) -> _Problem | None:
        try:
            # httpx's timeout bounds each read or write; this bounds the whole attempt.
            async with asyncio.timeout(self.timeout):
                response = await client.post(self.url, content=body, headers=self.headers)
        except (TimeoutError, httpx.TimeoutException):
            return _Problem(f"no answer within {self.timeout:g}s", True)
        except httpx.TransportError as error:
            return _Problem(f"{type(error).__name__}: {str(error) or 'connection failed'}", True)
        except httpx.HTTPError as error:  # e.g. an invalid URL: retrying cannot help
            return _Problem(f"{type(error).__name__}: {error}", False)
        if response.is_success:
            return None
        snippet = response.text[:200].strip()
        text = f"HTTP {response.status_code}" + (f" ({snippet})" if snippet else "")
        return _Problem(text, retryable(response.status_code))


@dataclass(frozen=True, slots=True)
class _Problem:
    """Why one attempt failed, and whether another may succeed."""

    text: str
    retry: bool
