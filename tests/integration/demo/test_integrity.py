"""Loss or litter, with the sample app as a real process: ``/integrity`` tells a
row without its file (lost data, not ok) from a file without its row (an orphan
left by a crash between file and row: ok, listed with its age), and a start
removes the orphans older than the grace period, never a file a row points at."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.integration.demo.test_app import DemoApp, StartApp, start_app

__all__ = ["start_app"]  # the fixture, shared with test_app.py

HOUR = 3600.0


def create_records(app: DemoApp, count: int) -> list[str]:
    ids = []
    for number in range(count):
        response = app.request(
            "POST", "/records", json={"title": f"r{number}", "attachment": f"content {number}"}
        )
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


def integrity(app: DemoApp) -> dict[str, Any]:
    response = app.request("GET", "/integrity")
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def age_file(path: Path, seconds: float) -> None:
    """Make ``path`` look last written ``seconds`` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def restart(
    app: DemoApp, start: StartApp, *args: str, env: dict[str, str] | None = None
) -> DemoApp:
    app.process.send_signal(signal.SIGTERM)
    assert app.wait_exit() == 0
    again = start(*args, env=env)
    # The sweep runs before the app leaves STARTING: once it answers, it is done.
    again.wait_state("FIRST_RUN")
    return again


def test_an_orphan_file_is_listed_with_its_age_and_the_report_stays_ok(
    start_app: StartApp,
) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    ids = create_records(app, 2)
    orphan = app.home / "attachments" / "crashed-before-its-row"
    orphan.write_bytes(b"written, then the process died before the INSERT")
    age_file(orphan, 120)

    report = integrity(app)
    assert report["ok"] is True, report
    assert report["missing"] == []
    assert [entry["path"] for entry in report["orphans"]] == ["attachments/crashed-before-its-row"]
    assert 119 <= report["orphans"][0]["age_seconds"] < 180, report
    assert (report["rows"], report["files"]) == (2, 3)
    # The first form of the report still names the orphan (and nothing else).
    assert report["orphan_files"] == ["attachments/crashed-before-its-row"]
    assert report["missing_files"] == [] and report["corrupt"] == []
    assert {record["id"] for record in app.request("GET", "/records").json()["records"]} == set(ids)


def test_a_row_whose_file_is_gone_or_changed_is_missing_and_the_report_not_ok(
    start_app: StartApp,
) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    gone, changed, intact = create_records(app, 3)
    assert integrity(app)["ok"] is True
    (app.home / "attachments" / gone).unlink()
    (app.home / "attachments" / changed).write_bytes(b"not what was stored")

    report = integrity(app)
    assert report["ok"] is False, report
    assert report["missing"] == [
        {"id": gone, "attachment": f"attachments/{gone}", "problem": "absent"},
        {"id": changed, "attachment": f"attachments/{changed}", "problem": "sha256 differs"},
    ]
    assert report["orphans"] == []
    assert report["missing_files"] == [gone] and report["corrupt"] == [changed]
    assert intact not in str(report["missing"])


def test_a_start_removes_orphans_older_than_the_grace_period_and_keeps_the_rest(
    start_app: StartApp,
) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    (kept_record,) = create_records(app, 1)
    attachments = app.home / "attachments"
    # A record's file as old as the stale orphan: its age alone must not get it removed.
    age_file(attachments / kept_record, HOUR)
    stale = attachments / "stale-orphan"
    young = attachments / "young-orphan"
    stale.write_bytes(b"left by a crash an hour ago")
    young.write_bytes(b"left two minutes ago: an old active may still be writing its row")
    age_file(stale, HOUR)
    age_file(young, 120)

    app = restart(app, start_app)  # the default grace period: 10 minutes
    assert not stale.exists()
    assert young.exists()
    assert (attachments / kept_record).exists()
    log = app.log()
    assert "removed orphan attachment attachments/stale-orphan" in log, log
    assert "kept 1 orphan attachments younger than 600 s" in log, log
    report = integrity(app)
    assert report["ok"] is True, report
    assert [entry["path"] for entry in report["orphans"]] == ["attachments/young-orphan"]

    # The grace period is an option like every other (here from the environment).
    app = restart(app, start_app, env={"HAKIT_DEMO_ORPHAN_GRACE_SECONDS": "60"})
    assert not young.exists()
    assert (attachments / kept_record).exists()
    assert "removed orphan attachment attachments/young-orphan" in app.log()
    assert integrity(app)["orphans"] == []


def test_without_the_database_a_start_removes_nothing(start_app: StartApp, tmp_path: Path) -> None:
    # Without the rows every file would look like an orphan.
    home = tmp_path / "home"
    (home / "attachments").mkdir(parents=True)
    old = home / "attachments" / "old-file"
    old.write_bytes(b"maybe a record's, maybe litter: without the rows nobody can tell")
    age_file(old, HOUR)

    app = start_app(home=home, database_url=f"sqlite:///{tmp_path / 'gone' / 'app.db'}")
    app.wait_state("ERROR")
    assert old.exists()
    assert "orphan attachments not checked" in app.log()


def test_two_apps_writing_one_database_under_two_epochs_make_the_report_not_ok(
    start_app: StartApp, tmp_path: Path
) -> None:
    """The check the chaos runs rely on, with real processes: each app logs its writes with
    the epoch its agent started it under (HAKIT_EPOCH); the old epoch's app writing after
    the new one's first write is two writers, and /integrity says so."""
    old = start_app("--route", "old", env={"HAKIT_EPOCH": "4"})
    old.wait_state("FIRST_RUN")
    create_records(old, 2)
    report = integrity(old)
    assert report["ok"] is True and report["write_epochs"] == {"4": 2}, report

    new = start_app("--route", "new", env={"HAKIT_EPOCH": "5"})
    new.wait_state("FIRST_RUN")
    create_records(new, 1)
    assert integrity(new)["ok"] is True  # a failover: the newer epoch after the older
    (late,) = create_records(old, 1)  # the old writer was never stopped

    report = integrity(new)
    assert report["ok"] is False, report
    assert report["missing"] == []
    assert report["stale_epoch_writes"] == [
        {"seq": 4, "id": late, "epoch": 4, "node": "old", "after_epoch": 5}
    ]
    assert report["write_epochs"] == {"4": 3, "5": 1}


def test_an_app_with_a_malformed_epoch_refuses_to_start(start_app: StartApp) -> None:
    app = start_app(env={"HAKIT_EPOCH": "five"}, wait_listening=False)
    assert app.wait_exit() == 2
    assert "HAKIT_EPOCH='five' is not an epoch" in app.log()
