"""The derived timings (hakit.config.derived): each multiple of lease_ttl / renew_interval
in one place, read by the agent, the policy and the operator commands, and listed by
``hakit config check``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hakit.cli import app
from hakit.config import Config, DerivedTimings, derived_timings, load_config
from hakit.config.check import describe_config
from hakit.config.derived import WHY, derived_lines
from hakit.coord.base import NodeRecord
from hakit.operator.intents import agent_alive, handover_timeout
from hakit.policy import PolicySettings

CONFIG = """\
[app]
start = "x"
home = "h"
database_url = "sqlite:///a.db"
startup_timeout = "20s"
stop_timeout = "10s"

[coordination]
lease_ttl = "4s"
renew_interval = "1s"

[[nodes]]
name = "n1"
port = 8101

[[nodes]]
name = "n2"
port = 8102
"""

EXPECTED = {
    "self_fence_margin": 0.5,  # renew_interval / 2
    "heartbeat": 0.05,  # min(50 ms, renew_interval / 4 = 250 ms)
    "watchdog_grace": 4.0,  # lease_ttl
    "waking_patience": 2.0,  # lease_ttl / 2
    "step_down_cooldown": 12.0,  # 3 x lease_ttl
    "boot_grace": 8.0,  # 2 x lease_ttl
    "handover_timeout": 46.0,  # stop 10 + startup 20 + 4 x lease_ttl
    "agent_alive_within": 12.0,  # 3 x lease_ttl
    "candidate_alive_within": 4.0,  # lease_ttl
    "flush_bound": 4.0,  # lease_ttl
    "service_watchdog": 12.0,  # 3 x lease_ttl, at least 10 s
}


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    path = tmp_path / "hakit.toml"
    path.write_text(CONFIG)
    return load_config(path)


def test_every_timing_is_derived_from_the_config(cfg: Config) -> None:
    assert dataclasses.asdict(derived_timings(cfg)) == EXPECTED


def test_a_fast_renewal_ticks_the_heartbeat_faster(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(
        CONFIG.replace('lease_ttl = "4s"', 'lease_ttl = "300ms"').replace(
            'renew_interval = "1s"', 'renew_interval = "100ms"'
        )
    )
    timings = derived_timings(load_config(path))
    assert timings.heartbeat == 0.025  # renew_interval / 4, under 50 ms
    assert timings.service_watchdog == 10.0  # 3 x 300 ms would kill an agent on a busy host
    assert timings.self_fence_margin == 0.05


def test_the_timings_are_frozen(cfg: Config) -> None:
    timings = derived_timings(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        timings.boot_grace = 1.0  # type: ignore[misc]


def test_every_timing_says_why() -> None:
    names = [field.name for field in dataclasses.fields(DerivedTimings)]
    assert sorted(names) == sorted(WHY)
    assert all(WHY[name] for name in names)


def test_the_readers_read_the_derived_timings(cfg: Config) -> None:
    timings = derived_timings(cfg)
    settings = PolicySettings.from_config(cfg, "n1")
    assert (settings.step_down_cooldown, settings.boot_grace) == (12.0, 8.0)
    assert settings.step_down_cooldown == timings.step_down_cooldown
    assert handover_timeout(cfg) == timings.handover_timeout == 46.0
    # The record's age is the store's (coord): the reader's clock does not enter.
    fresh = NodeRecord("n1", "standby", "STOPPED", 0, 100.0, age=timings.agent_alive_within)
    stale = NodeRecord("n1", "standby", "STOPPED", 0, 100.0, age=timings.agent_alive_within + 0.01)
    assert agent_alive(fresh, cfg, 0.0)
    assert not agent_alive(stale, cfg, 0.0)


def test_derived_lines_name_each_value_and_why(cfg: Config) -> None:
    lines = derived_lines(cfg)
    assert lines[0].startswith("derived timings")
    assert lines[1:] == [
        f"  {name} = {shown}: {WHY[name]}"
        for name, shown in [
            ("self_fence_margin", "500ms"),
            ("heartbeat", "50ms"),
            ("watchdog_grace", "4s"),
            ("waking_patience", "2s"),
            ("step_down_cooldown", "12s"),
            ("boot_grace", "8s"),
            ("handover_timeout", "46s"),
            ("agent_alive_within", "12s"),
            ("candidate_alive_within", "4s"),
            ("flush_bound", "4s"),
            ("service_watchdog", "12s"),
        ]
    ]
    assert WHY["step_down_cooldown"].startswith("3 x lease_ttl")
    summary = describe_config(cfg)
    start = summary.index(lines[0])
    assert summary[start : start + len(lines)] == lines


def test_config_check_prints_every_derived_timing(cfg: Config) -> None:
    assert cfg.source is not None
    result = CliRunner().invoke(app, ["config", "check", str(cfg.source)], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    output = result.output.splitlines()
    for name, value in [
        ("step_down_cooldown", "12s"),
        ("boot_grace", "8s"),
        ("handover_timeout", "46s"),
        ("agent_alive_within", "12s"),
        ("flush_bound", "4s"),
    ]:
        assert f"    {name} = {value}: {WHY[name]}" in output, result.output
