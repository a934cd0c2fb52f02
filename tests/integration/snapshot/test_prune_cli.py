"""``hakit snapshot prune``: the policy from [snapshot] or the options, what it keeps and why."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from hakit.cli import app
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import verify_generation
from tests.integration.snapshot.conftest import make_database, make_home
from tests.integration.snapshot.test_cli import CONFIG

ENV = {"COLUMNS": "250"}


def _site(tmp_path: Path, snapshot: str) -> Path:
    make_home(tmp_path / "home")
    make_database(tmp_path / "app.db")
    config = tmp_path / "hakit.toml"
    config.write_text(CONFIG + snapshot)
    return config


def _capture(config: Path, repo: Path, times: int) -> None:
    for index in range(times):
        (config.parent / "home" / "attachments" / "a000").write_bytes(os.urandom(300 + index))
        result = CliRunner().invoke(
            app, ["snapshot", "create", "--to", str(repo), "-c", str(config)], env=ENV
        )
        assert result.exit_code == 0, result.output


def test_prune_from_the_config_section(tmp_path: Path) -> None:
    config = _site(tmp_path, '[snapshot]\ndirectory = "repo"\nkeep_last = 2\n')
    repo = tmp_path / "repo"
    _capture(config, repo, 4)
    generations = open_local_store(repo).list_manifests()
    runner = CliRunner()

    # Within the default grace period (1 h) every generation is young: all kept.
    result = runner.invoke(app, ["snapshot", "prune", "-c", str(config)], env=ENV)
    assert result.exit_code == 0, result.output
    assert "policy: keep last 2; grace period 1h" in result.output
    assert "in use: a capture may build on it" in result.output
    assert "removed 0 generations" in result.output

    result = runner.invoke(
        app, ["snapshot", "prune", "-c", str(config), "--grace", "0", "--dry-run"], env=ENV
    )
    assert result.exit_code == 0, result.output
    assert "would remove 2 generations" in result.output
    assert "the newest generation; in use: a capture may build on it; last (1 of 2)" in (
        result.output
    )
    assert "last (2 of 2)" in result.output
    assert "no rule keeps it" in result.output
    assert open_local_store(repo).list_manifests() == generations

    result = runner.invoke(app, ["snapshot", "prune", "-c", str(config), "--grace", "0"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "removed 2 generations" in result.output
    store = open_local_store(repo)
    assert store.list_manifests() == generations[2:]
    assert all(verify_generation(store, generation).ok for generation in generations[2:])


def test_options_replace_the_section_policy(tmp_path: Path) -> None:
    config = _site(tmp_path, '[snapshot]\ndirectory = "repo"\nkeep_last = 3\n')
    repo = tmp_path / "repo"
    _capture(config, repo, 3)
    command = ["snapshot", "prune", "--repo", str(repo), "-c", str(config)]
    result = CliRunner().invoke(app, [*command, "--keep-daily", "1", "--grace", "0"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "policy: keep daily 1" in result.output
    assert len(open_local_store(repo).list_manifests()) == 1


def test_prune_without_a_repository_says_so(tmp_path: Path) -> None:
    config = _site(tmp_path, "")
    result = CliRunner().invoke(app, ["snapshot", "prune", "-c", str(config)], env=ENV)
    assert result.exit_code == 1
    assert "no --repo, and" in result.output and "sets no [snapshot] directory" in result.output


def test_a_bad_grace_is_refused(tmp_path: Path) -> None:
    config = _site(tmp_path, '[snapshot]\ndirectory = "repo"\n')
    _capture(config, tmp_path / "repo", 1)
    result = CliRunner().invoke(
        app, ["snapshot", "prune", "-c", str(config), "--grace", "soon"], env=ENV
    )
    assert result.exit_code == 1
    assert '--grace: "soon" is not a duration' in result.output
