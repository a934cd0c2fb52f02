"""Notifications: a log line always; a webhook and e-mail for the alerts ``[notify]`` selects.

A ``Notifier`` is an edge: the agent hands it the alerts the policy decided on.
The one the agent uses (built by hakit.notify.factory) is a ``MultiNotifier``
that logs at once and delivers to the configured targets in the background, so
a slow mail server never holds up the agent (which may have to fence itself
within a lease TTL).

The targets (``Target``) live in hakit.notify.webhook and hakit.notify.email;
what they send is built by pure functions there, from one ``Notification``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from hakit.config import DEFAULT_NOTIFY_EVENTS
from hakit.history.kinds import RESTART_KINDS, NotifyGroup

log = logging.getLogger("hakit.notify")

# Pending alerts kept while targets are slow; beyond this the oldest news is
# already stale and memory should not grow without bound.
MAX_PENDING = 100


class Notifier(Protocol):
    async def alert(
        self,
        kind: str,
        node: str,
        reason: str,
        *,
        manual_intervention: bool = False,
        epoch: int = 0,
    ) -> None:
        """Deliver one alert; must not raise (a failed delivery is logged)."""
        ...


@dataclass(frozen=True, slots=True)
class Notification:
    """One alert as every target sends it."""

    cluster: str
    node: str
    kind: str  # the policy's Alert kind (hakit.history.kinds.AlertKind)
    reason: str  # the policy's one sentence
    time: float  # wall-clock seconds when the alert was raised (not when delivered)
    manual_intervention: bool = False
    epoch: int = 0  # the epoch the node acted under (0: none)


class Target(Protocol):
    """A place alerts are delivered to (webhook, e-mail)."""

    name: str  # for log lines: "webhook https://...", "e-mail via mail:25"

    @property
    def budget(self) -> float:
        """The longest one ``send`` may take, retries included (seconds)."""
        ...

    async def send(self, note: Notification) -> bool:
        """Deliver ``note``; True when delivered. Never raises: failures are logged."""
        ...


class SendsDirectly:
    """A target that is also a ``Notifier`` on its own (``hakit notify test``, tests):
    ``alert`` stamps the alert and sends it at once, no queue, no selection."""

    cluster: str

    async def send(self, note: Notification) -> bool:
        raise NotImplementedError

    async def alert(
        self,
        kind: str,
        node: str,
        reason: str,
        *,
        manual_intervention: bool = False,
        epoch: int = 0,
    ) -> None:
        await self.send(
            Notification(self.cluster, node, kind, reason, time.time(), manual_intervention, epoch)
        )


def selected(kind: str, manual_intervention: bool, events: Collection[str]) -> bool:
    """Whether ``[notify] events`` selects an alert for the webhook and e-mail."""
    return (
        kind in events
        or (manual_intervention and NotifyGroup.MANUAL_INTERVENTION in events)
        or (kind in RESTART_KINDS and NotifyGroup.RESTART in events)
    )


class LogNotifier:
    """Writes every alert as a WARNING log line."""

    async def alert(
        self,
        kind: str,
        node: str,
        reason: str,
        *,
        manual_intervention: bool = False,
        epoch: int = 0,
    ) -> None:
        manual = " [manual intervention required]" if manual_intervention else ""
        log.warning("ALERT %s on %s%s: %s", kind, node, manual, reason)


class MultiNotifier:
    """Fan-out: log every alert at once; deliver the selected ones to every target.

    ``alert`` only queues: one worker task delivers alerts in order, to all
    targets concurrently, each within its own ``budget``. ``aclose`` waits
    (bounded) for what is still pending.
    """

    def __init__(
        self,
        cluster: str,
        targets: Sequence[Target],
        *,
        events: Collection[str] = DEFAULT_NOTIFY_EVENTS,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.cluster = cluster
        self.targets = tuple(targets)
        self.events = frozenset(events)
        self._log = LogNotifier()
        self._queue: asyncio.Queue[Notification] = asyncio.Queue(max_pending)
        self._worker: asyncio.Task[None] | None = None

    async def alert(
        self,
        kind: str,
        node: str,
        reason: str,
        *,
        manual_intervention: bool = False,
        epoch: int = 0,
    ) -> None:
        await self._log.alert(
            kind, node, reason, manual_intervention=manual_intervention, epoch=epoch
        )
        if not self.targets or not selected(kind, manual_intervention, self.events):
            return
        note = Notification(
            self.cluster, node, kind, reason, time.time(), manual_intervention, epoch
        )
        try:
            self._queue.put_nowait(note)
        except asyncio.QueueFull:
            log.error(
                "notification queue full (%d pending): not sending %s on %s",
                self._queue.maxsize,
                kind,
                node,
            )
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._deliver_all(), name="notify")

    async def aclose(self, timeout: float | None = None) -> None:
        """Wait up to ``timeout`` (default: the slowest target's budget) for pending alerts."""
        if self._worker is None:
            return
        if timeout is None:
            timeout = max(target.budget for target in self.targets) if self.targets else 0.0
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            # The one being delivered is no longer in the queue: count it too.
            log.error(
                "gave up on %d undelivered notification(s) after %.1fs",
                self._queue.qsize() + 1,
                timeout,
            )
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def _deliver_all(self) -> None:
        while True:
            note = await self._queue.get()
            try:
                await asyncio.gather(*(self._deliver(target, note) for target in self.targets))
            finally:
                self._queue.task_done()

    async def _deliver(self, target: Target, note: Notification) -> None:
        try:
            await asyncio.wait_for(target.send(note), target.budget)
        except TimeoutError:
            log.error(
                "%s: %s on %s not delivered within %.1fs",
                target.name,
                note.kind,
                note.node,
                target.budget,
            )
        except Exception:  # a target bug must not stop the others or the worker
            log.exception("%s: %s on %s not delivered", target.name, note.kind, note.node)


async def close_notifier(notifier: Notifier, timeout: float | None = None) -> None:
    """Let a notifier that delivers in the background finish (bounded); others need nothing."""
    if isinstance(notifier, MultiNotifier):
        await notifier.aclose(timeout)
