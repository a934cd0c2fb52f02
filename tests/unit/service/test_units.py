"""The units ``hakit systemd`` prints (hakit.service.units), checked by systemd's own
``systemd-analyze verify``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hakit.cli import app

CONFIG = """\
[cluster]
name = "shop"
state_dir = "/var/lib/hakit/shop"

[app]
start = "x"
home = "h"
database_url = "sqlite:///a.db"
stop_timeout = "40s"

[coordination]
lease_ttl = "6s"
renew_interval = "1500ms"

[router]
listen = "0.0.0.0:80"

[[nodes]]
name = "n1"
port = 8101

[[nodes]]
name = "n2"
port = 8102
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "hakit.toml"
    path.write_text(CONFIG)
    return path


def printed(config: Path, *extra: str) -> dict[str, str]:
    """``hakit systemd`` run for real: each unit's name -> its text."""
    result = CliRunner().invoke(app, ["systemd", "--node", "n1", "-c", str(config), *extra])
    assert result.exit_code == 0, result.output
    units: dict[str, str] = {}
    name = ""
    for line in result.output.splitlines(keepends=True):
        if line.startswith("### "):
            name = line[4:].strip()
            units[name] = ""
        elif name:
            units[name] += line
    return units


def settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


def test_the_agent_unit_follows_the_config(config: Path) -> None:
    agent = settings(printed(config)["hakit-agent@.service"])
    assert agent["Type"] == "notify" and agent["NotifyAccess"] == "main"
    assert agent["ExecStart"].endswith(f"agent --node %i --config {config}")
    assert Path(agent["ExecStart"].split()[0]).is_absolute()
    assert agent["WatchdogSec"] == "18s"  # 3 x lease_ttl 6 s
    assert agent["TimeoutStopSec"] == "61s"  # stop_timeout 40 + flush 6 + 15
    assert agent["KillMode"] == "control-group" and agent["Restart"] == "on-failure"
    assert agent["User"] == "hakit"
    assert agent["StateDirectory"] == "hakit/shop" and agent["StateDirectoryMode"] == "0700"


def test_the_router_unit_and_the_user(config: Path) -> None:
    units = printed(config, "--user", "svc")
    router = settings(units["hakit-router.service"])
    assert router["ExecStart"].endswith(f"router --config {config}")
    assert router["Type"] == "notify" and router["User"] == "svc"
    assert "listening on 0.0.0.0:80" in units["hakit-router.service"]
    assert list(printed(config, "--no-router")) == ["hakit-agent@.service"]


def test_an_unknown_node_is_refused(config: Path) -> None:
    result = CliRunner().invoke(app, ["systemd", "--node", "n9", "-c", str(config)])
    assert result.exit_code == 2
    assert "no node named 'n9'" in result.output


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian: systemd) missing"
)
def test_systemd_accepts_the_units(config: Path, tmp_path: Path) -> None:
    units = printed(config, "--user", "root")
    out = tmp_path / "units"
    out.mkdir()
    files = []
    for name, text in units.items():
        path = out / name.replace("@.service", "@n1.service")  # an instance of the template
        path.write_text(text)
        files.append(str(path))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys too: anything it says is a complaint.
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_a_mistyped_key_would_be_caught(config: Path, tmp_path: Path) -> None:
    """The check above can fail: systemd names an unknown key."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze (Debian: systemd) missing")
    text = printed(config, "--user", "root")["hakit-router.service"]
    path = tmp_path / "hakit-router.service"
    path.write_text(text.replace("WatchdogSec=", "WatchdogSecs="))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Unknown key 'WatchdogSecs'" in result.stderr
