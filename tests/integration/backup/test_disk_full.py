"""A full disk (a real 20 MB tmpfs) under a restore and under a local repository: a clear
error, nothing replaced, no generation written, nothing partial left behind."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hakit.cli import app
from hakit.snapshot.store import open_local_store
from tests.integration.snapshot.conftest import make_database, make_home, rows_of, tree_of
from tests.integration.snapshot.test_cli import CONFIG

SIZE = "20m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs mounted for this test (root only), unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    directory = tmp_path / "small-disk"
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def _site(tmp_path: Path, repository: Path) -> Path:
    make_home(tmp_path / "home")
    (tmp_path / "home" / "big.bin").write_bytes(os.urandom(30 * 1024 * 1024))  # > the disk
    make_database(tmp_path / "app.db")
    config = tmp_path / "hakit.toml"
    config.write_text(CONFIG + f'[backup]\ndirectory = "{repository}"\n')
    return config


def run(config: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["backup", *args, "-c", str(config)], env={"COLUMNS": "200"})
    result.text = " ".join(result.output.split())
    return result


def test_a_restore_onto_a_full_disk_replaces_nothing(tmp_path: Path, small_disk: Path) -> None:
    config = _site(tmp_path, tmp_path / "repo")
    assert run(config, "create").exit_code == 0
    home, rows = tree_of(tmp_path / "home"), rows_of(tmp_path / "app.db")

    for swap in ([], ["--swap"]):
        result = run(config, "restore", "--into", str(small_disk / "restored"), *swap)
        assert result.exit_code == 1, result.output
        assert "No space left on device" in result.text, result.output
        assert "nothing was replaced" in result.text
        assert os.listdir(small_disk) == []  # the partial directory removed
    assert tree_of(tmp_path / "home") == home and rows_of(tmp_path / "app.db") == rows


def test_a_backup_onto_a_full_disk_writes_no_generation(tmp_path: Path, small_disk: Path) -> None:
    repository = small_disk / "repo"
    config = _site(tmp_path, repository)
    result = run(config, "create")
    assert result.exit_code == 1, result.output
    assert "failed, no generation written" in result.text and "No space left" in result.text
    store = open_local_store(repository)
    assert store.list_manifests() == []
    assert os.listdir(repository / "tmp") == []  # no temporary file left
    # Room again: the big file gone, and the objects the failed backup stored (no manifest
    # names them) pruned. The next backup works, and verifies.
    (tmp_path / "home" / "big.bin").unlink()
    result = run(config, "prune", "--grace", "0")
    assert result.exit_code == 0 and "removed 0 generations and " in result.text, result.output
    result = run(config, "create")
    assert result.exit_code == 0, result.output
    result = run(config, "verify")
    assert result.exit_code == 0 and ": ok," in result.text, result.output
