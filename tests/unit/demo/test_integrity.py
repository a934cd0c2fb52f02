"""The sample app's integrity decisions: loss (a row without its file) against
litter (a file without its row), and which orphans are old enough to remove."""

from __future__ import annotations

import pytest

from hakit.demo.attachments import AttachmentFile
from hakit.demo.database import LoggedWrite, RecordRow
from hakit.demo.integrity import integrity_report, orphans_by_age, stale_epoch_writes
from hakit.demo.options import parse_options

NOW = 1_800_000_000.0


def row(record_id: str, sha256: str = "") -> RecordRow:
    return RecordRow(
        id=record_id,
        title=record_id,
        attachment=f"attachments/{record_id}",
        sha256=sha256 or f"hash-{record_id}",
        size=1,
        created="2027-01-15T08:00:00.000000+00:00",
    )


def stored(record_id: str, sha256: str = "", age: float = 10.0) -> tuple[str, AttachmentFile]:
    return f"attachments/{record_id}", AttachmentFile(sha256 or f"hash-{record_id}", NOW - age)


def test_rows_and_files_that_agree_are_ok_with_nothing_listed() -> None:
    report = integrity_report([row("a"), row("b")], dict([stored("a"), stored("b")]), NOW)
    assert report == {
        "ok": True,
        "rows": 2,
        "files": 2,
        "missing": [],
        "orphans": [],
        "missing_files": [],
        "orphan_files": [],
        "corrupt": [],
        "stale_epoch_writes": [],
        "write_epochs": {},
    }


def test_orphans_are_listed_with_their_age_and_leave_the_report_ok() -> None:
    files = dict([stored("a"), stored("z-litter", age=90.04), stored("m-litter", age=5)])
    report = integrity_report([row("a")], files, NOW)
    assert report["ok"] is True
    assert report["missing"] == []
    assert report["orphans"] == [
        {"path": "attachments/m-litter", "age_seconds": 5.0},
        {"path": "attachments/z-litter", "age_seconds": 90.0},
    ]
    assert report["orphan_files"] == ["attachments/m-litter", "attachments/z-litter"]


def test_an_orphan_from_a_clock_ahead_of_ours_is_not_younger_than_new() -> None:
    report = integrity_report([], dict([stored("litter", age=-30)]), NOW)
    assert report["orphans"] == [{"path": "attachments/litter", "age_seconds": 0.0}]


def test_an_absent_or_changed_file_is_missing_and_the_report_not_ok() -> None:
    rows = [row("gone"), row("changed"), row("fine")]
    files = dict([stored("changed", sha256="other"), stored("fine")])
    report = integrity_report(rows, files, NOW)
    assert report["ok"] is False
    assert report["missing"] == [
        {"id": "gone", "attachment": "attachments/gone", "problem": "absent"},
        {"id": "changed", "attachment": "attachments/changed", "problem": "sha256 differs"},
    ]
    assert report["missing_files"] == ["gone"]
    assert report["corrupt"] == ["changed"]
    assert report["orphans"] == []


def test_loss_and_litter_together_report_both_and_not_ok() -> None:
    report = integrity_report([row("gone")], dict([stored("litter")]), NOW)
    assert report["ok"] is False
    assert [entry["id"] for entry in report["missing"]] == ["gone"]
    assert [entry["path"] for entry in report["orphans"]] == ["attachments/litter"]


def test_only_orphans_older_than_the_grace_period_are_stale() -> None:
    mtimes = {
        "attachments/referenced-and-old": NOW - 10_000,
        "attachments/old": NOW - 601,
        "attachments/at-the-limit": NOW - 600,
        "attachments/young": NOW - 1,
        "attachments/from-a-fast-clock": NOW + 50,
    }
    stale, young = orphans_by_age([row("referenced-and-old")], mtimes, NOW, 600)
    assert stale == ["attachments/old"]
    assert young == [
        "attachments/at-the-limit",
        "attachments/from-a-fast-clock",
        "attachments/young",
    ]


def test_a_zero_grace_period_makes_every_orphan_but_a_brand_new_one_stale() -> None:
    mtimes = {"attachments/new": NOW, "attachments/second-old": NOW - 1}
    assert orphans_by_age([], mtimes, NOW, 0) == (["attachments/second-old"], ["attachments/new"])


REQUIRED = ["--port", "0", "--home", "home", "--database-url", "sqlite:///app.db"]


def test_the_grace_period_is_ten_minutes_unless_set_on_the_command_line_or_environment() -> None:
    assert parse_options(REQUIRED, {}).orphan_grace_seconds == 600
    env = {"HAKIT_DEMO_ORPHAN_GRACE_SECONDS": "60"}
    assert parse_options(REQUIRED, env).orphan_grace_seconds == 60
    argv = [*REQUIRED, "--orphan-grace-seconds", "0"]
    assert parse_options(argv, env).orphan_grace_seconds == 0  # the command line wins


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_negative_or_nan_grace_period_is_a_usage_error(value: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_options([*REQUIRED, f"--orphan-grace-seconds={value}"], {})
    assert exited.value.code == 2


def logged(*epochs: int) -> list[LoggedWrite]:
    return [
        LoggedWrite(seq=number, record_id=f"r{number}", epoch=epoch, node=f"n{epoch}")
        for number, epoch in enumerate(epochs, start=1)
    ]


@pytest.mark.parametrize(
    ("epochs", "stale_seqs"),
    [
        ((), []),
        ((1, 1, 2, 2, 3), []),  # failovers: each epoch's writes after the last one's
        ((0, 2, 0, 2), []),  # epoch 0 (an app that did not know) takes no part
        ((1, 2, 1), [3]),  # epoch 1 wrote after epoch 2 had: two writers
        ((1, 3, 2, 3, 2), [3, 5]),  # each stale write, against the newest epoch before it
    ],
)
def test_a_write_under_an_older_epoch_after_a_newer_one_is_stale(
    epochs: tuple[int, ...], stale_seqs: list[int]
) -> None:
    writes = logged(*epochs)
    assert [entry["seq"] for entry in stale_epoch_writes(writes)] == stale_seqs
    report = integrity_report([], {}, NOW, writes)
    assert report["ok"] is (not stale_seqs)
    assert sum(report["write_epochs"].values()) == len(epochs)


def test_a_stale_write_names_the_epoch_it_came_after() -> None:
    (stale,) = stale_epoch_writes(logged(4, 5, 4))
    assert stale == {"seq": 3, "id": "r3", "epoch": 4, "node": "n4", "after_epoch": 5}
