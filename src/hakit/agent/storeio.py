"""One thread for the agent's coordination-store I/O, run in the order it was issued.

Why: the store may be slow or locked (SQLite waits up to its busy timeout, 5 s, for
a write lock another process holds). Called on the agent's event loop, that wait
would hold back everything else on it: the probes, the supervisor's exit handling,
the heartbeat that self-fences at the lease deadline. So every store call of the
agent goes through this one thread:

- FIFO: calls run in the order they were issued, so events land in the order they
  happened and a node record published before a release lands before it. One thread,
  not a pool: a pool would reorder them.
- ``submit``: fire and forget (node records, events). A write the store refused
  (``CoordinationError``: locked past its busy timeout, say) is retried at the head
  of the queue for up to ``retry_for`` seconds, so a store locked for a few seconds
  loses nothing; what still fails then is logged and dropped. A store that was
  replaced (``StoreReplacedError``) is not retried: the lease renewal queued behind
  must reach it and fence at once. A submit with a ``key``
  replaces the job of that key if it is the last one waiting (node records: only the
  newest matters, and a replacement at the tail overtakes nothing issued after it).
- ``call``: awaited; the result or the exception comes back, never retried (the
  caller decides). Cancelled before it started, it never runs.
- ``flush``: wait, bounded, until everything issued so far has run.
- A job that holds the thread for more than ``slow_job`` seconds is logged when it
  ends, with the number of calls that waited behind it, and ``in_flight`` says what
  runs now: a lease renewal late because it waited behind another call is then told
  apart from a store too slow to renew (hakit.agent.lease logs it at the deadline).

The thread is a daemon: a store that never answers cannot hold the process's exit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from hakit.errors import CoordinationError, StoreReplacedError

log = logging.getLogger("hakit.storeio")

T = TypeVar("T")

RETRY_FOR = 10.0  # seconds a refused fire-and-forget write is retried (two busy timeouts)
RETRY_PAUSE = 0.2  # between two attempts that failed at once (a read-only file, say)
MAX_QUEUED = 1000  # fire-and-forget jobs waiting; beyond that new ones are dropped (logged)
SLOW_JOB = 2.0  # seconds one job may hold the thread before it is logged


@dataclass(eq=False, slots=True)
class _Job:
    what: str  # "publish the record of node1": for the log
    run: Callable[[], Any]
    key: str | None = None  # fire-and-forget jobs of one key coalesce at the tail
    future: concurrent.futures.Future[Any] | None = None  # awaited calls only


class StoreIO:
    """Runs store calls on one daemon thread, first issued first run (see the module)."""

    def __init__(
        self,
        *,
        name: str = "store-io",
        retry_for: float = RETRY_FOR,
        retry_pause: float = RETRY_PAUSE,
        max_queued: int = MAX_QUEUED,
        slow_job: float = SLOW_JOB,
    ) -> None:
        self._name = name
        self._slow_job = slow_job
        self._retry_for = retry_for
        self._retry_pause = retry_pause
        self._max_queued = max_queued
        self._jobs: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.dropped = 0  # fire-and-forget jobs dropped (queue full, failed, or closed)
        # Failsafe mode asks whether this agent can write to the store (hakit.policy.failsafe):
        # a write failed since the last one that went through, or the one in flight has run
        # for long (a locked store holds it for its busy timeout).
        self._write_failed = False
        self._running_since: float | None = None  # monotonic: the job in flight began
        self._running_what = ""  # the job in flight's ``what``

    # --- issuing -------------------------------------------------------------------------

    def submit(self, what: str, fn: Callable[..., Any], *args: Any, key: str | None = None) -> None:
        """Run ``fn(*args)`` in turn, without waiting for it; failures are logged."""
        job = _Job(what, functools.partial(fn, *args), key)
        with self._cond:
            if self._closed:
                self._drop(job, "the agent's store I/O is closed")
                return
            if key is not None and self._jobs and self._jobs[-1].key == key:
                self._jobs[-1] = job  # still waiting, and nothing was issued after it
                return
            if len(self._jobs) >= self._max_queued:
                self._drop(job, f"{len(self._jobs)} store writes are already waiting")
                return
            self._enqueue(job)

    async def call(self, fn: Callable[..., T], *args: Any, what: str = "") -> T:
        """Run ``fn(*args)`` in turn and return its result (or raise its exception).

        Raises ``CoordinationError`` once closed, like a store that cannot be reached.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = _Job(what or getattr(fn, "__name__", "call the store"), functools.partial(fn, *args))
        job.future = future
        with self._cond:
            if self._closed:
                raise CoordinationError(f"could not {job.what}: the agent's store I/O is closed")
            self._enqueue(job)
        # Cancelling the awaiting task cancels the future: a job not yet started is skipped.
        return await asyncio.wrap_future(future)

    async def flush(self, timeout: float) -> bool:
        """Wait until every job issued before this call has run; False after ``timeout``."""
        try:
            await asyncio.wait_for(self.call(lambda: None, what="flush"), timeout)
        except (TimeoutError, CoordinationError):
            return False
        return True

    def close(self) -> None:
        """Stop taking jobs; drop those still waiting. The job in flight finishes (its own
        timeouts bound it) and the thread ends."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            waiting = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
        for job in waiting:
            if job.future is not None:
                job.future.cancel()
            else:
                self._drop(job, "the agent stopped before the store took it")

    def writes_failing(self, now: float, slow: float) -> bool:
        """Are this agent's writes failing: one was refused since the last that went
        through, or the job in flight has run for more than ``slow`` seconds?"""
        with self._cond:
            running = self._running_since
            return self._write_failed or (running is not None and now - running > slow)

    def in_flight(self) -> tuple[str, float] | None:
        """The job holding the thread now and for how many seconds (None: it is idle)."""
        with self._cond:
            if self._running_since is None:
                return None
            return self._running_what, time.monotonic() - self._running_since

    def queued(self) -> int:
        """Jobs waiting (the one in flight not counted)."""
        with self._cond:
            return len(self._jobs)

    # --- the thread ----------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> None:
        """With ``_cond`` held."""
        self._jobs.append(job)
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        self._cond.notify()

    def _drop(self, job: _Job, why: str) -> None:
        self.dropped += 1
        log.warning("could not %s: %s; dropped", job.what, why)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return  # closed, nothing left
                job = self._jobs.popleft()
                started = self._running_since = time.monotonic()
                self._running_what = job.what
            try:
                if job.future is not None:
                    self._answer(job, job.future)
                else:
                    self._write(job)
            finally:
                with self._cond:
                    self._running_since = None
                    waited = len(self._jobs)
                took = time.monotonic() - started
                if took > self._slow_job:
                    log.warning(
                        "store I/O: %s took %.1f s; %d store call(s) waited behind it",
                        job.what,
                        took,
                        waited,
                    )

    @staticmethod
    def _answer(job: _Job, future: concurrent.futures.Future[Any]) -> None:
        if not future.set_running_or_notify_cancel():
            return  # its caller gave up before it started
        try:
            result = job.run()
        except BaseException as error:  # handed to the caller, whatever it is
            future.set_exception(error)
        else:
            future.set_result(result)

    def _write(self, job: _Job) -> None:
        """A fire-and-forget job: retried while the store refuses, for ``retry_for``."""
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            attempt_started = time.monotonic()
            try:
                job.run()
                self._write_failed = False
                return
            except StoreReplacedError as error:
                # Not a refusal that passes: the store is not the one this agent knew, until
                # an operator re-initialises it. Retried here, the write would hold the lease
                # renewal queued behind it, and with it the fence the renewal's own refusal
                # makes at once (hakit.agent.lease): dropped now.
                self._write_failed = True
                self._drop(job, str(error))
                return
            except CoordinationError as error:
                self._write_failed = True
                now = time.monotonic()
                # A quick refusal waits a little before the next try; a slow one (the busy
                # timeout ran out) has waited already.
                pause = max(0.0, self._retry_pause - (now - attempt_started))
                if self._closed or now + pause - started >= self._retry_for:
                    self._drop(job, f"{error} (after {attempts} attempts)")
                    return
                log.info("could not %s (attempt %d, retrying): %s", job.what, attempts, error)
            except Exception:
                self.dropped += 1
                log.exception("could not %s", job.what)
                return
            with self._cond:
                if pause and not self._closed:
                    self._cond.wait(pause)  # close() cuts the pause short
