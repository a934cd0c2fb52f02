"""The check state machine (health.py), the board, and the pure parts of checks.py / tcp.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hakit.contract import AppState
from hakit.coord.base import NodeRecord
from hakit.router.checks import instance_key, reset_reason, result_for, should_check
from hakit.router.health import (
    TRANSITIONS,
    Check,
    HealthBoard,
    HealthState,
    Result,
    ResultKind,
    dead,
    drain,
    fail,
    ok,
    step,
)
from hakit.router.tcp import choose_upstream

UNKNOWN, UP, DRAIN, DOWN = (
    HealthState.UNKNOWN,
    HealthState.UP,
    HealthState.DRAIN,
    HealthState.DOWN,
)
LETTER = {
    "o": ok("reports RUNNING"),
    "f": fail("connection refused"),
    "d": drain("reports MAINTENANCE"),
    "x": dead("connect failed"),
}


@dataclass(frozen=True)
class Run:
    results: str  # one letter per check: o ok, f fail, d drain, x dead (passive)
    states: str  # the state after each result: U unknown, P up, D down, N drain
    fall: int = 3
    rise: int = 2
    start: HealthState = UNKNOWN


SHORT = {"U": UNKNOWN, "P": UP, "D": DOWN, "N": DRAIN}

RUNS = {
    "first answer decides at once": Run("o", "P"),
    "first answer drains at once": Run("d", "N"),
    "unknown needs fall failures too": Run("fff", "UUD"),
    "up stays up below fall": Run("ffo", "PPP", start=UP),
    "up goes down on the fall-th failure": Run("fff", "PPD", start=UP),
    "fall 1: one failure is enough": Run("f", "D", fall=1, start=UP),
    "down needs rise answers": Run("oo", "DP", start=DOWN),
    "rise 3": Run("ooo", "DDP", rise=3, start=DOWN),
    "a failure restarts the rise count": Run("ofoo", "DDDP", start=DOWN),
    "drain answers count toward rise, last one decides": Run("od", "DN", start=DOWN),
    "a draining answer from down needs rise too": Run("dd", "DN", start=DOWN),
    "drain then serve: back at once": Run("do", "NP", start=UP),
    "draining node still falls": Run("fff", "NND", start=DRAIN),
    "passive failure: down at once": Run("x", "D", start=UP),
    "passive failure while unknown": Run("x", "D"),
    "passive failure while draining": Run("x", "D", start=DRAIN),
    "passive failure restarts the rise count": Run("oxo", "DDD", start=DOWN),
    "flapping never goes down (fall 2)": Run("fofofo", "PPPPPP", fall=2, start=UP),
    "flapping never comes back (rise 2)": Run("ofofof", "DDDDDD", start=DOWN),
    "flapping between drain and ok never goes down": Run("dodo", "NPNP", start=UP),
    "a drain answer ends a failure streak": Run("ffdff", "PPNNN", start=UP),
}


@pytest.mark.parametrize("run", RUNS.values(), ids=RUNS.keys())
def test_state_machine(run: Run) -> None:
    check = Check(state=run.start)
    seen = []
    for now, letter in enumerate(run.results, start=1):
        check, transition = step(check, LETTER[letter], float(now), fall=run.fall, rise=run.rise)
        seen.append(check.state)
        if transition is not None:
            assert transition.new is check.state and transition.reason
            assert check.since == now and check.streak == 0
    assert seen == [SHORT[c] for c in run.states]


def test_table_covers_every_state_and_result() -> None:
    assert set(TRANSITIONS) == {(s, r) for s in HealthState for r in ResultKind}


def test_transition_reasons_say_what_happened() -> None:
    check = Check(state=UP)
    for now in (1.0, 2.0):
        check, transition = step(check, fail("no answer within 2s"), now, fall=3, rise=2)
        assert transition is None and check.streak == now
    check, transition = step(check, fail("no answer within 2s"), 3.0, fall=3, rise=2)
    assert transition is not None and (transition.old, transition.new) == (UP, DOWN)
    assert transition.reason == "3 failed checks in a row (fall 3); last: no answer within 2s"
    _, transition = step(Check(state=UP), drain("reports MAINTENANCE"), 4.0, fall=3, rise=2)
    assert transition is not None and "reports MAINTENANCE" in transition.reason
    assert "sticky users stay" in transition.reason
    _, transition = step(Check(state=UP), dead("connection refused"), 4.0, fall=3, rise=2)
    assert transition is not None and transition.reason.startswith("failed on real traffic")


# --- the board ---------------------------------------------------------------------------


def feed(board: HealthBoard, name: str, letters: str, start: float) -> float:
    now = start
    for letter in letters:
        board.feed(name, LETTER[letter], now)
        now += 1.0
    return now


def test_board_routable_draining_and_unknown_targets() -> None:
    board = HealthBoard(fall=2, rise=2, names=("n1", "n2"))
    assert board.routable("n1") and board.routable("never-heard-of")  # no verdict: routable
    feed(board, "n1", "ff", 1.0)
    assert not board.routable("n1") and board.state("n1") is DOWN and not board.draining("n1")
    feed(board, "n2", "d", 1.0)
    assert not board.routable("n2") and board.draining("n2")
    feed(board, "n2", "o", 2.0)
    assert board.routable("n2") and not board.draining("n2")


def test_board_up_since_marks_a_return_only() -> None:
    board = HealthBoard(fall=1, rise=2, names=("n1",))
    feed(board, "n1", "o", 1.0)
    assert board.routable("n1") and board.up_since("n1") is None  # up since the start
    feed(board, "n1", "f", 2.0)
    assert board.up_since("n1") is None
    feed(board, "n1", "oo", 10.0)  # second answer at t=11 brings it back
    assert board.up_since("n1") == 11.0
    feed(board, "n1", "o", 12.0)
    assert board.up_since("n1") == 11.0  # staying up does not restart the ramp
    feed(board, "n1", "d", 13.0)
    assert board.up_since("n1") is None  # draining: not routable for new users


def test_board_reset_forgets_the_verdict() -> None:
    board = HealthBoard(fall=1, rise=5, names=("n1",))
    feed(board, "n1", "f", 1.0)
    assert not board.routable("n1")
    transition = board.reset("n1", 7.0, "new app instance")
    assert transition is not None and (transition.old, transition.new) == (DOWN, UNKNOWN)
    assert board.routable("n1") and board.up_since("n1") == 7.0
    assert board.reset("n1", 8.0, "again") is None  # UNKNOWN already: nothing to report
    assert board.up_since("n1") == 8.0


def test_board_snapshot() -> None:
    board = HealthBoard(fall=2, rise=2, names=("n1", "n2"))
    feed(board, "n1", "ff", 1.0)  # DOWN at t=2
    snap = board.snapshot(now=5.0)
    assert snap["n1"] == {
        "state": "DOWN",
        "routable": False,
        "for_seconds": 3.0,
        "streak": 0,
        "last_check": "connection refused",
        "reason": "2 failed checks in a row (fall 2); last: connection refused",
        "up_for_seconds": None,
    }
    assert snap["n2"]["state"] == "UNKNOWN" and snap["n2"]["routable"]


def test_board_rejects_impossible_thresholds() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HealthBoard(fall=0, rise=2)


# --- /status observations -> results ----------------------------------------------------

EXPECTED_KIND = {
    AppState.RUNNING: ResultKind.OK,
    AppState.FIRST_RUN: ResultKind.OK,
    AppState.STARTING: ResultKind.DRAIN,
    AppState.STOPPING: ResultKind.DRAIN,
    AppState.MAINTENANCE: ResultKind.DRAIN,
    AppState.ERROR: ResultKind.FAIL,
    AppState.NOT_DEPLOYED: ResultKind.FAIL,
    AppState.DOWN: ResultKind.FAIL,
    AppState.TIMEOUT: ResultKind.FAIL,
    AppState.STOPPED: ResultKind.FAIL,
}


@pytest.mark.parametrize("state", list(AppState))
def test_result_for_every_state(state: AppState) -> None:
    assert result_for(state, "seen") == Result(EXPECTED_KIND[state], "seen")


def rec(state: str = "RUNNING", role: str = "active", epoch: int = 3, pid: int = 100) -> NodeRecord:
    return NodeRecord("n1", role, state, epoch, 1.0, {"pid": pid})


RESETS = {
    "same instance": (rec(), rec(), None),
    "new pid": (rec(), rec(pid=200), "app pid 100 -> 200"),
    "promoted": (rec(role="standby", epoch=0), rec(), "role standby -> active, epoch 0 -> 3"),
    "serving again": (rec("MAINTENANCE"), rec(), "serving again"),
    "first run is serving too": (rec(), rec("FIRST_RUN"), None),
    "stops serving: no reset": (rec(), rec("ERROR"), None),
    "record appears": (None, rec(), "now publishes a serving app"),
    "record vanishes": (rec(), None, None),
    "unknown state is not serving": (rec("ERROR"), rec("BOGUS"), None),
}


@pytest.mark.parametrize("before,after,expected", RESETS.values(), ids=RESETS.keys())
def test_reset_reason(before, after, expected) -> None:
    reason = reset_reason(instance_key(before), instance_key(after))
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


def test_should_check() -> None:
    assert should_check(rec()) and should_check(rec("ERROR"))
    assert not should_check(rec("STOPPED")) and not should_check(None)


# --- the TCP proxy's choice --------------------------------------------------------------

ORDER = ("a", "b", "c")


@pytest.mark.parametrize(
    "healthy,current,failback,exclude,expected",
    [
        ("abc", None, False, "", "a"),
        ("bc", None, False, "", "b"),
        ("abc", "b", False, "", "b"),  # no failback: stays where it moved
        ("abc", "b", True, "", "a"),  # failback: back to the first healthy
        ("ac", "b", False, "", "a"),  # current failed: first healthy in order
        ("c", "b", False, "", "c"),
        ("abc", "b", False, "b", "a"),  # current refused this connection
        ("abc", None, True, "ab", "c"),
        ("", "a", False, "", None),
        ("abc", None, False, "abc", None),
    ],
)
def test_choose_upstream(healthy, current, failback, exclude, expected) -> None:
    assert choose_upstream(ORDER, lambda n: n in healthy, current, failback, exclude) == expected


def test_board_answering_needs_up_and_a_last_check_that_answered() -> None:
    board = HealthBoard(fall=3, rise=1, names=["n1"])
    assert not board.answering("n1") and not board.answering("unknown")  # no verdict yet
    board.feed("n1", ok(), 1.0)
    assert board.answering("n1")
    board.feed("n1", fail("timeout"), 2.0)
    assert board.routable("n1") and not board.answering("n1")  # UP, but the last check failed
    board.feed("n1", ok(), 3.0)
    assert board.answering("n1")
    board.feed("n1", drain("STOPPING"), 4.0)
    assert not board.answering("n1")
