"""The app's command line and environment on one node, and the ``AppProcess`` that runs it.

``substitutions`` and ``render_command`` fill the ``{placeholders}`` of the app's
commands and env (config.PLACEHOLDERS); the env also names the node (``HAKIT_NODE``),
the cluster (``HAKIT_CLUSTER``) and the app's PostgreSQL sessions (``PGAPPNAME``);
``app_process_for`` builds the node's ``AppProcess`` with its log, cgroup and pid file;
``check_port_free`` refuses a start beside another listener on the app's port.

Not imported by the shim (hakit.supervisor.shim): it needs the config.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from hakit.config import PLACEHOLDERS, Config, NodeConfig, derived_timings
from hakit.contract import CLUSTER_VARIABLE, NODE_VARIABLE
from hakit.dbfence import application_name
from hakit.errors import SupervisorError
from hakit.supervisor import cgroup, leftovers, proctable
from hakit.supervisor.exits import ExitInfo
from hakit.supervisor.process import AppProcess


def substitutions(cfg: Config, node: NodeConfig) -> dict[str, str]:
    """Values for the ``{placeholders}`` allowed in app commands and env (the vocabulary
    is config.PLACEHOLDERS: the loader refuses any other name, so none can be missing)."""
    values = {
        "node": node.name,
        "host": node.host,
        "port": str(node.port),
        "route": node.route_name,
        "home": str(cfg.home_of(node)),  # the node's own with replicated storage
        "database_url": cfg.database_url_of(node),
    }
    assert tuple(values) == PLACEHOLDERS, "config.PLACEHOLDERS and the launcher disagree"
    return values


def render_command(
    command: tuple[str, ...] | str | None, values: dict[str, str]
) -> tuple[str, ...] | str | None:
    if command is None:
        return None
    if isinstance(command, str):
        return command.format_map(values)
    return tuple(part.format_map(values) for part in command)


def log_dir(cfg: Config) -> Path:
    return cfg.cluster.state_dir / "logs"


def app_env(cfg: Config, node: NodeConfig) -> dict[str, str]:
    """The app's environment on ``node``: config's env, rendered, and hakit's names."""
    values = substitutions(cfg, node)
    env = {key: value.format_map(values) for key, value in cfg.app.env.items()}
    env.setdefault(NODE_VARIABLE, node.name)
    # With HAKIT_NODE, how an agent that starts recognises this node's app left on
    # its port by an earlier agent (hakit.supervisor.leftovers).
    env.setdefault(CLUSTER_VARIABLE, cfg.cluster.name)
    # libpq-based apps name their PostgreSQL sessions after the node, so a new
    # active can terminate them (failover.fence_database_sessions, hakit.fencing.fence).
    env.setdefault("PGAPPNAME", application_name(node.name))
    return env


def app_cgroup(node: str, state_dir: Path) -> Path | None:
    """The app's cgroup (v2) when the machine lets this agent make one, else None (the
    shim makes it at each start and removes it once the app is gone: a standby that
    never starts its app leaves nothing behind)."""
    path = cgroup.app_cgroup_path(node, state_dir)
    return path if path is not None and cgroup.allowed(path) else None


def app_process_for(
    cfg: Config,
    node: NodeConfig,
    on_exit: Callable[[ExitInfo], None],
    *,
    threshold: float,
) -> AppProcess:
    """The ``AppProcess`` of ``node``'s app (not started); ``threshold``: the agent's stall
    threshold, with which the shim keeps the lease deadline (hakit.supervisor.lifeline)."""
    values = substitutions(cfg, node)
    log_dir(cfg).mkdir(parents=True, exist_ok=True)
    env = app_env(cfg, node)
    start = render_command(cfg.app.start, values)
    assert start is not None
    return AppProcess(
        start=start,
        stop=render_command(cfg.app.stop, values),
        env=env,
        cwd=None,
        log_path=log_dir(cfg) / f"app-{node.name}.log",
        stop_timeout=cfg.app.stop_timeout,
        on_exit=on_exit,
        cgroup_path=app_cgroup(node.name, cfg.cluster.state_dir),
        pid_file=leftovers.pid_file_path(cfg.cluster.state_dir, node.name),
        # The shim keeps the lease deadline with the watchdog's rule
        # (hakit.supervisor.lifeline).
        threshold=threshold,
        grace=derived_timings(cfg).watchdog_grace,
    )


async def check_port_free(port: int) -> None:
    """Refuse to start beside another listener on the app's port: the app would fail
    ("Address already in use") while the probes reached that process instead."""
    taken = await asyncio.to_thread(leftovers.listeners, port)
    if taken:
        pid = taken[0]
        command = proctable.command_line(pid)[:200] or "command unknown"
        raise SupervisorError(
            f"cannot start the app: port {port} is taken by pid {pid} ({command}); "
            "stop that process first (the probes would reach it instead of the app)"
        )
