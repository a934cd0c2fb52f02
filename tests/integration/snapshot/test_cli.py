"""``hakit snapshot create|list|verify|restore`` on a config's home and SQLite database."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hakit.cli import app
from tests.integration.snapshot.conftest import make_database, make_home, rows_of, tree_of

CONFIG = """
[cluster]
name = "snap"
state_dir = "state"
[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"
[[nodes]]
name = "node1"
port = 18101
[[nodes]]
name = "node2"
port = 18102
"""


def test_create_list_verify_restore(tmp_path: Path) -> None:
    make_home(tmp_path / "home")
    make_database(tmp_path / "app.db")
    config = tmp_path / "hakit.toml"
    config.write_text(CONFIG)
    repo = tmp_path / "repo"
    runner = CliRunner()
    env = {"COLUMNS": "200"}

    result = runner.invoke(
        app,
        ["snapshot", "create", "--to", str(repo), "-c", str(config), "--node", "node1"],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert "generation " in result.output and "43 files read" in result.output

    result = runner.invoke(app, ["snapshot", "list", "--repo", str(repo)], env=env)
    assert result.exit_code == 0, result.output
    assert "node1" in result.output and "sqlite" in result.output

    result = runner.invoke(app, ["snapshot", "verify", "--repo", str(repo)], env=env)
    assert result.exit_code == 0, result.output
    assert ": ok," in result.output

    into = tmp_path / "restored"
    result = runner.invoke(
        app,
        ["snapshot", "restore", "--repo", str(repo), "--into", str(into), "-c", str(config)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    assert tree_of(into / "home") == tree_of(tmp_path / "home")
    assert rows_of(into / "database" / "app.db") == rows_of(tmp_path / "app.db")

    result = runner.invoke(
        app,
        [
            "snapshot",
            "restore",
            "--repo",
            str(repo),
            "--into",
            str(tmp_path / "home"),
            "-c",
            str(config),
        ],
        env=env,
    )
    assert result.exit_code == 1 and "new directory" in result.output

    result = runner.invoke(app, ["snapshot", "verify", "--repo", str(repo), "nope"], env=env)
    assert result.exit_code == 1 and "no generation nope" in result.output


def test_mysql_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    config = tmp_path / "hakit.toml"
    config.write_text(CONFIG.replace("sqlite:///app.db", "mysql://app@localhost/app"))
    result = CliRunner().invoke(
        app, ["snapshot", "create", "--to", str(tmp_path / "r"), "-c", str(config)]
    )
    assert result.exit_code == 1 and "mysql databases are not supported yet" in result.output
