"""The backup health check, as Jira runs it: write, read and delete one small object.

The object goes under ``backups/Healthcheck/`` (at the bucket's root, where Jira
puts its own). Unable to write is an error: backups would fail. Able to read it
back, or to delete it, is a warning: whoever holds this credential (an attacker
on this host) could read or destroy the backups; "to increase security, use
write-only mode". A write-only credential leaves the object behind: a lifecycle
rule on the prefix expires it (README, "Backups").

``classify`` decides from the three outcomes (pure); ``run_s3_check`` and
``run_directory_check`` do the I/O.
"""

from __future__ import annotations

import enum
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.snapshot.s3store import describe, is_denied

HEALTHCHECK_PREFIX = "backups/Healthcheck/"
WRITE_ONLY_ADVICE = "to increase security, use write-only mode"


class Outcome(enum.StrEnum):
    ALLOWED = "allowed"
    DENIED = "denied"  # refused by the store's access control (403)
    FAILED = "failed"  # another error: unreachable, no such bucket...


class Status(enum.StrEnum):
    OK = "ok"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Step:
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: Status
    messages: tuple[str, ...]
    key: str = ""


def classify(write: Step, read: Step | None, delete: Step | None) -> HealthReport:
    """``read`` and ``delete`` are None when not tried (the write failed)."""
    if write.outcome is not Outcome.ALLOWED:
        why = "access denied" if write.outcome is Outcome.DENIED else write.detail
        return HealthReport(
            Status.ERROR,
            (
                f"cannot write backups ({why}); backups will fail until the credential may "
                "s3:PutObject into the bucket",
            ),
        )
    messages: list[str] = []
    status = Status.OK
    for name, step in (("read", read), ("delete", delete)):
        if step is None or step.outcome is Outcome.DENIED:
            continue
        if step.outcome is Outcome.ALLOWED:
            status = Status.WARNING
            messages.append(f"the backup credential can {name} backups: {WRITE_ONLY_ADVICE}")
        else:
            status = Status.WARNING
            messages.append(f"could not tell whether the credential can {name} ({step.detail})")
    if status is Status.OK:
        messages.append("backups can be written; the credential can neither read nor delete them")
    return HealthReport(status, tuple(messages))


def _step(call: Any) -> Step:
    try:
        call()
    except Exception as error:
        return Step(Outcome.DENIED if is_denied(error) else Outcome.FAILED, describe(error))
    return Step(Outcome.ALLOWED)


def healthcheck_key(node: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{HEALTHCHECK_PREFIX}{node}-{stamp}-{secrets.token_hex(4)}"


def run_s3_check(client: Any, bucket: str, node: str) -> HealthReport:
    key = healthcheck_key(node)
    body = f"hakit backup health check from {node}\n".encode()
    write = _step(lambda: client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*"))
    if write.outcome is not Outcome.ALLOWED:
        report = classify(write, None, None)
    else:
        read = _step(lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read())
        delete = _step(lambda: client.delete_object(Bucket=bucket, Key=key))
        report = classify(write, read, delete)
    return HealthReport(report.status, report.messages, key)


def run_directory_check(directory: Path, node: str) -> HealthReport:
    """A local directory: only writing can be checked (its owner can always read it)."""
    path = directory / "Healthcheck" / healthcheck_key(node).rpartition("/")[2]

    def write() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "xb") as handle:
            handle.write(b"hakit backup health check\n")
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()

    try:
        write()
    except OSError as error:
        return classify(Step(Outcome.FAILED, f"{path}: {error.strerror}"), None, None)
    return HealthReport(Status.OK, (f"backups can be written to {directory}",), str(path))
