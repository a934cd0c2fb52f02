"""The lease rule and the lease rows: what a node holds after asking, read from the store.

``next_lease`` is the pure rule (acquire or renew, judged on the store's clock);
``read_lease`` and ``read_last_epoch`` read the lease row and the epoch counter
inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3

from hakit.coord.base import Lease


def next_lease(
    stored: Lease | None, last_epoch: int, node: str, now: float, ttl: float
) -> Lease | None:
    """The lease ``node`` holds after asking at ``now``, or None if another node holds it.

    A valid lease held by ``node`` is extended under the same epoch (its revision
    grows). A free, expired or released lease gets a new epoch (revision 1), also
    for its former holder: once expired, another node may have seen it free and
    acted on that. Validity is judged here on the store's clock (``now``).
    """
    if stored is not None and now < stored.expires_at:
        if stored.holder != node:
            return None
        return Lease(node, stored.epoch, now + ttl, ttl, stored.revision + 1)
    newest = max(last_epoch, stored.epoch if stored is not None else 0)
    return Lease(node, newest + 1, now + ttl, ttl, 1)


def read_lease(conn: sqlite3.Connection, now: float) -> Lease | None:
    """The stored lease, judged at ``now`` (the store's clock)."""
    row = conn.execute(
        "SELECT holder, epoch, expires_at, revision FROM lease WHERE singleton = 1"
    ).fetchone()
    if row is None:
        return None
    return Lease.as_read(row[0], int(row[1]), float(row[2]), now, int(row[3]))


def read_last_epoch(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT last_epoch FROM epoch_counter WHERE singleton = 1").fetchone()
    return int(row[0])
