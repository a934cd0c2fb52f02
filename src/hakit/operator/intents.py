"""Operator commands: switchover, failover, pause, resume, status.

An operator's intent is a small JSON object in the coordination store's
cluster state (``Coordinator.set_state``); every agent reads it each turn and
feeds its policy (Paused, Resumed, HandoverRequested, HandoverEnded):

- ``paused``: ``{"paused": true/false, "actor", "reason", "at"}``;
- ``handover``: ``{"id", "kind", "source", "target", "epoch", "actor", "reason",
  "requested_at", "expires_at", "force"}``: a switchover (``kind`` "switchover":
  the active drains, stops, releases; only the target may take the lease) or a
  forced failover ("failover": the target takes the lease at once). Its target
  clears it once it serves; any agent clears it once ``expires_at`` is past.
  The active node's own agent writes a ``path-loss`` one (``request_path_loss``)
  when the routers lost their path to it (hakit.datapath): a switchover's steps,
  its agent as the actor.

``perform`` checks and writes an intent and records who asked for it and why
(``actor`` "operator:<user>") in the history. Agents call it for their admin
API (hakit.admin_api); the CLI calls it directly when no node has an
``admin_port`` (same machine as the store). ``AdminClient`` is the CLI's side
of the API.
"""

from __future__ import annotations

import getpass
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from hakit.config import MIN_TOKEN_LENGTH, Config
from hakit.coord.base import Coordinator, Event, Lease, NodeRecord
from hakit.coord.view import ClusterView, read_cluster
from hakit.errors import HakitError
from hakit.policy.vocabulary import (
    PATH_LOSS,
    HandoverEnded,
    HandoverRequested,
    LeaseVacant,
    Paused,
    PolicyEvent,
    Resumed,
)

PAUSED = "paused"
HANDOVER = "handover"
OPERATIONS = ("switchover", "failover", "pause", "resume", "status")
NO_REASON = "no reason given"


class OperatorError(HakitError):
    """An operator command the cluster refuses; ``status`` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 409) -> None:
        self.status = status
        super().__init__(message)


def operator_actor(name: str | None = None) -> str:
    """``operator:<name>``: ``--as``, else $USER, else the login name."""
    if not name:
        name = os.environ.get("USER") or os.environ.get("LOGNAME")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = "unknown"
    return name if name.startswith("operator:") else f"operator:{name}"


def handover_timeout(cfg: Config) -> float:
    """How long a switchover may take before the normal election resumes."""
    return cfg.app.stop_timeout + cfg.app.startup_timeout + 4 * cfg.coordination.lease_ttl


def agent_alive(record: NodeRecord | None, cfg: Config, now: float) -> bool:
    """The node's agent published within a few lease TTLs (it publishes every renewal)."""
    if record is None or record.role == "stopped":
        return False
    return now - record.updated_at <= 3 * cfg.coordination.lease_ttl


def handover_event(intent: Mapping[str, Any]) -> HandoverRequested:
    """The policy event an agent feeds for a stored handover intent."""
    return HandoverRequested(
        target=str(intent.get("target", "")),
        source=str(intent.get("source") or ""),
        epoch=int(intent.get("epoch") or 0),
        forced=intent.get("kind") == "failover",
        actor=str(intent.get("actor", "operator")),
        reason=str(intent.get("reason") or NO_REASON),
        label=PATH_LOSS if intent.get("kind") == PATH_LOSS else "",
    )


def request_path_loss(
    coordinator: Coordinator,
    cfg: Config,
    source: str,
    target: str,
    epoch: int,
    reason: str,
    now: float,
) -> dict[str, Any] | None:
    """Write ``source``'s agent's path-loss handover to ``target``; None (nothing written)
    when another handover is in force (an operator's intent always wins)."""
    pending = coordinator.get_state(HANDOVER)
    if pending is not None and not handover_expired(pending, now):
        return None
    intent: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "kind": PATH_LOSS,
        "source": source,
        "target": target,
        "epoch": epoch,
        "actor": f"agent:{source}",
        "reason": reason,
        "requested_at": now,
        "expires_at": now + handover_timeout(cfg),
        "force": False,
    }
    coordinator.set_state(HANDOVER, intent)
    return intent


