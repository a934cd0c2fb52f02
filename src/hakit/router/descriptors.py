"""The open files limit a router needs: one descriptor per client and backend connection.

Run once at the router's start, so not compiled (hakit/router/native.py).
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path
from typing import Final

log = logging.getLogger("hakit.router")

# Client connections this many or more should fit under the open files limit.
WANTED_OPEN_FILES: Final = 16384


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.

    Every client and backend connection is a descriptor, and the usual soft
    limit (1024) would refuse the 1025th client long before memory or CPU run
    out. The hard limit is the administrator's; we never try to exceed it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard
    if hard == resource.RLIM_INFINITY:
        try:  # the kernel's ceiling for one process
            wanted = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            wanted = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:
            log.warning("router: cannot raise the open files limit from %s: %s", soft, error)
        else:
            log.info("router: open files limit raised from %s to %s", soft, wanted)
            soft = wanted
    if soft != resource.RLIM_INFINITY and soft < WANTED_OPEN_FILES:
        log.warning(
            "router: the open files limit is %s (hard limit %s): that many client and "
            "backend connections at most; raise it (ulimit -Hn, systemd LimitNOFILE=)",
            soft,
            hard,
        )
    return soft
