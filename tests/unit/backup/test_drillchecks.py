"""The drill's attachment decisions (pure): absent, differing and unsafe paths fail;
files no row names are only counted."""

from __future__ import annotations

from hakit.backup.drillchecks import AttachmentRow, attachment_problems, orphans, summary


def test_attachment_problems() -> None:
    rows = [
        AttachmentRow("1", "attachments/a", "aa"),
        AttachmentRow("2", "attachments/b", "bb"),
        AttachmentRow("3", "attachments/c", "CC"),
        AttachmentRow("4", "../outside", "dd"),
    ]
    hashes = {"attachments/a": "aa", "attachments/b": "b0", "attachments/c": "cc"}
    assert attachment_problems(rows, hashes) == [
        "record 2: attachments/b has another SHA-256",
        "record 4: attachment path '../outside' leaves the home",
    ]
    assert attachment_problems(rows[:1], {}) == ["record 1: attachments/a is absent"]
    assert orphans(rows, ["attachments/a", "attachments/z", "attachments/y"]) == [
        "attachments/y",
        "attachments/z",
    ]


def test_summary_shows_the_first_problems() -> None:
    assert summary(["a", "b"]) == "a; b"
    assert summary([str(i) for i in range(8)]) == "0; 1; 2; 3; 4; and 3 more"
