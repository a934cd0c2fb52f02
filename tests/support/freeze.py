"""Freeze a process group (SIGSTOP) at a moment none of it holds a write lock.

On one machine the embedded coordination store (and the sample app's SQLite
database) is a file shared by every process: a process stopped inside a write
transaction keeps its POSIX lock, and every other writer waits ("database is
locked") until it is continued. Separate hosts with a network store do not
share that fate, so the tests freeze a node only between two transactions:
stop the group, wait until every thread really is stopped, and if one holds a
write lock (``/proc/locks``), continue it and try again a moment later.
"""

from __future__ import annotations

import os
import signal
import time


def _threads_stopped(pid: int) -> bool:
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return True  # gone: nothing left to run
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                state = stat.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # exited meanwhile
        if state not in ("T", "t", "Z", "X"):
            return False
    return True


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # exited meanwhile
        if int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def write_lock_holders() -> set[int]:
    """Pids holding a POSIX write lock (not merely waiting for one)."""
    holders = set()
    with open("/proc/locks") as locks:
        for line in locks:
            fields = line.split()
            # "7: POSIX  ADVISORY  WRITE 1234 fe:00:2196308 120 120"; "7: -> ..." waits.
            if len(fields) > 4 and fields[1] == "POSIX" and fields[3] == "WRITE":
                holders.add(int(fields[4]))
    return holders


def freeze_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGSTOP the group ``pgid`` while none of its processes holds a write lock."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        os.killpg(pgid, signal.SIGSTOP)
        members = group_members(pgid)
        while not all(_threads_stopped(pid) for pid in members):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"process group {pgid} did not stop")
            time.sleep(0.001)
        if not write_lock_holders() & set(members):
            return
        os.killpg(pgid, signal.SIGCONT)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"process group {pgid} kept holding a write lock")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
