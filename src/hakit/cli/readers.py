"""The commands that read: ``config check`` (a file), ``status``, ``events`` and ``why``
(the coordination store, or the agents' admin API for status)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hakit.cli.base import CONFIG_ENV, ConfigOption, console, err_console, fail, load_or_exit
from hakit.config import Config
from hakit.coord.base import Event, Lease
from hakit.errors import HakitError


def config_check(
    file: Annotated[
        Path | None,
        typer.Argument(help=f"hakit.toml to check (default: -c, ${CONFIG_ENV}, ./hakit.toml)"),
    ] = None,
    config: ConfigOption = Path("hakit.toml"),
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Exit 1 on any warning (a worst case over recovery_target, a broken timing "
            "rule, an exposed admin endpoint or token file, shared storage without fencing).",
        ),
    ] = False,
) -> None:
    """Validate a config file; print every mistake with file, line and key."""
    from hakit.config.check import config_warnings, describe_config
    from hakit.config.loader import filestore_problems
    from hakit.config.worstcase import worst_case

    file = file if file is not None else config
    cfg = load_or_exit(file)
    xml_problems = filestore_problems(cfg)
    for problem in xml_problems:
        err_console.print(escape(problem), style="red", highlight=False, soft_wrap=True)
    if xml_problems:
        raise typer.Exit(2)
    console.print(f"[green]{escape(str(file))}: OK[/green]")
    for line in describe_config(cfg):
        console.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    # Warnings do not make the file invalid (it loads and runs), unless --strict.
    warnings = config_warnings(cfg) + worst_case(cfg).warnings()
    for warning in warnings:
        console.print(
            f"[yellow]WARNING: {escape(warning)}[/yellow]", highlight=False, soft_wrap=True
        )
    if strict and warnings:
        raise typer.Exit(1)


def status(
    config: ConfigOption = Path("hakit.toml"),
    last: Annotated[int, typer.Option("--events", min=0, help="Show this many recent events.")] = 5,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON document (nodes, lease, pause, last events); with --watch, "
            "one per line per refresh.",
        ),
    ] = False,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            "-w",
            min=0.1,
            metavar="SECONDS",
            help="Show it again every SECONDS until Ctrl-C.",
        ),
    ] = None,
) -> None:
    """Show the cluster: nodes, roles, app states, epoch, leader, pause, last events.

    A node whose agent has not reported for longer than the lease TTL shows as lost.
    """
    cfg = load_or_exit(config)
    while True:
        if watch is not None and not as_json:
            console.clear()  # on a terminal; into a pipe or file, each refresh follows the last
        doc, lease = _status_snapshot(cfg)
        if as_json:
            report = status_json(doc, lease, cfg.coordination.lease_ttl, last)
            print(json.dumps(report, indent=None if watch else 2), flush=True)
        else:
            if watch is not None:
                console.print(
                    f"every {watch:g}s, at {_iso(time.time())} (Ctrl-C stops)",
                    style="dim",
                    highlight=False,
                )
            _print_status(cfg, doc, last)
        if watch is None:
            return
        time.sleep(watch)


def _iso(seconds: float, tz: tzinfo | None = None) -> str:
    from hakit.history.eventlog import iso_time

    return iso_time(seconds, tz)


def _status_snapshot(cfg: Config) -> tuple[dict[str, Any], Lease | None]:
    """The status document and the lease as stored (hakit.operator.client)."""
    from hakit.operator.client import status_snapshot

    try:
        return status_snapshot(cfg)
    except HakitError as error:
        fail(error)


def status_json(
    doc: Mapping[str, Any],
    lease: Lease | None,
    ttl: float,
    last: int,
    tz: tzinfo | None = None,
) -> dict[str, Any]:
    """``hakit status --json``: what the table shows, for programs (times ISO 8601)."""
    from hakit.history.eventlog import event_record
    from hakit.history.why import node_condition
    from hakit.operator.commands import event_from_json, node_record

    now = float(doc["read_at"])
    nodes = []
    for node in doc["nodes"]:
        record = node_record(node, now)
        condition = node_condition(record, now, ttl)
        nodes.append(
            {
                "node": node["node"],
                "address": node.get("address"),
                "route": node.get("route"),
                "role": condition.role,
                "state": condition.state,
                "lost": condition.lost,
                "age": round(condition.age, 3) if condition.age is not None else None,
                "leader": doc.get("leader") == node["node"],
                "no_failover": bool(node.get("no_failover")),
                "epoch": node.get("epoch") or 0,
                "pid": node.get("pid"),
                "policy": node.get("policy"),
                "replica": node.get("replica"),
                "reported": None
                if record is None
                else {
                    "role": record.role,
                    "app_state": record.app_state,
                    "at": _iso(record.updated_at, tz),
                },
            }
        )
    if lease is not None:
        lease_doc: dict[str, Any] | None = {
            "holder": lease.holder,
            "epoch": lease.epoch,
            "expires_at": _iso(lease.expires_at, tz),
            "valid": lease.valid,
        }
    elif doc.get("epoch"):  # read through the admin API: no expiry, a holder only if valid
        lease_doc = {
            "holder": doc.get("leader"),
            "epoch": doc["epoch"],
            "expires_at": None,
            "valid": doc.get("leader") is not None,
        }
    else:
        lease_doc = None
    paused = doc.get("paused")
    recent = doc.get("events", [])[-last:] if last > 0 else []
    return {
        "cluster": doc.get("cluster"),
        "mode": doc.get("mode"),
        "read_at": _iso(now, tz),
        "lease_ttl": ttl,
        "leader": doc.get("leader"),
        "epoch": doc.get("epoch", 0),
        "lease": lease_doc,
        "paused": None
        if not paused
        else {
            "by": paused.get("actor"),
            "since": _iso(float(paused.get("at") or 0), tz),
            "reason": paused.get("reason"),
        },
        "handover": doc.get("handover"),
        "nodes": nodes,
        "events": [event_record(event_from_json(raw), tz) for raw in recent],
    }


def replica_words(node: Mapping[str, Any], max_lag: float) -> str | None:
    """Replicated storage: what a node holds, with its age now (the record's age added)."""
    from hakit.history.facts import human_duration

    replica = node.get("replica")
    if not isinstance(replica, Mapping):
        return None
    since = float(node.get("age") or 0.0)
    name, generation = node["node"], replica.get("generation")
    if generation is None:
        return f"replica {name}: no copy applied yet (it may not be promoted unless forced)"
    age = float(replica.get("age") or 0.0) + since
    if replica.get("role") == "source":
        words = (
            f"replica {name}: captures; newest generation {generation}, {human_duration(age)} ago"
        )
    else:
        words = (
            f"replica {name}: generation {generation} (epoch {replica.get('epoch')}, from "
            f"{replica.get('from')}), {human_duration(age)} old: its recovery point"
        )
        data_age = replica.get("data_age")
        if data_age is not None and float(data_age) + since > max_lag:
            words += f"; older than max_lag {human_duration(max_lag)}: not promoted unless forced"
    problem = replica.get("problem")
    return words + (f"; failing: {problem}" if problem else "")


def _print_status(cfg: Config, doc: Mapping[str, Any], last: int) -> None:
    from hakit.history.eventlog import format_event
    from hakit.history.why import node_condition
    from hakit.operator.commands import event_from_json, node_record

    now = float(doc["read_at"])
    ttl = cfg.coordination.lease_ttl
    table = Table(title=f"cluster {cfg.cluster.name} ({cfg.cluster.mode})")
    for column in ("node", "address", "route", "role", "app", "epoch", "app pid", "updated"):
        table.add_column(column)
    router_view, router_error = None, ""
    if cfg.router.admin_listen is not None:
        from hakit.router.admin import read_router_view, router_columns

        router_view, router_error = read_router_view(cfg.router.admin_listen)
        if router_view is not None:
            for column in ("routable", "in-flight", "requests"):
                table.add_column(column)
    lost = []
    for node in doc["nodes"]:
        name = node["node"]
        condition = node_condition(node_record(node, now), now, ttl)
        if condition.lost:
            lost.append(name)
        role = condition.role + (" (leader)" if doc["leader"] == name else "")
        role += " (nofailover)" if node.get("no_failover") else ""
        age = condition.age
        table.add_row(
            name,
            node["address"],
            node["route"],
            Text(role, style=condition.style),
            Text(condition.state, style=condition.style),
            str(node["epoch"]) if node["epoch"] else "-",
            str(node["pid"] or "-"),
            f"{age:.1f}s ago" if age is not None else "never",
            *(router_columns(router_view, name) if router_view is not None else ()),
        )
    console.print(table)
    if router_error:
        console.print(
            f"router: not reachable at {cfg.router.admin_listen} ({escape(router_error)})",
            highlight=False,
            soft_wrap=True,
        )
    if lost:
        console.print(
            f"lost: {', '.join(lost)} (no report for more than lease_ttl {ttl:g}s: "
            "its agent is dead, frozen or cut off; `hakit events --node NAME` has its last words)",
            style="bold red",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    leader_text = doc["leader"] or "none (no valid lease)"
    console.print(f"leader: {leader_text}; epoch: {doc['epoch']}")
    for node in doc["nodes"]:
        words = replica_words(node, cfg.replication.max_lag)
        if words is not None:
            console.print(escape(words), highlight=False, soft_wrap=True)
    paused = doc.get("paused")
    paused_text = (
        f"yes, by {paused.get('actor')} since {_iso(float(paused.get('at') or 0))} "
        f"({paused.get('reason')})"
        if paused
        else "no"
    )
    console.print(f"paused: {escape(paused_text)}", highlight=False, soft_wrap=True)
    handover = doc.get("handover")
    if handover:
        console.print(
            escape(
                f"{handover.get('kind')} in progress: {handover.get('source') or '-'} -> "
                f"{handover.get('target')}, asked by {handover.get('actor')} "
                f"({handover.get('reason')})"
            ),
            highlight=False,
            soft_wrap=True,
        )
    recent = doc.get("events", [])[-last:] if last > 0 else []
    if recent:
        console.print("last events:")
        for raw in recent:
            line = format_event(event_from_json(raw), date=True)
            console.print("  " + line, highlight=False, markup=False, soft_wrap=True)


def events(
    config: ConfigOption = Path("hakit.toml"),
    limit: Annotated[
        int, typer.Option(min=0, help="Show at most this many recent events (0: none).")
    ] = 50,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Keep printing new events (until Ctrl-C)."),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            metavar="TIME",
            help='Only events at or after TIME: ago ("10m", "2h", "1d") or a moment (ISO 8601 '
            '"2026-11-22T12:03:10", HH:MM[:SS] today, Unix seconds).',
        ),
    ] = None,
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            "-n",
            metavar="NAME",
            help='Only events about NAME (repeatable; "cluster": about no node in particular).',
        ),
    ] = None,
    kind: Annotated[
        list[str] | None,
        typer.Option("--kind", "-k", metavar="KIND", help="Only events of KIND (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (time ISO 8601).")
    ] = False,
) -> None:
    """Show the event history with the reason for every action (dates in ISO 8601)."""
    from hakit.coord.factory import open_coordinator
    from hakit.history.eventlog import event_record, format_event, parse_since, select_events

    cfg = load_or_exit(config)
    try:
        low = parse_since(since, time.time()) if since is not None else None
    except ValueError as error:
        err_console.print(
            f"[red]--since: {escape(str(error))}[/red]", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from None

    def choose(found: list[Event]) -> list[Event]:
        return select_events(found, since=low, nodes=node or (), kinds=kind or ())

    def show(event: Event) -> None:
        if as_json:
            sys.stdout.write(json.dumps(event_record(event)) + "\n")
            sys.stdout.flush()
        else:
            console.print(
                format_event(event, date=True), highlight=False, markup=False, soft_wrap=True
            )

    try:
        coordinator = open_coordinator(cfg, create=False)
    except HakitError as error:
        fail(error)
    try:
        if low is None and not node and not kind:
            # Only the newest (the history may hold thousands), read once: -f goes on after
            # the newest, even with --limit 0.
            recent = list(coordinator.recent_events(max(limit, 1)))
        else:  # the newest that match may be anywhere in the (bounded) history
            recent = list(coordinator.events(0, limit=1_000_000))
        last_id = recent[-1].id if recent else 0
        chosen = choose(recent)
        for event in chosen[max(0, len(chosen) - limit) :]:
            show(event)
        while follow:
            time.sleep(0.2)
            new = list(coordinator.events(last_id))
            for event in choose(new):
                show(event)
            if new:
                last_id = new[-1].id
    except HakitError as error:
        fail(error)
    finally:
        coordinator.close()


def why(
    config: ConfigOption = Path("hakit.toml"),
    at: Annotated[
        str | None,
        typer.Option(
            "--at",
            help="Explain what happened at or before TIME: HH:MM[:SS] (today), "
            '"YYYY-MM-DD HH:MM[:SS]" or Unix seconds.',
        ),
    ] = None,
) -> None:
    """Explain why the last failover happened, or why one did not.

    While the cluster is paused: first the pause and what is wrong now.
    """
    from hakit.config import Mode
    from hakit.coord.factory import open_coordinator
    from hakit.coord.keys import PAUSED
    from hakit.history.why import ClusterNow, explain, parse_at

    cfg = load_or_exit(config)
    try:
        moment = parse_at(at, time.time()) if at is not None else None
    except ValueError as error:
        err_console.print(f"[red]--at: {escape(str(error))}[/red]")
        raise typer.Exit(2) from None
    current = None
    try:
        coordinator = open_coordinator(cfg, create=False)
        try:
            history = list(coordinator.events(0, limit=1_000_000))
            if moment is None:
                paused = coordinator.get_state(PAUSED)
                current = ClusterNow(
                    time=time.time(),
                    lease_ttl=cfg.coordination.lease_ttl,
                    nodes=tuple(node.name for node in cfg.nodes),
                    records={record.node: record for record in coordinator.nodes()},
                    lease=coordinator.current_lease(),
                    paused=paused if paused and paused.get("paused") else None,
                    active_active=cfg.cluster.mode == Mode.ACTIVE_ACTIVE,
                )
        finally:
            coordinator.close()
    except HakitError as error:
        fail(error)
    for line in explain(history, at=moment, current=current):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
