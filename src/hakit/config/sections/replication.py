"""``[replication]``: replicated storage's timing (``[cluster] storage = "replicated"``).

::

    [replication]
    interval = "30s"   # the active captures, each standby pulls and applies, this often
    max_lag = "5m"     # a standby whose copy is older is not promoted (unless forced)
    keep = 3           # generations each node keeps: the newest in its repository, and
                       # on a standby its restored copies beside its home
    prune_grace = "10m"  # and every repository generation newer than this (pruning)
    final_timeout = "1m"  # a switchover's final generation must be applied by its target within
    directory = "..."  # this node's repository (default: <state_dir>/replication/<node>)

Replicated storage trades a recovery point for needing no shared storage: a
standby's copy is as old as the last generation it applied, up to about
``interval`` plus the time a capture and a transfer take. ``max_lag`` bounds what
an automatic failover may lose; ``hakit failover --force`` overrides it, and the
failover's event records the loss window either way (hakit.policy.replication).

Each node's repository is pruned as it goes (hakit.agent.replica_prune): the
active after each capture, a standby after each generation it applied, to the
newest ``keep`` generations and every generation that was the newest within
``prune_grace`` (hakit.snapshot.prune's grace rules). ``prune_grace`` bounds how
long a standby's pull of one generation may take before the active may remove it
(the pull then fails cleanly and is tried again at the next turn): longer than a
pull or a capture takes, short enough that the repository holds minutes of
generations, not hours.

Each node has its own home and database there: ``[[nodes]] home`` and
``database_url`` (default: ``[app]``'s: the same path on every host). SQLite
must live inside the home, so the home and the database switch together
(hakit.snapshot.apply). PostgreSQL: every node its own database, on its own
server or, for a test, on one server under different names; a standby's apply
renames its database, so two nodes naming the same one are refused
(``same_database``: a loopback host is the node's own host).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pydantic import Field

from hakit.config.problems import Problem
from hakit.config.sections.base import _Section
from hakit.config.sections.cluster import ClusterConfig, NodeConfig
from hakit.config.values import PositiveDuration, Storage


class ReplicationConfig(_Section):
    interval: PositiveDuration = 30.0
    max_lag: PositiveDuration = 300.0
    keep: int = Field(default=3, ge=1)
    # Repository generations this young are never pruned, nor objects this young that no
    # generation references (a capture or pull in progress; hakit.snapshot.prune).
    prune_grace: PositiveDuration = 600.0
    # A planned switchover: the active (app stopped) ships a final generation and waits
    # this long for the target to apply it before it releases the lease
    # (hakit.policy.replication.final_decision).
    final_timeout: PositiveDuration = 60.0
    directory: Path | None = None  # default: <state_dir>/replication/<node>

    def repository(self, state_dir: Path, node: str) -> Path:
        """This node's snapshot repository (served read-only to the others)."""
        return (self.directory or state_dir / "replication") / node


LOOPBACK = frozenset({"", "localhost", "127.0.0.1", "::1"})


def postgres_identity(url: str, node_host: str) -> tuple[str, int, str] | None:
    """(server host, port, database) a node's PostgreSQL URL names (None: not PostgreSQL).
    A loopback host or a socket directory is the node's own host."""
    if not url.startswith(("postgresql://", "postgres://")):
        return None
    parts = urlsplit(url)
    host = unquote(parts.hostname or "")
    if host in LOOPBACK or host.startswith("/"):
        host = node_host
    try:
        port = parts.port or 5432
    except ValueError:
        port = 5432  # the URL's own check says what is wrong with it
    return host.lower(), port, unquote(parts.path.lstrip("/"))


def same_database(nodes: Sequence[tuple[int, NodeConfig]], app_database_url: str) -> list[Problem]:
    """Two nodes whose PostgreSQL URLs name one database (a standby's swap would rename it
    under the active)."""
    problems: list[Problem] = []
    seen: dict[tuple[str, int, str], str] = {}
    for index, node in nodes:
        url = app_database_url if node.database_url is None else node.database_url
        identity = postgres_identity(url, node.host)
        if identity is None:
            continue
        other = seen.setdefault(identity, node.name)
        if other == node.name:
            continue
        host, port, database = identity
        where = ("nodes", index, "database_url") if node.database_url else ("nodes", index)
        problems.append(
            Problem(
                where,
                f"{node.name} and {other} use the same PostgreSQL database {database} on "
                f'{host}:{port}, but storage = "replicated" needs each node\'s own (a '
                "standby's apply renames its database); expected database_url naming "
                f"another database or server for {node.name}",
            )
        )
    return problems


def replication_problems(
    cluster: ClusterConfig | None,
    has_token: bool,
    nodes: Sequence[tuple[int, NodeConfig]],
    app_database_url: str = "",
) -> list[Problem]:
    """Standbys pull from the active's agent over the admin API: every node serves it,
    with a token; each node has its own database."""
    if cluster is None or cluster.storage is not Storage.REPLICATED:
        return []
    problems: list[Problem] = same_database(nodes, app_database_url)
    if not has_token:
        problems.append(
            Problem(
                ("cluster", "storage"),
                'storage = "replicated": standbys pull the active\'s generations over the '
                "admin API, but [admin] has no token; expected [admin] token = "
                '"<a long random secret>" or token_file = "PATH"',
            )
        )
    for index, node in nodes:
        if node.admin_port is None:
            problems.append(
                Problem(
                    ("nodes", index),
                    f'{node.name} has no admin_port, but storage = "replicated" needs every '
                    "node's agent to serve its repository over the admin API; expected "
                    "admin_port = PORT on every node",
                )
            )
    return problems
