"""Does the home directory agree with the database? (pure: rows and files in, decisions out)

The write order tells loss from litter. An attachment is written (durably)
before its row and a row is deleted before its file, so a crash can leave a
file with no row, never a row with no file:

- ``missing``: a row whose file is absent or whose content no longer matches its
  hash. That is lost data (a home and a database restored from different
  moments, a disk that lost a file); the report is not ok.
- ``orphans``: a file no row points at. That is litter of a crash between the
  file and its row (or a write still in flight: its row is not committed yet);
  nothing a user can reach is lost, so the report stays ok and lists them with
  their age. The app removes the old ones when it starts.
- ``stale_epoch_writes``: a write made under an older lease epoch than a write
  the database ordered before it. The app logs each write with the epoch its
  agent started it under (HAKIT_EPOCH), in the row's transaction; once a newer
  epoch's app has written, an older epoch's app still writing means two apps
  accepted writes at once. The report is not ok. Writes of epoch 0 (an app that
  did not know its epoch) take no part.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hakit.demo.attachments import AttachmentFile
from hakit.demo.database import LoggedWrite, RecordRow

ABSENT = "absent"
HASH_DIFFERS = "sha256 differs"


def orphan_paths(rows: Iterable[RecordRow], paths: Iterable[str]) -> list[str]:
    """The files (relative paths) that no row points at, sorted."""
    referenced = {row.attachment for row in rows}
    return sorted(path for path in paths if path not in referenced)


def age_seconds(mtime: float, now: float) -> float:
    # Never negative: a file written by another node whose clock runs ahead
    # would otherwise look younger than new.
    return max(0.0, now - mtime)


def _missing(
    rows: Sequence[RecordRow], files: Mapping[str, AttachmentFile]
) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    for row in rows:
        stored = files.get(row.attachment)
        if stored is None:
            problem = ABSENT
        elif stored.sha256 != row.sha256:
            problem = HASH_DIFFERS
        else:
            continue
        found.append({"id": row.id, "attachment": row.attachment, "problem": problem})
    return found


def stale_epoch_writes(writes: Iterable[LoggedWrite]) -> list[dict[str, Any]]:
    """The writes (in the database's order) made under an older epoch than an earlier one."""
    newest = 0
    stale: list[dict[str, Any]] = []
    for write in writes:
        if write.epoch <= 0:
            continue
        if write.epoch < newest:
            stale.append(
                {
                    "seq": write.seq,
                    "id": write.record_id,
                    "epoch": write.epoch,
                    "node": write.node,
                    "after_epoch": newest,
                }
            )
        newest = max(newest, write.epoch)
    return stale


def integrity_report(
    rows: Sequence[RecordRow],
    files: Mapping[str, AttachmentFile],
    now: float,
    writes: Sequence[LoggedWrite] = (),
) -> dict[str, Any]:
    """``files`` maps a path relative to the home to its hash and mtime; ``now`` is
    the wall clock (``time.time()``) that orphan ages are measured against.

    ``ok`` is false for lost data (``missing``) and for writes of two epochs at once
    (``stale_epoch_writes``, from ``writes``: the write log in the database's order);
    ``orphans`` are listed with their age and leave it true. ``missing_files``, ``corrupt`` (record ids) and
    ``orphan_files`` (paths) are the same findings in the report's first form,
    kept for the callers that read it.
    """
    missing = _missing(rows, files)
    orphans = orphan_paths(rows, files)
    stale = stale_epoch_writes(writes)
    return {
        "ok": not missing and not stale,
        "rows": len(rows),
        "files": len(files),
        "missing": missing,
        "stale_epoch_writes": stale,
        "write_epochs": dict(Counter(str(write.epoch) for write in writes)),
        "orphans": [
            {"path": path, "age_seconds": round(age_seconds(files[path].mtime, now), 1)}
            for path in orphans
        ],
        "missing_files": [entry["id"] for entry in missing if entry["problem"] == ABSENT],
        "orphan_files": orphans,
        "corrupt": [entry["id"] for entry in missing if entry["problem"] == HASH_DIFFERS],
    }


def orphans_by_age(
    rows: Sequence[RecordRow], mtimes: Mapping[str, float], now: float, grace_seconds: float
) -> tuple[list[str], list[str]]:
    """The orphans (relative paths) older than ``grace_seconds``, safe to remove,
    and the younger ones, to keep.

    ``rows`` must have been read before ``mtimes`` was listed: a file whose row
    is committed in between then looks like an orphan, but a young one, which the
    grace period keeps.
    """
    stale: list[str] = []
    young: list[str] = []
    for path in orphan_paths(rows, mtimes):
        (stale if age_seconds(mtimes[path], now) > grace_seconds else young).append(path)
    return stale, young
