"""``hakit init`` and ``hakit init --reinit`` on a distributed store: the decisions they share.

etcd (hakit.coord.etcd.reinit) and ZooKeeper (hakit.coord.zookeeper.reinit) each
read what their store holds (``Stored``), then ``plan`` decides, the same for
both, from that and this host's node memories:

- ``hakit init`` makes the identity of a store that holds none and refuses one
  that holds one, or one whose identity is gone while a node memory here (or an
  epoch counter left in the store) shows that there was one: then ``--reinit``
  is the command, so that epochs continue above the old ones;
- ``--reinit`` makes a new identity whose lineage lists every identity replaced
  (the store's and the memories'), with the epoch counter at the highest epoch
  known (the store's, the memories', ``--min-epoch``); it refuses to replace a
  store every memory here trusts unless ``force``.

The backend then writes the plan in ONE transaction conditioned on what it read,
with a hold on the leader lease by ``REINIT_HOLDER`` for ``hold_seconds(ttl)``
(how the hold ends is the backend's: ``StoreInit.hold``); it reports what it did
as a ``StoreInit``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hakit.coord.base import REINIT_HOLDER
from hakit.coord.memory import Memory
from hakit.errors import CoordinationError

HOLD_MARGIN = 1.0  # seconds beyond one lease TTL (the embedded store's LEASE_MARGIN)


def hold_seconds(lease_ttl: float) -> float:
    """How long no node is granted the lease after ``--reinit``: a node that ran its app
    under a lease of the lost data has fenced itself by then (its renewals fail)."""
    return lease_ttl + HOLD_MARGIN


@dataclass(frozen=True, slots=True)
class Stored:
    """The identity as a store holds it, read by ``hakit init``."""

    identity: str | None  # None: no identity (or an unreadable one: ``damaged``)
    lineage: tuple[str, ...] = ()
    last_epoch: int = 0
    epoch_left: bool = False  # an epoch counter is there (perhaps without its identity)
    damaged: bool = False  # an identity is there but cannot be read

    @classmethod
    def of(cls, doc: Any, last_epoch: int, epoch_left: bool) -> Stored:
        """From the identity document as stored (None: no identity; one without a name:
        damaged) and the epoch counter."""
        if doc is None:
            return cls(None, last_epoch=last_epoch, epoch_left=epoch_left)
        doc = doc if isinstance(doc, dict) else {}
        name = str(doc.get("identity", ""))
        lineage = tuple(str(x) for x in doc.get("lineage", []))
        return cls(name or None, lineage, last_epoch, epoch_left, damaged=not name)

    def describe(self) -> str:
        if self.damaged:
            return f"a damaged cluster identity (last epoch {self.last_epoch})"
        if self.identity is None:
            left = f" (epoch counter at {self.last_epoch})" if self.epoch_left else ""
            return "no cluster identity" + left
        return f"identity {self.identity}, last epoch {self.last_epoch}"

    def names(self) -> set[str]:
        """The identity and those it replaces: what a memory may remember of it."""
        return {self.identity, *self.lineage} if self.identity else set()


@dataclass(frozen=True, slots=True)
class Request:
    """What the operator asked (``hakit init`` and its options) and what it is asked with."""

    cluster: str  # cluster.name
    memories: Mapping[str, Memory]  # this host's node memories
    lease_ttl: float
    reinit: bool
    min_epoch: int = 0
    force: bool = False
    config: str = "CONFIG"  # the config file, in the commands the messages give

    @property
    def hold(self) -> float:
        """How long no node is granted the lease (0: no hold, ``hakit init``)."""
        return hold_seconds(self.lease_ttl) if self.reinit else 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What ``hakit init`` writes: a new identity, its lineage, the epoch counter."""

    identity: str
    lineage: tuple[str, ...]
    base_epoch: int
    replaced: str  # what was there, for the operator


