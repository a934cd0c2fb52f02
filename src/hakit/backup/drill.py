"""Restore drills: the newest generation restored into a scratch directory and checked
as the app would check it, so a corrupt backup is found before it is needed.

``run_drill`` reads through a ``ReadOnlyStore`` (any put raises: a drill needs only
read access and never writes to the repository), restores the generation with
every hash checked (hakit.snapshot.restore) into a new directory under a scratch
directory of its own, which is never the live home, its database or the
repository, then runs hakit.backup.drillchecks' checks on it and removes the
scratch directory (unless ``keep``). A restore that fails is a failed check, not
an exception: the report says what failed. The report gives the **recovery
point**: when the drilled generation was taken (its database captured), what a
restore would bring back.

``drill_from_config`` is the whole drill for a node's config (the command, and what
the agent schedules): the target resolved and opened for reading, the drill run,
and its result recorded in ``<state_dir>/backup/last-drill.json``, which
``hakit backup list`` shows.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.backup.drillchecks import (
    FAIL,
    PASS,
    SKIP,
    AttachmentRow,
    Check,
    check_attachments,
    check_git,
    check_postgres,
    check_sqlite,
    git_directories,
)
from hakit.backup.pgscratch import check_base_backup
from hakit.backup.stores import close_store, open_store
from hakit.backup.target import BackupTarget, LocalTarget, resolve_target
from hakit.config.schema import Config
from hakit.snapshot.basebackup import BASEBACKUP
from hakit.snapshot.database import SQLITE, database_target
from hakit.snapshot.format import Manifest, SnapshotError
from hakit.snapshot.pgrestore import generation_tag
from hakit.snapshot.postgres import POSTGRESQL
from hakit.snapshot.prune import MANIFESTS
from hakit.snapshot.restore import DATABASE, HOME, restore_generation
from hakit.snapshot.scratch import release, scratch_directory
from hakit.snapshot.store import Store
from hakit.snapshot.verify import read_manifest

RECORD = "last-drill.json"
RESTORED = "restored"  # the restore's directory inside the scratch directory
DRILL_SCRATCH = "drill"  # the purpose in its name: hakit-scratch-drill-<pid>-<random>


class ReadOnlyStore:
    """A store a drill reads: every write refused, so read access is all it needs."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner

    def has(self, key: str) -> bool:
        return self.inner.has(key)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        raise SnapshotError(f"a drill never writes to the repository (it tried {key})")

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def list_manifests(self) -> list[str]:
        return self.inner.list_manifests()

    def put_manifest(self, generation: str, data: bytes) -> None:
        raise SnapshotError(f"a drill never writes to the repository (it tried {generation})")


@dataclass(frozen=True, slots=True)
class DrillReport:
    generation: str | None  # None: the repository could not be read
    taken_ns: int | None  # the recovery point: when that generation was taken
    started_ns: int
    finished_ns: int
    checks: tuple[Check, ...]
    kept: Path | None  # the scratch directory, when kept

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not any(check.failed for check in self.checks)

    def encode(self, target: str) -> dict[str, Any]:
        return {
            "target": target,
            "generation": self.generation,
            "taken_ns": self.taken_ns,
            "started_ns": self.started_ns,
            "finished_ns": self.finished_ns,
            "ok": self.ok,
            "checks": [
                {"name": check.name, "status": check.status, "detail": check.detail}
                for check in self.checks
            ],
        }


def _database_checks(
    manifest: Manifest, restored: Path, scratch_database_url: str | None, keep: bool
) -> tuple[list[Check], list[AttachmentRow] | None]:
    capture = manifest.database
    if capture is None:
        return [Check("database", SKIP, "the generation holds no database")], None
    file = restored / DATABASE / capture.name
    if capture.kind == SQLITE:
        check, rows = check_sqlite(file)
        return [check], rows
    if capture.kind == BASEBACKUP:  # a scratch server on the data directory (backup.pgscratch)
        return check_base_backup(file, restored, capture.position)
    if capture.kind == POSTGRESQL:
        scratch_name = f"hakit_drill_{generation_tag(manifest.generation)}"
        return check_postgres(file, scratch_database_url, scratch_name, keep)
    return [Check("database", SKIP, f"no drill check for {capture.kind} databases")], None


def check_restored(
    manifest: Manifest, restored: Path, scratch_database_url: str | None = None, keep: bool = False
) -> list[Check]:
    """The application-level checks of a generation restored into ``restored``."""
    checks, rows = _database_checks(manifest, restored, scratch_database_url, keep)
    home = restored / HOME
    checks.extend(check_git(git_dir, home) for git_dir in git_directories(home))
    if rows is not None:
        checks.append(check_attachments(home, rows))
    elif manifest.database is not None and not any(check.failed for check in checks):
        why = "no records table with attachment and sha256 columns"
        if manifest.database.kind == POSTGRESQL and scratch_database_url is None:
            why = "the dump was not restored (no --scratch-database-url)"
        checks.append(Check("attachments", SKIP, why))
    return checks


