"""``StoreIO.writes_failing``: what failsafe mode asks of a node's own writes
(hakit.policy.failsafe: a node that reads the lease expired confirms only if it cannot
write either)."""

from __future__ import annotations

import threading
import time

from hakit.agent.storeio import StoreIO
from hakit.errors import CoordinationError
from tests.support.waiting import wait_until


def test_a_refused_write_counts_until_one_goes_through() -> None:
    io = StoreIO(retry_for=0.05, retry_pause=0.01)
    refused = threading.Event()

    def refuse() -> None:
        refused.set()
        raise CoordinationError("database is locked")

    try:
        assert not io.writes_failing(time.monotonic(), slow=1.0)
        io.submit("refused", refuse)
        wait_until(lambda: refused.is_set() and io.queued() == 0, 5, "the refused write")
        wait_until(lambda: io.writes_failing(time.monotonic(), slow=1.0), 5, "failing")
        io.submit("accepted", lambda: None)
        wait_until(lambda: not io.writes_failing(time.monotonic(), slow=1.0), 5, "recovered")
    finally:
        io.close()


def test_a_write_held_up_longer_than_slow_counts() -> None:
    io = StoreIO()
    release = threading.Event()
    try:
        io.submit("held", release.wait)
        wait_until(lambda: io.writes_failing(time.monotonic(), slow=0.05), 5, "held up")
        release.set()
        wait_until(lambda: not io.writes_failing(time.monotonic(), slow=0.05), 5, "done")
    finally:
        release.set()
        io.close()