def handover_expired(intent: Mapping[str, Any], now: float) -> bool:
    expires = intent.get("expires_at")
    return isinstance(expires, int | float) and now >= expires


@dataclass
class IntentWatcher:
    """An agent's memory of the operator's intents: turns each turn's read into events.

    ``observe`` returns the policy events for what changed since the last read
    (each change is fed once) and the handover intent that has expired, if any,
    for the agent to clear (compare-and-delete: only one agent wins and records it).
    """

    paused: bool = False
    handover: dict[str, Any] | None = None  # the intent in force (as stored)
    vacant: bool = False

    def observe(
        self, state: Mapping[str, dict[str, Any]], lease: Lease | None, now: float
    ) -> tuple[list[PolicyEvent], dict[str, Any] | None]:
        events: list[PolicyEvent] = []
        pause = state.get(PAUSED) or {}
        if bool(pause.get("paused")) != self.paused:
            self.paused = not self.paused
            actor = str(pause.get("actor") or "operator")
            reason = str(pause.get("reason") or NO_REASON)
            events.append(Paused(actor, reason) if self.paused else Resumed(actor, reason))
        intent = state.get(HANDOVER)
        expired = None
        if intent is not None and handover_expired(intent, now):
            expired, intent = intent, None
        known = self.handover.get("id") if self.handover is not None else None
        if (intent.get("id") if intent is not None else None) != known:
            if self.handover is not None:
                events.append(HandoverEnded(self._ended_words(self.handover, expired)))
            if intent is not None:
                events.append(handover_event(intent))
            self.handover = intent
        vacant = lease is None or not lease.valid_at(now)
        if vacant and not self.vacant and self.paused:
            events.append(LeaseVacant())
        self.vacant = vacant
        return events, expired

    @staticmethod
    def _ended_words(intent: Mapping[str, Any], expired: Mapping[str, Any] | None) -> str:
        what = f"{intent.get('kind', 'handover')} to {intent.get('target')}"
        if expired is not None and expired.get("id") == intent.get("id"):
            return f"{what} expired"
        return f"{what} ended"


def expired_words(intent: Mapping[str, Any], cfg: Config) -> str:
    return (
        f"{intent.get('kind', 'handover')} to {intent.get('target')} (asked by "
        f"{intent.get('actor')}) expired after {handover_timeout(cfg):.0f} s: "
        f"{intent.get('target')} did not take over in time; the normal election resumes"
    )


# --- the store side (agents' admin API, or the CLI on the store's machine) ----------------


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
    now: float,
    node: str,
    reason: str,
    actor: str,
    epoch: int,
    data: dict[str, Any],
) -> None:
    """The operator's own event: kind = the command (``hakit why`` reads switchovers and
    failovers by an ``operator:`` actor as the cause of the move)."""
    kind = str(data.get("command", "operator"))
    coordinator.append_event(Event(0, now, node, kind, reason, epoch, actor, data))


def _set_paused(
    coordinator: Coordinator, paused: bool, actor: str, reason: str, now: float
) -> dict[str, Any]:
    current = coordinator.get_state(PAUSED) or {}
    was_paused = bool(current.get("paused"))
    word = "pause" if paused else "resume"
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
    _record(coordinator, now, "", sentence, actor, lease.epoch if lease else 0, {"command": word})
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
    kind = "failover" if forced else "switchover"
    view = read_cluster(coordinator, now)
    _check_handover(cfg, view, coordinator.get_state(HANDOVER), target, forced, now)
    source = view.leader or ""
    intent: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "kind": kind,
        "source": source,
        "target": target,
        "epoch": view.epoch if source else 0,
        "actor": actor,
        "reason": reason,
        "requested_at": now,
        "expires_at": now + handover_timeout(cfg),
        "force": force,
    }
    coordinator.set_state(HANDOVER, intent)
    if forced:
        sentence = (
            f"{actor} forced a failover from {source or 'no active node'} to {target} ({reason})"
            + ("; without fencing the old active" if force else "")
        )
    else:
        sentence = f"{actor} asked for a switchover from {source} to {target} ({reason})"
    _record(coordinator, now, target, sentence, actor, intent["epoch"], {"command": kind, **intent})
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
            f"its agent last reported {now - record.updated_at:.0f} s ago"
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
                "updated_at": record.updated_at if record else None,
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
            "expires_at": view.lease.expires_at,
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


