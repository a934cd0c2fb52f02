"""The lifeline's messages and the deadline rule shared by the shim and the watchdog."""

from __future__ import annotations

import pytest

from hakit.supervisor import lifeline
from hakit.supervisor.lifeline import DeadlineKeeper, Inbox


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (lifeline.ARM, 12345.678901234),
        (lifeline.STARTED, 4242),
        (lifeline.DISARM, None),
        (lifeline.LEFT, {"pids": [1, 2], "commands": ["sleep 60"]}),
        (lifeline.FENCED, {"reason": "late"}),
    ],
)
def test_messages_round_trip(kind: str, payload: object) -> None:
    assert lifeline.decode(lifeline.encode(kind, payload)) == (kind, payload)


def test_the_inbox_keeps_partial_lines_and_skips_bad_ones() -> None:
    inbox = Inbox()
    data = lifeline.encode(lifeline.ARM, 1.5) + b"arm {not json\n" + lifeline.encode("kill")
    assert inbox.feed(data[:4]) == []
    assert inbox.feed(data[4:-2]) == [(lifeline.ARM, 1.5)]
    assert inbox.feed(data[-2:]) == [(lifeline.KILL, None)]


def test_kill_at_the_deadline_when_the_keeper_ran_on_time() -> None:
    keeper = DeadlineKeeper(threshold=1.0, grace=3.0)
    keeper.arm(10.0)
    assert [keeper.step(t) for t in (9.9, 9.95)] == [None, None]
    assert keeper.step(10.05) == pytest.approx(0.05)
    assert keeper.step(10.1) is None  # once: it is disarmed after firing


def test_a_keeper_frozen_across_the_deadline_gives_the_agent_grace() -> None:
    keeper = DeadlineKeeper(threshold=1.0, grace=3.0)
    keeper.arm(10.0)
    assert keeper.step(9.0) is None
    assert keeper.step(15.0) is None  # a 6 s gap of its own spans the deadline
    assert keeper.step(17.9) is None
    keeper.arm(20.0)  # the agent renewed on waking: a new deadline, no kill
    assert [keeper.step(t) for t in (18.0, 18.8, 19.6)] == [None, None, None]
    assert keeper.step(20.0) == 0.0


def test_grace_runs_out_when_the_agent_does_not_renew() -> None:
    keeper = DeadlineKeeper(threshold=1.0, grace=3.0)
    keeper.arm(10.0)
    keeper.step(9.0)
    assert keeper.step(15.0) is None
    assert keeper.step(18.0) == pytest.approx(8.0)


def test_disarmed_never_kills_and_the_wait_never_passes_the_deadline() -> None:
    keeper = DeadlineKeeper(threshold=1.0, grace=3.0)
    assert keeper.step(100.0) is None and keeper.wait_hint(100.0, 0.05) == 0.05
    keeper.arm(100.02)
    assert keeper.wait_hint(100.0, 0.05) == pytest.approx(0.02)
