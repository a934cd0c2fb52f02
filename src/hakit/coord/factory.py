"""Open the coordination backend a config names."""

from __future__ import annotations

from hakit.config import Config
from hakit.coord.base import Coordinator
from hakit.errors import ConfigError


def open_coordinator(cfg: Config) -> Coordinator:
    if cfg.coordination.backend == "sqlite":
        from hakit.coord.embedded import SqliteCoordinator

        path = cfg.coordination_path
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteCoordinator(path)
    raise ConfigError(
        [f"{cfg.source}: coordination.backend: {cfg.coordination.backend!r} is not supported yet"]
    )
