"""``hakit init`` and ``hakit init --reinit`` on etcd: a cluster identity made on purpose.

An etcd cluster whose data was wiped, or restored from an older backup, no longer
holds the identity (or the epochs) the nodes remember: every agent refuses it
(``StoreReplacedError``, hakit.coord.etcd.identity.Guard) rather than hand out an
epoch again. ``--reinit`` writes, in ONE transaction conditioned on the keys as
read:

- a new identity whose lineage lists every identity replaced (the store's own
  and those this host's node memories name), so agents that remember one of them
  accept the new store and reconnect by themselves;
- the epoch counter at the highest epoch known (the store's, this host's node
  memories', ``--min-epoch``): the next lease gets a higher one;
- a hold on the leader lease: the leader key held by ``REINIT_HOLDER`` under that
  epoch, attached to an etcd lease of one lease TTL and a margin, which the server
  expires. No node can take the lease before, so a node that still ran its app
  under a lease of the lost data has fenced itself by then (its renewals fail).
  This is the embedded store's ``leases_from``, judged by the store's clock instead
  of the reinit host's.

A node memory lives on its own host: run the command where the last active ran,
or give ``--min-epoch`` above the highest epoch any node used (``hakit events``,
the logs). A store that every memory here trusts is kept unless ``--force``.
``hakit init`` (no ``--reinit``) makes the identity of a new, empty keyspace (the
first agent would make it too) and refuses one that exists.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from hakit.coord.base import REINIT_HOLDER
from hakit.coord.etcd.layout import KV, Layout, dumps, get, put, unchanged
from hakit.coord.etcd.section import EtcdSection
from hakit.coord.etcd.transport import Transport
from hakit.coord.memory import Memory
from hakit.errors import CoordinationError

HOLD_MARGIN = 1.0  # seconds beyond one lease TTL (the embedded store's LEASE_MARGIN)


@dataclass(frozen=True, slots=True)
class EtcdInit:
    where: str
    identity: str
    lineage: tuple[str, ...]
    base_epoch: int
    hold_seconds: int  # the etcd lease's TTL on the leader key (0: no hold)
    replaced: str  # what was there
    memories: Mapping[str, Memory]

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
                f"no lease is granted for {self.hold_seconds} s (held by {REINIT_HOLDER!r} on an "
                "etcd lease the server expires: a node that held the lease in the lost data "
                "has fenced itself by then)"
            )
        return out


def _describe(identity: KV | None, epoch: KV | None) -> str:
    if identity is None:
        return "no cluster identity" + (f" (epoch counter at {_epoch(epoch)})" if epoch else "")
    doc = identity.json()
    return f"identity {doc.get('identity', '?')}, last epoch {_epoch(epoch)}"


def _epoch(kv: KV | None) -> int:
    return int(kv.value or b"0") if kv is not None else 0


def _trusted_by_all(identity: KV | None, epoch: KV | None, memories: Mapping[str, Memory]) -> bool:
    if identity is None or not memories:
        return False
    doc = identity.json()
    names = {str(doc.get("identity", "")), *(str(x) for x in doc.get("lineage", []))}
    last = _epoch(epoch)
    return all(m.identity in names and last >= m.epoch for m in memories.values())


def initialise_etcd(
    section: EtcdSection,
    *,
    cluster: str,
    memories: Mapping[str, Memory],
    lease_ttl: float,
    reinit: bool,
    min_epoch: int = 0,
    force: bool = False,
    config: str = "CONFIG",
    clock: Callable[[], float] = time.time,
) -> EtcdInit:
    """``hakit init`` / ``hakit init --reinit`` on the etcd keyspace ``section`` names."""
    if min_epoch < 0:
        raise ValueError(f"min_epoch must be at least 0, got {min_epoch}")
    layout = Layout(section.prefix, cluster)
    where = f"etcd {','.join(section.endpoints)} under {layout.prefix}"
    transport = Transport(section, where)
    try:
        return _initialise(
            transport, layout, where, memories, lease_ttl, reinit, min_epoch, force, config, clock
        )
    finally:
        transport.close()


def _initialise(
    transport: Transport,
    layout: Layout,
    where: str,
    memories: Mapping[str, Memory],
    lease_ttl: float,
    reinit: bool,
    min_epoch: int,
    force: bool,
    config: str,
    clock: Callable[[], float],
) -> EtcdInit:
    deadline = time.monotonic() + transport.timeout
    doing = "re-initialise the cluster identity" if reinit else "create the cluster identity"
    _, ranges = transport.txn(
        [],
        [get(layout.identity), get(layout.epoch), get(layout.leader), get(layout.alive)],
        None,
        deadline,
        doing,
    )
    identity, epoch, leader, alive = (r[0] if r else None for r in ranges)
    found = _describe(identity, epoch)
    command = f"`hakit init --reinit -c {config}`"
    if not reinit:
        if identity is not None:
            raise CoordinationError(
                f"hakit init: {where} already holds a cluster ({found}); it is kept. To "
                f"replace a lost, damaged or replaced one, run {command}"
            )
        if memories or epoch is not None:
            raise CoordinationError(
                f"hakit init: {where} holds no cluster identity, but "
                + (
                    f"nodes here remember one ({', '.join(sorted(memories))})"
                    if memories
                    else f"an epoch counter at {_epoch(epoch)} is left"
                )
                + f": it was lost. Run {command} so that epochs continue above the old ones"
            )
    elif _trusted_by_all(identity, epoch, memories) and not force:
        raise CoordinationError(
            f"hakit init --reinit: {where} is healthy ({found}) and every node's memory here "
            "trusts it; nothing to re-initialise (a new identity would stop the active node "
            "for one lease TTL). Add --force to replace it anyway"
        )
    lineage: set[str] = {i for m in memories.values() for i in (m.identity, *m.lineage)}
    if identity is not None:
        doc = identity.json()
        lineage |= {str(doc.get("identity", "")), *(str(x) for x in doc.get("lineage", []))}
    lineage.discard("")
    base = max([min_epoch, _epoch(epoch)] + [m.epoch for m in memories.values()])
    new_identity = str(uuid.uuid4())
    now = clock()
    success = [
        put(
            layout.identity,
            dumps({"identity": new_identity, "lineage": sorted(lineage), "created_at": now}),
        ),
        put(layout.epoch, str(base)),
    ]
    hold = hold_lease = 0
    if reinit:
        # The hold: a lease the server expires, under the base epoch (never a node's).
        hold_lease, hold = transport.grant(lease_ttl + HOLD_MARGIN, deadline, doing)
        stored = {
            "holder": REINIT_HOLDER,
            "epoch": base,
            "revision": 0,
            "expires_at": now + hold,
            "ttl": float(hold),
            "lease": hold_lease,
        }
        success += [
            put(layout.leader, dumps(stored)),
            put(layout.alive, str(base), hold_lease),
        ]
    compare = [
        unchanged(layout.identity, identity),
        unchanged(layout.epoch, epoch),
        unchanged(layout.leader, leader),
        unchanged(layout.alive, alive),
    ]
    won, _ = transport.txn(compare, success, None, deadline, doing)
    if not won and hold_lease:
        transport.revoke(hold_lease, deadline)
    if won and leader is not None and int(leader.json().get("lease", 0)):
        # A holder's etcd lease left in the data: attached to nothing now, ended at once.
        transport.revoke(int(leader.json()["lease"]), deadline)
    if not won:
        raise CoordinationError(
            f"hakit init: {where} changed while it was being (re-)initialised (an agent wrote "
            "to it): stop the agents that started meanwhile, then run the command again"
        )
    return EtcdInit(where, new_identity, tuple(sorted(lineage)), base, hold, found, dict(memories))
