"""Replicated storage: a planned switchover's final generation, at both ends.

A planned switchover (``hakit switchover --to``, a path-loss handover) loses
nothing with replicated storage:

- **the active** (the source), once its app is stopped (no write after that
  point) and before its StepDown releases the lease, captures a final
  generation under the epoch it still holds (``before_release``), names it in
  its node record (``replica.final``) and waits, ``[replication] final_timeout``
  in all, for the target's record to name it as the copy it holds. What then:
  hakit.policy.replication.final_decision (go on, or abandon: the agent clears
  the intent). The capture is killed if the lease goes meanwhile.
- **the target** follows the source every ``HURRY`` seconds while the switchover
  is under way (hakit.agent.replication's loop) and reads the source's record
  (``read``): a copy that is the source's final generation of the last epoch
  loses nothing (hakit.policy.replication, FINAL). Its takeover waits for one
  such read made after the lease was seen released (``unknown``): the source
  publishes its final generation before it releases, both through its one
  ordered store queue, so that read is sure.

A forced failover (``hakit failover --to``) ships nothing: the active may be gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from hakit.config import Config
from hakit.coord.base import Coordinator, Lease
from hakit.errors import HakitError
from hakit.history.facts import DATA_LOSS_WINDOW, GENERATION
from hakit.history.kinds import EventKind
from hakit.operator.intents import handover_event
from hakit.policy.replication import FinalDecision, final_decision
from hakit.snapshot.apply import AppliedCopy

log = logging.getLogger("hakit.agent.replication")

REPLICA_KEY = "replica"  # the node record's detail: what this node holds (hakit status)
HURRY = 0.5  # s between the target's turns while a switchover to it is under way
APPLIED_POLL = 0.25  # s between reads of the target's record while it applies the final one


def replication_detail(detail: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ``replica`` entry of a node record's detail (None: not replicated)."""
    entry = detail.get(REPLICA_KEY)
    return entry if isinstance(entry, Mapping) else None


