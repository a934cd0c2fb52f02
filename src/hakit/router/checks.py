"""The I/O of health checks: the router's own /status checks, and TCP checks.

The router's checks are its "network path to the node": the agent of a node
publishes what it sees from the node itself, but only the router can tell
that it cannot reach a node whose agent says RUNNING. ``RouterChecks`` probes
each node's /status every ``router.check_interval`` with the manager's own
prober (hakit.health.probe: one reading of the contract), turns the observation into
a check result and feeds the ``HealthBoard`` (health.py) with the cluster's
[health] fall/rise.

The board's verdict is about one app instance in one role: when a node's
record says a new instance serves (another pid, role or epoch, or serving
again after it did not), the verdict is reset, so a node freshly promoted or
restarted is routable at once instead of after ``rise`` checks.

Every completed check also feeds the router's data-path tracker
(pathreport.py: when each node last answered, since when and how it fails),
which the router publishes for the agents (hakit.health.datapath). A node whose agent
runs no app gets no /status check, only a TCP connect for the tracker: its host
refusing (reachable) or not answering (silent) is what a handover to it needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from hakit.config import Config, NodeConfig
from hakit.contract import MEANING, REPORTED_STATES, AppState, is_routable
from hakit.coord.base import NodeRecord
from hakit.coord.view import ClusterView
from hakit.errors import HakitError
from hakit.health.datapath import LeaseSeen, lease_seen
from hakit.health.probe import Observation
from hakit.router.health import HealthBoard, HealthState, Result, Transition, drain, fail, ok
from hakit.router.pathreport import PathTracker, path_kind, reach
from hakit.router.statusclient import Prober, make_prober

log = logging.getLogger("hakit.router")

# What a record says about its app instance; a change means a new verdict is due.
InstanceKey = tuple[str, int, Any, bool]


# --- pure ---------------------------------------------------------------------------------


def result_for(state: AppState, detail: str) -> Result:
    """A /status observation -> a check result.

    RUNNING / FIRST_RUN serve; STARTING / STOPPING / MAINTENANCE answer but
    take no new users (drain); ERROR, not deployed, refused and timeouts fail.
    A timeout fails here although the manager is patient with it: the router
    only stops sending new users (they wait through hold_timeout), it does
    not act on the node.
    """
    if is_routable(state):
        return ok(detail)
    if state in REPORTED_STATES and MEANING[state].maintenance_page:
        return drain(detail)
    return fail(detail)


def instance_key(record: NodeRecord | None) -> InstanceKey | None:
    """(role, epoch, app pid, serving) of a node's record; None without a record."""
    if record is None:
        return None
    try:
        serving = is_routable(AppState(record.app_state))
    except ValueError:
        serving = False
    return record.role, record.epoch, record.detail.get("pid"), serving


def reset_reason(before: InstanceKey | None, after: InstanceKey | None) -> str | None:
    """Why the board's verdict must be forgotten, or None to keep it.

    Only when the record says an instance serves now and it is not the one
    the verdict was about; a node that stops serving needs no reset (its
    record already keeps users away).
    """
    if after is None or not after[3] or before == after:
        return None
    if before is None:
        return "its agent now publishes a serving app"
    role, epoch, pid, _serving = after
    changes = []
    if before[0] != role:
        changes.append(f"role {before[0]} -> {role}")
    if before[1] != epoch:
        changes.append(f"epoch {before[1]} -> {epoch}")
    if before[2] != pid:
        changes.append(f"app pid {before[2]} -> {pid}")
    if not before[3]:
        changes.append("serving again")
    return "new app instance per its agent (" + ", ".join(changes) + "); checking afresh"


def should_check(record: NodeRecord | None) -> bool:
    """Nothing to check on a node without a record or whose agent runs no app."""
    return record is not None and record.app_state != AppState.STOPPED


# --- the router's checks ------------------------------------------------------------------


