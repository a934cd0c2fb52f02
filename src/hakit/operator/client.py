"""The CLI's side of operator commands: the agents' admin API, else the store directly.

``operation_for`` picks the way: the admin API (``AdminClient``, each node with an
``admin_port`` in turn until one answers) when a node serves it, else the
coordination store on this machine (hakit.operator.commands.perform).
``status_snapshot`` is what ``hakit status`` reads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from hakit.config import Config
from hakit.coord.base import Lease
from hakit.operator.admin_api import load_token
from hakit.operator.commands import OperatorError, perform, status_document


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


def status_snapshot(cfg: Config) -> tuple[dict[str, Any], Lease | None]:
    """The status document and the lease as stored (through an agent's admin API when a
    node has an ``admin_port``). Read directly, the store must exist: status never
    creates one. Raises HakitError when neither answers."""
    if any(node.admin_port is not None for node in cfg.nodes):
        call, close = operation_for(cfg, time.time)
        try:
            doc = call("status", {})
        finally:
            close()
        stored = doc.get("lease")
        if not isinstance(stored, dict):
            return doc, None
        expires_at = float(stored["expires_at"])
        # The store's judgement at the read; an older agent sends none: its own read time
        # (the SQLite store serves one machine: one clock).
        remaining = stored.get("remaining")
        if not isinstance(remaining, int | float):
            remaining = expires_at - float(doc.get("read_at") or 0.0)
        revision = stored.get("revision")
        return doc, Lease(
            str(stored["holder"]),
            int(stored["epoch"]),
            expires_at,
            float(remaining),
            revision if isinstance(revision, int) else 0,
        )
    from hakit.coord.factory import open_coordinator

    coordinator = open_coordinator(cfg, create=False)
    try:
        return status_document(coordinator, cfg, time.time()), coordinator.current_lease()
    finally:
        coordinator.close()
