"""A standby applies generations: beside its home, swapped in by one rename; refusals.

Real files, a real SQLite database inside the home (so one link switches both),
generations captured from a "source" home by the real capture.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hakit.snapshot.apply import (
    ADOPTED,
    app_started_on,
    apply_generation,
    current_copy,
    generations_dir,
    home_exclusions,
    keep_prepared,
    linked_from,
    mark_app_started,
    prepare_generation,
    swap_in,
)
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.database import database_target
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.restore import RECEIPT
from hakit.snapshot.store import LocalStore, open_local_store
from hakit.snapshot.verify import read_manifest
from tests.integration.snapshot.conftest import LIMITS, make_database, make_home, rows_of, tree_of
from tests.support.waiting import wait_until


class Source:
    """The active's home (database inside it) and its repository."""

    def __init__(self, root: Path) -> None:
        self.home = root / "active" / "home"
        make_home(self.home)
        (self.home / "data").mkdir()
        self.database = self.home / "data" / "app.db"
        make_database(self.database)
        self.store = open_local_store(root / "repo", create=True)

    def capture(self, epoch: int | None = 5) -> str:
        target = database_target(f"sqlite:///{self.database}")
        options = CaptureOptions(
            home=self.home,
            database_url=f"sqlite:///{self.database}",
            node="node1",
            epoch=epoch,
            limits=LIMITS,
            exclude=home_exclusions(self.home, target),
        )
        return create_snapshot(self.store, options).manifest.generation

    def add_row(self, title: str) -> None:
        with sqlite3.connect(self.database) as connection:
            connection.execute("INSERT INTO records (title, body) VALUES (?, ?)", (title, b"x"))
        connection.close()


class Standby:
    def __init__(self, root: Path) -> None:
        self.home = root / "standby" / "home"
        self.database = self.home / "data" / "app.db"
        self.target = database_target(f"sqlite:///{self.database}")
        self.running = False

    def apply(
        self, store: LocalStore, generation: str | None = None, keep: int = 3, link: bool = False
    ) -> object:
        return apply_generation(
            store, generation, self.home, self.target, lambda: self.running, keep=keep, link=link
        )


def _home_files(home: Path) -> dict[str, tuple[str, int, bytes | str]]:
    return {
        path: value
        for path, value in tree_of(home).items()
        if not path.startswith("data/app.db")  # compared through SQLite, not as bytes
    }


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Source, Standby]:
    source, standby = Source(tmp_path), Standby(tmp_path)
    standby.home.mkdir(parents=True)
    (standby.home / "old-file").write_text("the standby's own home before replication")
    return source, standby


def test_first_apply_adopts_the_home_and_links_it_to_the_generation(
    pair: tuple[Source, Standby],
) -> None:
    source, standby = pair
    generation = source.capture()
    standby.apply(source.store)

    assert os.readlink(standby.home) == f"home.generations/{generation}/home"
    copy = current_copy(standby.home)
    assert copy is not None and copy.generation == generation and copy.epoch == 5
    assert _home_files(standby.home) == _home_files(source.home)
    assert rows_of(standby.database) == rows_of(source.database)
    adopted = [p for p in generations_dir(standby.home).iterdir() if p.name.startswith(ADOPTED)]
    assert len(adopted) == 1 and (adopted[0] / "old-file").is_file()  # kept, never deleted


def test_next_generation_swaps_the_link_and_old_ones_are_pruned(
    pair: tuple[Source, Standby],
) -> None:
    source, standby = pair
    first = source.capture()
    standby.apply(source.store, keep=1)
    (source.home / "attachments" / "new").write_bytes(b"new attachment")
    source.add_row("after the first generation")
    second = source.capture()
    standby.apply(source.store, keep=1)

    assert os.readlink(standby.home) == f"home.generations/{second}/home"
    assert (standby.home / "attachments" / "new").read_bytes() == b"new attachment"
    assert rows_of(standby.database) == rows_of(source.database)
    assert not (generations_dir(standby.home) / first).exists()
    with pytest.raises(SnapshotError, match="not newer"):
        standby.apply(source.store, first)


def test_a_running_app_is_never_touched(pair: tuple[Source, Standby]) -> None:
    source, standby = pair
    source.capture()
    standby.apply(source.store)
    before = os.readlink(standby.home)
    source.add_row("x")
    source.capture()
    standby.running = True
    with pytest.raises(SnapshotError, match="the app runs on this node"):
        standby.apply(source.store)
    assert os.readlink(standby.home) == before
    assert len(list(generations_dir(standby.home).iterdir())) == 2  # adopted + first


def test_the_app_starting_between_restore_and_swap_stops_the_swap(
    pair: tuple[Source, Standby],
) -> None:
    source, standby = pair
    source.capture()
    standby.apply(source.store)
    before = os.readlink(standby.home)
    source.add_row("y")
    newest = source.capture()
    prepared = prepare_generation(
        source.store, read_manifest(source.store, newest), standby.home, standby.target
    )
    with pytest.raises(SnapshotError, match="the app runs"):
        swap_in(standby.home, prepared, lambda: True)
    assert os.readlink(standby.home) == before
    standby.apply(source.store)  # later, the app stopped: the prepared directory is used
    assert os.readlink(standby.home) == f"home.generations/{newest}/home"


