"""The router's side of the data path (hakit.health.datapath): what it sees of every node,
published.

The router's own checks (checks.py) are its network path to each node: every
completed check is fed to a :class:`PathTracker` (pure: wall times are passed in),
which keeps per node when the last answer came, when the current failure streak
began and of which kind (``refused``: the host answered; ``silent``: timeout or
unreachable). Nodes whose /status the router does not check (no app running
there, e.g. a cold standby) get a plain TCP connect instead, which tells a
reachable host (refused, or accepted) from a silent one.

:class:`PathReporter` writes the tracker's report to the coordination store,
``router/<name>`` (``Coordinator.set_state``), through the router's store
executor: when what it sees changes (a node starts or stops answering, or the
kind of failure changes) and at least every ``every`` seconds, never more often
than ``every / 5``. It writes it with a store TTL of
hakit.health.datapath.STALE_REPORTS periods (``report_ttl``, ``expiring: true``):
a router that stops publishing (down, or cut off from the store) has its report
forgotten by the store, on the store's clock. The request hot path is not
involved: only the checks feed the tracker.

Each answered check is stamped with what the router's view of the store showed of
the lease when the check was sent (hakit.health.datapath.LeaseSeen: epoch,
revision, validity left, how long that revision had been shown), and each report
with the view at its writing, so a standby can tell "answered after the lease's
last renewal" without comparing this host's clock with the store's
(hakit.health.datapath.judge_holder).

Each node's entry also carries the requests the router has in flight to it and
whether the router sees it draining (``load``, read from the router when a
report is written), for a draining node's agent (hakit.health.datapath.in_flight). The
router asks for a report at once (``changed``) when it first sees a node drain
and when its count for a draining node falls to 0, so a drain ends promptly;
otherwise the counts go out with the usual period. Upgraded connections
(WebSocket tunnels) are not counted: they live as long as the user stays, a
drain cannot wait for them, and stopping the app closes them (the clients
reconnect, to the new node).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from typing import Any, Protocol

from hakit.config import Config
from hakit.contract import REPORTED_STATES, AppState
from hakit.coord.keys import router_report
from hakit.health.datapath import (
    ANSWERED,
    REFUSED,
    SILENT,
    LeaseSeen,
    PathReport,
    Sight,
    report_ttl,
)
from hakit.health.probe import Observation, host_answered

log = logging.getLogger("hakit.router")

MIN_EVERY, MAX_EVERY = 0.5, 1.0  # publishing period bounds (it decides failover latency)


class StateStore(Protocol):
    """The part of the Coordinator a router writes its report with."""

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None: ...

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool: ...


def report_every(cfg: Config) -> float:
    """How often a router publishes: the agents' renewal pace, within [0.5 s, 1 s]."""
    return min(MAX_EVERY, max(MIN_EVERY, cfg.coordination.renew_interval))


def check_every(cfg: Config) -> float:
    """The longest gap between two completed checks of a node that answers."""
    return cfg.router.check_interval + cfg.health.probe_timeout


def router_name(host: str, port: int) -> str:
    """``host:port`` of the router; the machine's name for a wildcard address."""
    if host in ("", "0.0.0.0", "::", "*"):
        host = socket.gethostname()
    return f"{host}:{port}"


def path_kind(observation: Observation) -> str:
    """ANSWERED (any answer from the app), REFUSED (the host answered) or SILENT."""
    if observation.http_status is not None or observation.state in REPORTED_STATES:
        return ANSWERED
    if observation.state is AppState.TIMEOUT:
        return SILENT
    if host_answered(observation):
        return REFUSED
    if observation.state is AppState.NOT_DEPLOYED:
        return ANSWERED  # a status command's garbled answer still came from the node
    return SILENT  # unreachable host or network, no route


