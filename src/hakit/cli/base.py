"""The ``hakit`` command line: the typer app, the options its commands share, loading
the config (exit 2 on a mistake) and failing with a message (exit 1).

The commands are in hakit.cli.readers, hakit.cli.operate and hakit.cli.run;
hakit.cli registers them on ``app`` (in the order ``hakit --help`` lists them).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hakit.config import Config, load_config
from hakit.errors import ConfigError, HakitError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="hakit: high availability for single-writer stateful web applications.",
)
config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration files.")
app.add_typer(config_app, name="config")

console = Console()
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


def fail(error: HakitError, code: int = 1) -> NoReturn:
    err_console.print(f"[red]{escape(str(error))}[/red]", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def load_or_exit(path: Path) -> Config:
    try:
        return load_config(path)
    except ConfigError as error:
        for problem in error.problems:
            err_console.print(escape(problem), style="red", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def setup_logging(name: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {name} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # One line per probe would drown the events that matter.
    logging.getLogger("httpx").setLevel(logging.WARNING)
