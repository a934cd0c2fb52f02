"""Replicated storage with PostgreSQL, against a real server (tests/pgserver.py): each node
its own database (two databases of one server stand in for two servers). A standby applies
the active's generation: the dump restored into a new database, swapped in by rename
together with the home's link; the previous databases pruned with their generations."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from hakit.snapshot.apply import apply_generation, current_copy, prepare_generation, swap_in
from hakit.snapshot.capture import CaptureOptions, create_snapshot
from hakit.snapshot.database import database_target
from hakit.snapshot.format import SnapshotError
from hakit.snapshot.pgrestore import generation_tag
from hakit.snapshot.store import open_local_store
from hakit.snapshot.verify import read_manifest
from tests.integration.snapshot.conftest import LIMITS, make_home, tree_of
from tests.pgserver import PostgresServer


@dataclass
class Pair:
    """node1's database (the active's) and node2's (the standby's), on one server."""

    server: PostgresServer
    prefix: str

    def url(self, node: str) -> str:
        return self.server.url.rsplit("/", 1)[0] + f"/{self.prefix}_{node}"

    def connect(self, name: str = "postgres") -> psycopg.Connection[Any]:
        base = self.server.url.rsplit("/", 1)[0]
        return psycopg.connect(f"{base}/{name}", autocommit=True)

    def databases(self) -> set[str]:
        with self.connect() as admin:
            rows = admin.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (self.prefix + "%",)
            ).fetchall()
        return {row[0] for row in rows}

    def titles(self, node: str, name: str | None = None) -> list[str]:
        with self.connect(name or f"{self.prefix}_{node}") as session:
            return [row[0] for row in session.execute("SELECT title FROM records ORDER BY id")]

    def write(self, node: str, *titles: str) -> None:
        with self.connect(f"{self.prefix}_{node}") as session:
            for title in titles:
                session.execute("INSERT INTO records (title) VALUES (%s)", (title,))


@pytest.fixture
def pair(postgres: PostgresServer) -> Iterator[Pair]:
    pair = Pair(postgres, f"repl_{secrets.token_hex(3)}")
    with pair.connect() as admin:
        for node in ("node1", "node2"):
            admin.execute(f'CREATE DATABASE "{pair.prefix}_{node}"')
    for node in ("node1", "node2"):
        with pair.connect(f"{pair.prefix}_{node}") as session:
            session.execute("CREATE TABLE records (id SERIAL PRIMARY KEY, title TEXT NOT NULL)")
    pair.write("node2", "node2's own")
    try:
        yield pair
    finally:
        with pair.connect() as admin:
            for name in pair.databases():
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Nodes:
    def __init__(self, root: Path, pair: Pair) -> None:
        self.pair = pair
        self.active_home = root / "node1" / "home"
        make_home(self.active_home)
        self.home = root / "node2" / "home"
        self.home.mkdir(parents=True)
        (self.home / "mine.txt").write_text("node2's own home\n")
        self.store = open_local_store(root / "repo", create=True)
        self.target = database_target(pair.url("node2"))

    def capture(self, epoch: int = 3) -> str:
        options = CaptureOptions(
            home=self.active_home,
            database_url=self.pair.url("node1"),
            node="node1",
            epoch=epoch,
            limits=LIMITS,
        )
        return create_snapshot(self.store, options).manifest.generation

    def apply(self, keep: int = 3) -> str:
        report = apply_generation(self.store, None, self.home, self.target, lambda: False, keep)
        return report.copy.generation


def before(pair: Pair, generation: str) -> str:
    return f"{pair.prefix}_node2_hakit_before_{generation_tag(generation)}"


def test_a_generation_replaces_the_standbys_database_and_home_together(
    pair: Pair, tmp_path: Path
) -> None:
    nodes = Nodes(tmp_path, pair)
    pair.write("node1", *(f"first {i}" for i in range(50)))
    first = nodes.capture()
    assert nodes.apply() == first
    assert pair.titles("node2") == [f"first {i}" for i in range(50)]
    assert tree_of(nodes.home) == tree_of(nodes.active_home)
    # node2's own database and home are set aside, never dropped.
    assert pair.titles("node2", before(pair, first)) == ["node2's own"]
    assert len(list(nodes.home.parent.glob("home.generations/adopted-*/mine.txt"))) == 1

    generations = [first]
    for round_ in range(1, 4):  # more generations: the previous databases go with them
        pair.write("node1", f"round {round_}")
        generations.append(nodes.capture())
        assert nodes.apply(keep=2) == generations[-1]
        assert pair.titles("node2")[-1] == f"round {round_}"
    assert current_copy(nodes.home) is not None
    live = f"{pair.prefix}_node2"
    # keep=2: the two newest generations' directories, each with the database it
    # displaced (the one before it); node2's own database, displaced by the first, stays.
    assert pair.databases() == {
        f"{pair.prefix}_node1",
        live,
        before(pair, first),
        before(pair, generations[2]),
        before(pair, generations[3]),
    }
    assert pair.titles("node2", before(pair, generations[3]))[-1] == "round 2"


def test_a_failed_home_swap_puts_the_previous_database_back(pair: Pair, tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, pair)
    pair.write("node1", "one")
    first = nodes.capture()
    nodes.apply()
    pair.write("node1", "two")
    second = nodes.capture()
    manifest = read_manifest(nodes.store, second)
    prepared = prepare_generation(nodes.store, manifest, nodes.home, nodes.target)
    assert f"{pair.prefix}_node2_hakit_restore_{generation_tag(second)}" in pair.databases()
    answers = iter([False, True])  # the app starts between the databases' and the link's swap

    with pytest.raises(SnapshotError, match="the app runs on this node"):
        swap_in(nodes.home, prepared, lambda: next(answers), nodes.target)
    assert pair.titles("node2") == ["one"]
    copy = current_copy(nodes.home)
    assert copy is not None and copy.generation == first
    assert pair.databases() == {f"{pair.prefix}_node1", f"{pair.prefix}_node2", before(pair, first)}
    assert nodes.apply() == second  # prepared again, then swapped
    assert pair.titles("node2") == ["one", "two"]


def test_a_session_on_the_standbys_database_refuses_the_swap(pair: Pair, tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, pair)
    pair.write("node1", "one")
    nodes.capture()
    with pair.connect(f"{pair.prefix}_node2") as session:
        session.execute("SET application_name = 'someone-else'")
        with pytest.raises(SnapshotError, match="someone-else"):
            nodes.apply()
    assert pair.titles("node2") == ["node2's own"]  # untouched
    assert not nodes.home.is_symlink() and (nodes.home / "mine.txt").is_file()
    assert pair.databases() == {f"{pair.prefix}_node1", f"{pair.prefix}_node2"}
    nodes.apply()  # nobody on it any more: applied
    assert pair.titles("node2") == ["one"]


def test_a_dump_into_a_standby_with_sqlite_is_refused(pair: Pair, tmp_path: Path) -> None:
    nodes = Nodes(tmp_path, pair)
    nodes.capture()
    sqlite = database_target(f"sqlite:///{nodes.home}/data/app.db")
    with pytest.raises(SnapshotError, match="holds a postgresql database"):
        apply_generation(nodes.store, None, nodes.home, sqlite, lambda: False)
    assert not nodes.home.is_symlink()
