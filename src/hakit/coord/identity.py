"""Creating the coordination store on purpose: ``hakit init`` and ``hakit init --reinit``.

``init`` makes the store of a new cluster, with a new identity. It refuses when a
store is already there, and when node memories (``hakit.coord.memory``) show
that a store existed and was lost: then ``--reinit`` is the command.

``--reinit`` makes a new store to replace a lost, damaged, replaced or older one:

- its lineage lists the identities the nodes remember (and the one of the file it
  replaces, when readable), so running agents and routers accept it and
  reconnect by themselves;
- its epoch counter starts above every epoch a memory file, the replaced file or
  ``--min-epoch`` records, so no epoch is ever handed out twice;
- it grants no lease for one lease TTL after it is in place (``leases_from``): a
  node that held the lease in the old store cannot renew it in the new one, and
  has fenced itself by then;
- the file at the path, and its -wal/-shm, are moved aside to
  ``<name>.replaced-<timestamp>`` (never deleted), before the new store appears
  at the path in one step (a hard link of a complete file built beside it).

It refuses to replace a healthy store (one every memory trusts) unless ``force``.
"""

from __future__ import annotations

import os
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hakit.config import Config
from hakit.coord.base import Event
from hakit.coord.memory import Memory, fsync_dir, make_private_dir, memory_dir, read_memories
from hakit.coord.reinit import Request, StoreInit
from hakit.coord.sqlite import (
    SIDE_FILES,
    StoreIdentity,
    create_store,
    file_id,
    read_identity,
)
from hakit.errors import CoordinationError
from hakit.history.kinds import EventKind

# Added to the lease TTL before a re-initialised store grants a lease: covers the
# moments between computing the time and the store being in place.
LEASE_MARGIN = 1.0


@dataclass(frozen=True)
class Found:
    """What is at the store's path."""

    exists: bool
    identity: StoreIdentity | None  # None: no readable hakit store
    description: str


