"""The operator's intents in the store, and an agent's reading of them.

An operator's intent is a small JSON object in the coordination store's
cluster state (``Coordinator.set_state``); every agent reads it each turn and
feeds its policy (Paused, Resumed, HandoverRequested, HandoverEnded):

- ``paused``: ``{"paused": true/false, "actor", "reason", "at"}``;
- ``handover``: ``{"id", "kind", "source", "target", "epoch", "actor", "reason",
  "requested_at", "expires_at", "force"}``: a switchover (``kind`` "switchover":
  the active drains, stops, releases; only the target may take the lease) or a
  forced failover ("failover": the target takes the lease at once). Its target
  clears it once it serves. It is written with a store TTL (``set_state(ttl=)``,
  the handover timeout) and ``"expiring": true``: the store forgets it by its own
  clock, so no agent compares the writer's ``expires_at`` (shown only) with its
  own clock. An intent an older hakit wrote without TTL (no ``expiring``) is
  judged the old way: any agent clears it once ``expires_at`` is past on its
  clock (such writers only ever used the embedded store, one machine's clock).
  The active node's own agent writes a ``path-loss`` one (``request_path_loss``)
  when the routers lost their path to it (hakit.health.datapath): a switchover's
  steps, its agent as the actor.

``IntentWatcher`` turns each turn's read into policy events. Operators' commands
write the intents through hakit.operator.commands.
"""

from __future__ import annotations

import getpass
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hakit.config import Config, derived_timings
from hakit.coord.base import Coordinator, Lease, NodeRecord
from hakit.coord.keys import HANDOVER, PAUSED
from hakit.policy.vocabulary import (
    PATH_LOSS,
    HandoverEnded,
    HandoverRequested,
    LeaseVacant,
    Paused,
    PolicyEvent,
    Resumed,
)

NO_REASON = "no reason given"


def operator_actor(name: str | None = None) -> str:
    """``operator:<name>``: ``--as``, else $USER, else the login name."""
    if not name:
        name = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "unknown"
    return name if name.startswith("operator:") else f"operator:{name}"


def handover_timeout(cfg: Config) -> float:
    """How long a switchover may take before the normal election resumes."""
    return derived_timings(cfg).handover_timeout


def agent_alive(record: NodeRecord | None, cfg: Config, now: float) -> bool:
    """The node's agent published within a few lease TTLs (it publishes every renewal).

    Judged on the record's age by the store's clock (``NodeRecord.age``), never on its
    ``updated_at`` (the publisher's clock) against ``now`` (the reader's)."""
    if record is None or record.role == "stopped":
        return False
    return record.age <= derived_timings(cfg).agent_alive_within


def handover_event(intent: Mapping[str, Any]) -> HandoverRequested:
    """The policy event an agent feeds for a stored handover intent."""
    return HandoverRequested(
        target=str(intent.get("target", "")),
        source=str(intent.get("source") or ""),
        epoch=int(intent.get("epoch") or 0),
        forced=intent.get("kind") == "failover",
        actor=str(intent.get("actor", "operator")),
        reason=str(intent.get("reason") or NO_REASON),
        label=PATH_LOSS if intent.get("kind") == PATH_LOSS else "",
    )


def request_path_loss(
    coordinator: Coordinator,
    cfg: Config,
    source: str,
    target: str,
    epoch: int,
    reason: str,
    now: float,
) -> dict[str, Any] | None:
    """Write ``source``'s agent's path-loss handover to ``target``; None (nothing written)
    when another handover is in force (an operator's intent always wins)."""
    pending = coordinator.get_state(HANDOVER)
    if pending is not None and not handover_expired(pending, now):
        return None
    intent: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "kind": PATH_LOSS,
        "source": source,
        "target": target,
        "epoch": epoch,
        "actor": f"agent:{source}",
        "reason": reason,
        "requested_at": now,
        "expires_at": now + handover_timeout(cfg),  # the writer's clock: display only
        "force": False,
        "expiring": True,
    }
    coordinator.set_state(HANDOVER, intent, ttl=handover_timeout(cfg))
    return intent


def handover_expired(intent: Mapping[str, Any], now: float) -> bool:
    """An intent read from the store has expired. One with a store TTL (``expiring``)
    never has: the store leaves it out of reads once its TTL is over, by its own clock.
    One an older hakit wrote without TTL is judged on its ``expires_at`` against ``now``."""
    if intent.get("expiring") is True:
        return False
    expires = intent.get("expires_at")
    return isinstance(expires, int | float) and now >= expires


@dataclass
class IntentWatcher:
    """An agent's memory of the operator's intents: turns each turn's read into events.

    ``observe`` returns the policy events for what changed since the last read
    (each change is fed once) and the handover intent that has expired, if any,
    for the agent to clear (compare-and-delete: only one agent wins and records it).
    """

    paused: bool = False
    handover: dict[str, Any] | None = None  # the intent in force (as stored)
    vacant: bool = False

    def observe(
        self, state: Mapping[str, dict[str, Any]], lease: Lease | None, now: float
    ) -> tuple[list[PolicyEvent], dict[str, Any] | None]:
        events: list[PolicyEvent] = []
        pause = state.get(PAUSED) or {}
        if bool(pause.get("paused")) != self.paused:
            self.paused = not self.paused
            actor = str(pause.get("actor") or "operator")
            reason = str(pause.get("reason") or NO_REASON)
            events.append(Paused(actor, reason) if self.paused else Resumed(actor, reason))
        intent = state.get(HANDOVER)
        expired = None
        if intent is not None and handover_expired(intent, now):
            expired, intent = intent, None
        known = self.handover.get("id") if self.handover is not None else None
        if (intent.get("id") if intent is not None else None) != known:
            if self.handover is not None:
                events.append(HandoverEnded(self._ended_words(self.handover, expired)))
            if intent is not None:
                events.append(handover_event(intent))
            self.handover = intent
        vacant = lease is None or not lease.valid
        if vacant and not self.vacant and self.paused:
            events.append(LeaseVacant())
        self.vacant = vacant
        return events, expired

    @staticmethod
    def _ended_words(intent: Mapping[str, Any], expired: Mapping[str, Any] | None) -> str:
        what = f"{intent.get('kind', 'handover')} to {intent.get('target')}"
        if expired is not None and expired.get("id") == intent.get("id"):
            return f"{what} expired"
        return f"{what} ended"


def expired_words(intent: Mapping[str, Any], cfg: Config) -> str:
    return (
        f"{intent.get('kind', 'handover')} to {intent.get('target')} (asked by "
        f"{intent.get('actor')}) expired after {handover_timeout(cfg):.0f} s: "
        f"{intent.get('target')} did not take over in time; the normal election resumes"
    )
