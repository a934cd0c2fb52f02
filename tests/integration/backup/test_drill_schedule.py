"""Restore drills on the agent's schedule (hakit.agent.drills) with real job processes: a
standby drills and records the recovery point, the running active does not, the rhythm
survives a restart; a failed drill alerted once and its recovery alerted; a drill killed
when its node becomes the active, leaving no restored copy; a drill of S3 backups (moto's
server and rclone serve s3)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hakit.agent.drills import DrillSchedule
from hakit.backup.drill import record_path
from hakit.cli import app
from hakit.config import load_config
from hakit.history.kinds import AlertKind
from hakit.snapshot.format import object_key
from hakit.snapshot.scratch import PREFIX
from hakit.snapshot.store import open_local_store
from hakit.snapshot.trees import load_manifest
from tests.integration.backup.appsite import CONFIG, AppSite, make_app_site
from tests.integration.backup.conftest import env, make_site
from tests.integration.backup.test_drill import run
from tests.integration.backup.test_schedule import Clock
from tests.integration.snapshot.test_schedule import Agentish
from tests.support.s3servers import S3Server

HOUR = 3600.0
TWO_NODES = (
    CONFIG.replace('mode = "restart-only"\n', "") + '[[nodes]]\nname = "node2"\nport = 18102\n'
)


def standby_site(tmp_path: Path, backed_up: bool = True) -> AppSite:
    """The app site of tests.integration.backup.appsite in a two-node cluster, backed up
    once, with an hourly drill (and ``drill_scratch``) in its [backup] section."""
    site = make_app_site(tmp_path)
    site.config.write_text(
        TWO_NODES.format(backup='drill_interval = "1h"\ndrill_scratch = "scratch"\n')
    )
    if backed_up:
        result = run(site, "create")
        assert result.exit_code == 0, result.output
    return site


def object_of(site: AppSite, name: str) -> Path:
    """The repository's file holding the home's file ``name`` (one chunk)."""
    store = open_local_store(site.repository)
    (generation,) = store.list_manifests()
    manifest = load_manifest(store, generation)
    (chunk,) = manifest.files()[name].chunks
    return site.repository / object_key(chunk)


def schedule_of(
    site: AppSite, agent: Agentish, clock: Clock | None = None, settled: bool = True
) -> DrillSchedule:
    """node2's drill schedule; ``settled``: its agent started a cold start's election ago."""
    clock = clock or Clock()
    schedule = DrillSchedule(
        load_config(site.config),
        "node2",
        active=lambda: agent.epoch,
        record=agent.record,
        alert=agent.alert,
        clock=clock,
    )
    if settled:
        schedule.since = clock() - schedule.settle
    return schedule


def test_a_standby_drills_the_active_does_not_and_the_rhythm_is_kept(tmp_path: Path) -> None:
    site = standby_site(tmp_path)
    active = Agentish(epoch=4)
    schedule = schedule_of(site, active)
    assert schedule.enabled and schedule.tick == 1.0
    asyncio.run(schedule.turn(4))  # the lease holder of a two-node cluster: never
    assert active.events == [] and not record_path(tmp_path / "state").exists()

    standby = Agentish(epoch=0)
    clock = Clock(time.time())  # the drill records the real time: the rhythm is read from it
    schedule = schedule_of(site, standby, clock, settled=False)
    assert schedule.settle == 3 * load_config(site.config).coordination.lease_ttl

    async def turns() -> None:
        await schedule.turn(0)  # the agent just started: any node may yet take the lease
        clock.now += schedule.settle - 1
        await schedule.turn(0)
        assert standby.events == []
        clock.now += 1
        await schedule.turn(0)  # a standby, no drill recorded yet: due now
        await schedule.turn(0)  # an hour has not passed: nothing

    asyncio.run(turns())
    ((kind, reason, data),) = standby.events
    assert kind == "backup-drill" and data["ok"] is True, standby.events
    assert reason.startswith(f"restore drill of directory {site.repository} passed in ")
    assert f"generation {data['generation']} (recovery point: taken " in reason
    assert "4 checks" in reason and reason.endswith("; next in 1h")
    assert standby.alerts == []
    record = json.loads(record_path(tmp_path / "state").read_text())
    assert record == data  # what `hakit backup list` shows
    assert "passed, 4 checks" in run(site, "list").output
    assert schedule.scratch.parent == tmp_path / "scratch"
    assert schedule.scratch.name.startswith("hakit-drills-node2-")
    assert list(schedule.scratch.iterdir()) == []

    # A restarted agent reads the record: no drill before an hour has passed.
    again = Agentish(epoch=0)
    asyncio.run(schedule_of(site, again, Clock(clock.now + HOUR / 2)).turn(0))
    assert again.events == []


def test_nothing_to_drill_before_the_first_backup(tmp_path: Path) -> None:
    site = standby_site(tmp_path, backed_up=False)
    agent = Agentish(epoch=0)
    clock = Clock()
    schedule = schedule_of(site, agent, clock)
    asyncio.run(schedule.turn(0))  # no repository yet: no event, no alert, no record
    assert agent.events == [] and agent.alerts == []
    assert not record_path(tmp_path / "state").exists()
    assert run(site, "create").exit_code == 0
    clock.now += HOUR
    asyncio.run(schedule.turn(0))
    assert [kind for kind, _, _ in agent.events] == ["backup-drill"], agent.events


def test_a_failed_drill_is_alerted_once_and_its_recovery_too(tmp_path: Path) -> None:
    site = standby_site(tmp_path)
    damaged = object_of(site, "attachments/r005")
    saved = damaged.read_bytes()
    damaged.unlink()
    agent = Agentish(epoch=0)
    clock = Clock()
    schedule = schedule_of(site, agent, clock)

    async def scenario() -> None:
        await schedule.turn(0)  # fails: alerted
        clock.now += HOUR
        await schedule.turn(0)  # fails again: recorded, not alerted
        damaged.write_bytes(saved)
        clock.now += HOUR
        await schedule.turn(0)  # passes again: recorded and alerted

    asyncio.run(scenario())
    kinds = [kind for kind, _, _ in agent.events]
    assert kinds == ["backup-drill-failed", "backup-drill-failed", "backup-drill"], agent.events
    first, second, third = (event[1:] for event in agent.events)
    assert first[0].startswith(
        f"restore drill of directory {site.repository} failed: restore: object "
        f"{damaged.relative_to(site.repository)} is missing"
    )
    assert first[1]["failures"] == 1 and second[1]["failures"] == 2
    assert "restore drills pass again" in third[0]
    assert [alert.kind for alert in agent.alerts] == [AlertKind.BACKUP, AlertKind.BACKUP]
    assert agent.alerts[0].reason == first[0] and agent.alerts[1].reason == third[0]


def test_a_drill_is_killed_when_its_node_becomes_the_active(tmp_path: Path) -> None:
    site = standby_site(tmp_path)
    stuck = object_of(site, "attachments/r007")
    stuck.unlink()
    os.mkfifo(stuck)  # a read of it blocks: the drill is mid-restore for as long as needed
    agent = Agentish(epoch=0)
    schedule = schedule_of(site, agent)
    scratch = schedule.scratch

    async def scenario() -> None:
        drill = asyncio.create_task(schedule.turn(0))
        for _ in range(3000):  # bounded: the drill process reaches the object
            if list(scratch.glob(f"{PREFIX}drill-*/.restored.partial-*")) or drill.done():
                break
            await asyncio.sleep(0.01)
        assert schedule.runner.process is not None and not drill.done()
        process = schedule.runner.process
        agent.epoch = 6  # a failover: this standby holds the lease now
        await asyncio.wait_for(drill, 30)
        assert process.returncode == -9

    asyncio.run(scenario())
    ((kind, reason, data),) = agent.events
    assert kind == "backup-drill-failed" and data["abandoned"], agent.events
    assert "node2 took the lease (epoch 6): no drill beside the active's app" in reason
    assert agent.alerts == []
    assert list(scratch.iterdir()) == []  # its restored copy removed by the agent


def test_a_scheduled_drill_of_s3_backups(
    tmp_path: Path, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = make_site(tmp_path, s3)
    text = site.config.read_text().replace("[backup]\n", '[backup]\ndrill_interval = "24h"\n')
    site.config.write_text(text)
    for name, value in env().items():  # the agent's environment holds the credential
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["backup", "create", "-c", str(site.config)], env=env())
    assert result.exit_code == 0, result.output
    agent = Agentish(epoch=0)
    schedule = DrillSchedule(
        load_config(site.config), "node2", active=lambda: 0, record=agent.record, alert=agent.alert
    )
    schedule.since = time.time() - schedule.settle  # a standby, its agent started a while ago
    asyncio.run(schedule.turn(0))
    ((kind, reason, data),) = agent.events
    assert kind == "backup-drill" and data["ok"], agent.events
    assert schedule.scratch == tmp_path / "state" / "backup" / "drills"  # no drill_scratch
    assert list(schedule.scratch.iterdir()) == []
    assert reason.startswith(f"restore drill of s3://{site.bucket}/backups/hakit/ (")
    assert " passed in " in reason and reason.endswith("3 checks; next in 24h")
    assert [check["name"] for check in data["checks"]][:2] == ["restore", "database"]
