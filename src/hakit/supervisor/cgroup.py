"""A cgroup (v2) per app, where the machine allows it: nothing the app starts escapes.

A process group is left by anything that calls ``setsid`` (a daemonizing start
script, a JVM launcher); a cgroup is not: every descendant stays a member until it
exits, ``cgroup.kill`` kills them all at once (Linux 5.14+), and ``cgroup.events``
says when the last one is gone. systemd's ``KillMode=control-group`` rests on the
same mechanism.

The app's cgroup is a child of the agent's own (so under systemd it sits inside the
agent's unit and dies with it too), named after the node and the cluster's state
directory, so an agent that restarts finds what an earlier one left in it. Where no
writable cgroup v2 hierarchy exists (cgroup v1 only, or no permission), every
function here says so by returning None / False, and the shim falls back to the
process group plus the descendants it reaps as subreaper (hakit.supervisor.shim).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
from pathlib import Path

_PROC_MOUNTS = "/proc/self/mounts"
_PROC_CGROUP = "/proc/self/cgroup"


def v2_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on a hybrid
    machine, ``/sys/fs/cgroup/unified``); None when it is not."""
    try:
        with open(_PROC_MOUNTS) as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2] == "cgroup2":
                    return Path(fields[1])
    except OSError:
        return None
    return None


def own_v2_path() -> str:
    """This process's cgroup in the v2 hierarchy ('/' at its root)."""
    try:
        with open(_PROC_CGROUP) as entries:
            for line in entries:
                if line.startswith("0::"):
                    return line[3:].strip() or "/"
    except OSError:
        pass
    return "/"


def app_cgroup_name(node: str, state_dir: Path) -> str:
    """Stable per node and cluster: a restarted agent looks in the same place."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    safe = "".join(char if char.isalnum() or char in "-_" else "_" for char in node)
    return f"hakit-app-{safe}-{digest}"


def app_cgroup_path(node: str, state_dir: Path) -> Path | None:
    """The app's cgroup directory (not created), or None without a cgroup v2 hierarchy."""
    root = v2_root()
    if root is None:
        return None
    return root / own_v2_path().lstrip("/") / app_cgroup_name(node, state_dir)


def allowed(path: Path) -> bool:
    """May this process make the cgroup ``path`` (its parent exists and is writable)?
    Asked without making it: the shim makes it at each start and removes it after."""
    parent = path.parent
    return (parent / "cgroup.procs").exists() and os.access(parent, os.W_OK)


def create(path: Path) -> bool:
    """Make the cgroup (kept if it exists); False when the machine does not allow it."""
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return False
    return (path / "cgroup.procs").exists()


def members(path: Path) -> list[int]:
    """Pids in the cgroup (none when it or the hierarchy is gone)."""
    try:
        text = (path / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(pid) for pid in text.split()]


def populated(path: Path) -> bool:
    """Is any process left in it (``cgroup.events``)?"""
    try:
        text = (path / "cgroup.events").read_text()
    except OSError:
        return bool(members(path))
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    return bool(members(path))


def join(path: Path) -> None:
    """Move the calling process into the cgroup (its children then are born there)."""
    with open(path / "cgroup.procs", "w") as procs:
        procs.write("0")


def kill(path: Path) -> bool:
    """SIGKILL every process in the cgroup at once; True when there was one to kill."""
    if not populated(path):
        return False
    try:
        with open(path / "cgroup.kill", "w") as switch:
            switch.write("1")
    except OSError:
        # A kernel before 5.14: no cgroup.kill. Kill the members one by one; the
        # shim's reaping and a second look catch any forked meanwhile.
        for pid in members(path):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return True


def remove(path: Path) -> None:
    """Remove the (empty) cgroup; a populated one stays."""
    with contextlib.suppress(OSError):
        os.rmdir(path)
