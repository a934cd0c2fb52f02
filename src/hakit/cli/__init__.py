"""The ``hakit`` command line (typer).

- base.py      the app, the options the commands share, loading the config, failing
- readers.py   config check, status (and ``status_json``), events, why
- operate.py   switchover, failover, pause, resume, init
- run.py       agent, router, tcp-proxy, demo
- service.py   systemd (the units of one host)
- snapshot.py  snapshot create, list, verify, restore, prune
- backup.py    backup create, list, verify, restore, check, drill, prune
- generations.py  what those two share: their options, the printing of generations

The commands are registered here, in the order ``hakit --help`` lists them;
``main`` is the console script's (and ``python -m hakit``'s) entry point.
"""

from __future__ import annotations

from hakit.cli.backup import backup_app
from hakit.cli.base import CONFIG_ENV, app, config_app
from hakit.cli.operate import failover, init, pause, resume, switchover
from hakit.cli.readers import config_check, events, status, status_json, why
from hakit.cli.run import agent, demo, router, tcp_proxy
from hakit.cli.service import systemd
from hakit.cli.snapshot import snapshot_app

__all__ = ["CONFIG_ENV", "app", "main", "status_json"]

config_app.command("check")(config_check)
app.command()(agent)
app.command()(router)
app.command("tcp-proxy")(tcp_proxy)
app.command()(status)
app.command()(switchover)
app.command()(failover)
app.command()(pause)
app.command()(resume)
app.command()(events)
app.command()(why)
app.command()(init)
app.command()(systemd)
app.command()(demo)
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(backup_app, name="backup")


def main() -> None:
    app()
