"""Linux's process table, read from /proc: groups, descendants, start times, environments.

Small and dependency-free: the shim (hakit.supervisor.shim) imports it at every app start.
Zombies are never counted as live: a zombie holds no memory, socket or lock any
more; it only waits for its parent (or init) to reap it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_DEAD_STATES = ("Z", "X")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    state: str  # R, S, D, T, Z, ...
    ppid: int
    pgid: int
    start_ticks: int  # clock ticks after boot: with the pid, names one process for good


def parse_stat(pid: int, stat: str) -> ProcStat:
    """The fields of a /proc/<pid>/stat line that hakit uses."""
    # The command name is in parentheses and may itself contain ") ".
    fields = stat[stat.rindex(")") + 2 :].split()
    return ProcStat(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        start_ticks=int(fields[19]),
    )


def stat_of(pid: int) -> ProcStat | None:
    """None when the process does not exist (or exited while we looked)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return parse_stat(pid, stat_file.read())
    except (OSError, ValueError, IndexError):
        return None


def all_stats() -> list[ProcStat]:
    stats: list[ProcStat] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return stats
    for entry in entries:
        if entry.isdigit():
            found = stat_of(int(entry))
            if found is not None:
                stats.append(found)
    return stats


def is_live(stat: ProcStat | None) -> bool:
    return stat is not None and stat.state not in _DEAD_STATES


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    return [stat.pid for stat in all_stats() if stat.pgid == pgid and is_live(stat)]


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, their children, ...), not ``pid`` itself."""
    children: dict[int, list[int]] = {}
    live: set[int] = set()
    for stat in all_stats():
        children.setdefault(stat.ppid, []).append(stat.pid)
        if is_live(stat):
            live.add(stat.pid)
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child in live:
            found.append(child)
        todo.extend(children.get(child, []))
    return found


def same_process(pid: int, start_ticks: int) -> bool:
    """Is ``pid`` still the live process that started at ``start_ticks`` (not a reused pid)?"""
    stat = stat_of(pid)
    return is_live(stat) and stat is not None and stat.start_ticks == start_ticks


def environment(pid: int) -> dict[str, str]:
    """The environment ``pid`` was started with ({} when it cannot be read)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            data = environ.read()
    except OSError:
        return {}
    values = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            values[key.decode(errors="replace")] = value.decode(errors="replace")
    return values


def command_line(pid: int) -> str:
    """The command line of ``pid``, for messages ('' when gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This boot of the machine ('' when unknown): a pid file of another boot means the
    host restarted since, not only the processes."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as source:
            return source.read().strip()
    except OSError:
        return ""
