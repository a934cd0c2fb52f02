"""What an earlier agent of this node left running, found and stopped before anything else.

An agent that died (``kill -9``, a crash) normally takes its app with it: the app's
shim sees the lifeline close (hakit.supervisor.shim). What can still be left is found three
ways, each a different failure:

- the pid file (``<state_dir>/run/<node>.json``, written by the supervisor at every
  start): the shim and the app it recorded, when they still run as the same
  processes (pid *and* start time, so a reused pid is never killed);
- the app's cgroup (hakit.supervisor.cgroup): anything still in it, whatever its group;
- the app's port: a process listening on it that hakit started for this node (its
  environment says ``HAKIT_NODE`` and ``HAKIT_CLUSTER``). A listener that is not
  ours is never killed: it is reported, since the app cannot start beside it and
  the probes would reach the wrong process.

Blocking (it reads /proc and waits for the kills): run it in a thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from hakit.contract import CLUSTER_VARIABLE, NODE_VARIABLE
from hakit.supervisor import cgroup, proctable

# Event data key (kind "agent"): the agent that started found its predecessor's pid file.
UNCLEAN_END = "unclean_end"
GONE_TIMEOUT = 10.0  # a SIGKILLed process that outlives this is stuck in the kernel
_LISTEN = "0A"


@dataclass(slots=True)
class Sweep:
    """What was found: sentences for the history, and whether the app may start."""

    stopped: list[str] = field(default_factory=list)
    blocked: str | None = None  # a listener on the app's port that is not ours
    previous_agent: int | None = None  # the pid of the agent that wrote the pid file
    # A pid file was left: the earlier agent ended without stopping its app itself
    # (killed, crashed), or the host went down with it (``rebooted``).
    unclean_end: bool = False
    rebooted: bool = False


def pid_file_path(state_dir: Path, node: str) -> Path:
    return state_dir / "run" / f"{node}.json"


def _listening_inodes(port: int) -> set[int]:
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], int(fields[9])
                    if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except (OSError, StopIteration, ValueError, IndexError):
            continue
    return inodes


def listeners(port: int) -> list[int]:
    """Pids of the processes with a socket listening on ``port`` (this network namespace)."""
    inodes = _listening_inodes(port)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


def _kill_and_wait(pids: list[int], groups: list[int], group_dir: Path | None) -> list[int]:
    """SIGKILL the processes, their groups and the cgroup; the survivors after the bound."""
    deadline = time.monotonic() + GONE_TIMEOUT
    while True:
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if group_dir is not None:
            cgroup.kill(group_dir)
        left = [pid for pid in pids if proctable.is_live(proctable.stat_of(pid))]
        left += [pid for pgid in groups for pid in proctable.group_members(pgid)]
        if group_dir is not None:
            left += cgroup.members(group_dir)
        if not left or time.monotonic() >= deadline:
            return sorted(set(left))
        time.sleep(0.02)


def _from_pid_file(path: Path, sweep: Sweep) -> None:
    try:
        recorded = json.loads(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        sweep.stopped.append(f"unreadable pid file {path} removed")
        path.unlink(missing_ok=True)
        return
    agent = recorded.get("agent_pid")
    sweep.previous_agent = agent if isinstance(agent, int) else None
    sweep.unclean_end = True
    recorded_boot = recorded.get("boot_id")
    sweep.rebooted = bool(recorded_boot) and recorded_boot != proctable.boot_id()
    pids: list[int] = []
    groups: list[int] = []
    described = []
    for role in ("app", "shim"):
        pid, start = recorded.get(f"{role}_pid"), recorded.get(f"{role}_start")
        if isinstance(pid, int) and isinstance(start, int) and proctable.same_process(pid, start):
            pids.append(pid)
            described.append(f"{role} pid {pid}")
            if role == "app":
                groups.append(pid)  # the app leads its own group
    if pids:
        survivors = _kill_and_wait(pids, groups, None)
        sweep.stopped.append(
            f"{' and '.join(described)} left by an earlier agent"
            + (f" (pid {agent})" if isinstance(agent, int) else "")
            + (": stopped" if not survivors else f": {survivors} survived SIGKILL")
        )
    path.unlink(missing_ok=True)


def sweep(
    *,
    node: str,
    cluster: str,
    port: int,
    pid_file: Path,
    group_dir: Path | None,
) -> Sweep:
    """Stop what an earlier agent of ``node`` left; say what was found (blocking)."""
    result = Sweep()
    _from_pid_file(pid_file, result)
    if group_dir is not None and cgroup.populated(group_dir):
        members = cgroup.members(group_dir)
        survivors = _kill_and_wait([], [], group_dir)
        result.stopped.append(
            f"processes {members[:10]} left in the app's cgroup {group_dir}: "
            + ("stopped" if not survivors else f"{survivors} survived SIGKILL")
        )
    if group_dir is not None:
        cgroup.remove(group_dir)  # empty now (a populated one stays): the shim makes it anew
    for pid in listeners(port):
        if pid == os.getpid():
            continue
        environment = proctable.environment(pid)
        ours = (
            environment.get(NODE_VARIABLE) == node
            and environment.get(CLUSTER_VARIABLE, cluster) == cluster
        )
        command = proctable.command_line(pid)[:200]
        if not ours:
            result.blocked = (
                f"port {port} is taken by pid {pid} ({command or 'command unknown'}), which "
                f"hakit did not start for {node}: the app cannot start until it is freed"
            )
            continue
        stat = proctable.stat_of(pid)
        # Its group too (what it started), unless that group is ours: an app started by
        # hand from the agent's own shell session must not take the agent with it.
        groups = [stat.pgid] if stat and stat.pgid > 1 and stat.pgid != os.getpgid(0) else []
        survivors = _kill_and_wait([pid], groups, None)
        result.stopped.append(
            f"pid {pid} ({command}) of {node}'s app, still listening on port {port}: "
            + ("stopped" if not survivors else f"{survivors} survived SIGKILL")
        )
    return result
