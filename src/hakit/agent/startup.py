"""What an agent does once, as it starts, before its loops run.

- ``sweep_leftovers``: stop what an earlier agent of this node left running
  (hakit.supervisor.leftovers) and say so: the leftovers it stopped, a host that
  restarted, an agent that ended without stopping its app; an alert when
  something it cannot stop blocks the app's start;
- ``boot_event``: what the store remembers of who served last (the node records'
  ``served_epoch``), the policy's ``Boot`` for a cold start (item 9).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from hakit.agent.storeio import StoreIO
from hakit.config import Config, NodeConfig
from hakit.coord.base import Coordinator, Lease, NodeRecord
from hakit.errors import CoordinationError
from hakit.history.facts import WHAT
from hakit.history.kinds import AlertKind, EventKind
from hakit.policy import Alert, Boot
from hakit.policy.rules import last_active
from hakit.supervisor import leftovers
from hakit.supervisor.leftovers import UNCLEAN_END

log = logging.getLogger("hakit.agent")


async def sweep_leftovers(
    cfg: Config,
    node: NodeConfig,
    group_dir: Path | None,
    *,
    record: Callable[..., None],
    alert: Callable[[Alert], Awaitable[None]],
) -> None:
    """Before anything else: stop what an earlier agent of this node left running
    (hakit.supervisor.leftovers), and say so (``group_dir``: the app's cgroup)."""
    found = await asyncio.to_thread(
        leftovers.sweep,
        node=node.name,
        cluster=cfg.cluster.name,
        port=node.port,
        pid_file=leftovers.pid_file_path(cfg.cluster.state_dir, node.name),
        group_dir=group_dir,
    )
    data: dict[str, Any] = {
        "leftovers": found.stopped,
        UNCLEAN_END: found.unclean_end,
        "rebooted": found.rebooted,
    }
    if found.previous_agent is not None:
        data["previous_agent_pid"] = found.previous_agent
    previous = (
        f"its previous agent (pid {found.previous_agent})"
        if found.previous_agent is not None
        else "its previous agent"
    )
    if found.stopped:
        record(
            EventKind.AGENT,
            f"agent for {node.name} found what an earlier agent left running and "
            f"stopped it before doing anything else: {'; '.join(found.stopped)}",
            epoch=0,
            data=data,
        )
    elif found.rebooted:
        record(
            EventKind.AGENT,
            f"{node.name} came back after its host restarted: {previous} went down with it",
            epoch=0,
            data=data,
        )
    elif found.unclean_end:
        record(
            EventKind.AGENT,
            f"{previous} on {node.name} ended without stopping its app (killed or "
            "crashed) while the host stayed up; its shim had stopped the app already",
            epoch=0,
            data=data,
        )
    if found.blocked is not None:
        await alert(
            Alert(
                AlertKind.FAILED_START,
                found.blocked,
                manual_intervention=True,
                data={WHAT: found.blocked},
            )
        )


async def boot_event(
    cfg: Config, node: str, coordinator: Coordinator, store: StoreIO, served_epoch: int
) -> tuple[Boot, int]:
    """What the store remembers of who served last, for a cold start (item 9); and the
    highest epoch ``node`` was active under (``served_epoch`` unless its record says)."""

    def read() -> tuple[Sequence[NodeRecord], Lease | None]:
        return coordinator.nodes(), coordinator.current_lease()

    try:
        records, lease = await store.call(read, what="read the node records at boot")
    except CoordinationError as error:
        log.warning("could not read the node records at boot: %s", error)
        return Boot(), served_epoch
    eligible = {n.name for n in cfg.nodes if not n.no_failover}
    served: dict[str, int] = {}
    for record in records:
        value = record.detail.get("served_epoch")
        epoch = value if isinstance(value, int) else 0
        if record.role == "active":
            epoch = max(epoch, record.epoch)
        if record.node == node:
            served_epoch = epoch
        if record.node in eligible:
            served[record.node] = epoch
    if lease is not None and lease.valid:
        # Not a cold start: an active runs; if it dies, the usual failover applies.
        return Boot(served_epoch), served_epoch
    newest_node, newest_epoch = last_active(served)
    return Boot(served_epoch, newest_epoch, newest_node), served_epoch
