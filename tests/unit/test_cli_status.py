"""The CLI's pure parts: ``hakit status --json`` from a status document, and -c /
$HAKIT_CONFIG on every command that reads a config."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from typer.core import TyperGroup

from hakit.cli import CONFIG_ENV, app, status_json
from hakit.coord.base import Lease

T0 = datetime(2026, 11, 22, 4, 40, 0, tzinfo=UTC).timestamp()


def node(name: str, role: str | None, state: str | None, at: float | None) -> dict[str, Any]:
    return {
        "node": name,
        "address": f"127.0.0.1:{8100 + int(name[-1])}",
        "route": name,
        "no_failover": name == "n3",
        "role": role,
        "app_state": state,
        "epoch": 4 if role == "active" else 0,
        "pid": 4242 if state == "RUNNING" else None,
        "policy": None,
        "updated_at": at,
    }


def document(leader: str | None = "n1") -> dict[str, Any]:
    return {
        "cluster": "obs",
        "mode": "cold-standby",
        "read_at": T0,
        "leader": leader,
        "epoch": 4,
        "paused": {"paused": True, "actor": "operator:alice", "reason": "jdk", "at": T0 - 90},
        "handover": None,
        "nodes": [
            node("n1", "active", "RUNNING", T0 - 0.4),
            node("n2", "active", "RUNNING", T0 - 75),  # killed while it was active
            node("n3", None, None, None),
        ],
        "events": [
            {"id": i, "time": T0 - 10 + i, "node": "n1", "kind": "start", "reason": f"r{i}"}
            for i in range(1, 8)
        ],
    }


def test_status_json_tells_lost_nodes_lease_pause_and_events() -> None:
    report = status_json(document(), Lease.as_read("n1", 4, T0 + 2.5, T0), ttl=3.0, last=2, tz=UTC)
    n1, n2, n3 = report["nodes"]
    assert (n1["role"], n1["state"], n1["lost"], n1["leader"]) == ("active", "RUNNING", False, True)
    assert n1["age"] == 0.4 and n1["pid"] == 4242
    assert (n2["role"], n2["state"], n2["lost"], n2["age"]) == ("lost", "unknown", True, 75.0)
    assert n2["reported"] == {
        "role": "active",
        "app_state": "RUNNING",
        "at": "2026-11-22T04:38:45.000+00:00",
    }
    assert (n3["role"], n3["state"], n3["lost"], n3["age"], n3["reported"]) == (
        "unknown",
        "-",
        False,
        None,
        None,
    )
    assert n3["no_failover"] is True
    assert report["lease"] == {
        "holder": "n1",
        "epoch": 4,
        "expires_at": "2026-11-22T04:40:02.500+00:00",
        "valid": True,
    }
    assert report["paused"] == {
        "by": "operator:alice",
        "since": "2026-11-22T04:38:30.000+00:00",
        "reason": "jdk",
    }
    assert report["read_at"] == "2026-11-22T04:40:00.000+00:00"
    assert [(e["id"], e["time"]) for e in report["events"]] == [
        (6, "2026-11-22T04:39:56.000+00:00"),
        (7, "2026-11-22T04:39:57.000+00:00"),
    ]


def test_status_json_of_an_expired_lease_and_of_the_admin_api() -> None:
    expired = status_json(
        document(leader=None), Lease.as_read("n1", 4, T0 - 1, T0), ttl=3.0, last=0
    )
    assert expired["lease"]["valid"] is False and expired["lease"]["holder"] == "n1"
    assert expired["events"] == []
    # Through an agent's admin API the document has no lease expiry: said as null, not made up.
    api = status_json(document(), None, ttl=3.0, last=5)
    assert api["lease"] == {"holder": "n1", "epoch": 4, "expires_at": None, "valid": True}
    doc = document(leader=None) | {"epoch": 0, "paused": None}
    never = status_json(doc, None, ttl=3.0, last=5)
    assert never["lease"] is None and never["paused"] is None


def test_every_command_that_reads_a_config_takes_c_and_the_environment() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    commands: dict[str, Any] = {}
    for name, command in root.commands.items():
        if isinstance(command, TyperGroup):
            commands |= {f"{name} {sub}": c for sub, c in command.commands.items()}
        else:
            commands[name] = command
    # demo makes its own config; snapshot list and verify read a repository, not a config
    without = {"demo", "snapshot list", "snapshot verify"}
    assert without < set(commands)
    for name, command in commands.items():
        if name in without:
            continue
        options = {p.name: p for p in command.params if p.param_type_name == "option"}
        assert "config" in options, f"hakit {name} has no -c"
        assert {"-c", "--config"} <= set(options["config"].opts), name
        assert options["config"].envvar == CONFIG_ENV, name
        assert str(options["config"].default) == "hakit.toml", name
