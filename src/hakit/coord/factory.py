"""Open the coordination backend a config names (through hakit.coord.registry)."""

from __future__ import annotations

from hakit.config import Config
from hakit.coord.base import Coordinator
from hakit.coord.registry import BACKENDS
from hakit.errors import ConfigError, NoClusterState

__all__ = ["NoClusterState", "open_coordinator"]


def open_coordinator(cfg: Config, *, create: bool = True, node: str | None = None) -> Coordinator:
    """The config's store. ``create`` (agents, routers, operator commands) makes it if it
    does not exist yet; without, a missing store raises NoClusterState, so a command that
    only reads never leaves an empty store behind a wrong ``-c``.

    ``node`` (the agent of that node): its memory of the store (identity, highest
    epoch) is kept in ``<state_dir>/memory/<node>.json`` and survives restarts: an
    agent that remembers a store never creates one and refuses a missing, fresh,
    foreign or older store (StoreReplacedError). Without ``node`` (routers, CLI
    commands) the memory lives in the process. Even with ``create``, only a process
    that has not seen an identity creates the store (see hakit.coord.sqlite).
    Directories made here are 0700, the store 0600.
    """
    name = cfg.coordination.backend
    backend = BACKENDS.get(name)
    if backend is None:  # the loader refuses it; a Config built in Python may not
        raise ConfigError([f"{cfg.source}: coordination.backend: {name!r} is not supported yet"])
    section = cfg.coordination.section(name)
    return backend.open(
        section,
        state_dir=cfg.cluster.state_dir,
        config=str(cfg.source) if cfg.source is not None else None,
        create=create,
        node=node,
        cluster=cfg.cluster.name,
    )
