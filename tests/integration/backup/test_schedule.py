"""The agent's scheduled backups and health checks (hakit.agent.backups) with real job
processes: a backup to a directory and to S3 (moto) under the active's epoch, the rhythm
kept, failures alerted once, stale backups alerted, a backup abandoned when the node stops
being active, and health check warnings alerted once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hakit.agent.backups import BackupSchedule
from hakit.config import Config, load_config
from hakit.history.kinds import AlertKind
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest, verify_generation
from tests.integration.backup.conftest import env, make_site
from tests.integration.snapshot.conftest import make_database, make_home
from tests.integration.snapshot.test_cli import CONFIG
from tests.integration.snapshot.test_schedule import Agentish, locked_database
from tests.support.s3servers import S3Server

HOUR = 3600.0


def _config(tmp_path: Path, backup: str, database: str = "app.db") -> Config:
    make_home(tmp_path / "home")
    if database == "app.db":
        make_database(tmp_path / "app.db")
    config = tmp_path / "hakit.toml"
    text = CONFIG.replace('"sqlite:///app.db"', f'"sqlite:///{database}"')
    config.write_text(text + backup)
    return load_config(config)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _schedule(cfg: Config, agent: Agentish, clock: Clock | None = None) -> BackupSchedule:
    return BackupSchedule(
        cfg,
        "node1",
        active=lambda: agent.epoch,
        record=agent.record,
        alert=agent.alert,
        **({"clock": clock} if clock else {}),
    )


def test_a_scheduled_backup_to_a_directory(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[backup]\ndirectory = "backups"\ninterval = "1h"\n')
    agent = Agentish(epoch=7)
    schedule = _schedule(cfg, agent)
    assert schedule.enabled and cfg.backup.health_every == HOUR

    async def turns() -> None:
        await schedule.turn(7)  # nothing backed up yet: due now (and the first health check)
        await schedule.turn(7)  # an hour has not passed: nothing

    asyncio.run(turns())
    assert [kind for kind, _, _ in agent.events] == ["backup"], agent.events
    reason, data = agent.events[0][1], agent.events[0][2]
    assert f"backed up to directory {tmp_path / 'backups'}" in reason and "next in 1h" in reason
    store = open_local_store(tmp_path / "backups")
    manifest = read_manifest(store, data["generation"])
    assert (manifest.node, manifest.epoch) == ("node1", 7)
    assert verify_generation(store, data["generation"]).ok
    assert agent.alerts == []  # the health check of a directory: ok, nothing to say

    # A new schedule (a restarted agent, another active) sees the newest backup: no backup
    # before an interval has passed.
    again = Agentish(epoch=8)
    asyncio.run(_schedule(cfg, again).turn(8))
    assert again.events == []


def test_a_standby_never_backs_up_but_checks(tmp_path: Path) -> None:
    cfg = _config(tmp_path, '[backup]\ndirectory = "backups"\ninterval = "1h"\n')
    (tmp_path / "backups").write_text("a file where the repository should be")
    agent = Agentish(epoch=0)
    asyncio.run(_schedule(cfg, agent).turn(0))
    (kind, reason, data), *rest = agent.events
    assert not rest and kind == "backup-check" and data["status"] == "error", agent.events
    assert "cannot write backups" in reason
    assert len(agent.alerts) == 1 and agent.alerts[0].kind is AlertKind.BACKUP


def test_failures_alerted_once_then_stale_then_fresh(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        '[backup]\ndirectory = "backups"\ninterval = "1h"\nstale_after = "90m"\n'
        'health_check_interval = "24h"\n',
    )
    (tmp_path / "backups").write_text("a file where the repository should be")
    agent = Agentish(epoch=3)
    clock = Clock()
    schedule = _schedule(cfg, agent, clock)

    async def scenario() -> None:
        await schedule.turn(3)  # fails (and the health check: an error)
        clock.now += HOUR
        await schedule.turn(3)  # fails again: recorded, not alerted again
        clock.now += HOUR  # 2 h as the active without a backup: stale
        await schedule.turn(3)
        await schedule.turn(3)  # stale once
        (tmp_path / "backups").unlink()
        clock.now += HOUR
        await schedule.turn(3)  # works again

    asyncio.run(scenario())
    kinds = [kind for kind, _, _ in agent.events]
    assert kinds == [
        "backup-failed",
        "backup-check",
        "backup-failed",
        "backup-failed",
        "backup-stale",
        "backup",
    ], agent.events
    assert agent.events[3][2]["failures"] == 3
    assert agent.events[4][1].startswith(
        "backups are stale: none seen in 2h as the active (stale_after "
    )
    assert "backups are fresh again" in agent.events[5][1]
    alerts = [alert.reason for alert in agent.alerts]
    assert len(alerts) == 3, alerts  # the first failure, the health check, stale
    assert all(alert.kind is AlertKind.BACKUP for alert in agent.alerts)
    assert alerts[0].startswith("scheduled backup failed:") and "stale" in alerts[2]


def test_a_backup_is_abandoned_when_the_node_stops_being_active(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        '[backup]\ndirectory = "backups"\ninterval = "1h"\nhealth_check_interval = "24h"\n',
        database="stuck.db",
    )
    agent = Agentish(epoch=5)
    schedule = _schedule(cfg, agent)
    schedule.last_check = schedule.clock()  # only the backup

    async def scenario() -> None:
        backup = asyncio.create_task(schedule.turn(5))
        for _ in range(3000):  # bounded: the backup process reaches the database
            if (tmp_path / "backups" / "manifests").is_dir():
                break
            await asyncio.sleep(0.01)
        agent.epoch = 0  # the lease is lost
        await asyncio.wait_for(backup, 30)

    with locked_database(tmp_path / "stuck.db"):
        asyncio.run(scenario())
    (kind, reason, data), *rest = agent.events
    assert not rest and kind == "backup-failed" and data["abandoned"], agent.events
    assert "node1 is no longer the running active of epoch 5" in reason
    assert agent.alerts == []
    assert open_local_store(tmp_path / "backups").list_manifests() == []


def test_a_scheduled_backup_to_s3_and_a_health_warning_once(
    tmp_path: Path, moto: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(tmp_path, moto)
    text = site.config.read_text().replace("[backup]\n", '[backup]\ninterval = "1h"\n')
    site.config.write_text(text)
    cfg = load_config(site.config)
    agent = Agentish(epoch=2)
    schedule = _schedule(cfg, agent)
    for name, value in env().items():  # the agent's environment holds the credential
        monkeypatch.setenv(name, value)

    async def turns() -> None:
        await schedule.turn(2)
        schedule.last_check = None  # an hour later: the same warning
        await schedule.turn(2)

    asyncio.run(turns())
    kinds = [kind for kind, _, _ in agent.events]
    assert kinds == ["backup", "backup-check"], agent.events
    assert f"backed up to s3://{site.bucket}/backups/hakit/" in agent.events[0][1]
    assert agent.events[0][2]["objects_uploaded"] > 0
    # moto's root credential may read and delete: Jira's warning, alerted once.
    assert "use write-only mode" in agent.events[1][1]
    assert len(agent.alerts) == 1 and "WARNING" in agent.alerts[0].reason
