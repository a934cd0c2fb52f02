"""systemd units for one host of a cluster: its agent and its router (``hakit systemd``).

The same ``hakit.toml`` on every host; each host runs ``hakit-agent@<node>`` for its
node and, where clients arrive, ``hakit-router``. The units are rendered from the
config rather than copied from a template so the timeouts follow it:

- ``Type=notify``: systemd counts the agent started once it has swept what an
  earlier agent left, read the store and started its loops (hakit.service.sdnotify);
  the router once it listens.
- ``WatchdogSec=``: the agent and the router ping from their event loops; one
  whose loop stopped is killed and restarted (DerivedTimings.service_watchdog).
- ``KillMode=control-group``: the app lives in the agent's cgroup (its shim makes
  a child cgroup there), so stopping or killing the agent stops everything it
  started, whatever escaped the process group.
- ``TimeoutStopSec=``: a planned stop stops the app gracefully (app.stop_timeout)
  and hands the lease over; systemd waits that long plus the store's flush bound.
- ``Restart=on-failure``: a killed agent comes back at once, sweeps what its
  predecessor left and returns as a standby (no automatic failback).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from hakit.config import Config
from hakit.config.derived import derived_timings

# Beyond app.stop_timeout: the lease handed over and the last records flushed.
STOP_MARGIN = 15.0
# Beyond app.stop_timeout: the leftovers of an earlier agent stopped before READY=1.
START_MARGIN = 30.0


@dataclass(frozen=True, slots=True)
class Unit:
    name: str  # the unit file's name, e.g. hakit-agent@node1.service
    text: str


def _seconds(value: float) -> str:
    return f"{math.ceil(value)}s"


def _state_directory(state_dir: Path) -> str:
    """systemd makes a state directory under /var/lib for the service's user, 0700."""
    try:
        relative = state_dir.relative_to("/var/lib")
    except ValueError:
        return f"# cluster.state_dir {state_dir}: make it {{user}}'s, mode 0700\n"
    return f"StateDirectory={relative}\nStateDirectoryMode=0700\n"


def agent_unit(cfg: Config, node: str, hakit: Path, config: Path, user: str) -> Unit:
    """The agent of ``node`` (KeyError for a node the config does not have)."""
    cfg.node(node)
    timings = derived_timings(cfg)
    stop = cfg.app.stop_timeout + timings.flush_bound + STOP_MARGIN
    text = f"""\
# hakit agent for node {node} of cluster {cfg.cluster.name} (from {config}).
# Install as /etc/systemd/system/hakit-agent@.service and run
#   systemctl enable --now hakit-agent@{node}
# on the host of {node}. The agent starts the app through its shim: the app needs no unit.
[Unit]
Description=hakit agent for node %i of cluster {cfg.cluster.name}
After=network-online.target
Wants=network-online.target

[Service]
# Ready once it has stopped what an earlier agent left, read the store, started its loops.
Type=notify
NotifyAccess=main
ExecStart={hakit} agent --node %i --config {config}
# Pinged from the agent's event loop: an agent whose loop stopped is killed (its app too).
WatchdogSec={_seconds(timings.service_watchdog)}
TimeoutStartSec={_seconds(cfg.app.stop_timeout + START_MARGIN)}
# A planned stop stops the app (app.stop_timeout) and hands the lease over first.
TimeoutStopSec={_seconds(stop)}
# The app lives in the agent's cgroup: whatever escaped its process group stops too.
KillMode=control-group
# A killed agent comes back at once, stops what its predecessor left, returns standby.
Restart=on-failure
RestartSec=1
# The OOM killer takes the app before its agent.
OOMScoreAdjust=-500
User={user}
Group={user}
{_state_directory(cfg.cluster.state_dir).format(user=user)}
[Install]
WantedBy=multi-user.target
"""
    return Unit("hakit-agent@.service", text)


def router_unit(cfg: Config, hakit: Path, config: Path, user: str) -> Unit:
    timings = derived_timings(cfg)
    text = f"""\
# hakit router of cluster {cfg.cluster.name} (from {config}), listening on {cfg.router.listen}.
# Install as /etc/systemd/system/hakit-router.service and run
#   systemctl enable --now hakit-router
[Unit]
Description=hakit router of cluster {cfg.cluster.name}
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={hakit} router --config {config}
WatchdogSec={_seconds(timings.service_watchdog)}
KillMode=control-group
Restart=on-failure
RestartSec=1
User={user}
Group={user}
# Binding a port under 1024 as {user}:
AmbientCapabilities=CAP_NET_BIND_SERVICE
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""
    return Unit("hakit-router.service", text)
