"""hakit.agent.storeio: the agent's one store thread, with real threads and a real SQLite store."""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from hakit.agent.storeio import StoreIO
from hakit.coord.base import Event
from hakit.coord.sqlite import SqliteCoordinator
from hakit.errors import CoordinationError


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Gate:
    """A job that holds the store thread until opened, so the next jobs queue up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self) -> None:
        self.entered.set()
        assert self.opened.wait(10)


def test_jobs_run_in_the_order_issued_fire_and_forget_or_awaited() -> None:
    async def main() -> list[str]:
        io = StoreIO()
        done: list[str] = []
        gate = Gate()
        io.submit("hold", gate)
        await asyncio.to_thread(gate.entered.wait, 5)
        io.submit("a", done.append, "a")
        read = asyncio.create_task(io.call(lambda: list(done)))
        await asyncio.sleep(0)  # the read is issued now, between "a" and "b"
        io.submit("b", done.append, "b")
        gate.opened.set()
        seen = await read
        assert await io.flush(5)
        io.close()
        return [*seen, "|", *done]

    assert asyncio.run(main()) == ["a", "|", "a", "b"]


def test_a_newer_record_replaces_one_still_waiting_at_the_tail_only() -> None:
    async def main() -> list[str]:
        io = StoreIO()
        done: list[str] = []
        gate = Gate()
        io.submit("hold", gate)
        await asyncio.to_thread(gate.entered.wait, 5)
        io.submit("r1", done.append, "record-1", key="record")
        io.submit("r2", done.append, "record-2", key="record")  # replaces record-1
        io.submit("e", done.append, "event", key=None)
        io.submit("r3", done.append, "record-3", key="record")  # never overtakes the event
        io.submit("r4", done.append, "record-4", key="record")  # replaces record-3
        assert io.queued() == 3
        gate.opened.set()
        assert await io.flush(5)
        io.close()
        return done

    assert asyncio.run(main()) == ["record-2", "event", "record-4"]


def test_a_refused_write_is_retried_in_place_and_later_writes_wait_for_it() -> None:
    async def main() -> tuple[list[str], int]:
        io = StoreIO(retry_for=5, retry_pause=0.01)
        done: list[str] = []
        refusals = [CoordinationError("locked"), CoordinationError("locked")]

        def flaky() -> None:
            if refusals:
                raise refusals.pop()
            done.append("flaky")

        io.submit("flaky", flaky)
        io.submit("after", done.append, "after")
        assert await io.flush(5)
        io.close()
        return done, io.dropped

    assert asyncio.run(main()) == (["flaky", "after"], 0)


def test_a_write_refused_past_its_retry_budget_is_logged_and_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> tuple[list[str], int, int]:
        io = StoreIO(retry_for=0.2, retry_pause=0.02)
        done: list[str] = []
        attempts = 0

        def refused() -> None:
            nonlocal attempts
            attempts += 1
            raise CoordinationError("store is locked")

        io.submit("write the doomed event", refused)
        io.submit("bug", lambda: 1 / 0)  # not a store refusal: logged once, not retried
        io.submit("after", done.append, "after")
        assert await io.flush(5)
        io.close()
        return done, attempts, io.dropped

    with caplog.at_level(logging.WARNING, logger="hakit.storeio"):
        done, attempts, dropped = asyncio.run(main())
    assert done == ["after"] and dropped == 2
    assert 2 <= attempts <= 12
    messages = [r.getMessage() for r in caplog.records]
    assert any("could not write the doomed event: store is locked" in m for m in messages)
    assert any("could not bug" in m for m in messages)


def test_a_job_holding_the_thread_is_named_while_it_runs_and_logged_when_slow(
    caplog: pytest.LogCaptureFixture,
) -> None:
    io = StoreIO(slow_job=0.05)
    assert io.in_flight() is None
    gate = Gate()
    with caplog.at_level(logging.WARNING, logger="hakit.storeio"):
        io.submit("publish the record of node1", gate)
        assert gate.entered.wait(5)
        io.submit("record an event", lambda: None)
        wait_until(lambda: (io.in_flight() or ("", 0.0))[1] > 0.05)
        what, _ = io.in_flight() or ("", 0.0)
        assert what == "publish the record of node1"
        gate.opened.set()
        wait_until(lambda: io.in_flight() is None and io.queued() == 0)
        io.close()
    messages = [r.getMessage() for r in caplog.records]
    [slow] = messages  # the quick job after it is not logged
    assert re.fullmatch(
        r"store I/O: publish the record of node1 took \d+\.\d s; "
        r"1 store call\(s\) waited behind it",
        slow,
    ), slow


def test_an_awaited_call_returns_or_raises_and_is_skipped_once_given_up() -> None:
    async def main() -> list[str]:
        io = StoreIO()
        ran: list[str] = []
        assert await io.call(lambda x: x * 2, 21) == 42

        def refuse() -> None:
            raise CoordinationError("no")

        with pytest.raises(CoordinationError):
            await io.call(refuse)
        gate = Gate()
        io.submit("hold", gate)
        await asyncio.to_thread(gate.entered.wait, 5)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(io.call(ran.append, "late"), 0.05)
        gate.opened.set()
        assert await io.flush(5)
        io.close()
        with pytest.raises(CoordinationError, match="closed"):
            await io.call(ran.append, "after close")
        return ran

    assert asyncio.run(main()) == []


def test_flush_is_bounded_and_close_drops_what_still_waits() -> None:
    async def main() -> tuple[bool, list[str], int]:
        io = StoreIO()
        done: list[str] = []
        gate = Gate()
        io.submit("hold", gate)
        io.submit("queued", done.append, "queued")
        started = time.monotonic()
        flushed = await io.flush(0.2)
        assert time.monotonic() - started < 2
        io.close()
        gate.opened.set()
        io.submit("after close", done.append, "after close")
        await asyncio.sleep(0.05)
        return flushed, done, io.dropped

    assert asyncio.run(main()) == (False, [], 2)


def test_a_locked_sqlite_store_neither_blocks_the_loop_nor_loses_or_reorders_events(
    tmp_path: Path,
) -> None:
    """Another process holds the store's write lock longer than its busy timeout: the
    event loop keeps ticking, and every event lands afterwards, in the order issued."""
    path = tmp_path / "coordination.db"
    store = SqliteCoordinator(path, busy_timeout=0.3)
    store.append_event(Event(0, time.time(), "node1", "agent", "before the lock"))
    attempts = 0

    def append(event: Event) -> None:
        nonlocal attempts
        attempts += 1
        store.append_event(event)

    async def main() -> float:
        io = StoreIO(retry_for=10, retry_pause=0.05)
        locker = sqlite3.connect(path, timeout=5, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        worst_gap = 0.0
        try:
            for i in range(20):
                io.submit(f"event {i}", append, Event(0, time.time(), "node1", "n", f"event {i}"))
            # The first write waits its busy timeout, fails, and is retried; meanwhile the
            # loop keeps ticking (a heartbeat every 10 ms).
            deadline = time.monotonic() + 10
            last = time.monotonic()
            while attempts < 2:
                assert time.monotonic() < deadline, "the first write was never retried"
                await asyncio.sleep(0.01)
                now = time.monotonic()
                worst_gap, last = max(worst_gap, now - last), now
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert await io.flush(10)
        io.close()
        assert io.dropped == 0
        return worst_gap

    worst_gap = asyncio.run(main())
    assert worst_gap < 0.2, f"the event loop was held up {worst_gap:.2f} s"
    reasons = [event.reason for event in store.events()]
    assert reasons == ["before the lock"] + [f"event {i}" for i in range(20)]
    store.close()
