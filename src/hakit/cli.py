"""The ``hakit`` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import tzinfo
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from hakit.config import Config, load_config
from hakit.coord.base import Event, Lease
from hakit.errors import ConfigError, HakitError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="hakit: high availability for single-writer stateful web applications.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration files.")
app.add_typer(config_app, name="config")

console = Console()
T = TypeVar("T")
err_console = Console(stderr=True)

CONFIG_ENV = "HAKIT_CONFIG"
# Every command that reads a config takes -c; without it, $HAKIT_CONFIG, then ./hakit.toml.
ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar=CONFIG_ENV,
        help=f"The cluster's hakit.toml (default: ${CONFIG_ENV}, else ./hakit.toml).",
        show_default=True,
    ),
]


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hakit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from hakit import __version__

        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"hakit {_package_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """hakit: high availability for single-writer stateful web applications."""


def _fail(error: HakitError, code: int = 1) -> NoReturn:
    err_console.print(f"[red]{escape(str(error))}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def _load(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            err_console.print(escape(problem), style="red", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _setup_logging(name: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # One line per probe would drown the events that matter.
    logging.getLogger("httpx").setLevel(logging.WARNING)


@config_app.command("check")
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
    from hakit.config.timing import worst_case

    file = file if file is not None else config
    cfg = _load(file)
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


@app.command()
def agent(
    node: Annotated[str, typer.Option("--node", "-n", help="Which node of the config this is.")],
    config: ConfigOption = Path("hakit.toml"),
) -> None:
    """Run the agent of one node (supervises its app, takes part in the leader election)."""
    from hakit.agent import Agent
    from hakit.coord.factory import open_coordinator
    from hakit.notify import close_notifier, notifier_from_config

    cfg = _load(config)
    try:
        cfg.node(node)
    except KeyError as error:
        err_console.print(f"[red]{escape(str(error.args[0]))}[/red]")
        raise typer.Exit(2) from None
    _setup_logging(f"agent[{node}]")

    async def main() -> None:
        notifier = notifier_from_config(cfg)
        # With node=: the store's identity and highest epoch are remembered on disk, so a
        # restarted agent refuses a store that was replaced meanwhile (hakit.coord.memory).
        runner = Agent(cfg, node, open_coordinator(cfg, node=node), notifier)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.request_stop)
        try:
            await runner.run()
        finally:
            # Alerts raised while stopping still go out; a dead webhook cannot hold the stop long.
            await close_notifier(notifier, timeout=10.0)

    asyncio.run(main())


@app.command()
def router(config: ConfigOption = Path("hakit.toml")) -> None:
    """Run the HTTP router in front of the cluster."""
    from hakit.coord.factory import open_coordinator
    from hakit.router import run_router
    from hakit.router.viewreader import ViewReader

    cfg = _load(config)
    _setup_logging("router")
    coordinator = open_coordinator(cfg)
    view_source = ViewReader(coordinator)  # reads the store only when it changed

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        routing = run_router(cfg, view_source, store=coordinator)  # publishes its data path
        task = asyncio.create_task(_together(routing, *_tcp_proxies(cfg)))
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    except HakitError as error:  # e.g. an unreadable TLS key: the message says what to do
        err_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1) from None


def _tcp_proxies(cfg: Config) -> list[Coroutine[Any, Any, None]]:
    """One server per ``[[tcp_proxy]]`` entry (run next to the router, or alone)."""
    from hakit.router.tcp import run_tcp_proxy

    return [run_tcp_proxy(proxy) for proxy in cfg.tcp_proxy]


async def _together(*servers: Coroutine[Any, Any, None]) -> None:
    """Run servers side by side; one failing (or a cancel) stops them all."""
    tasks = [asyncio.create_task(server) for server in servers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@app.command("tcp-proxy")
def tcp_proxy(config: ConfigOption = Path("hakit.toml")) -> None:
    """Run only the config's tcp_proxy entries (`hakit router` runs them too)."""
    cfg = _load(config)
    if not cfg.tcp_proxy:
        err_console.print(f"[red]{escape(str(config))}: no [[tcp_proxy]] entries to run[/red]")
        raise typer.Exit(2)
    _setup_logging("tcp-proxy")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(_together(*_tcp_proxies(cfg)))
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    import uvloop

    try:
        uvloop.run(main())
    except HakitError as error:  # e.g. a listen address in use: the message says what to do
        err_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1) from None


@app.command()
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
    cfg = _load(config)
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
        _fail(error)


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
        record = node_record(node)
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
        condition = node_condition(node_record(node), now, ttl)
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


