"""Operator commands carried out against the store: switchover, failover, pause, resume, status.

``perform`` checks one command and writes its intent (hakit.operator.intents),
recording who asked for it and why (``actor`` "operator:<user>") in the history.
Agents call it for their admin API (hakit.operator.admin_api); the CLI calls it
directly when no node has an ``admin_port`` (same machine as the store;
hakit.operator.client). ``status_document`` is the cluster as ``hakit status``
shows it; ``event_from_json`` and ``node_record`` read its parts back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from hakit.config import Config
from hakit.coord.base import Coordinator, Event, NodeRecord
from hakit.coord.keys import HANDOVER, PAUSED
from hakit.coord.view import ClusterView, read_cluster
from hakit.errors import HakitError
from hakit.history.kinds import EventKind
from hakit.operator.intents import (
    NO_REASON,
    agent_alive,
    handover_expired,
    handover_timeout,
    operator_actor,
)

OPERATIONS = ("switchover", "failover", "pause", "resume", "status")


class OperatorError(HakitError):
    """An operator command the cluster refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 409) -> None:
        self.status = status
        super().__init__(message)


def perform(
    coordinator: Coordinator, cfg: Config, operation: str, params: Mapping[str, Any], now: float
) -> dict[str, Any]:
    """Check and carry out one operator command; raise OperatorError when refused."""
    # The client says who it is (the CLI: --as or $USER); the token says it may.
    asked_by = str(params.get("actor") or "")
    actor = operator_actor(asked_by) if asked_by else "operator:unknown"
    reason = str(params.get("reason") or "").strip() or NO_REASON
    if operation == "status":
        return status_document(coordinator, cfg, now)
    if operation in ("pause", "resume"):
        return _set_paused(coordinator, operation == "pause", actor, reason, now)
    if operation in ("switchover", "failover"):
        target = params.get("to")
        if not isinstance(target, str) or not target:
            raise OperatorError(f"{operation} needs a target node: --to NODE", 400)
        return _request_handover(
            coordinator,
            cfg,
            target,
            forced=operation == "failover",
            force=bool(params.get("force")),
            actor=actor,
            reason=reason,
            now=now,
        )
    raise OperatorError(
        f"unknown operation {operation!r}; expected one of {', '.join(OPERATIONS)}", 404
    )


def _record(
    coordinator: Coordinator,
    kind: EventKind,
    now: float,
    node: str,
    reason: str,
    actor: str,
    epoch: int,
    data: dict[str, Any],
) -> None:
    """The operator's own event: kind = the command, also in ``data["command"]`` (``hakit
    why`` reads switchovers and failovers by an ``operator:`` actor as the cause of the move)."""
    data = {"command": kind.value, **data}
    coordinator.append_event(Event(0, now, node, kind.value, reason, epoch, actor, data))


def _set_paused(
    coordinator: Coordinator, paused: bool, actor: str, reason: str, now: float
) -> dict[str, Any]:
    current = coordinator.get_state(PAUSED) or {}
    was_paused = bool(current.get("paused"))
    kind = EventKind.PAUSE if paused else EventKind.RESUME
    if was_paused == paused:
        state = "paused" if paused else "not paused"
        return {"changed": False, "paused": paused, "message": f"the cluster is already {state}"}
    value = {"paused": paused, "actor": actor, "reason": reason, "at": now}
    coordinator.set_state(PAUSED, value)
    if paused:
        sentence = (
            f"{actor} paused the cluster ({reason}): agents keep monitoring and take no "
            "action (no restart, no failover, no start) until resumed"
        )
    else:
        sentence = f"{actor} resumed the cluster ({reason}): agents act on failures again"
    lease = coordinator.current_lease()
    _record(coordinator, kind, now, "", sentence, actor, lease.epoch if lease else 0, {})
    return {"changed": True, "paused": paused, "message": sentence}


def _request_handover(
    coordinator: Coordinator,
    cfg: Config,
    target: str,
    *,
    forced: bool,
    force: bool,
    actor: str,
    reason: str,
    now: float,
) -> dict[str, Any]:
    kind = EventKind.FAILOVER if forced else EventKind.SWITCHOVER
    view = read_cluster(coordinator, now)
    _check_handover(cfg, view, coordinator.get_state(HANDOVER), target, forced, now)
    source = view.leader or ""
    intent: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "kind": kind.value,
        "source": source,
        "target": target,
        "epoch": view.epoch if source else 0,
        "actor": actor,
        "reason": reason,
        "requested_at": now,
        "expires_at": now + handover_timeout(cfg),  # this host's clock: display only
        "force": force,
        # The store forgets it after the timeout, by its own clock (hakit.operator.intents).
        "expiring": True,
    }
    coordinator.set_state(HANDOVER, intent, ttl=handover_timeout(cfg))
    if forced:
        sentence = (
            f"{actor} forced a failover from {source or 'no active node'} to {target} ({reason})"
            + ("; without fencing the old active" if force else "")
        )
    else:
        sentence = f"{actor} asked for a switchover from {source} to {target} ({reason})"
    _record(coordinator, kind, now, target, sentence, actor, intent["epoch"], intent)
    return {"changed": True, "handover": intent, "message": sentence}


