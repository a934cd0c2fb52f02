"""Open the coordination backend a config names."""

from __future__ import annotations

from pathlib import Path

from hakit.config import Config
from hakit.coord.base import Coordinator
from hakit.errors import ConfigError, CoordinationError


class NoClusterState(CoordinationError):
    """A reader (``hakit status``, ``events``, ``why``) asked for a store that does not exist."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(
            f"no cluster state at {path}: is -c right? (the agents create it when they first run)"
        )


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
    if cfg.coordination.backend == "sqlite":
        from hakit.coord.memory import make_private_dir, memory_file
        from hakit.coord.sqlite import SqliteCoordinator

        path = cfg.coordination_path
        if create:
            make_private_dir(path.parent)
        elif not path.is_file():
            raise NoClusterState(path)
        memory = None
        if node is not None:
            make_private_dir(cfg.cluster.state_dir)
            memory = memory_file(cfg.cluster.state_dir, node)
        return SqliteCoordinator(
            path,
            memory_path=memory,
            create=create,
            config=str(cfg.source) if cfg.source is not None else None,
        )
    raise ConfigError(
        [f"{cfg.source}: coordination.backend: {cfg.coordination.backend!r} is not supported yet"]
    )
