"""Balancing new users: least-outstanding, round robin, slow start (pure, deterministic)."""

from __future__ import annotations

from collections import Counter

import pytest

from hakit.config import Balance, NodeConfig
from hakit.router.balance import (
    admitted,
    pick_new,
    ramp_weight,
    track_up,
    turn_fraction,
)

A, B, C = (NodeConfig(name=name, port=8100 + i) for i, name in enumerate("ABC"))
LEAST, RR = Balance.LEAST_OUTSTANDING, Balance.ROUND_ROBIN


def shares(
    nodes: list[NodeConfig],
    weights: list[float] | None,
    balance: Balance = LEAST,
    turns: int = 10_000,
    in_flight: dict[str, int] | None = None,
) -> dict[str, float]:
    counts: Counter[str] = Counter()
    for turn in range(turns):
        chosen = pick_new(
            nodes, balance=balance, in_flight=in_flight or {}, turn=turn, weights=weights
        )
        assert chosen is not None
        counts[chosen.name] += 1
    return {node.name: counts[node.name] / turns for node in nodes}


def test_turn_fraction_covers_the_unit_interval_evenly() -> None:
    bins = Counter(int(turn_fraction(turn) * 10) for turn in range(1000))
    assert set(bins) == set(range(10))
    assert all(95 <= count <= 105 for count in bins.values())
    assert turn_fraction(7) == turn_fraction(7)  # deterministic


@pytest.mark.parametrize(
    ("up_since", "now", "slowstart", "weight"),
    [
        (None, 100.0, 60.0, 1.0),  # up since before we looked
        (100.0, 100.0, 60.0, 0.0),  # just came back
        (100.0, 115.0, 60.0, 0.25),
        (100.0, 130.0, 60.0, 0.5),
        (100.0, 160.0, 60.0, 1.0),
        (100.0, 500.0, 60.0, 1.0),
        (100.0, 99.0, 60.0, 0.0),  # clock oddities never go negative
        (100.0, 100.0, 0.0, 1.0),  # slow start off
    ],
)
def test_ramp_weight(up_since: float | None, now: float, slowstart: float, weight: float) -> None:
    assert ramp_weight(up_since, now, slowstart) == pytest.approx(weight)


def test_track_up_notes_comebacks_but_not_the_first_look() -> None:
    first = track_up(None, ["A", "B"], now=10.0)
    assert first == {"A": None, "B": None}  # a router restart ramps nobody
    second = track_up(first, ["A"], now=20.0)  # B went away
    assert second == {"A": None}
    third = track_up(second, ["A", "B"], now=30.0)  # B is back
    assert third == {"A": None, "B": 30.0}
    assert track_up(third, ["A", "B"], now=40.0) == {"A": None, "B": 30.0}  # kept


def test_round_robin_visits_each_in_turn() -> None:
    chosen = [pick_new([A, B, C], balance=RR, in_flight={}, turn=t) for t in range(6)]
    assert [node.name for node in chosen if node] == ["A", "B", "C", "A", "B", "C"]


def test_round_robin_ignores_load() -> None:
    assert pick_new([A, B], balance=RR, in_flight={"A": 50}, turn=0) is A


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        ({"A": 3, "B": 1, "C": 2}, ["B", "B", "B"]),
        ({"A": 1, "B": 1, "C": 5}, ["A", "B", "A"]),  # ties go round the turn counter
        ({}, ["A", "B", "C"]),  # idle: like round robin
        ({"B": 0, "A": 2}, ["B", "C", "B"]),  # a missing count is zero
    ],
)
def test_least_outstanding(in_flight: dict[str, int], expected: list[str]) -> None:
    chosen = [pick_new([A, B, C], balance=LEAST, in_flight=in_flight, turn=t) for t in range(3)]
    assert [node.name for node in chosen if node] == expected


def test_no_candidates_and_one_candidate() -> None:
    assert pick_new([], balance=LEAST, in_flight={}, turn=3) is None
    assert pick_new([B], balance=LEAST, in_flight={"B": 99}, turn=3) is B


@pytest.mark.parametrize("balance", [LEAST, RR])
@pytest.mark.parametrize("weight", [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
def test_slow_start_ramps_the_share_linearly(balance: Balance, weight: float) -> None:
    """A node at weight w gets w times its fair share of new users (here 1/2)."""
    got = shares([A, B], [1.0, weight], balance)
    assert got["B"] == pytest.approx(weight / 2, abs=0.01)
    assert got["A"] == pytest.approx(1 - weight / 2, abs=0.01)


def test_slow_start_with_three_nodes() -> None:
    got = shares([A, B, C], [1.0, 0.3, 1.0])
    assert got["B"] == pytest.approx(0.3 / 3, abs=0.01)
    assert got["A"] == pytest.approx(got["C"], abs=0.01)


def test_slow_start_caps_a_ramping_node_under_load() -> None:
    """Least-outstanding alone would flood the idle newcomer; its weight caps its share."""
    got = shares([A, B], [1.0, 0.2], LEAST, in_flight={"A": 10, "B": 0})
    assert got["B"] == pytest.approx(0.2, abs=0.01)


def test_every_node_ramping_still_serves() -> None:
    assert list(admitted([A, B], [0.0, 0.0], turn=5)) == [A]
    assert list(admitted([A, B], [0.0, 0.001], turn=5)) == [B]  # the heaviest
    got = shares([A, B], [0.2, 0.2])
    assert sum(got.values()) == pytest.approx(1.0)