def test_generations_of_an_older_epoch_or_without_one_are_refused(
    pair: tuple[Source, Standby],
) -> None:
    source, standby = pair
    source.capture(epoch=7)
    standby.apply(source.store)
    before = os.readlink(standby.home)
    source.add_row("from an old active")
    source.capture(epoch=6)
    with pytest.raises(SnapshotError, match="of epoch 6, older than the epoch 7"):
        standby.apply(source.store)
    source.capture(epoch=None)
    with pytest.raises(SnapshotError, match="taken outside the agent"):
        standby.apply(source.store)
    assert os.readlink(standby.home) == before


def test_a_corrupt_object_leaves_the_home_as_it_was(pair: tuple[Source, Standby]) -> None:
    source, standby = pair
    source.capture()
    standby.apply(source.store)
    before = os.readlink(standby.home)
    (source.home / "bin.dat").write_bytes(os.urandom(200 * 1024))
    newest = source.capture()
    manifest = read_manifest(source.store, newest)
    entry = manifest.files()["bin.dat"]
    blob = source.store.root / "blobs" / entry.chunks[0].hash[:2] / entry.chunks[0].hash
    os.chmod(blob, 0o600)
    blob.write_bytes(b"corrupt")
    with pytest.raises(SnapshotError, match=r"corrupt|bytes"):
        standby.apply(source.store)
    assert os.readlink(standby.home) == before
    names = {p.name for p in generations_dir(standby.home).iterdir()}
    assert newest not in names and not any(name.startswith(".") for name in names)


