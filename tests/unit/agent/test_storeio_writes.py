"""``StoreIO.writes_failing``: what failsafe mode asks of a node's own writes
(hakit.policy.failsafe: a node that reads the lease expired confirms only if it cannot
write either)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hakit.agent.storeio import StoreIO
from hakit.errors import CoordinationError, StoreReplacedError
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


def test_a_write_to_a_replaced_store_is_not_retried_ahead_of_the_renewal() -> None:
    """A replaced store refuses every write until an operator re-initialises it: retried at
    the head of the queue, a node record would hold the lease renewal behind it for
    ``retry_for`` and the fence its refusal makes at once would wait for the deadline."""
    io = StoreIO(retry_for=30.0, retry_pause=0.01)
    attempts: list[float] = []

    def replaced() -> None:
        attempts.append(time.monotonic())
        raise StoreReplacedError("/state/coordination.db", "the file is gone", "id-1", 3)

    async def renew_after_the_write() -> float:
        io.submit("publish the record", replaced)
        started = time.monotonic()
        with pytest.raises(StoreReplacedError):
            await io.call(lambda: replaced())
        return time.monotonic() - started

    try:
        waited = asyncio.run(renew_after_the_write())
        assert len(attempts) == 2  # the write once, then the renewal: no retry between
        assert waited < 5.0  # not the 30 s the write would have been retried for
        assert io.dropped == 1
    finally:
        io.close()