def trusted_by_all(stored: Stored, memories: Mapping[str, Memory]) -> bool:
    """Every memory here (at least one) accepts ``stored``: same identity or lineage,
    no epoch it saw above the store's."""
    names = stored.names()
    return bool(names and memories) and all(
        m.identity in names and stored.last_epoch >= m.epoch for m in memories.values()
    )


def plan(
    stored: Stored,
    request: Request,
    where: str,
    new_identity: Callable[[], str] = lambda: str(uuid.uuid4()),
) -> Plan:
    """Decide (see the module); a refusal is a ``CoordinationError`` saying what to run."""
    memories, config, min_epoch = request.memories, request.config, request.min_epoch
    if min_epoch < 0:
        raise ValueError(f"min_epoch must be at least 0, got {min_epoch}")
    found = stored.describe()
    command = f"`hakit init --reinit -c {config}`"
    if not request.reinit:
        if stored.identity is not None or stored.damaged:
            raise CoordinationError(
                f"hakit init: {where} already holds a cluster ({found}); it is kept. To "
                f"replace a lost, damaged or replaced one, run {command}"
            )
        if memories or stored.epoch_left:
            raise CoordinationError(
                f"hakit init: {where} holds no cluster identity, but "
                + (
                    f"nodes here remember one ({', '.join(sorted(memories))})"
                    if memories
                    else f"an epoch counter at {stored.last_epoch} is left"
                )
                + f": it was lost. Run {command} so that epochs continue above the old ones"
            )
    elif trusted_by_all(stored, memories) and not request.force:
        raise CoordinationError(
            f"hakit init --reinit: {where} is healthy ({found}) and every node's memory here "
            "trusts it; nothing to re-initialise (a new identity would stop the active node "
            "for one lease TTL). Add --force to replace it anyway"
        )
    lineage = {i for m in memories.values() for i in (m.identity, *m.lineage)} | stored.names()
    lineage.discard("")
    base = max([min_epoch, stored.last_epoch] + [m.epoch for m in memories.values()])
    return Plan(new_identity(), tuple(sorted(lineage)), base, found)


def changed_meanwhile(where: str) -> CoordinationError:
    """The transaction lost a race: nothing was written."""
    return CoordinationError(
        f"hakit init: {where} changed while it was being (re-)initialised (an agent wrote "
        "to it); nothing was written: stop the agents that started meanwhile, then run the "
        "command again"
    )


@dataclass(frozen=True, slots=True)
class StoreInit:
    """What ``hakit init`` did on a distributed store, for the operator."""

    where: str
    identity: str
    lineage: tuple[str, ...]
    base_epoch: int
    hold_seconds: float  # no lease granted for this long (0: no hold)
    hold: str  # how the hold ends, for the operator
    replaced: str  # what was there
    memories: Mapping[str, Memory]

    @classmethod
    def of(cls, request: Request, where: str, decided: Plan, hold: str) -> StoreInit:
        return cls(
            where,
            decided.identity,
            decided.lineage,
            decided.base_epoch,
            request.hold,
            hold,
            decided.replaced,
            dict(request.memories),
        )

    def lines(self) -> list[str]:
        out = [f"{self.where}: was {self.replaced}"]
        out.append(f"cluster identity {self.identity} written")
        if self.lineage:
            out.append(
                "it replaces identities " + ", ".join(self.lineage) + " (agents and routers "
                "that remember them accept it and reconnect by themselves)"
            )
        for node, memory in sorted(self.memories.items()):
            out.append(
                f"  node {node} remembered identity {memory.identity} up to epoch {memory.epoch}"
            )
        if self.base_epoch:
            out.append(
                f"epochs continue above {self.base_epoch} "
                f"(the next lease gets epoch {self.base_epoch + 1} or more)"
            )
        if self.hold_seconds:
            out.append(
                f"no lease is granted for {self.hold_seconds:g} s (held by {REINIT_HOLDER!r} "
                f"{self.hold}; a node that held the lease in the lost data has fenced itself "
                "by then)"
            )
        return out
