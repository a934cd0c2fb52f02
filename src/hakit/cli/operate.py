"""The operator's commands: ``switchover``, ``failover``, ``pause``, ``resume`` (through
the agents' admin API, else the store) and ``init`` (the store itself)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from hakit.cli.base import ConfigOption, console, err_console, load_or_exit
from hakit.config import Config
from hakit.errors import HakitError

T = TypeVar("T")


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

    cfg = load_or_exit(config)
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


def switchover(
    to: Annotated[str, typer.Option("--to", help="The node that becomes active.")],
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
    wait: WaitOption = True,
) -> None:
    """Planned move of the active role: drain and stop the active, start NODE."""
    _handover(config, "switchover", to, reason, actor, wait)


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


def pause(
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
) -> None:
    """Maintenance: agents keep monitoring and reporting but take no action."""
    _pause_or_resume(config, "pause", reason, actor)


def resume(
    config: ConfigOption = Path("hakit.toml"),
    reason: ReasonOption = "",
    actor: ActorOption = None,
) -> None:
    """End a pause: agents act on failures again."""
    _pause_or_resume(config, "resume", reason, actor)


def _pause_or_resume(config: Path, verb: str, reason: str, actor: str | None) -> None:
    from hakit.operator.intents import operator_actor

    answer = _operate(
        load_or_exit(config), verb, {"reason": reason, "actor": operator_actor(actor)}
    )
    console.print(escape(str(answer.get("message", ""))), highlight=False, soft_wrap=True)


def init(
    config: ConfigOption = Path("hakit.toml"),
    reinit: Annotated[
        bool,
        typer.Option(
            "--reinit",
            help="Replace a lost, damaged, replaced or older store: a new identity that the "
            "running agents and routers accept, epochs above every one the nodes remember, "
            "no lease for one TTL; SQLite: the old file is moved aside, never deleted.",
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

    cfg = load_or_exit(config)
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