class PathTracker:
    """What one router sees of each node; fed a kind per completed check (pure)."""

    def __init__(self, names: list[str]) -> None:
        self._sights: dict[str, Sight] = {name: Sight() for name in names}

    def feed(
        self,
        name: str,
        kind: str,
        detail: str,
        sent: float,
        done: float,
        lease: LeaseSeen | None = None,
    ) -> bool:
        """One completed check of ``name``: sent at wall time ``sent``, ended at ``done``;
        ``lease``: what the router's view showed of the lease when it was sent (kept with
        the last answer).

        True when what the router sees changed (answering <-> failing, or the kind
        of failure): worth publishing at once.
        """
        old = self._sights.get(name, Sight())
        if kind == ANSWERED:
            new = Sight(sent, done, None, None, 0, detail, answered_lease=lease)
        else:
            same = old.failure == kind
            since = old.failing_since if same and old.failing_since is not None else sent
            count = old.failures + 1 if same else 1
            new = Sight(
                old.answered_at,
                done,
                kind,
                since,
                count,
                detail,
                answered_lease=old.answered_lease,
            )
        self._sights[name] = new
        return new.failure != old.failure or old.checked_at is None

    def sight(self, name: str) -> Sight:
        return self._sights.get(name, Sight())

    def report(
        self,
        router: str,
        now: float,
        every: float,
        check_gap: float,
        in_flight: Mapping[str, int] | None = None,
        draining: Collection[str] = (),
        lease: LeaseSeen | None = None,
    ) -> PathReport:
        """The report at ``now``; ``in_flight``: requests in flight per node; ``draining``:
        the nodes the router sees draining; ``lease``: the router's view of the lease now.
        Marked ``expiring``: it is published with a store TTL."""
        sights = dict(self._sights)
        if in_flight or draining:
            for name, sight in sights.items():
                count = in_flight.get(name, 0) if in_flight else 0
                if count or name in draining:
                    sights[name] = dataclasses.replace(
                        sight, in_flight=count, draining=name in draining
                    )
        return PathReport(router, now, every, check_gap, sights, lease, expiring=True)


async def reach(host: str, port: int, timeout: float) -> tuple[str, str]:
    """(kind, detail) of a plain TCP connect: a node's host without a checked app."""
    where = f"{host}:{port}"
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return SILENT, f"no answer from {where} within {timeout:g}s"
    except ConnectionRefusedError:
        return REFUSED, f"connection refused by {where} (host reachable)"
    except OSError as error:
        return SILENT, f"cannot connect to {where}: {error.strerror or error}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ANSWERED, f"{where} accepts connections"


# What a router has in flight: (requests per node, nodes it sees draining).
Load = Callable[[], tuple[Mapping[str, int], Collection[str]]]


class PathReporter:
    """Publishes a tracker's report under ``router/<name>``; ``changed()`` to publish soon."""

    def __init__(
        self,
        cfg: Config,
        tracker: PathTracker,
        store: StateStore,
        run: Callable[[Callable[[], object]], asyncio.Future[Any]],
        wall: Callable[[], float] = time.time,
        load: Load | None = None,
        lease: Callable[[float], LeaseSeen] | None = None,
    ) -> None:
        """``load``: the router's requests in flight per node and the nodes it sees
        draining, read each time a report is written (None: all 0, none); ``lease``:
        what the router's view shows of the lease at a wall time (None: nothing)."""
        self.tracker = tracker
        self._load = load
        self._lease = lease
        self.every = report_every(cfg)
        self.check_gap = check_every(cfg)
        self.name = ""
        self._store = store
        self._run = run  # runs a blocking call in the router's store executor
        self._wall = wall
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error: str | None = None

    def start(self, name: str) -> None:
        self.name = name
        self._task = asyncio.create_task(self._publish_forever(), name="router-path-report")

    def changed(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop publishing; remove the report (a router gone says nothing, at once)."""
        if self._task is None:
            return
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
        with contextlib.suppress(Exception):
            await self._run(lambda: self._store.clear_state(router_report(self.name)))

    async def publish(self) -> None:
        in_flight, draining = self._load() if self._load is not None else (None, ())
        now = self._wall()
        lease = self._lease(now) if self._lease is not None else None
        report = self.tracker.report(
            self.name, now, self.every, self.check_gap, in_flight, draining, lease
        )
        value, ttl = report.as_json(), report_ttl(self.every)
        try:
            await self._run(lambda: self._store.set_state(router_report(self.name), value, ttl=ttl))
        except Exception as error:  # the store is unreachable: try again next period
            message = f"{type(error).__name__}: {error}"
            if message != self._error:
                log.warning("router: cannot publish its data-path report (%s)", message)
            self._error = message
            return
        if self._error is not None:
            log.info("router: data-path report published again")
            self._error = None

    async def _publish_forever(self) -> None:
        gap = self.every / 5
        while True:  # until cancelled by close()
            await self.publish()
            await asyncio.sleep(gap)  # never more often than this
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every - gap)
            self._wake.clear()


def executor_runner(
    executor: Executor,
) -> Callable[[Callable[[], object]], asyncio.Future[Any]]:
    """Run blocking store calls in ``executor`` (the router's single store thread)."""

    def run(call: Callable[[], object]) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().run_in_executor(executor, call)

    return run