class _Operator:
    """Carries out operator commands: the agents' admin API, else the store directly."""

    def __init__(self, cfg: Config) -> None:
        from hakit.operator.client import operation_for

        self._call, self.close = self._guard(lambda: operation_for(cfg, time.time))

    def __call__(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        return self._guard(lambda: self._call(operation, params))

    @staticmethod
    def _guard(work: Callable[[], T]) -> T:
        try:
            return work()
        except HakitError as error:
            err_console.print(f"[red]{escape(str(error))}[/red]", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def _operate(cfg: Config, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    operator = _Operator(cfg)
    try:
        return operator(operation, params)
    finally:
        operator.close()


ReasonOption = Annotated[
    str, typer.Option("--reason", "-r", help="Why: recorded in the history with the action.")
]
ActorOption = Annotated[
    str | None,
    typer.Option("--as", help="Who is asking (recorded as operator:NAME; default: $USER)."),
]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the target serves.")]


def _handover(
    config: Path,
    operation: str,
    target: str,
    reason: str,
    actor: str | None,
    wait: bool,
    force: bool = False,
) -> None:
    from hakit.operator.intents import handover_timeout, operator_actor

    cfg = _load(config)
    params = {"to": target, "reason": reason, "actor": operator_actor(actor), "force": force}
    operate = _Operator(cfg)  # one client: it keeps asking the agent that answered
    try:
        _carry_out_handover(cfg, operate, operation, params, wait, handover_timeout(cfg))
    finally:
        operate.close()


def _carry_out_handover(
    cfg: Config,
    operate: _Operator,
    operation: str,
    params: dict[str, Any],
    wait: bool,
    timeout: float,
) -> None:
    target = params["to"]
    answer = operate(operation, params)
    console.print(escape(str(answer.get("message", ""))), highlight=False, soft_wrap=True)
    if not wait:
        return
    deadline = time.monotonic() + timeout + 5
    intent_id = answer.get("handover", {}).get("id")
    while time.monotonic() < deadline:
        time.sleep(0.2)
        doc = operate("status", {})
        node: dict[str, Any] = next((n for n in doc["nodes"] if n["node"] == target), {})
        pending = (doc.get("handover") or {}).get("id") == intent_id
        if doc["leader"] == target and node.get("app_state") in ("RUNNING", "FIRST_RUN"):
            if not pending:
                console.print(f"{target} is active under epoch {doc['epoch']} and serving")
                return
        elif not pending:
            err_console.print(
                f"[red]the {operation} to {escape(target)} ended without {escape(target)} "
                "serving; see `hakit events`[/red]"
            )
            raise typer.Exit(1)
    err_console.print(f"[red]timed out waiting for {escape(target)} to serve[/red]")
    raise typer.Exit(1)


@app.command()
def switchover(
    to: Annotated[str, typer.Option("--to", help="The node that becomes active.")],
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
    wait: WaitOption = True,
) -> None:
    """Planned move of the active role: drain and stop the active, start NODE."""
    _handover(config, "switchover", to, reason, actor, wait)


@app.command()
def failover(
    to: Annotated[str, typer.Option("--to", help="The node that becomes active.")],
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
    wait: WaitOption = True,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Promote without running failover.fence_command against the old active "
            "(only when you know it is down).",
        ),
    ] = False,
) -> None:
    """Forced move of the active role: NODE takes over even if the active does not answer."""
    _handover(config, "failover", to, reason, actor, wait, force)


@app.command()
def pause(
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
) -> None:
    """Maintenance: agents keep monitoring and reporting but take no action."""
    _pause_or_resume(config, "pause", reason, actor)


@app.command()
def resume(
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
) -> None:
    """End a pause: agents act on failures again."""
    _pause_or_resume(config, "resume", reason, actor)


def _pause_or_resume(config: Path, verb: str, reason: str, actor: str | None) -> None:
    from hakit.operator.intents import operator_actor

    answer = _operate(_load(config), verb, {"reason": reason, "actor": operator_actor(actor)})
    console.print(escape(str(answer.get("message", ""))), highlight=False, soft_wrap=True)


@app.command()
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

    cfg = _load(config)
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
        _fail(error)
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
        _fail(error)
    finally:
        coordinator.close()


@app.command()
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
    from hakit.history.why import ClusterNow, explain, parse_at
    from hakit.operator.intents import PAUSED

    cfg = _load(config)
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
        _fail(error)
    for line in explain(history, at=moment, current=current):
        console.print(line, highlight=False, markup=False, soft_wrap=True)


@app.command()
def init(
    config: ConfigOption = Path("hakit.toml"),
    reinit: Annotated[
        bool,
        typer.Option(
            "--reinit",
            help="Replace a lost, damaged, replaced or older store: a new identity that the "
            "running agents and routers accept, epochs above every one the nodes remember; "
            "the old file is moved aside, never deleted.",
        ),
    ] = False,
    min_epoch: Annotated[
        int, typer.Option("--min-epoch", min=0, help="With --reinit: epochs continue above N too.")
    ] = 0,
    force: Annotated[
        bool, typer.Option("--force", help="With --reinit: replace even a store every node trusts.")
    ] = False,
    actor: ActorOption = None,
) -> None:
    """Create the coordination store with a new cluster identity (--reinit: replace one)."""
    from hakit.coord.identity import initialise
    from hakit.operator.intents import operator_actor

    cfg = _load(config)
    if (min_epoch or force) and not reinit:
        err_console.print("[red]--min-epoch and --force go with --reinit[/red]")
        raise typer.Exit(2)
    try:
        result = initialise(
            cfg, reinit=reinit, min_epoch=min_epoch, force=force, actor=operator_actor(actor)
        )
    except HakitError as error:
        err_console.print(f"[red]{escape(str(error))}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    for line in result.lines():
        console.print(escape(line), highlight=False, soft_wrap=True)


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Router port on 127.0.0.1.")] = 8080,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to keep the demo's state (default: temp).")
    ] = None,
) -> None:
    """Run a live two-node cluster of the sample app behind the router."""
    from hakit.demo.runner import run_demo

    try:
        run_demo(port=port, directory=directory, console=console)
    except HakitError as error:
        err_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1) from None


def main() -> None:
    app()
