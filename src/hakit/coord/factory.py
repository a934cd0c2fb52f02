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


def open_coordinator(cfg: Config, *, create: bool = True) -> Coordinator:
    """The config's store. ``create`` (agents, routers, operator commands) makes it if it
    does not exist yet; without, a missing store raises NoClusterState, so a command that
    only reads never leaves an empty store behind a wrong ``-c``."""
    if cfg.coordination.backend == "sqlite":
        from hakit.coord.embedded import SqliteCoordinator

        path = cfg.coordination_path
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise NoClusterState(path)
        return SqliteCoordinator(path)
    raise ConfigError(
        [f"{cfg.source}: coordination.backend: {cfg.coordination.backend!r} is not supported yet"]
    )
