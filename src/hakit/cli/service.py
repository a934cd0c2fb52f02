"""``hakit systemd``: print the systemd units of one host for a config (hakit.service.units)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from hakit.cli.base import ConfigOption, err_console, load_or_exit


def _hakit_executable() -> Path:
    """The ``hakit`` this command runs as (its venv's script), as an absolute path."""
    found = shutil.which("hakit") if Path(sys.argv[0]).name != "hakit" else sys.argv[0]
    return Path(found or sys.argv[0]).resolve()


def systemd(
    node: Annotated[
        str, typer.Option("--node", "-n", help="The node this host runs (its agent unit).")
    ],
    config: ConfigOption = Path("hakit.toml"),
    user: Annotated[str, typer.Option(help="The account the services run as.")] = "hakit",
    router: Annotated[
        bool, typer.Option("--router/--no-router", help="Also print the router's unit.")
    ] = True,
    executable: Annotated[
        Path | None,
        typer.Option("--hakit", help="The hakit executable the units run (default: this one)."),
    ] = None,
) -> None:
    """Print the systemd units for this host: its node's agent (and the router)."""
    from hakit.service.units import agent_unit, router_unit

    cfg = load_or_exit(config)
    path = config.resolve()
    hakit = executable or _hakit_executable()
    try:
        units = [agent_unit(cfg, node, hakit, path, user)]
    except KeyError as error:
        err_console.print(f"[red]{escape(str(error.args[0]))}[/red]")
        raise typer.Exit(2) from None
    if router:
        units.append(router_unit(cfg, hakit, path, user))
    for index, unit in enumerate(units):
        if index:
            typer.echo("")
        typer.echo(f"### {unit.name}")
        typer.echo(unit.text, nl=False)
