"""``[snapshot]``: defaults, paths relative to the file, and bad values with file, line, key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config import SnapshotConfig, load_config
from hakit.config.check import describe_config
from tests.unit.config.test_config import BASE, problems_of


def test_no_section_means_no_schedule_and_no_retention(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE)
    cfg = load_config(path)
    assert cfg.snapshot == SnapshotConfig()
    assert cfg.snapshot.interval is None and not cfg.snapshot.retention
    assert cfg.snapshot.prune_grace == 3600.0
    assert not any(line.startswith("snapshots:") for line in describe_config(cfg))


def test_a_schedule_with_retention(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(
        BASE
        + '\n[snapshot]\ndirectory = "snaps"\ninterval = "15m"\nkeep_last = 4\n'
        + 'keep_daily = 7\nkeep_weekly = 2\nprune_grace = "2h"\n'
    )
    snapshot = load_config(path).snapshot
    assert snapshot.directory == tmp_path / "snaps"
    assert snapshot.interval == 900.0 and snapshot.prune_grace == 7200.0
    assert (snapshot.keep_last, snapshot.keep_daily, snapshot.keep_weekly) == (4, 7, 2)
    assert snapshot.retention
    assert snapshot.describe() == (
        f"snapshots: into {tmp_path / 'snaps'}; the running active captures every 15m; "
        "then prunes (keep_last 4, keep_daily 7, keep_weekly 2)"
    )
    assert snapshot.describe() in describe_config(load_config(path))
    assert SnapshotConfig(directory=Path("/s")).describe() == (
        "snapshots: into /s; no scheduled capture (no interval); no retention (no keep_*)"
    )


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            '[snapshot]\ninterval = "1h"\n',
            "FILE:18: snapshot.interval: captures every 1h need a repository, but directory "
            'is not set; expected directory = "/srv/snapshots" too (or no interval)',
        ),
        (
            '[snapshot]\ndirectory = "s"\nkeep_daily = -1\n',
            "FILE:19: snapshot.keep_daily: must be at least 0, got -1",
        ),
        (
            '[snapshot]\ndirectory = "s"\nkeep_last = "3"\n',
            'FILE:19: snapshot.keep_last: got the string "3"; expected an integer (write 3 '
            "without quotes)",
        ),
        (
            '[snapshot]\ndirectory = "s"\ninterval = "0s"\n',
            "FILE:19: snapshot.interval: must be more than 0s, got 0s",
        ),
        (
            '[snapshot]\ndirectory = "s"\nprune_grace = "soon"\n',
            'FILE:19: snapshot.prune_grace: "soon" is not a duration; expected a number of '
            'seconds or a string such as "15s", "2m" or "500ms"',
        ),
        (
            '[snapshot]\ndirectory = "s"\nkeep_hourly = 3\n',
            "FILE:19: snapshot.keep_hourly: unknown key; did you mean keep_daily?",
        ),
    ],
    ids=["interval-without-directory", "negative", "quoted", "zero-interval", "bad-grace", "typo"],
)
def test_bad_values_name_file_line_and_key(tmp_path: Path, section: str, expected: str) -> None:
    found = problems_of(tmp_path, BASE + "\n" + section)
    assert found == [expected]