def _outside(scratch: Path, live: list[Path]) -> Check | None:
    """A failed check when ``scratch`` is (in) a live path; None when apart. (Holding one
    is harmless: the drill works in a new directory of its own in it.)"""
    where = scratch.absolute().resolve()
    for path in live:
        path = path.absolute().resolve()
        if where == path or path in where.parents:
            return Check("scratch", FAIL, f"the scratch directory {scratch} is (in) {path}")
    return None


def run_drill(
    store: Store,
    *,
    live: list[Path],
    scratch: Path | None = None,
    keep: bool = False,
    scratch_database_url: str | None = None,
    generation: str | None = None,
) -> DrillReport:
    """Restore ``generation`` (the newest by default) under a new directory in ``scratch``
    (default: the system's temporary directory), check it, remove it unless ``keep``.
    ``live``: the home, database and repository, which the scratch directory must not be in."""
    started = time.time_ns()
    reader = ReadOnlyStore(store)
    try:
        manifest = read_manifest(reader, generation)
    except SnapshotError as error:
        failed = (Check("repository", FAIL, str(error)),)
        return DrillReport(None, None, started, time.time_ns(), failed, None)
    outside = _outside(scratch or Path(tempfile.gettempdir()), live)
    if outside is not None:
        return DrillReport(
            manifest.generation, manifest.started_ns, started, time.time_ns(), (outside,), None
        )
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    checks: list[Check] = []
    # A scratch directory: a drill killed midway leaves its restored copy only until the
    # next scratch directory is made in ``scratch`` (hakit.snapshot.scratch).
    with scratch_directory(DRILL_SCRATCH, scratch) as directory:
        if keep:
            release(directory)
        try:
            restored = restore_generation(reader, manifest.generation, directory / RESTORED, live)
            checks.append(
                Check(
                    "restore",
                    PASS,
                    f"{restored.files} files, {restored.bytes} bytes, every hash checked",
                )
            )
        except SnapshotError as error:
            checks.append(Check("restore", FAIL, str(error)))
        else:
            checks.extend(check_restored(manifest, restored.into, scratch_database_url, keep=keep))
    return DrillReport(
        manifest.generation,
        manifest.started_ns,
        started,
        time.time_ns(),
        tuple(checks),
        directory if keep else None,
    )


def format_age(seconds: float) -> str:
    """How old a recovery point is, for people: "40 s", "12 min", "5.5 h", "3.0 days"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --- the record ---------------------------------------------------------------------


def record_path(state_dir: Path) -> Path:
    return state_dir / "backup" / RECORD


def save_record(path: Path, report: DrillReport, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(json.dumps(report.encode(target), indent=2) + "\n")
    os.replace(temporary, path)


def load_record(path: Path) -> dict[str, Any] | None:
    """The last drill's record; None when there is none or it cannot be read."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def live_paths(cfg: Config, repository: Path | None) -> list[Path]:
    """What a drill's scratch directory must stay out of."""
    target = database_target(cfg.app.database_url)
    paths = [cfg.app.home]
    if target is not None and target.path is not None:
        paths.append(target.path)
    if repository is not None:
        paths.append(repository)
    return paths


def holds_no_generation(target: BackupTarget, environ: Mapping[str, str] | None = None) -> bool:
    """True when the target holds no generation yet: a directory without a repository, or a
    repository without a manifest (a new cluster before its first backup). Nothing to drill:
    the agent's schedule skips it (a missing backup is ``stale_after``'s alert, on the
    active). False when it cannot be read: the drill says why."""
    if isinstance(target, LocalTarget) and not (target.directory / MANIFESTS).is_dir():
        return True
    try:
        store = open_store(target, reading=True, environ=environ)
    except (SnapshotError, OSError):
        return False
    try:
        return not store.list_manifests()
    except (SnapshotError, OSError):
        return False
    finally:
        close_store(store)


def drill_from_config(
    cfg: Config,
    *,
    scratch: Path | None = None,
    keep: bool = False,
    scratch_database_url: str | None = None,
    generation: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[DrillReport, str]:
    """A drill of the node's backup target, recorded; the report and the target's description.
    Raises ConfigError (the target's configuration); a repository that cannot be opened (a
    wrong key, no access) is a failed drill, recorded like any other."""
    target = resolve_target(cfg)
    record = record_path(cfg.cluster.state_dir)
    started = time.time_ns()
    try:
        store = open_store(target, reading=True, environ=environ)
    except SnapshotError as error:
        failed = (Check("repository", FAIL, str(error)),)
        report = DrillReport(None, None, started, time.time_ns(), failed, None)
        save_record(record, report, target.describe())
        return report, target.describe()
    try:
        repository = target.directory if isinstance(target, LocalTarget) else None
        report = run_drill(
            store,
            live=live_paths(cfg, repository),
            scratch=scratch,
            keep=keep,
            scratch_database_url=scratch_database_url,
            generation=generation,
        )
    finally:
        close_store(store)
    save_record(record, report, target.describe())
    return report, target.describe()