@dataclass(frozen=True)
class InitResult:
    path: Path
    store: StoreIdentity
    replaced: Found
    moved_aside: tuple[Path, ...] = ()
    memories: dict[str, Memory] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What was done, for the operator."""
        out = [f"{self.path}: was {self.replaced.description}"] if self.replaced.exists else []
        if self.moved_aside:
            out.append("moved aside (kept): " + ", ".join(str(p) for p in self.moved_aside))
        out.append(f"created the coordination store {self.path}: identity {self.store.identity}")
        if self.store.lineage:
            out.append(
                "it replaces identities " + ", ".join(self.store.lineage) + " (agents and routers "
                "that remember them accept it and reconnect by themselves)"
            )
        for node, memory in sorted(self.memories.items()):
            out.append(
                f"  node {node} remembered identity {memory.identity} up to epoch {memory.epoch}"
            )
        if self.store.last_epoch:
            out.append(
                f"epochs continue above {self.store.last_epoch} "
                f"(the next lease gets epoch {self.store.last_epoch + 1} or more)"
            )
        if self.store.leases_from:
            at = time.strftime("%H:%M:%S", time.localtime(self.store.leases_from))
            out.append(
                f"no lease is granted before {at} (one lease TTL: a node that held the lease "
                "in the replaced store has fenced itself by then)"
            )
        return out


def inspect_store(path: Path) -> Found:
    """What is at ``path``: a store (with its identity), nothing, or a file that is not one.

    Read-only: nothing in the file is changed.
    """
    path = Path(path)
    if file_id(path) is None:
        return Found(False, None, "no file")
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version == 0:
                return Found(True, None, "an empty file or not a hakit store")
            if version < 3:  # from before identities: only its epochs count
                row = conn.execute("SELECT last_epoch FROM epoch_counter").fetchone()
                last = int(row[0]) if row is not None else 0
                return Found(
                    True,
                    StoreIdentity("", (), last),
                    f"a store without identity (schema {version}), last epoch {last}",
                )
            found = read_identity(conn)
        finally:
            conn.close()
    except sqlite3.Error as error:
        return Found(True, None, f"a file that is not a readable hakit store ({error})")
    if found is None:
        return Found(True, None, "a hakit store without its identity row (damaged)")
    return Found(
        True, found, f"a store with identity {found.identity}, last epoch {found.last_epoch}"
    )


def _trusted_by_all(found: StoreIdentity, memories: dict[str, Memory]) -> bool:
    return all(
        (memory.identity == found.identity or memory.identity in found.lineage)
        and memory.epoch <= found.last_epoch
        for memory in memories.values()
    )


def _remembered(memories: dict[str, Memory]) -> str:
    return "; ".join(
        f"node {node}: identity {m.identity} up to epoch {m.epoch}"
        for node, m in sorted(memories.items())
    )


def _leftovers(path: Path) -> list[Path]:
    return [
        Path(f"{path}{suffix}")
        for suffix in (*SIDE_FILES, "-journal")
        if Path(f"{path}{suffix}").exists()
    ]


def init_store(
    path: Path,
    memories_in: Path,
    *,
    config: str = "CONFIG",
    actor: str = "operator",
    clock: Callable[[], float] = time.time,
) -> InitResult:
    """Create the store of a new cluster at ``path`` with a new identity (see the module)."""
    path = Path(path)
    reinit = f"`hakit init --reinit -c {config}`"
    memories = read_memories(memories_in)
    found = inspect_store(path)
    if found.exists:
        raise CoordinationError(
            f"hakit init: a coordination store already exists at {path} ({found.description}); "
            f"it is kept. To replace a lost, damaged or replaced store, run {reinit}"
        )
    if memories:
        highest = max(m.epoch for m in memories.values())
        raise CoordinationError(
            f"hakit init: there is no store at {path}, but the nodes remember one "
            f"({_remembered(memories)}): it was lost. Restore it (moved into place), or run "
            f"{reinit} so that the new store's epochs continue above {highest}"
        )
    leftovers = _leftovers(path)
    if leftovers:
        raise CoordinationError(
            f"hakit init: there is no store at {path}, but "
            + ", ".join(str(p) for p in leftovers)
            + f" of one are still there: it was deleted. Restore it, or run {reinit}, which "
            "moves them aside"
        )
    now = clock()
    store = StoreIdentity(str(uuid.uuid4()), (), 0)
    created = f"coordination store created with identity {store.identity}"
    event = Event(0, now, "", EventKind.STORE.value, created, 0, actor)
    _install(path, store, event, now, moved=())
    return InitResult(path, store, found)


def reinit_store(
    path: Path,
    memories_in: Path,
    *,
    lease_ttl: float,
    min_epoch: int = 0,
    force: bool = False,
    config: str = "CONFIG",
    actor: str = "operator",
    clock: Callable[[], float] = time.time,
) -> InitResult:
    """Replace the store at ``path`` by a new one the cluster accepts (see the module)."""
    path = Path(path)
    if min_epoch < 0:
        raise ValueError(f"min_epoch must be at least 0, got {min_epoch}")
    memories = read_memories(memories_in)  # a damaged memory raises: never guess an epoch
    found = inspect_store(path)
    current = found.identity
    if (
        current is not None
        and current.identity
        and _trusted_by_all(current, memories)
        and not force
    ):
        raise CoordinationError(
            f"hakit init --reinit: the store at {path} is healthy ({found.description}) and "
            "every node's memory trusts it; nothing to re-initialise (a new store would stop "
            "the active node for one lease TTL). Add --force to replace it anyway"
        )
    lineage = {i for m in memories.values() for i in (m.identity, *m.lineage)}
    if current is not None and current.identity:
        lineage |= {current.identity, *current.lineage}
    base = max(
        [min_epoch, current.last_epoch if current is not None else 0]
        + [m.epoch for m in memories.values()]
    )
    now = clock()
    store = StoreIdentity(
        str(uuid.uuid4()), tuple(sorted(lineage)), base, now + lease_ttl + LEASE_MARGIN
    )
    reason = (
        f"coordination store re-initialised with identity {store.identity} "
        f"(replaces {', '.join(store.lineage) or 'no known identity'}; was "
        f"{found.description}); epochs continue above {base}"
    )
    event = Event(
        0,
        now,
        "",
        EventKind.STORE.value,
        reason,
        base,
        actor,
        {"identity": store.identity, "lineage": list(store.lineage), "min_epoch": min_epoch},
    )
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    aside = path.with_name(f"{path.name}.replaced-{stamp}")
    for n in range(2, 1000):
        if not any(Path(f"{aside}{s}").exists() for s in ("", *SIDE_FILES, "-journal")):
            break
        aside = path.with_name(f"{path.name}.replaced-{stamp}-{n}")
    moved = [(path, aside)] if found.exists else []
    moved += [(p, Path(f"{aside}{str(p)[len(str(path)) :]}")) for p in _leftovers(path)]
    _install(path, store, event, now, moved=tuple(moved))
    # The TTL counts from when the store is in place: push it if building it took long.
    leases_from = clock() + lease_ttl
    if leases_from > store.leases_from:
        _push_leases_from(path, leases_from)
        store = StoreIdentity(store.identity, store.lineage, store.last_epoch, leases_from)
    return InitResult(path, store, found, tuple(dest for _, dest in moved), memories)


def _install(
    path: Path,
    store: StoreIdentity,
    event: Event,
    now: float,
    *,
    moved: tuple[tuple[Path, Path], ...],
) -> None:
    """Build the store beside ``path``, move ``moved`` aside, then link it into place.

    The file appears at the path complete, in one step, with no -wal or -shm of
    another store beside it (those are moved aside first: SQLite would read their
    content into the new file). The link fails rather than replace a file that a
    process created at the path meanwhile.
    """
    make_private_dir(path.parent)
    temp = path.with_name(f".{path.name}.init-{os.getpid()}")
    for stale in (temp, *(Path(f"{temp}{s}") for s in (*SIDE_FILES, "-journal"))):
        stale.unlink(missing_ok=True)  # left by a run of ours that was killed
    try:
        create_store(temp, store, event=event, now=now)
        for source, destination in moved:
            os.rename(source, destination)
        try:
            os.link(temp, path)
        except FileExistsError:
            raise CoordinationError(
                f"a process created a store at {path} while it was being (re-)initialised "
                f"(the new one was not put in place); stop agents that never ran before, "
                "then run the command again"
            ) from None
        fsync_dir(path.parent)
    except (OSError, sqlite3.Error) as error:
        raise CoordinationError(
            f"could not create the coordination store {path}: {error}; check that this user "
            f"may write to {path.parent}"
        ) from error
    finally:
        temp.unlink(missing_ok=True)


def _push_leases_from(path: Path, leases_from: float) -> None:
    conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    try:
        conn.execute(
            "UPDATE cluster SET leases_from = MAX(leases_from, ?) WHERE singleton = 1",
            (leases_from,),
        )
    finally:
        conn.close()


class InitReport(Protocol):
    def lines(self) -> list[str]: ...


def _initialise_distributed(
    cfg: Config, reinit: bool, min_epoch: int, force: bool, actor: str, config: str
) -> InitReport:
    """etcd or ZooKeeper (hakit.coord.reinit), then the store's event."""
    from hakit.coord.factory import open_coordinator

    memories = read_memories(memory_dir(cfg.cluster.state_dir))  # damaged: raise, never guess
    request = Request(
        cfg.cluster.name,
        memories,
        cfg.coordination.lease_ttl,
        reinit,
        min_epoch,
        force,
        config,
    )
    done: StoreInit
    if cfg.coordination.backend == "etcd":
        from hakit.coord.etcd.reinit import initialise_etcd

        assert cfg.coordination.etcd is not None
        done = initialise_etcd(cfg.coordination.etcd, request)
    else:
        from hakit.coord.zookeeper.reinit import initialise_zookeeper

        done = initialise_zookeeper(cfg.coordination.zookeeper, request)
    what = (
        f"coordination store re-initialised with identity {done.identity} (replaces "
        f"{', '.join(done.lineage) or 'no known identity'}; was {done.replaced}); "
        f"epochs continue above {done.base_epoch}"
        if reinit
        else f"coordination store created with identity {done.identity}"
    )
    data = {"identity": done.identity, "lineage": list(done.lineage), "min_epoch": min_epoch}
    store = open_coordinator(cfg, create=False)
    try:
        store.append_event(
            Event(0, time.time(), "", EventKind.STORE.value, what, done.base_epoch, actor, data)
        )
    finally:
        store.close()
    return done


def initialise(
    cfg: Config,
    *,
    reinit: bool = False,
    min_epoch: int = 0,
    force: bool = False,
    actor: str = "operator",
) -> InitReport:
    """``hakit init`` (``reinit``: ``--reinit``) for the store ``cfg`` names."""
    config = str(cfg.source) if cfg.source is not None else "CONFIG"
    if cfg.coordination.backend in ("etcd", "zookeeper"):
        return _initialise_distributed(cfg, reinit, min_epoch, force, actor, config)
    if cfg.coordination.backend != "sqlite":
        raise CoordinationError(
            f"hakit init: coordination.backend {cfg.coordination.backend!r}: not supported yet; "
            "its first agent creates the cluster identity"
        )
    make_private_dir(cfg.cluster.state_dir)
    memories = memory_dir(cfg.cluster.state_dir)
    if reinit:
        return reinit_store(
            cfg.coordination_path,
            memories,
            lease_ttl=cfg.coordination.lease_ttl,
            min_epoch=min_epoch,
            force=force,
            config=config,
            actor=actor,
        )
    return init_store(cfg.coordination_path, memories, config=config, actor=actor)
