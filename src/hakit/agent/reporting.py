"""What an agent tells the store: its node record and its history events, both queued
on the agent's store thread (hakit.agent.storeio), never awaited.

A record identical to the last one sent (its time apart) within ``same_record_pause``
goes nowhere: every policy event asks for one (a probe a second, besides the
renewal's), so the store took two identical records a second. A changed record goes
at once; an unchanged one at least every renewal and a half, far inside the record
ages readers accept (candidate_alive_within: one TTL).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from hakit.agent.storeio import StoreIO
from hakit.coord.base import Coordinator, Event, NodeRecord
from hakit.history.kinds import EventKind

log = logging.getLogger("hakit.agent")


class Reporter:
    def __init__(
        self,
        node: str,
        coordinator: Coordinator,
        store: StoreIO,
        *,
        actor: str,
        same_record_pause: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.node = node
        self.coordinator = coordinator
        self.store = store
        self.actor = actor
        self.same_record_pause = same_record_pause
        self.monotonic = monotonic
        self.published_at = float("-inf")  # monotonic: when the last record was queued
        self._content: tuple[Any, ...] | None = None  # the last record sent, untimed

    def publish(self, record: NodeRecord) -> None:
        """Queue ``record`` (a newer one replaces one still waiting), unless it repeats the
        last one within the pause (the module's doc)."""
        content = (record.role, record.app_state, record.epoch, record.detail)
        now = self.monotonic()
        if content == self._content and now - self.published_at < self.same_record_pause:
            return
        self._content, self.published_at = content, now
        self.store.submit(
            f"publish the record of {self.node}",
            self.coordinator.publish_node,
            record,
            key="node-record",
        )

    def record(
        self,
        kind: EventKind,
        reason: str,
        *,
        epoch: int,
        data: Mapping[str, Any] | None = None,
        actor: str = "",  # who caused it, when not this agent (an operator's command)
    ) -> None:
        """Log one event and queue it for the history."""
        log.info("%s: %s", kind, reason)
        event = Event(
            id=0,
            time=time.time(),
            node=self.node,
            kind=str(kind),  # an EventKind's value: the store keeps plain strings
            reason=reason,
            epoch=epoch,
            actor=actor or self.actor,
            data=dict(data or {}),
        )
        self.store.submit(
            f"record the {kind} event {reason!r}", self.coordinator.append_event, event
        )
