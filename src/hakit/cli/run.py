"""The long-running entry points: ``agent``, ``router``, ``tcp-proxy`` and ``demo``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hakit.cli.base import ConfigOption, console, err_console, load_or_exit, setup_logging
from hakit.config import Config
from hakit.errors import HakitError
from hakit.service.sdnotify import ServiceNotifier


def agent(
    node: Annotated[str, typer.Option("--node", "-n", help="Which node of the config this is.")],
    config: ConfigOption = Path("hakit.toml"),
) -> None:
    """Run the agent of one node (supervises its app, takes part in the leader election)."""
    from hakit.agent import Agent
    from hakit.coord.factory import open_coordinator
    from hakit.notify import close_notifier, notifier_from_config

    cfg = load_or_exit(config)
    try:
        cfg.node(node)
    except KeyError as error:
        err_console.print(f"[red]{escape(str(error.args[0]))}[/red]")
        raise typer.Exit(2) from None
    setup_logging(f"agent[{node}]")

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


def router(config: ConfigOption = Path("hakit.toml")) -> None:
    """Run the HTTP router in front of the cluster."""
    from hakit.coord.factory import open_coordinator
    from hakit.router import run_router
    from hakit.router.viewreader import ViewReader

    cfg = load_or_exit(config)
    setup_logging("router")
    coordinator = open_coordinator(cfg)
    view_source = ViewReader(coordinator)  # reads the store only when it changed

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        service = ServiceNotifier.from_environment()  # systemd's Type=notify and watchdog

        def ready(host: str, port: int) -> None:
            service.ready(f"routing on {host}:{port}")

        # publishes its data path
        routing = run_router(cfg, view_source, ready=ready, store=coordinator)
        task = asyncio.create_task(_together(routing, *_tcp_proxies(cfg)))
        pinging = asyncio.create_task(_watchdog(service))
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        service.stopping("stopping")
        pinging.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        service.close()

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
    except HakitError as error:  # e.g. an unreadable TLS key: the message says what to do
        err_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1) from None


async def _watchdog(service: ServiceNotifier) -> None:
    """Ping systemd from the router's event loop: the pings stop when the loop does."""
    if service.interval is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        service.watchdog(loop.time())
        await asyncio.sleep(service.interval / 2)


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


def tcp_proxy(config: ConfigOption = Path("hakit.toml")) -> None:
    """Run only the config's tcp_proxy entries (`hakit router` runs them too)."""
    cfg = load_or_exit(config)
    if not cfg.tcp_proxy:
        err_console.print(f"[red]{escape(str(config))}: no [[tcp_proxy]] entries to run[/red]")
        raise typer.Exit(2)
    setup_logging("tcp-proxy")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(_together(*_tcp_proxies(cfg)))
        await asyncio.wait([task, asyncio.create_task(stop.wait())], return_when="FIRST_COMPLETED")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    import uvloop

    try:
        uvloop.run(main())
    except HakitError as error:  # e.g. a listen address in use: the message says what to do
        err_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1) from None


def demo(
    port: Annotated[int, typer.Option(help="Router port on 127.0.0.1.")] = 8080,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Where to keep the demo's state (default: temp).")
    ] = None,
    coordination: Annotated[
        str,
        typer.Option(
            help="The coordination store: sqlite (embedded) or etcd (a local three-member "
            "etcd cluster the demo starts and stops itself; needs /usr/bin/etcd).",
        ),
    ] = "sqlite",
    storage: Annotated[
        str,
        typer.Option(
            help="shared (one home and database) or replicated (each node its own; the "
            "standby applies the active's generations every 2 s, pulled over the admin API).",
        ),
    ] = "shared",
) -> None:
    """Run a live two-node cluster of the sample app behind the router."""
    from hakit.demo.runner import run_demo

    if coordination not in ("sqlite", "etcd"):
        err_console.print(
            f"[red]--coordination {escape(coordination)}: expected sqlite or etcd[/red]"
        )
        raise typer.Exit(2)
    if storage not in ("shared", "replicated"):
        err_console.print(f"[red]--storage {escape(storage)}: expected shared or replicated[/red]")
        raise typer.Exit(2)
    try:
        run_demo(
            port=port,
            directory=directory,
            console=console,
            coordination=coordination,
            storage=storage,
        )
    except HakitError as error:
        err_console.print(f"[red]{escape(str(error))}[/red]")
        raise typer.Exit(1) from None