class FinalGeneration:
    """Both ends of a switchover's final generation (see the module's docstring)."""

    def __init__(
        self,
        cfg: Config,
        node: str,
        coordinator: Coordinator,
        call: Callable[..., Any],  # StoreIO.call: the agent's store thread
        *,
        capture: Callable[[int], Awaitable[str]],  # a generation under the epoch held
        held_epoch: Callable[[], int],
        handover: Callable[[], Mapping[str, Any] | None],  # the intent in force
        record: Callable[..., None],
        publish: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.coordinator = coordinator
        self._call = call
        self._capture = capture
        self._held_epoch = held_epoch
        self._handover = handover
        self._record = record
        self._publish = publish
        self.shipped: tuple[str, int] | None = None  # this node's final generation, its epoch
        self.seen: tuple[str, int] | None = None  # the source's, read from its record
        self._read: tuple[str | None, bool] = (None, False)  # the copy then, lease released

    # --- the source -------------------------------------------------------------------------

    def planned_target(self) -> str | None:
        """The target of a planned switchover away from this node under the epoch it holds
        (None: there is none; a forced failover is not planned)."""
        intent = self._handover()
        if intent is None:
            return None
        event = handover_event(intent)
        epoch = self._held_epoch()
        if event.forced or event.source != self.node or event.target == self.node:
            return None
        return event.target if epoch and event.epoch == epoch else None

    async def before_release(self, app_running: bool) -> str | None:
        """Before a StepDown releases the lease: a planned switchover's final generation.
        Why the switchover is abandoned (the agent clears its intent), or None."""
        target = self.planned_target()
        epoch = self._held_epoch()
        if target is None or app_running or not epoch:
            return None
        decision = await self.ship(target, epoch)
        return None if decision.proceed else f"switchover to {target} abandoned: {decision.reason}"

    async def ship(self, target: str, epoch: int) -> FinalDecision:
        """The app is stopped, the lease of ``epoch`` still held: capture a final generation
        and wait (``final_timeout`` in all) for ``target`` to apply it; what to do then."""
        timeout = self.cfg.replication.final_timeout
        deadline = time.monotonic() + timeout
        self._record(
            EventKind.REPLICATION,
            f"switchover to {target}: the app on {self.node} is stopped; shipping a "
            f"final generation under epoch {epoch} before the lease goes",
            epoch=epoch,
        )
        generation: str | None = None
        try:
            async with asyncio.timeout(timeout):
                generation = await self._capture(epoch)
        except (HakitError, OSError, TimeoutError) as error:
            self._record(
                EventKind.REPLICATION,
                f"the final generation for {target} was not captured: "
                f"{str(error) or 'final_timeout passed'}",
                epoch=epoch,
                data={"error": str(error)},
            )
        applied = False
        if generation is not None:
            self.shipped = (generation, epoch)
            self._publish()
            applied = await self._wait_applied(target, generation, deadline)
        age = None if applied else await self._data_age_of(target)
        decision = final_decision(
            target, generation, applied, age, self.cfg.replication.max_lag, timeout
        )
        self._record(
            EventKind.REPLICATION,
            decision.reason,
            epoch=epoch,
            data={
                DATA_LOSS_WINDOW: decision.loss_window,
                GENERATION: generation,
                "final": str(decision.outcome),
            },
        )
        return decision

    async def _wait_applied(self, target: str, generation: str, deadline: float) -> bool:
        while time.monotonic() < deadline:
            entry, _ = await self._replica_of(target)
            if entry is not None and entry.get("generation") == generation:
                return True
            await asyncio.sleep(APPLIED_POLL)
        return False

    async def _replica_of(self, node: str) -> tuple[Mapping[str, Any] | None, float]:
        """``node``'s published replica entry and the age of its record (None: unknown)."""
        try:
            records = await self._call(self.coordinator.nodes, what="read the node records")
        except HakitError as error:
            log.warning("replication: the node records cannot be read: %s", error)
            return None, 0.0
        for record in records:
            if record.node == node:
                return replication_detail(record.detail), record.age
        return None, 0.0

    async def _data_age_of(self, node: str) -> float | None:
        """How old ``node``'s data is now, from its record (None: no copy, or unknown)."""
        entry, record_age = await self._replica_of(node)
        if entry is None or not isinstance(entry.get("data_age"), int | float):
            return None
        return float(entry["data_age"]) + record_age

    def detail(self, entry: dict[str, Any]) -> None:
        """The node record's ``replica`` entry names the final generation shipped."""
        if self.shipped is not None:
            entry["final"], entry["final_epoch"] = self.shipped

    # --- the target ---------------------------------------------------------------------------

    def hurrying(self) -> bool:
        """A planned switchover to this node is under way: its final generation is coming."""
        intent = self._handover()
        if intent is None:
            return False
        event = handover_event(intent)
        return not event.forced and event.target == self.node

    async def read(self, lease: Lease | None, copy: AppliedCopy | None) -> None:
        """The source's final generation, if it published one (see the module's docstring)."""
        intent = self._handover()
        source = handover_event(intent).source if intent is not None else ""
        entry, _ = await self._replica_of(source)
        if entry is not None and isinstance(entry.get("final"), str):
            self.seen = (str(entry["final"]), int(entry.get("final_epoch") or 0))
        released = lease is None or not lease.valid or lease.holder != source
        self._read = (copy.generation if copy else None, released)

    def unknown(self, copy: AppliedCopy | None) -> bool:
        """A switchover to this node whose final generation it may hold, not yet confirmed
        by a read of the source's record after the release (its next turn, ``HURRY``)."""
        if not self.hurrying() or copy is None:
            return False
        return self._read != (copy.generation, True)

    def holds_final(self, copy: AppliedCopy | None, last_epoch: int | None) -> bool:
        """``copy`` is the final generation of the last epoch: nobody led since."""
        return (
            copy is not None
            and self.seen == (copy.generation, copy.epoch)
            and copy.epoch == last_epoch
        )