def _check_handover(
    cfg: Config,
    view: ClusterView,
    pending: Mapping[str, Any] | None,
    target: str,
    forced: bool,
    now: float,
) -> None:
    kind = "failover" if forced else "switchover"
    try:
        node = cfg.node(target)
    except KeyError as error:
        raise OperatorError(str(error.args[0]), 404) from None
    if node.no_failover:
        raise OperatorError(
            f"{target} has the nofailover tag: it never becomes active; choose another node"
        )
    if view.leader == target:
        raise OperatorError(f"{target} is already active (epoch {view.epoch}); nothing to do")
    if not forced and view.leader is None:
        raise OperatorError(
            f"no node is active (no valid lease), so there is nothing to switch over from; "
            f"use `hakit failover --to {target}` to make it active"
        )
    if pending is not None and not handover_expired(pending, now) and not forced:
        raise OperatorError(
            f"a {pending.get('kind', 'handover')} to {pending.get('target')} asked by "
            f"{pending.get('actor')} is in progress; wait for it (hakit status), or force "
            "one with hakit failover"
        )
    record = view.nodes.get(target)
    if not agent_alive(record, cfg, now):
        seen = (
            f"its agent last reported {record.age:.0f} s ago"
            if record is not None and record.role != "stopped"
            else "its agent is not running"
        )
        raise OperatorError(
            f"{target} cannot take over: {seen}; start `hakit agent --node {target}` first "
            f"(a {kind} to it would leave the cluster without an active node)"
        )
    assert record is not None
    policy = record.detail.get("policy")
    if policy in ("MANUAL", "FENCED", "INIT"):
        raise OperatorError(
            f"{target} cannot take over now: its agent is in state {policy}"
            + (" (manual intervention needed)" if policy == "MANUAL" else "")
        )


def status_document(
    coordinator: Coordinator, cfg: Config, now: float, events: int = 10
) -> dict[str, Any]:
    """The cluster as ``hakit status`` shows it (also GET /status of the admin API)."""
    view = read_cluster(coordinator, now)
    state = coordinator.cluster_state()
    paused = state.get(PAUSED)
    nodes = []
    for node in cfg.nodes:
        record = view.nodes.get(node.name)
        nodes.append(
            {
                "node": node.name,
                "address": f"{node.host}:{node.port}",
                "route": node.route_name,
                "no_failover": node.no_failover,
                "role": record.role if record else None,
                "app_state": record.app_state if record else None,
                "epoch": record.epoch if record else 0,
                "pid": record.detail.get("pid") if record else None,
                "policy": record.detail.get("policy") if record else None,
                # Replicated storage: what the node holds (hakit.agent.replication).
                "replica": record.detail.get("replica") if record else None,
                "updated_at": record.updated_at if record else None,
                "age": record.age if record else None,  # by the store's clock
            }
        )
    return {
        "cluster": cfg.cluster.name,
        "mode": str(cfg.cluster.mode),
        "read_at": now,
        "leader": view.leader,
        "epoch": view.epoch,
        # The lease as stored (holder, epoch, expiry), valid or not: for `status --json`.
        "lease": None
        if view.lease is None
        else {
            "holder": view.lease.holder,
            "epoch": view.lease.epoch,
            "expires_at": view.lease.expires_at,  # the store's clock: display only
            "remaining": view.lease.remaining,  # the store's judgement at the read
            "revision": view.lease.revision,
        },
        "paused": paused if paused and paused.get("paused") else None,
        "handover": state.get(HANDOVER),
        "nodes": nodes,
        "events": [event_json(event) for event in coordinator.recent_events(events)],
    }


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": event.time,
        "node": event.node,
        "kind": event.kind,
        "reason": event.reason,
        "epoch": event.epoch,
        "actor": event.actor,
    }


def event_from_json(raw: Mapping[str, Any]) -> Event:
    return Event(
        int(raw["id"]),
        float(raw["time"]),
        str(raw["node"]),
        str(raw["kind"]),
        str(raw["reason"]),
        int(raw.get("epoch") or 0),
        str(raw.get("actor") or ""),
    )


def node_record(node: Mapping[str, Any], read_at: float | None = None) -> NodeRecord | None:
    """The record in a status document's node entry (None: its agent never reported).

    Its ``age`` is the entry's (the store's clock); a document from an older agent has
    none: then the age that agent would have shown, its ``read_at`` less the record's
    ``updated_at`` (0 without ``read_at``)."""
    if node.get("role") is None or node.get("updated_at") is None:
        return None
    updated_at = float(node["updated_at"])
    age = node.get("age")
    if not isinstance(age, int | float):
        age = max(0.0, read_at - updated_at) if read_at is not None else 0.0
    return NodeRecord(
        str(node["node"]),
        str(node["role"]),
        str(node.get("app_state") or ""),
        int(node.get("epoch") or 0),
        updated_at,
        age=float(age),
    )
