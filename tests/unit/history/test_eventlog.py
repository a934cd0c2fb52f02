"""hakit.history.eventlog: event lines with full dates, JSON records, and what ``hakit events``
selects with --since, --node and --kind."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from hakit.coord.base import Event
from hakit.history.eventlog import event_record, format_event, iso_time, parse_since, select_events

T0 = datetime(2026, 11, 22, 4, 40, 0, tzinfo=UTC).timestamp()


def event(id: int, t: float, node: str = "node1", kind: str = "start") -> Event:
    return Event(id, T0 + t, node, kind, f"reason {id}", 1, f"agent:{node}", {"n": id})


def test_lines_carry_the_full_date_when_asked() -> None:
    e = event(1, 12.5)
    assert format_event(e, date=True, tz=UTC) == (
        "2026-11-22T04:40:12.500+00:00 node1    epoch 1  start     reason 1"
    )
    plus_two = timezone(timedelta(hours=2))
    line = format_event(e, date=True, tz=plus_two)
    assert line.startswith("2026-11-22T06:40:12.500+02:00 ")
    # The stamp is ISO 8601: it reads back as the very moment.
    assert datetime.fromisoformat(line.split(" ", 1)[0]).timestamp() == pytest.approx(e.time)
    assert format_event(e, tz=UTC).startswith("04:40:12.500 node1")  # the demo's live stream
    cluster = Event(2, T0, "", "pause", "paused", 0, "operator:alice")
    assert format_event(cluster, date=True, tz=UTC) == (
        "2026-11-22T04:40:00.000+00:00 cluster           pause     paused"
    )


def test_local_time_carries_its_offset() -> None:
    stamp = iso_time(T0)
    assert datetime.fromisoformat(stamp).timestamp() == T0
    assert datetime.fromisoformat(stamp).utcoffset() is not None


def test_record_is_one_json_object() -> None:
    record = event_record(event(7, 1.25), tz=UTC)
    assert json.loads(json.dumps(record)) == {
        "id": 7,
        "time": "2026-11-22T04:40:01.250+00:00",
        "timestamp": T0 + 1.25,
        "node": "node1",
        "kind": "start",
        "reason": "reason 7",
        "epoch": 1,
        "actor": "agent:node1",
        "data": {"n": 7},
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10m", T0 - 600),
        ("2h", T0 - 7200),
        ("90s", T0 - 90),
        ("1d", T0 - 86_400),
        ("1h30m", T0 - 5400),
        ("1h 30m", T0 - 5400),
        ("1.5h", T0 - 5400),
        ("500ms", T0 - 0.5),
        ("2026-11-22T04:30:00", T0 - 600),
        ("2026-11-22T06:30:00+02:00", T0 - 600),
        ("2026-11-22T04:30:00Z", T0 - 600),
        ("2026-11-22 04:30", T0 - 600),
        ("2026-11-22", T0 - 4 * 3600 - 40 * 60),
        ("04:30", T0 - 600),
        (str(T0 - 600), T0 - 600),
    ],
)
def test_since_accepts_times_ago_and_moments(text: str, expected: float) -> None:
    assert parse_since(text, T0, UTC) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "m", "10x", "-10m", "yesterday", "25:00", "10m ago"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="neither a time ago"):
        parse_since(text, T0, UTC)


def test_a_bare_number_is_unix_seconds_not_a_time_ago() -> None:
    assert parse_since("600", T0, UTC) == 600.0


def test_select_by_time_node_and_kinds() -> None:
    history = [
        event(1, 0),
        event(2, 10, "node2", "alert"),
        event(3, 20, "", "pause"),
        event(4, 30, "node1", "failover"),
        event(5, 40, "node2", "start"),
    ]

    def ids(**filters: object) -> list[int]:
        return [e.id for e in select_events(history, **filters)]  # type: ignore[arg-type]

    assert ids() == [1, 2, 3, 4, 5]
    assert ids(since=T0 + 20) == [3, 4, 5]  # at or after
    assert ids(nodes=["node2"]) == [2, 5]
    assert ids(nodes=["cluster"]) == [3]
    assert ids(nodes=["node1", "cluster"]) == [1, 3, 4]
    assert ids(kinds=["alert", "failover"]) == [2, 4]
    assert ids(since=T0 + 5, nodes=["node2"], kinds=["start"]) == [5]
    assert ids(nodes=["nobody"]) == []