def test_a_database_outside_the_home_is_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    target = database_target(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    with pytest.raises(SnapshotError, match="is not inside the home"):
        home_exclusions(home, target)
    assert home_exclusions(home, database_target(f"sqlite:///{home / 'd' / 'a.db'}")) == {
        "d/a.db",
        "d/a.db-wal",
        "d/a.db-shm",
        "d/a.db-journal",
    }
    assert home_exclusions(home, None) == frozenset()  # no database: nothing to exclude


# --- generations linked to the one before (hakit.snapshot.ledger) ---------------------------


@pytest.fixture
def applied(pair: tuple[Source, Standby]) -> tuple[Source, Standby]:
    """The pair once a first generation was applied (with its ledger: linked from next)."""
    source, standby = pair
    source.capture()
    standby.apply(source.store, link=True)
    return source, standby


def _inodes(home: Path) -> dict[str, int]:
    return {
        path.relative_to(home).as_posix(): path.stat().st_ino
        for path in home.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def _receipt(home: Path) -> dict[str, Any]:
    directory = home.parent / os.readlink(home)
    receipt: dict[str, Any] = json.loads((directory.parent / RECEIPT).read_text())
    return receipt


def test_unchanged_files_are_hard_links_to_the_generation_before(
    pair: tuple[Source, Standby],
) -> None:
    source, standby = pair
    first = source.capture()
    standby.apply(source.store, link=True)
    assert "linked" not in _receipt(standby.home)  # the adopted home has no ledger
    before = _inodes(standby.home)
    (source.home / "attachments" / "a001").write_bytes(b"rewritten")
    (source.home / "attachments" / "added").write_bytes(b"new attachment")
    source.add_row("after the first generation")
    source.capture()
    standby.apply(source.store, link=True)

    after = _inodes(standby.home)
    assert _home_files(standby.home) == _home_files(source.home)
    assert rows_of(standby.database) == rows_of(source.database)
    same = {path for path in before if path in after and after[path] == before[path]}
    # Every file but the one rewritten and the database (restored from its own copy).
    assert same == set(before) - {"attachments/a001", "data/app.db"}
    assert _receipt(standby.home)["linked"] == {"from": first, "files": len(same)}


def test_linking_goes_on_past_the_prune_of_older_generations(
    pair: tuple[Source, Standby],
) -> None:
    """Pruning a generation unlinks names its files share with the newer ones (their
    ctime moves): the next generation still links them."""
    source, standby = pair
    for number in range(4):
        source.add_row(f"generation {number}")
        source.capture()
        standby.apply(source.store, keep=1, link=True)
        if number >= 1:
            linked_files = _receipt(standby.home)["linked"]["files"]
            assert linked_files == len(_inodes(standby.home)) - 1  # all but the database
    assert len([p for p in generations_dir(standby.home).iterdir() if p.name[0].isdigit()]) == 1
    assert _home_files(standby.home) == _home_files(source.home)


def test_a_file_written_since_its_restore_is_restored_not_linked(
    applied: tuple[Source, Standby],
) -> None:
    """Written in place in the current generation (the same size: its mtime tells): the
    next generation restores it from the repository."""
    source, standby = applied
    written = standby.home / "attachments" / "a002"
    inode, size = written.stat().st_ino, written.stat().st_size
    with open(written, "r+b") as in_place:
        in_place.write(b"X" * size)
    source.add_row("a second generation")
    source.capture()
    standby.apply(source.store, link=True)

    assert _receipt(standby.home)["linked"]["files"] > 0  # the others were linked
    assert written.read_bytes() == (source.home / "attachments" / "a002").read_bytes()
    assert written.stat().st_ino != inode
    assert _home_files(standby.home) == _home_files(source.home)


def test_nothing_links_from_a_generation_the_app_was_started_on(
    applied: tuple[Source, Standby],
) -> None:
    source, standby = applied
    mark_app_started(standby.home)  # the agent, before it starts the app
    source.add_row("a second generation")
    source.capture()
    standby.apply(source.store, link=True)
    assert "linked" not in _receipt(standby.home)
    assert _home_files(standby.home) == _home_files(source.home)


def test_a_generation_prepared_with_links_is_prepared_again_if_the_app_started(
    applied: tuple[Source, Standby],
) -> None:
    """Prepared with links, then the app started (its generation marked) before the swap
    and wrote a file the prepared generation shares: that one is not swapped in as it
    is, but prepared again, with nothing linked from the marked generation."""
    source, standby = applied
    source.add_row("second")
    newest = source.capture()
    manifest = read_manifest(source.store, newest)
    prepared = prepare_generation(source.store, manifest, standby.home, standby.target, link=True)
    current = current_copy(standby.home)
    assert current is not None and linked_from(prepared) == current.generation
    assert keep_prepared(linked_from(prepared), app_started_on(standby.home))
    shared = standby.home / "attachments" / "a003"
    assert (prepared / "home" / "attachments" / "a003").stat().st_ino == shared.stat().st_ino
    mark_app_started(standby.home)
    with open(shared, "r+b") as app_write:  # the app, started: in place
        app_write.write(b"written by the app")
    assert not keep_prepared(linked_from(prepared), app_started_on(standby.home))

    again = prepare_generation(source.store, manifest, standby.home, standby.target, link=True)
    assert linked_from(again) is None
    swap_in(standby.home, again, lambda: False)
    assert _home_files(standby.home) == _home_files(source.home)


def test_a_prepared_generation_links_nothing_or_from_one_the_app_never_started_on() -> None:
    started = {"g1"}.__contains__
    assert keep_prepared(None, started)
    assert keep_prepared("g2", started)
    assert not keep_prepared("g1", started)


def test_a_prepared_generation_whose_receipt_cannot_be_read_is_not_kept(
    applied: tuple[Source, Standby],
) -> None:
    source, standby = applied
    newest = source.capture()
    manifest = read_manifest(source.store, newest)
    prepared = prepare_generation(source.store, manifest, standby.home, standby.target, link=True)
    (prepared / RECEIPT).write_text("{not json")
    assert not keep_prepared(linked_from(prepared), app_started_on(standby.home))


# A standby's agent preparing a generation (argv: repository, generation, home), killed
# midway by the test.
PREPARER = """
import sys
from pathlib import Path
from hakit.snapshot.apply import prepare_generation
from hakit.snapshot.database import database_target
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest
store = open_local_store(Path(sys.argv[1]))
home = Path(sys.argv[3])
target = database_target(f"sqlite:///{home / 'data' / 'app.db'}")
prepare_generation(store, read_manifest(store, sys.argv[2]), home, target)
"""


def test_a_preparation_killed_midway_is_removed_by_the_next_apply(
    applied: tuple[Source, Standby],
) -> None:
    source, standby = applied
    (source.home / "bin.dat").write_bytes(os.urandom(200 * 1024))
    newest = source.capture()
    entry = read_manifest(source.store, newest).files()["bin.dat"]
    blob = source.store.root / "blobs" / entry.chunks[0].hash[:2] / entry.chunks[0].hash
    content = blob.read_bytes()
    blob.unlink()
    os.mkfifo(blob)  # a read of it blocks: the preparation is midway for as long as needed
    generations = generations_dir(standby.home)
    preparer = subprocess.Popen(
        [sys.executable, "-c", PREPARER, str(source.store.root), newest, str(standby.home)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        wait_until(
            lambda: [p for p in generations.iterdir() if p.name.startswith(".")],
            60,
            "the preparation to restore",
        )
    finally:
        preparer.kill()  # as the agent is, by SIGKILL
        preparer.wait(timeout=30)
    [left] = [p.name for p in generations.iterdir() if p.name.startswith(".")]
    assert ".partial-" in left  # the restore's staging: the bulk of a generation
    blob.unlink()
    blob.write_bytes(content)

    standby.apply(source.store)
    names = {p.name for p in generations.iterdir()}
    assert newest in names and not any(name.startswith(".") for name in names), names
