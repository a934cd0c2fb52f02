"""Replicated storage on one node (``[cluster] storage = "replicated"``): ship, follow, gate.

Every ``[replication] interval``:

- the ACTIVE node's agent (it holds the lease and its app runs) captures the
  home and database into its own repository (hakit.snapshot.capture, under its
  epoch, the SQLite file inside the home read through the backup API), which its
  admin API serves read-only (hakit.snapshot.peerstore);
- every STANDBY's agent asks the lease holder's agent for its newest generation,
  pulls what it lacks into its own repository (manifest last), restores it beside
  its home and, in a step of the event loop that checks the app is not running
  and this node holds no lease, swaps it in by one rename (hakit.snapshot.apply).
  Older epochs and older generations are refused there.

The capture runs in a process of its own (hakit.agent.snapshot_job, started and
watched by hakit.agent.jobs.JobProcess, as scheduled snapshots and backups are),
at a lower priority: hashing a home in a thread of the agent would hold its
interpreter lock, and a stalled disk its thread, while the lease must be renewed
and the app probed. It is killed by PID the moment this node is no longer the
running active of the epoch it started under (and dies with the agent); a
capture killed midway leaves no generation (its manifest is written last). A
standby's pull and restore run in threads (network and disk waits, the lock
released); only the swap (a rename and an fsync) runs on the event loop, so it
cannot interleave with a start of the app. With PostgreSQL (each node its own
database, hakit.snapshot.pgreplica) the swap also renames databases on the
server: it runs in a thread, and the agent's start of the app waits for it
(``settled``), as does a takeover. The node record's
``detail["replica"]`` says what this node holds: on a standby the generation
applied, its epoch and age (its recovery point), on the active the newest
generation captured; ``hakit status`` shows it.

Before this node tries for the lease (an expired one, or an operator's
takeover) ``allows_takeover`` asks hakit.policy.replication whether the copy
it holds may be promoted: it is refused when older than ``max_lag`` unless
forced. The data this node holds is as new as the newest of the generation it
applied and the moment it was last seen active itself (``<node>.state.json``
beside its repository, kept across restarts); a node that served the last epoch
holds the newest data. ``promoted`` records the failover's data-loss window in a
``replication`` event (``hakit why`` states it).

A planned switchover ships a final generation first and loses nothing
(hakit.agent.final_generation; ``before_release``, asked by the agent before its
StepDown releases the lease); its target turns every ``HURRY`` seconds meanwhile.

Each node's repository is pruned as it goes (hakit.agent.replica_prune): the
active's right after each capture, in its capture process; a standby's after
each generation it applied, that generation protected. Both keep the newest
``[replication] keep`` generations and every one that was the newest within
``prune_grace``: a standby's pull in progress keeps its generation on the
active, and a pull slower than that fails whole (no manifest, no apply) and is
tried again at the next turn. In one agent, captures, pulls, applies and prunes
of the repository run one at a time (``_writing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hakit.agent import replica_prune, snapshot_job
from hakit.agent.final_generation import (  # noqa: F401 - replication_detail: re-exported
    HURRY,
    REPLICA_KEY,
    FinalGeneration,
    replication_detail,
)
from hakit.agent.jobs import JobProcess
from hakit.config import Config, NodeConfig
from hakit.config.values import Storage
from hakit.coord.base import REINIT_HOLDER, Coordinator, Lease
from hakit.errors import HakitError, SupervisorError
from hakit.history.facts import DATA_LOSS_WINDOW, FORCED, GENERATION
from hakit.history.kinds import EventKind
from hakit.policy import HandoverRequested, LeaseGained
from hakit.policy.replication import Verdict, promotion_verdict
from hakit.snapshot.apply import (
    AppliedCopy,
    app_started_on,
    current_copy,
    home_exclusions,
    keep_prepared,
    linked_from,
    mark_app_started,
    prepare_generation,
    prune_generations,
    refusal,
    swap_in,
)
from hakit.snapshot.database import database_target
from hakit.snapshot.peerstore import PeerStore, pull_generation
from hakit.snapshot.postgres import POSTGRESQL
from hakit.snapshot.store import LocalStore
from hakit.snapshot.verify import read_manifest

log = logging.getLogger("hakit.agent.replication")

JOB_TICK = 0.2  # s: how often a running capture checks that this node is still the active
FOLLOW_LOOKS = 4  # a standby asks the active for a new generation this often per interval

Record = Callable[..., None]


def admin_url(node: NodeConfig) -> str | None:
    if node.admin_port is None:
        return None
    host = "127.0.0.1" if node.host in ("0.0.0.0", "", "*") else node.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{node.admin_port}"


class Abandoned(HakitError):
    """A capture killed because this node stopped being the running active of its epoch."""


class ReplicationSide:
    def __init__(
        self,
        cfg: Config,
        node: NodeConfig,
        coordinator: Coordinator,
        call: Callable[..., Any],  # StoreIO.call: the agent's store thread
        *,
        active_epoch: Callable[[], int],  # the epoch held while the app runs here, else 0
        cold: Callable[[], bool],  # no app process here and no lease: a swap may happen
        served_epoch: Callable[[], int],
        record: Record,
        token: str | None,
        held_epoch: Callable[[], int] = lambda: 0,  # the lease's epoch held here, app or not
        handover: Callable[[], Mapping[str, Any] | None] = lambda: None,  # the intent in force
        publish: Callable[[], None] = lambda: None,  # this node's record, now
    ) -> None:
        self.cfg = cfg
        self.node = node
        self.coordinator = coordinator
        self._call = call
        self._active_epoch = active_epoch
        self._cold = cold
        self._served_epoch = served_epoch
        self._record = record
        self._token = token
        self._held_epoch = held_epoch
        self._publish = publish
        self.enabled = cfg.cluster.storage is Storage.REPLICATED
        self.home = cfg.home_of(node)
        self.database_url = cfg.database_url_of(node)
        self.repository = cfg.replication.repository(cfg.cluster.state_dir, node.name)
        self._state_file = self.repository.with_name(f"{node.name}.state.json")
        self.copy: AppliedCopy | None = current_copy(self.home) if self.enabled else None
        self.own_until = self._read_own_until()
        self.captured: tuple[str, int] | None = None  # newest own generation, started_ns
        self.last_epoch: int | None = None  # the store's, at the last turn
        self._problem: str | None = None
        self._refused: tuple[str, bool] | None = None  # the last refusal recorded
        self._pending: tuple[Verdict, bool] | None = None  # allowed takeover, not yet promoted
        # One writer of the repository at a time: a capture and its prune (scheduled, final),
        # or a pull, its apply and the prune after it (hakit.agent.replica_prune says why).
        self._writing = asyncio.Lock()
        section = cfg.replication
        self.pruning = replica_prune.Pruning(
            node.name, self.repository, section.keep, section.prune_grace, record
        )
        self._process = JobProcess(snapshot_job.COMMAND, "replication capture")
        self._settled = asyncio.Event()  # cleared while a swap runs in a thread (PostgreSQL)
        self._settled.set()
        # A planned switchover's final generation (hakit.agent.final_generation).
        self.final = FinalGeneration(
            cfg,
            node.name,
            coordinator,
            call,
            capture=self._capture_final,
            held_epoch=held_epoch,
            handover=handover,
            record=record,
            publish=publish,
        )
        self._wake = asyncio.Event()  # a switchover to this node began: turn now

    # --- what this node holds -------------------------------------------------------

    def _read_own_until(self) -> float | None:
        try:
            return float(json.loads(self._state_file.read_text())["own_until"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _note_active(self, now: float) -> None:
        """This node's own home holds the newest data as of ``now`` (it is active)."""
        self.own_until = now
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps({"own_until": now}))
        os.replace(temporary, self._state_file)

    def data_time(self) -> float | None:
        """Wall time up to which this node's home and database hold the active's writes."""
        times = [t for t in (self.own_until, self.copy and self.copy.started_ns / 1e9) if t]
        return max(times) if times else None

    def detail(self, now: float) -> dict[str, Any]:
        """The node record's ``replica`` entry (nothing with shared storage)."""
        if not self.enabled:
            return {}
        if self._active_epoch() and self.captured is not None:
            generation, started_ns = self.captured
            entry: dict[str, Any] = {
                "role": "source",
                "generation": generation,
                "age": round(max(now - started_ns / 1e9, 0.0), 3),
            }
        elif self.copy is not None:
            entry = {
                "role": "copy",
                "generation": self.copy.generation,
                "epoch": self.copy.epoch,
                "from": self.copy.node,
                "age": round(self.copy.age(now), 3),
            }
        else:
            entry = {"role": "copy", "generation": None}
        data_time = self.data_time()
        entry["data_age"] = None if data_time is None else round(max(now - data_time, 0.0), 3)
        self.final.detail(entry)
        if self._problem:
            entry["problem"] = self._problem
        return {REPLICA_KEY: entry}

    # --- the gate before a takeover ---------------------------------------------------

    def verdict(self, forced: bool, now: float) -> Verdict | None:
        if self.last_epoch is None:
            return None  # the store not read yet: wait for the first turn
        current = self.last_epoch == 0 or self._served_epoch() >= self.last_epoch
        data_time = self.data_time()
        age = None if data_time is None else max(now - data_time, 0.0)
        generation = self.copy.generation if self.copy is not None else "its own home"
        final = self.final.holds_final(self.copy, self.last_epoch)
        return promotion_verdict(
            current, age, generation, self.cfg.replication.max_lag, forced, final
        )

    def allows_takeover(self, forced: bool = False) -> bool:
        """May this node take the lease now? Refusals are recorded once per reason."""
        if not self.enabled:
            return True
        if not self._settled.is_set() or self.final.unknown(self.copy):
            return False  # its next turn reads whether the copy is the final generation
        verdict = self.verdict(forced, time.time())
        if verdict is None:
            return False
        if not verdict.allowed:
            if (verdict.state, forced) != self._refused:  # once, not at every turn
                self._refused = (verdict.state, forced)
                self._record(
                    EventKind.REPLICATION,
                    f"{self.node.name} does not take over: {verdict.reason}",
                    epoch=0,
                    data={DATA_LOSS_WINDOW: verdict.loss_window, FORCED: forced},
                )
            return False
        self._refused = None
        self._pending = (verdict, forced)
        return True

    async def before_release(self, app_running: bool) -> str | None:
        """Before a StepDown releases the lease (hakit.agent.final_generation): why a planned
        switchover is abandoned, or None (nothing to do without replicated storage)."""
        if not self.enabled:
            return None
        return await self.final.before_release(app_running)

    def heard(self, event: object) -> None:
        """An event the agent's loop takes (a LeaseGained of the epoch held: promoted)."""
        if isinstance(event, LeaseGained):
            self.promoted(event.epoch)  # the data-loss window, recorded
        elif isinstance(event, HandoverRequested) and event.target == self.node.name:
            self.wake()  # a switchover's target follows the active closely

    def promoted(self, epoch: int) -> None:
        """This node leads under ``epoch``: record what the failover may have lost."""
        if not self.enabled:
            return
        now = time.time()
        verdict, forced = self._pending or (self.verdict(False, now), False)
        self._pending = None
        if verdict is not None:
            generation = self.copy.generation if self.copy is not None else None
            self._record(
                EventKind.REPLICATION,
                f"{self.node.name} leads under epoch {epoch}: {verdict.reason}",
                epoch=epoch,
                data={
                    DATA_LOSS_WINDOW: verdict.loss_window,
                    GENERATION: generation,
                    FORCED: forced,
                },
            )
        self.final.shipped = None
        self._note_active(now)

    # --- the loop ---------------------------------------------------------------------

    def wake(self) -> None:
        """A handover was asked for: look at once (the loop then turns every ``HURRY``)."""
        self._wake.set()

    def period(self) -> float:
        """Seconds from one turn's start to the next: the active captures every
        ``interval``; a standby looks ``FOLLOW_LOOKS`` times as often (one small request
        to the active when nothing is new), so it applies a generation soon after its
        capture ends, not up to an interval later; every ``HURRY`` during a switchover
        to it."""
        interval = self.cfg.replication.interval
        if self.final.hurrying():
            return min(interval, HURRY)
        if self._active_epoch():
            return interval
        return min(interval, max(interval / FOLLOW_LOOKS, HURRY))

    async def run(self) -> None:
        await asyncio.to_thread(LocalStore(self.repository).create)
        while True:
            started = time.monotonic()
            self._wake.clear()
            await self.turn()
            # A fixed rhythm, not a pause after each turn: a capture's own time does not
            # stretch the interval (a turn longer than it leaves a tenth of it as a pause).
            period = self.period()
            pause = max(period - (time.monotonic() - started), period / 10)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def turn(self) -> None:
        try:
            lease: Lease | None = await self._call(
                self.coordinator.current_lease, what="read the lease (replication)"
            )
            self.last_epoch = await self._call(
                self.coordinator.last_epoch, what="read the last epoch (replication)"
            )
        except HakitError as error:
            log.warning("replication: the store cannot be read: %s", error)
            return
        try:
            epoch = self._active_epoch()
            hurrying = self.final.hurrying()
            if epoch:
                async with self._writing:
                    await self._capture(epoch)
            elif (
                lease is not None
                and lease.holder not in (self.node.name, REINIT_HOLDER)  # a hold: nobody to follow
                and lease.valid
            ):
                await self._follow(lease.holder)
            elif not hurrying:
                return
            if hurrying:
                await self.final.read(lease, self.copy)
        except Abandoned as error:
            # The lease or the app went: not a replication failure (the failover is told).
            self._record(
                EventKind.REPLICATION,
                f"replication on {self.node.name}: {error}",
                data={"abandoned": True},
            )
            return
        except HakitError as error:
            self._trouble(str(error))
            return
        except OSError as error:
            self._trouble(f"{type(error).__name__}: {error}")
            return
        if self._problem is not None:
            self._record(EventKind.REPLICATION, f"replication on {self.node.name} works again")
            self._problem = None

    def _trouble(self, problem: str) -> None:
        log.warning("replication on %s: %s", self.node.name, problem)
        if problem != self._problem:
            self._problem = problem
            self._record(
                EventKind.REPLICATION,
                f"replication on {self.node.name} failed: {problem}",
                data={"error": problem},
            )

    async def _capture(self, epoch: int, final: bool = False) -> str:
        """One generation under ``epoch``, in a process of its own (see the module's doc);
        ``final``: the app is stopped, the lease still held (a switchover's last one)."""
        started = time.time()
        finished = await self._process.run(
            self.job(epoch).encode(), JOB_TICK, lambda: self._stop_reason(epoch, final)
        )
        if finished.abandoned:
            raise Abandoned(
                f"capture under epoch {epoch} abandoned after {finished.seconds:.1f} s: "
                f"{finished.abandoned}; its process was killed (no generation)"
            )
        outcome = finished.outcome
        if not outcome.ok:
            raise HakitError(f"capture under epoch {epoch} failed: {outcome.error}")
        if (self._held_epoch() if final else self._active_epoch()) == epoch:
            self._note_active(started)
        self.captured = (outcome.generation, int(outcome.data["taken_ns"]))
        pruned = self.pruning.captured(outcome.data, outcome.prune_error)
        log.info(
            "replication: captured %s under epoch %d in %.2f s%s",
            outcome.generation,
            epoch,
            finished.seconds,
            pruned,
        )
        return outcome.generation

    def job(self, epoch: int) -> snapshot_job.Job:
        """What the capture process is told (on its stdin: the URL may hold a password)."""
        exclude = home_exclusions(self.home, database_target(self.database_url))
        return snapshot_job.Job(
            home=str(self.home),
            database_url=self.database_url,
            directory=str(self.repository),
            node=self.node.name,
            epoch=epoch,
            exclude=tuple(sorted(exclude)),
            keep_last=self.cfg.replication.keep,  # then pruned (hakit.agent.replica_prune)
            grace=self.cfg.replication.prune_grace,
        )

    async def _capture_final(self, epoch: int) -> str:
        """A switchover's final generation: the app stopped, the lease of ``epoch`` held."""
        async with self._writing:  # a scheduled capture ends first (the app stopped)
            return await self._capture(epoch, final=True)

    def _stop_reason(self, epoch: int, final: bool = False) -> str:
        """Why a capture under ``epoch`` must stop now ("" while this node is its active;
        ``final``: while it holds the lease of ``epoch``)."""
        now_epoch = self._held_epoch() if final else self._active_epoch()
        if now_epoch == epoch:
            return ""
        what = "the holder of the lease" if final else "the running active"
        return f"{self.node.name} is no longer {what} of epoch {epoch}" + (
            f" (now epoch {now_epoch})" if now_epoch else ""
        )

    async def _follow(self, holder: str) -> None:
        if self._token is None:
            raise HakitError("no admin token: the active's repository cannot be read")
        url = admin_url(self.cfg.node(holder))
        if url is None:
            raise HakitError(f"{holder} has no admin_port: its repository cannot be read")
        async with self._writing:
            await self._follow_from(PeerStore(url, self._token))

    async def _follow_from(self, peer: PeerStore) -> None:
        started = time.monotonic()
        # Links to the current generation's files only while the app is not running here;
        # if the agent starts it before the swap (marking that generation), the links may
        # share what it wrote: not swapped in.
        prepared = await asyncio.to_thread(self._pull_and_prepare, peer, self._cold())
        if prepared is None:
            return
        if not self._cold():
            log.info("replication: the app runs here now; %s not swapped in", prepared.name)
            return
        if not keep_prepared(linked_from(prepared), app_started_on(self.home)):
            log.info(
                "replication: the app started here while %s was prepared with links to the "
                "files it may write; dropped, prepared again at the next turn",
                prepared.name,
            )
            await asyncio.to_thread(shutil.rmtree, prepared, True)
            return
        database = database_target(self.database_url)
        if database is not None and database.kind == POSTGRESQL:
            # The databases' renames talk to the server: in a thread, and the app's start
            # waits until the swap is over (``settled``): it finds both old or both new.
            self._settled.clear()
            try:
                await asyncio.to_thread(
                    swap_in, self.home, prepared, lambda: not self._cold(), database
                )
            finally:
                self._settled.set()
        else:
            # On the event loop: nothing starts the app between the check and the rename.
            swap_in(self.home, prepared, lambda: not self._cold())
        self.copy = current_copy(self.home)
        self.own_until = None  # the node's own data was set aside with its directory
        self._state_file.unlink(missing_ok=True)
        self._publish()  # the copy it now holds: a switchover's active waits for it
        await asyncio.to_thread(prune_generations, self.home, self.cfg.replication.keep, database)
        pruned = await self.pruning.after_apply(self.copy.generation) if self.copy else ""
        log.info(
            "replication: %s applied on %s in %.2f s (pulled, restored, swapped)%s",
            prepared.name,
            self.node.name,
            time.monotonic() - started,
            pruned,
        )

    async def settled(self) -> None:
        """Until no swap is under way (the agent asks before it starts the app)."""
        await self._settled.wait()

    def app_starting(self) -> None:
        """The agent starts the app here now (after ``settled``): the generation the home
        holds is marked first, as the app may write its files, which a generation being
        prepared may link (hakit.snapshot.ledger). A mark that fails fails the start."""
        if not self.enabled:
            return
        try:
            mark_app_started(self.home)
        except OSError as error:
            raise SupervisorError(
                f"the app's start refused: marking the generation of {self.home} failed: {error}"
            ) from None

    def _pull_and_prepare(self, peer: PeerStore, link: bool) -> Path | None:
        generations = peer.list_manifests()
        if not generations:
            return None
        newest = generations[-1]
        if self.copy is not None and newest <= self.copy.generation:
            return None
        local = LocalStore(self.repository)
        pull_generation(peer, local, newest)
        manifest = read_manifest(local, newest)
        why = refusal(manifest, current_copy(self.home))
        if why is not None:
            raise HakitError(why)
        return prepare_generation(
            local, manifest, self.home, database_target(self.database_url), link=link
        )