# --- the client side (the CLI) -------------------------------------------------------------


def load_token(cfg: Config) -> str | None:
    """The admin API's bearer token: ``[admin] token`` or the first line of token_file."""
    admin = cfg.admin
    if admin.token is not None:
        return admin.token
    if admin.token_file is None:
        return None
    try:
        lines = admin.token_file.read_text().splitlines()
    except OSError as error:
        raise HakitError(
            f"admin.token_file {admin.token_file}: cannot read it ({error.strerror}); "
            "expected a readable file whose first line is the admin API's token"
        ) from None
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_LENGTH:
        raise HakitError(
            f"admin.token_file {admin.token_file}: the token is shorter than "
            f"{MIN_TOKEN_LENGTH} characters; "
            "expected a long random secret on the first line"
        )
    return token


@dataclass
class AdminClient:
    """Calls the agents' admin API: each node with an ``admin_port`` in turn until one answers."""

    cfg: Config
    token: str
    timeout: float = 10.0
    answered: str | None = None  # the URL that answered last: tried first next time

    def endpoints(self, first: object = None) -> list[str]:
        """The admin API URLs: node ``first`` (a handover's target: its agent must be up
        anyway, while the active's may hang), else the one that answered last, first."""
        urls = []
        nodes = sorted(self.cfg.nodes, key=lambda node: node.name != first)
        for node in nodes:
            if node.admin_port is not None:
                host = "127.0.0.1" if node.host in ("0.0.0.0", "", "*") else node.host
                host = f"[{host}]" if ":" in host else host
                urls.append(f"http://{host}:{node.admin_port}")
        if first is None and self.answered in urls:
            urls.remove(self.answered)
            urls.insert(0, self.answered)
        return urls

    def call(self, operation: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        method = "GET" if operation == "status" else "POST"
        failures = []
        for base in self.endpoints((params or {}).get("to")):
            try:
                response = httpx.request(
                    method,
                    f"{base}/{operation}",
                    json=dict(params or {}) if method == "POST" else None,
                    headers={"Authorization": f"Bearer {self.token}"},
                    timeout=self.timeout,
                )
            except httpx.HTTPError as error:
                failures.append(f"{base}: {type(error).__name__}: {error or 'no answer'}")
                continue
            self.answered = base
            try:
                body = response.json()
            except json.JSONDecodeError:
                body = {"error": response.text.strip()[:200]}
            if response.status_code >= 400:
                raise OperatorError(
                    str(body.get("error") or f"HTTP {response.status_code}"), response.status_code
                )
            return dict(body)
        raise OperatorError(
            "no agent's admin API answered ("
            + "; ".join(failures)
            + "); check that the agents run and that nodes.admin_port is right",
            503,
        )


Operation = Callable[[str, Mapping[str, Any]], dict[str, Any]]


def operation_for(cfg: Config, now: Callable[[], float]) -> tuple[Operation, Callable[[], None]]:
    """(how the CLI carries out operations, how to close it): the admin API when a node has
    an ``admin_port``, else the coordination store directly."""
    if any(node.admin_port is not None for node in cfg.nodes):
        token = load_token(cfg)
        if token is None:
            raise OperatorError(
                "nodes serve the admin API (admin_port) but [admin] has no token; "
                'expected [admin] token = "..." or token_file = "PATH" in the config',
                401,
            )
        client = AdminClient(cfg, token)
        if not cfg.coordination_path.exists():
            return client.call, lambda: None
        # On the store's machine, `status` still works with every agent down.
        direct, close = _direct(cfg, now)

        def call(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
            try:
                return client.call(operation, params)
            except OperatorError as error:
                if operation != "status" or error.status != 503:
                    raise
                return direct(operation, params)

        return call, close
    return _direct(cfg, now)


def _direct(cfg: Config, now: Callable[[], float]) -> tuple[Operation, Callable[[], None]]:
    from hakit.coord.factory import open_coordinator

    coordinator = open_coordinator(cfg)

    def direct(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        return perform(coordinator, cfg, operation, params, now())

    return direct, coordinator.close
