"""The coordination backends hakit knows: name -> its config section model and its opener.

``[coordination] backend = "<name>"`` picks one; its own table,
``[coordination.<name>]``, is parsed by its section model (a pydantic model,
defined in the backend's module, field ``<name>`` of
hakit.config.schema.CoordinationConfig); hakit.coord.factory.open_coordinator
calls its opener. The config check lists ``BACKENDS`` when the name is unknown,
and the backend contract tests (tests/unit/coord/test_contract.py) run against
each.

A new backend (etcd...): a module in coord/ with its section model and opener,
an entry here, a field of that name in CoordinationConfig, and a store maker in
the contract tests. Its module must not import hakit.config (the config imports
this registry to check the name).

A section written for a backend that is not selected is ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel

from hakit.coord.base import Coordinator
from hakit.coord.etcd import EtcdSection, open_etcd
from hakit.coord.sqlite import SqliteSection, open_sqlite
from hakit.coord.zookeeper import ZooKeeperSection, open_zookeeper


class Opener(Protocol):
    def __call__(
        self,
        section: Any,
        *,
        state_dir: Path,
        config: str | None,
        create: bool,
        node: str | None,
        cluster: str,
    ) -> Coordinator:
        """Open (``create``: make if missing) the store ``section`` describes.

        ``state_dir``: cluster.state_dir (the agent's memory lives there);
        ``config``: the config file, for messages; ``node``: the agent's node
        (None for routers and CLI commands); ``cluster``: cluster.name (a shared
        keyspace keeps each cluster under its prefix, hakit.coord.keys). Without
        ``create`` a missing store raises hakit.errors.NoClusterState."""
        ...


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    section: type[BaseModel]  # the [coordination.<name>] model
    open: Opener


BACKENDS: Mapping[str, Backend] = {
    "sqlite": Backend("sqlite", SqliteSection, open_sqlite),
    "etcd": Backend("etcd", EtcdSection, open_etcd),  # hakit.coord.etcd
    "zookeeper": Backend("zookeeper", ZooKeeperSection, open_zookeeper),
}


def names() -> tuple[str, ...]:
    return tuple(BACKENDS)