class RouterChecks:
    """A check task per node, feeding ``board``; ``observe`` each new cluster view.

    Lifecycle: ``observe(view)`` for every view read (the Router's refresh),
    ``start()`` once the first view is in, ``await close()`` on shutdown.
    ``on_change`` is called after each transition a check causes;
    ``on_path_change`` when what the data-path tracker ``paths`` sees changes.
    The first check runs one ``check_interval`` after start: until then the
    board has no verdict and the agents' records alone gate routing.
    """

    def __init__(
        self,
        cfg: Config,
        view: Callable[[], ClusterView],
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_change = on_change  # after every transition: held requests look again
        self.on_path_change: Callable[[], None] | None = None
        self.board = HealthBoard(cfg.health.fall, cfg.health.rise, (n.name for n in cfg.nodes))
        self.paths = PathTracker([n.name for n in cfg.nodes])
        self._view = view
        self._keys: dict[str, InstanceKey | None] = {}
        self._generation: dict[str, int] = {node.name: 0 for node in cfg.nodes}
        self._tasks: list[asyncio.Task[None]] = []
        # The lease's (epoch, revision) the views show, and since when (this host's wall
        # clock: when a view first showed it).
        self._lease_key: tuple[int, int] = (0, 0)
        self._lease_since = 0.0

    def lease_seen(self, now: float) -> LeaseSeen:
        """What the current view shows of the lease at wall time ``now`` (the stamp of a
        check sent then, or of a report; hakit.health.datapath.LeaseSeen)."""
        view = self._view()
        lease = view.lease
        if lease is None:
            return LeaseSeen()
        shown = now - self._lease_since if self._lease_key == (lease.epoch, lease.revision) else 0.0
        return lease_seen(lease, view.lease_left(now), shown)

    def observe(self, view: ClusterView) -> None:
        """Reset the verdict of every node whose record names a new serving instance."""
        lease = view.lease
        shown = (lease.epoch, lease.revision) if lease is not None else (0, 0)
        if shown != self._lease_key:
            self._lease_key = shown
            self._lease_since = view.read_at if view.lease_read_at is None else view.lease_read_at
        now = time.monotonic()
        for node in self.cfg.nodes:
            key = instance_key(view.nodes.get(node.name))
            if node.name not in self._keys:  # first sight: keep the fresh UNKNOWN
                self._keys[node.name] = key
                continue
            reason = reset_reason(self._keys[node.name], key)
            self._keys[node.name] = key
            if reason is None:
                continue
            self._generation[node.name] = self._generation.get(node.name, 0) + 1
            transition = self.board.reset(node.name, now, reason)
            if transition is not None:
                _log_transition(node.name, transition)
                # No on_change here: observe() runs inside a view refresh, which notifies.

    def start(self) -> None:
        for node in self.cfg.nodes:
            try:
                prober = make_prober(
                    self.cfg.app.health, node.host, node.port, self.cfg.health.probe_timeout
                )
            except HakitError as error:
                log.warning(
                    "router: cannot check %s (%s); routing to it on its agent's word only",
                    node.name,
                    error,
                )
                continue
            task = asyncio.create_task(self._run(node, prober), name=f"router-check-{node.name}")
            self._tasks.append(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _run(self, node: NodeConfig, prober: Prober) -> None:
        interval = self.cfg.router.check_interval
        try:
            while True:  # until cancelled by close()
                await asyncio.sleep(interval)
                sent = time.time()
                seen = self.lease_seen(sent)
                if not should_check(self._view().nodes.get(node.name)):
                    # No app to check: only whether its host is reachable (data path).
                    timeout = self.cfg.health.probe_timeout
                    kind, detail = await reach(node.host, node.port, timeout)
                    self._path(node.name, kind, detail, sent, seen)
                    continue
                generation = self._generation.get(node.name, 0)
                observation = await prober.probe()
                self._path(node.name, path_kind(observation), observation.detail, sent, seen)
                if generation != self._generation.get(node.name, 0):
                    continue  # a new instance took over during the probe: not its result
                self.feed(node.name, observation)
        finally:
            with contextlib.suppress(Exception):
                await prober.aclose()

    def _path(self, name: str, kind: str, detail: str, sent: float, seen: LeaseSeen) -> None:
        if self.paths.feed(name, kind, detail, sent, time.time(), seen) and self.on_path_change:
            self.on_path_change()

    def feed(self, name: str, observation: Observation) -> Transition | None:
        result = result_for(observation.state, observation.detail)
        transition = self.board.feed(name, result, time.monotonic())
        if transition is not None:
            _log_transition(name, transition)
            if self._on_change is not None:
                self._on_change()
        return transition


def _log_transition(name: str, transition: Transition) -> None:
    level = logging.WARNING if transition.new is HealthState.DOWN else logging.INFO
    log.log(
        level,
        "router: %s %s -> %s: %s",
        name,
        transition.old,
        transition.new,
        transition.reason,
    )


# --- TCP checks (the TCP proxy's upstreams) -------------------------------------------------

EXPECT_READ_LIMIT = 64 * 1024  # a banner is short; stop reading an endless answer here


def encode_send(text: str) -> bytes:
    """The ``send`` string as bytes: characters up to U+00FF are one byte each.

    So binary probes can be written with \\u00XX escapes in TOML; anything
    beyond Latin-1 is sent as UTF-8.
    """
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


async def tcp_check(
    host: str,
    port: int,
    timeout: float,
    send: bytes = b"",
    expect: re.Pattern[str] | None = None,
) -> Result:
    """Connect (and send ``send``, and read until ``expect`` matches) within ``timeout``.

    The answer is decoded as Latin-1 (one character per byte), so ``expect``
    may match binary answers with \\xNN escapes.
    """
    where = f"{host}:{port}"
    received = bytearray()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if send:
                    writer.write(send)
                    await writer.drain()
                if expect is None:
                    return ok(f"{where} accepts connections")
                while not expect.search(received.decode("latin-1")):
                    chunk = await reader.read(4096)
                    if not chunk:
                        return fail(
                            f"{where} closed before answering {expect.pattern!r}; {_got(received)}"
                        )
                    received += chunk
                    if len(received) > EXPECT_READ_LIMIT:
                        return fail(
                            f"{where} answered {EXPECT_READ_LIMIT} bytes without matching {expect.pattern!r}"
                        )
                return ok(f"{where} answered as expected")
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        if expect is not None and received:
            return fail(
                f"{where}: no answer matching {expect.pattern!r} within {timeout:g}s; {_got(received)}"
            )
        return fail(f"{where}: no answer within {timeout:g}s")
    except OSError as error:
        return fail(f"cannot connect to {where}: {error.strerror or error}")


def _got(received: bytes | bytearray) -> str:
    if not received:
        return "got nothing"
    shown = bytes(received[:80]).decode("latin-1")
    return f"got {shown!r}"
