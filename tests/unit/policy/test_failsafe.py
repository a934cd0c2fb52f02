"""Failsafe mode's decisions (hakit.policy.failsafe), case by case, and the policy's hold."""

from __future__ import annotations

import pytest

from hakit.config import Mode
from hakit.policy import Boot, Policy, PolicySettings
from hakit.policy.failsafe import (
    Answer,
    StoreRead,
    answer,
    boot_hold,
    failsafe_times,
    judge_round,
    promise_until,
    round_due,
)

TIMES = failsafe_times(ttl=3.0, renew=1.0, margin=0.5)

UNREACHABLE = StoreRead(reachable=False, error="database is locked")
VALID = StoreRead(reachable=True, holder="node1", epoch=7, valid=True)
EXPIRED = StoreRead(reachable=True, holder="node1", epoch=7, valid=False)
EXPIRED_NO_WRITES = StoreRead(
    reachable=True, holder="node1", epoch=7, valid=False, writes_failing=True
)

# (held_epoch, what the store shows node2) -> confirms?, words in the reason
ANSWERS = [
    (0, UNREACHABLE, True, "cannot reach the coordination store either"),
    (0, VALID, True, "still valid"),
    (0, EXPIRED_NO_WRITES, True, "refuses node2's writes too"),
    (0, EXPIRED, False, "cut off from it alone and must fence"),
    (0, StoreRead(reachable=True), False, "holds no lease"),
    (0, StoreRead(True, "node3", 8, True), False, "held by node3 under epoch 8"),
    (0, StoreRead(True, "node1", 6, True), False, "under epoch 6, not by node1"),
    (9, UNREACHABLE, False, "holds the lease itself (epoch 9)"),
    (9, VALID, False, "holds the lease itself"),
]


@pytest.mark.parametrize(("held", "store", "confirms", "words"), ANSWERS)
def test_a_node_confirms_only_when_it_cannot_promote(
    held: int, store: StoreRead, confirms: bool, words: str
) -> None:
    got = answer("node1", 7, me="node2", held_epoch=held, store=store)
    assert got.confirm is confirms
    assert words in got.reason


def test_nonsense_requests_are_refused() -> None:
    assert not answer("node2", 7, me="node2", held_epoch=0, store=UNREACHABLE).confirm
    assert not answer("node1", 0, me="node2", held_epoch=0, store=UNREACHABLE).confirm


OK = Answer(True, "fine")

# answers -> serve until (None: no extension), who is missing
ROUNDS = [
    ({"node2": OK, "node3": OK}, 10.0 + 3.0 - 0.5, ()),
    ({"node2": OK}, None, ("node3",)),  # no answer at all
    ({"node2": OK, "node3": "its agent could not be reached"}, None, ("node3",)),
    ({"node2": Answer(False, "it leads"), "node3": OK}, None, ("node2",)),
    ({"node2": "timeout", "node3": Answer(False, "no")}, None, ("node2", "node3")),
]


@pytest.mark.parametrize(("answers", "until", "missing"), ROUNDS)
def test_only_a_complete_round_extends(
    answers: dict[str, Answer | str], until: float | None, missing: tuple[str, ...]
) -> None:
    verdict = judge_round(["node2", "node3"], answers, sent=10.0, deadline=11.0, times=TIMES)
    assert verdict.serve_until == until
    assert tuple(node for node, _ in verdict.missing) == missing
    if until is not None:
        assert verdict.reason.startswith("failsafe: serving on 2 confirmations (node2, node3)")
    else:
        assert all(f"{node} did not confirm" in verdict.reason for node in missing)


def test_a_round_never_shortens_the_deadline_held() -> None:
    verdict = judge_round(["node2"], {"node2": OK}, sent=10.0, deadline=20.0, times=TIMES)
    assert verdict.serve_until == 20.0


def test_a_single_node_serves_on_no_confirmation() -> None:
    verdict = judge_round([], {}, sent=10.0, deadline=11.0, times=TIMES)
    assert verdict.serve_until == 12.5 and "no other node to ask" in verdict.reason


@pytest.mark.parametrize(
    ("ttl", "renew", "margin"), [(3.0, 1.0, 0.5), (10.0, 1.0, 0.5), (2.0, 0.5, 0.25)]
)
@pytest.mark.parametrize("delay", [0.0, 0.001, 0.4])
def test_every_promise_outlasts_the_deadline_it_bought_by_a_ttl(
    ttl: float, renew: float, margin: float, delay: float
) -> None:
    """The safety argument: a node asked ``delay`` after ``sent`` takes no lease before the
    active's extended deadline plus one TTL."""
    times = failsafe_times(ttl, renew, margin)
    sent = 100.0
    verdict = judge_round(["node2"], {"node2": OK}, sent=sent, deadline=0.0, times=times)
    assert verdict.serve_until is not None
    assert promise_until(sent + delay, times) >= verdict.serve_until + ttl
    assert times.ask_timeout < times.period - margin  # an answer comes before the deadline
    assert times.store_check < times.ask_timeout


# (now, renewed_at, last_round) -> due?
DUE = [
    (10.0, 9.0, float("-inf"), False),  # renewed a second ago: the store answers
    (10.0, 8.5, float("-inf"), True),  # 1.5 renewals without a renewal
    (10.0, 8.0, 9.5, False),  # asked half a renewal ago
    (10.0, 8.0, 9.0, True),  # asked a renewal ago
]


@pytest.mark.parametrize(("now", "renewed", "last", "due"), DUE)
def test_rounds_start_once_the_lease_went_unrenewed(
    now: float, renewed: float, last: float, due: bool
) -> None:
    assert round_due(now, renewed, last, TIMES) is due


def _running_standby() -> Policy:
    settings = PolicySettings(
        mode=Mode.COLD_STANDBY,
        restart_attempts=2,
        failure_window=300.0,
        startup_timeout=20.0,
        health_timeout=10.0,
        fall=3,
        step_down_cooldown=9.0,
    )
    policy = Policy(settings, "node2")
    policy.handle(Boot(), 0.0)
    return policy


def test_a_promise_keeps_the_node_from_leading_until_it_lapses() -> None:
    policy = _running_standby()
    assert policy.may_lead(1.0)
    policy.hold_failsafe(promise_until(1.0, TIMES), "promised node1")
    assert not policy.may_lead(1.0)
    assert policy.failsafe_hold(6.9) == "promised node1"
    assert not policy.may_lead(6.9)  # the store may be back and show the lease expired
    assert policy.may_lead(7.0) and policy.failsafe_hold(7.0) is None


def test_a_later_promise_extends_an_earlier_one_never_shortens_it() -> None:
    policy = _running_standby()
    policy.hold_failsafe(10.0, "first")
    policy.hold_failsafe(8.0, "shorter")
    assert policy.failsafe_hold(9.0) == "first"
    policy.hold_failsafe(12.0, "second")
    assert policy.failsafe_hold(11.0) == "second" and policy.may_lead(12.0)


def test_an_agent_that_starts_holds_as_long_as_any_promise_it_may_have_made() -> None:
    assert boot_hold(5.0, TIMES) == promise_until(5.0, TIMES) == 5.0 + 2 * 3.0
