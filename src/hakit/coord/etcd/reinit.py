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

import dataclasses
import time
from collections.abc import Callable

from hakit.coord.base import REINIT_HOLDER
from hakit.coord.etcd.layout import Layout, dumps, get, put, unchanged
from hakit.coord.etcd.section import EtcdSection
from hakit.coord.etcd.transport import Transport
from hakit.coord.reinit import Request, Stored, StoreInit, changed_meanwhile, plan


def initialise_etcd(
    section: EtcdSection, request: Request, clock: Callable[[], float] = time.time
) -> StoreInit:
    """``hakit init`` / ``hakit init --reinit`` on the etcd keyspace ``section`` names."""
    layout = Layout(section.prefix, request.cluster)
    where = f"etcd {','.join(section.endpoints)} under {layout.prefix}"
    transport = Transport(section, where)
    try:
        return _initialise(transport, layout, where, request, clock)
    finally:
        transport.close()


def _initialise(
    transport: Transport,
    layout: Layout,
    where: str,
    request: Request,
    clock: Callable[[], float],
) -> StoreInit:
    deadline = time.monotonic() + transport.timeout
    reinit = request.reinit
    doing = "re-initialise the cluster identity" if reinit else "create the cluster identity"
    _, _, ranges = transport.txn(
        [],
        [get(layout.identity), get(layout.epoch), get(layout.leader), get(layout.alive)],
        None,
        deadline,
        doing,
    )
    identity, epoch, leader, alive = (r[0] if r else None for r in ranges)
    last = int(epoch.value or b"0") if epoch is not None else 0
    stored = Stored.of(identity.json() if identity is not None else None, last, epoch is not None)
    decided = plan(stored, request, where)
    base, now = decided.base_epoch, clock()
    success = [
        put(
            layout.identity,
            dumps(
                {"identity": decided.identity, "lineage": list(decided.lineage), "created_at": now}
            ),
        ),
        put(layout.epoch, str(base)),
    ]
    hold = hold_lease = 0
    if reinit:
        # The hold: a lease the server expires, under the base epoch (never a node's).
        hold_lease, hold = transport.grant(request.hold, deadline, doing)
        held = {
            "holder": REINIT_HOLDER,
            "epoch": base,
            "revision": 0,
            "expires_at": now + hold,
            "ttl": float(hold),
            "lease": hold_lease,
        }
        success += [
            put(layout.leader, dumps(held)),
            put(layout.alive, str(base), hold_lease),
        ]
    compare = [
        unchanged(layout.identity, identity),
        unchanged(layout.epoch, epoch),
        unchanged(layout.leader, leader),
        unchanged(layout.alive, alive),
    ]
    won, _, _ = transport.txn(compare, success, None, deadline, doing)
    if not won and hold_lease:
        transport.revoke(hold_lease, deadline)
    if won and leader is not None and int(leader.json().get("lease", 0)):
        # A holder's etcd lease left in the data: attached to nothing now, ended at once.
        transport.revoke(int(leader.json()["lease"]), deadline)
    if not won:
        raise changed_meanwhile(where)
    done = StoreInit.of(request, where, decided, "on an etcd lease the server expires")
    return dataclasses.replace(done, hold_seconds=hold)  # the TTL etcd granted (whole seconds)
