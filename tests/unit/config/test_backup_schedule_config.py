"""``[backup]``'s schedule, retention and prune credential: defaults and bad values with file,
line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.config import load_config
from hakit.config.sections.backup import BackupConfig
from tests.unit.config.test_config import BASE, problems_of


def test_defaults_schedule_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE)
    backup = load_config(path).backup
    assert backup.interval is None and backup.stale_threshold is None
    assert backup.health_every is None and not backup.retention
    assert backup.prune_grace == 3600.0


def test_derived_thresholds() -> None:
    daily = BackupConfig(interval=86400.0)
    assert daily.stale_threshold == 2 * 86400.0 and daily.health_every == 3600.0
    tuned = BackupConfig(interval=3600.0, stale_after=5400.0, health_check_interval=600.0)
    assert tuned.stale_threshold == 5400.0 and tuned.health_every == 600.0
    # A health check alone (backups taken elsewhere, e.g. by cron): no stale alert.
    assert BackupConfig(health_check_interval=60.0).health_every == 60.0


def test_a_drill_schedule_and_its_scratch_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(BASE + '\n[backup]\ndrill_interval = "24h"\ndrill_scratch = "drills"\n')
    backup = load_config(path).backup
    assert backup.drill_interval == 86400.0 and backup.drill_scratch == tmp_path / "drills"
    assert backup.interval is None  # drills need no scheduled backup (taken elsewhere, say)


def test_a_schedule_with_retention_and_a_prune_credential(tmp_path: Path) -> None:
    path = tmp_path / "hakit.toml"
    path.write_text(
        BASE
        + '\n[backup]\ninterval = "24h"\nstale_after = "36h"\nkeep_last = 7\nkeep_weekly = 4\n'
        + 'prune_access_key_env = "PRUNE_ID"\nprune_secret_key_env = "PRUNE_SECRET"\n'
    )
    backup = load_config(path).backup
    assert backup.interval == 86400.0 and backup.stale_threshold == 36 * 3600.0
    assert backup.retention and backup.prune_access_key_env == "PRUNE_ID"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            '[backup]\nprune_access_key_env = "PRUNE_ID"\n',
            "FILE:18: backup.prune_access_key_env: prune_access_key_env and "
            "prune_secret_key_env go together; expected both (prune's own credential) or "
            "neither (prune uses access_key_env/secret_key_env)",
        ),
        (
            '[backup]\nstale_after = "48h"\n',
            "FILE:18: backup.stale_after: stale_after watches scheduled backups, but interval "
            'is not set; expected interval = "24h" too (or no stale_after)',
        ),
        (
            '[backup]\ninterval = "24h"\nstale_after = "12h"\n',
            "FILE:19: backup.stale_after: stale_after 12h is not longer than interval 24h: "
            "every backup would be stale before the next; expected more (default: 48h)",
        ),
        (
            '[backup]\ninterval = "0s"\n',
            "FILE:18: backup.interval: must be more than 0s, got 0s",
        ),
        (
            '[backup]\ndrill_scratch = "/var/tmp/drills"\n',
            "FILE:18: backup.drill_scratch: drill_scratch is where scheduled drills restore, "
            'but drill_interval is not set; expected drill_interval = "24h" too (or no '
            "drill_scratch; `hakit backup drill` takes --scratch)",
        ),
        (
            '[backup]\ndirectory = "b"\ndrill_interval = "often"\n',
            "FILE:19: backup.drill_interval: ",
        ),
    ],
    ids=[
        "half-a-credential",
        "stale-without-interval",
        "stale-too-soon",
        "zero-interval",
        "drill-scratch-without-interval",
        "bad-drill-interval",
    ],
)
def test_bad_values_name_file_line_and_key(tmp_path: Path, section: str, expected: str) -> None:
    found = problems_of(tmp_path, BASE + "\n" + section)
    assert len(found) == 1 and found[0].startswith(expected), found
