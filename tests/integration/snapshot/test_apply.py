"""A standby applies generations: beside its home, swapped in by one rename; refusals.

Real files, a real SQLite database inside the home (so one link switches both),
generations captured from a "source" home by the real capture.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from hakit.snapshot.apply import (
    ADOPTED,
    apply_generation,
    current_copy,
    generations_dir,
    home_exclusions,
    prepare_generation,
    swap_in,
)
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.database import database_target
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.store import LocalStore, open_local_store
from hakit.snapshot.verify import read_manifest
from tests.integration.snapshot.conftest import LIMITS, make_database, make_home, rows_of, tree_of


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

    def apply(self, store: LocalStore, generation: str | None = None, keep: int = 3) -> object:
        return apply_generation(
            store, generation, self.home, self.target, lambda: self.running, keep=keep
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
