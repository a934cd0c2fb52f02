"""``hakit init`` and ``hakit init --reinit`` on ZooKeeper: a cluster identity made on purpose.

A cluster path whose znodes were deleted, or an ensemble restored from an older
snapshot, no longer holds the identity (or the epochs) the nodes remember: every
agent refuses it (``StoreReplacedError``, hakit.coord.zookeeper.identity.Guard)
rather than hand out an epoch again, and none recreates it. What to write is
decided as on etcd (hakit.coord.reinit.plan); ``--reinit`` writes it in ONE
ZooKeeper transaction (``multi``) conditioned on the versions read (the
``identity``, ``epoch``, ``leader`` and ``alive`` znodes; those that were missing
are created, which fails if anyone made them meanwhile):

- a new identity whose lineage lists every identity replaced, so agents that
  remember one of them accept the store and reconnect by themselves;
- the epoch counter at the highest epoch known: the next lease gets a higher one;
- a hold on the leader lease: ``leader`` holds ``REINIT_HOLDER`` under that epoch
  for one lease TTL and a margin, and a lease's ``alive`` znode (the session of
  a holder of the lost data, on a ``--force``) is deleted.

The hold, honestly: a node's lease is bound to its holder's session so that it
ends EARLY when that process dies; the hold has no process behind it and must
not end early. It is bound to no session: it lasts from the moment the server
commits it (the ``leader`` znode's ``mtime``, stamped by the ZooKeeper leader's
clock, the clock every lease expiry is judged by: hakit.coord.zookeeper) for
``hold_seconds(lease_ttl)``, and agents judge it so (leases.py ``_lease``). The
command does not stay running for it, and killing it cannot shorten it; an
ephemeral znode of the command's session could (a session ends when the command
is killed, after its timeout, which the server may clamp below the hold). Agents
treat it as any valid lease of another holder: they wait; once it has expired,
the next grant gets the next epoch, and nobody is fenced for it (hakit.fencing).

A node memory lives on its own host: run the command where the last active ran,
or give ``--min-epoch``. ``hakit init`` (no ``--reinit``) makes the store of an
empty cluster path (the first agent would make it too) and refuses one that exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kazoo.exceptions import (
    BadVersionError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
)

from hakit.coord.base import REINIT_HOLDER
from hakit.coord.reinit import Plan, Request, Stored, StoreInit, changed_meanwhile, plan
from hakit.coord.zookeeper.identity import Guard
from hakit.coord.zookeeper.layout import Node, fresh_store, last_epoch_in, load
from hakit.coord.zookeeper.section import ZooKeeperSection, cluster_root

# The znodes a new identity replaces by version (the rest are made only when missing:
# agents keep writing the clock, records, events and state, which the identity does not name).
REPLACED = ("identity", "epoch", "leader")
ALIVE = "alive"  # the ephemeral znode of a lease holder's session (leases.py)
RACES = (BadVersionError, NodeExistsError, NoNodeError, NotEmptyError)
HOLD = (
    "from its commit, by the ZooKeeper leader's clock, bound to no session: it outlasts "
    "this command, and stopping the command does not end it"
)


@dataclass(frozen=True, slots=True)
class Found:
    """The cluster path as read: whether its znode exists, and each znode of the store."""

    root: bool
    znodes: Mapping[str, Node | None]  # by name: those of fresh_store, and ALIVE

    def stored(self) -> Stored:
        identity, epoch = self.znodes["identity"], self.znodes["epoch"]
        doc = (identity.doc or {}) if identity is not None else None  # {}: unreadable
        return Stored.of(doc, last_epoch_in(epoch), epoch is not None)


class Initialiser(Guard):
    """One session on the ensemble for ``hakit init``: ``read``, then ``write`` a plan.

    A Guard with no memory and no identity of its own: its ``_using`` gives the call's
    deadline and turns ZooKeeper errors into ``CoordinationError``; it never checks or
    creates a store itself.
    """

    def read(self) -> Found:
        """The cluster path and its znodes (one pipelined round of reads)."""
        names = [name for name, _ in fresh_store({}, 0, {})] + [ALIVE]
        with self._using("read the cluster identity") as zk:
            root = zk.exists_async(self.root)
            pending = {name: zk.get_async(self._path(name)) for name in names}
            exists = root.get(timeout=self._left()) is not None
            znodes: dict[str, Node | None] = {}
            for name, result in pending.items():
                try:
                    data, stat = result.get(timeout=self._left())
                except NoNodeError:
                    znodes[name] = None
                    continue
                try:
                    doc = load(data)
                except ValueError:
                    doc = None  # not JSON: damaged, replaced by --reinit
                znodes[name] = Node(doc, stat)
            return Found(exists, znodes)

    def write(self, found: Found, decided: Plan, hold: float, created_at: float) -> None:
        """``decided`` (and the hold of ``hold`` seconds, 0: none) in one transaction
        conditioned on ``found``; ``changed_meanwhile`` if anything changed since."""
        identity = {
            "identity": decided.identity,
            "lineage": list(decided.lineage),
            "created_at": created_at,
        }
        leader: dict[str, Any] = {}
        if hold:
            leader = {"holder": REINIT_HOLDER, "epoch": decided.base_epoch, "ttl": hold}
        with self._using("write the cluster identity") as zk:
            parent = self.root.rsplit("/", 1)[0]
            if not found.root and parent:
                zk.ensure_path_async(parent).get(timeout=self._left())
            txn = zk.transaction()
            if not found.root:
                txn.create(self.root, b"")
            for name, data in fresh_store(identity, decided.base_epoch, leader):
                node = found.znodes[name]
                if node is None:
                    txn.create(self._path(name), data)
                elif name in REPLACED:
                    txn.set_data(self._path(name), data, node.stat.version)
            alive = found.znodes[ALIVE]
            if alive is not None:  # a lease of the replaced identity: it ends here
                txn.delete(self._path(ALIVE), alive.stat.version)
            results = txn.commit_async().get(timeout=self._left())
            # The failed operation's own error; the others only say they were rolled back.
            failures = [
                r
                for r in results
                if isinstance(r, Exception) and not isinstance(r, RolledBackError)
            ]
            if any(isinstance(r, RACES) for r in failures):
                raise changed_meanwhile(self.where)
            if failures:
                raise failures[0]  # e.g. no permission: said by _using


def initialise_zookeeper(
    section: ZooKeeperSection, request: Request, clock: Callable[[], float] = time.time
) -> StoreInit:
    """``hakit init`` / ``hakit init --reinit`` on the cluster path ``section`` names."""
    store = Initialiser(
        section.hosts,
        cluster_root(section.prefix, section.cluster or request.cluster),
        session_timeout=section.session_timeout,
        timeout=section.timeout,
        auth=(section.auth.scheme, section.auth.credential) if section.auth else None,
        create=False,
        config=request.config,
    )
    try:
        found = store.read()
        decided = plan(found.stored(), request, store.where)
        store.write(found, decided, request.hold, clock())
    finally:
        store.close()
    return StoreInit.of(request, store.where, decided, HOLD)
