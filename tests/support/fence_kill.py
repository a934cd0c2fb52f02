"""A fence agent for tests: "power off" a node by SIGKILLing its app's process group.

    python tests/support/fence_kill.py --node node1 [--store STATE/coordination.db]

The app's pid (the leader of its own group) comes from the node's record in the
coordination store, as the agent published it; without ``--store`` the store is
the one of the config in ``HAKIT_CONFIG`` (the agent sets it for fence commands). Exit 0 once no process of that
group is left (or there was none), 1 otherwise: the contract of a Pacemaker
fence agent. Stand-in for an IPMI or cloud power-off on a one-machine cluster.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from hakit.config import load_config
from hakit.coord.sqlite import SqliteCoordinator
from hakit.supervisor.process import live_group_members

GONE_TIMEOUT = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", type=Path)
    parser.add_argument("--node", required=True)
    args = parser.parse_args(argv)
    path = args.store or load_config(Path(os.environ["HAKIT_CONFIG"])).coordination_path
    store = SqliteCoordinator(path)
    try:
        records = {record.node: record for record in store.nodes()}
    finally:
        store.close()
    record = records.get(args.node)
    pid = record.detail.get("pid") if record is not None else None
    if not isinstance(pid, int) or pid <= 1:
        print(f"fence_kill: {args.node} publishes no app pid: nothing runs there")
        return 0
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        print(f"fence_kill: process group {pid} of {args.node} is already gone")
        return 0
    deadline = time.monotonic() + GONE_TIMEOUT
    while (members := live_group_members(pid)) and time.monotonic() < deadline:
        time.sleep(0.01)
    if members:
        print(f"fence_kill: processes {members} of {args.node} survived SIGKILL")
        return 1
    print(f"fence_kill: killed process group {pid} of {args.node}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
