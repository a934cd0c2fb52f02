"""``hakit backup`` without filestore-config.xml: a directory in the home, left out of itself."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from hakit.cli import app
from hakit.config import load_config
from tests.integration.snapshot.conftest import make_database, make_home, rows_of, tree_of

CONFIG = """
[cluster]
mode = "restart-only"
state_dir = "state"
[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"
[[nodes]]
name = "node1"
port = 18101
"""


def test_a_directory_in_the_home_by_default(tmp_path: Path) -> None:
    make_home(tmp_path / "home")
    make_database(tmp_path / "app.db")
    (tmp_path / "hakit.toml").write_text(CONFIG)
    runner = CliRunner()
    config = ["-c", str(tmp_path / "hakit.toml")]
    repository = tmp_path / "home" / "export" / "hakit-backups"

    for _ in range(2):  # the second one would read the first one's objects, were they not left out
        result = runner.invoke(app, ["backup", "create", *config], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert f"in directory {repository}" in result.output
        assert "43 files read" in result.output or "unchanged" in result.output
    assert len(list((repository / "manifests").iterdir())) == 2

    result = runner.invoke(app, ["backup", "check", *config], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "OK: backups can be written to" in result.output

    into = tmp_path / "restored"
    result = runner.invoke(app, ["backup", "restore", *config, "--into", str(into)])
    assert result.exit_code == 0, result.output
    restored, live = tree_of(into / "home"), tree_of(tmp_path / "home")
    assert not any(path.startswith("export/hakit-backups") for path in restored)
    assert {p: v for p, v in live.items() if not p.startswith("export/hakit-backups")} == restored
    assert rows_of(into / "database" / "app.db") == rows_of(tmp_path / "app.db")


def test_a_broken_filestore_config_stops_backups_and_the_config_check(tmp_path: Path) -> None:
    make_home(tmp_path / "home")
    (tmp_path / "hakit.toml").write_text(CONFIG)
    xml = tmp_path / "home" / "filestore-config.xml"
    xml.write_text(
        "<filestore-config>\n<filestores>\n<s3-filestore id='b'/>\n</filestores>\n"
        "</filestore-config>\n"
    )
    runner = CliRunner()
    for command in (["backup", "create"], ["config", "check"]):
        result = runner.invoke(app, [*command, "-c", str(tmp_path / "hakit.toml")])
        assert result.exit_code == 2
        assert f'{xml}:3: <s3-filestore id="b"> has no <config>' in result.output.replace("\n", "")
    # Not an agent's start (load_config): a failover must not depend on the backup file.
    assert load_config(tmp_path / "hakit.toml").backup.filestore_path(tmp_path / "home") == xml
