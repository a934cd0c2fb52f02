"""``hakit why`` reads the facts events carry in ``data`` (hakit.history.facts), never
their sentences: each history below records data that differs from its sentence, and
what ``why`` tells is the data. The sentence is read only for events an older hakit
stored without the facts (tests/unit/history/test_why.py)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from hakit.config import Mode
from hakit.contract import AppState
from hakit.history.facts import (
    FAILED_STARTS,
    FAILURE,
    FAILURE_WINDOW,
    NO_FAILOVER,
    RESTART,
    RESTART_ATTEMPTS,
    RETRY,
    SERVING,
    WHAT,
    human_duration,
    ordinal,
)
from hakit.history.kinds import CAUSE, LOST_EPOCH, EventCause
from hakit.history.why import explain
from hakit.policy import (
    Alert,
    AppExited,
    AppStarted,
    Boot,
    LeaseGained,
    Policy,
    PolicySettings,
    Record,
    StartApp,
    StatusObserved,
    StepDown,
)
from tests.unit.history.test_why import (
    BOOT,
    CRASH1,
    CRASH2,
    CRASH3,
    LOST,
    RESTARTS,
    START1,
    START3,
    Row,
    _policy,
    alert,
    history,
    recorded,
)

CRASHED = "app on node1 crashed (worded anyhow)"


def budget(n: int, attempts: int = 3, window: float = 600.0, **more: Any) -> dict[str, Any]:
    return {
        WHAT: CRASHED,
        FAILURE: n,
        RESTART_ATTEMPTS: attempts,
        FAILURE_WINDOW: window,
        **more,
    }


def test_the_words_for_numbers() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th",
    ]  # fmt: skip
    assert human_duration(600) == "10m" and human_duration(5400) == "1.5h"


def test_a_restart_is_told_from_its_data() -> None:
    # The sentence says restart 1 of 2 within 5m; the data says 2 of 3 within 10m.
    events = history(*BOOT, alert(20, "node1", 1, "crash", CRASH1, facts=budget(2, **{RESTART: 2})))
    assert explain(events, tz=UTC) == [
        f"not failed over at 04:40:20: {CRASHED} → restarted on node1 instead "
        "(restart 2 of 3 within 10m)",
        f"  04:40:20  {CRASH1}",
        "  hakit fails over only once 3 restarts within 10m did not help (restart_attempts = 3)",
    ]


def test_an_event_with_facts_is_not_read_from_its_sentence() -> None:
    # Facts recorded, but no restart among them: the sentence's "restart 1 of 2" is not read.
    events = history(*BOOT, alert(20, "node1", 1, "crash", CRASH1, facts={WHAT: CRASHED}))
    assert explain(events, tz=UTC) == [
        f"not failed over at 04:40:20: {CRASHED} → restarted on node1 instead",
        f"  04:40:20  {CRASH1}",
    ]


def test_a_retried_start_is_told_from_its_data() -> None:
    facts = {WHAT: "app on node1 would not start", RETRY: 3, RESTART_ATTEMPTS: 4}
    events = history(*BOOT, alert(20, "node1", 1, "failed-start", START1, facts=facts))
    assert explain(events, tz=UTC)[0] == (
        "not failed over at 04:40:20: app on node1 would not start → retrying the start on "
        "node1 (retry 3 of 4)"
    )


def test_failed_starts_and_why_no_failover_are_told_from_data() -> None:
    facts = {
        WHAT: "app on node1 would not start",
        FAILED_STARTS: 5,
        RESTART_ATTEMPTS: 4,
        NO_FAILOVER: "the reason in the data",
    }
    events = history(*BOOT, alert(20, "node1", 1, "failed-start", START3, True, facts))
    assert explain(events, tz=UTC) == [
        "no failover at 04:40:20: app on node1 failed to start 5 times (restart_attempts = 4); "
        "last: app on node1 would not start → manual intervention required",
        f"  04:40:20  {START3}",
        "  why no failover: the reason in the data",
        "  hakit has stopped acting on node1: fix the cause, then restart its agent",
    ]
    # No reason recorded: none is read from the sentence's "not failing over: ...".
    del facts[NO_FAILOVER]
    events = history(*BOOT, alert(20, "node1", 1, "failed-start", START3, True, facts))
    assert not any(line.startswith("  why no failover") for line in explain(events, tz=UTC))


def test_a_step_down_is_told_from_its_data() -> None:
    # The sentence counts a 3rd failure within 5m; the data a 4th within 10m: three
    # failures came before it, all shown.
    third = alert(16.5, "node1", 1, "crash", CRASH2, facts=budget(3, **{RESTART: 3}))
    events = history(
        *BOOT,
        *RESTARTS,
        third,
        Row(17.3, "node1", 1, "failover", CRASH3, budget(4)),
        Row(17.7, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    )
    lines = explain(events, tz=UTC)
    assert lines[0] == (
        f"node1 failed over to node2 at 04:40:17 (epoch 1 → 2): {CRASHED}; 4th failure "
        "within 10m (restart_attempts = 3)"
    )
    assert lines[1:5] == [
        f"  04:40:14  {CRASH1}",
        f"  04:40:16  {CRASH2}",
        f"  04:40:16  {CRASH2}",
        f"  04:40:17  {CRASH3}",
    ]


def test_a_lost_lease_is_told_from_its_data() -> None:
    lost = {CAUSE: EventCause.LEASE_LOST, LOST_EPOCH: 1, WHAT: "node1 lost its lease (data)"}
    events = history(
        *BOOT,
        Row(30.0, "node1", 0, "stop", LOST, lost),
        Row(33.0, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    )
    assert explain(events, tz=UTC)[0] == (
        "node1 failed over to node2 at 04:40:33 (epoch 1 → 2): node1 lost its lease (data); "
        "it killed its app (self-fencing)"
    )


def _warm_takeover(promoted: str, serving: bool) -> list[str]:
    events = history(
        *BOOT,
        Row(17.3, "node1", 1, "failover", CRASH3, budget(4)),
        Row(17.7, "node2", 2, "promoted", promoted, {SERVING: serving}),
    )
    return explain(events, tz=UTC)


def test_whether_the_new_active_served_is_read_from_data() -> None:
    already = "node2 promoted to active under epoch 2; the app is already running"
    assert _warm_takeover(already, serving=False)[-1] == ("  node2 has not reported RUNNING since")
    assert _warm_takeover("node2 promoted (worded anyhow)", serving=True)[-1] == (
        "  04:40:17  node2 serving: node2 promoted (worded anyhow) (0.4s after node1 gave up)"
    )


def _database_then(status: str, serving: bool) -> list[str]:
    events = history(
        *BOOT,
        alert(54.2, "node1", 1, "database", "app on node1 reports ERROR and its database is unreachable"),
        Row(58.4, "node1", 1, "status", status, {SERVING: serving}),
    )  # fmt: skip
    return explain(events, tz=UTC)


def test_a_recovery_is_read_from_data() -> None:
    first_run = "app on node1 reports FIRST_RUN: running, not yet configured"
    assert not any("recovered" in line for line in _database_then(first_run, serving=False))
    assert _database_then("app on node1 answers again", serving=True)[-1] == (
        "  04:40:58  recovered: app on node1 answers again"
    )


# --- the policy records the facts -------------------------------------------------------


def _settings(mode: Mode, on_failed_start: bool = False) -> PolicySettings:
    return PolicySettings(
        mode=mode,
        restart_attempts=2,
        failure_window=300.0,
        startup_timeout=120.0,
        health_timeout=30.0,
        fall=3,
        step_down_cooldown=9.0,
        failover_on_failed_start=on_failed_start,
    )


def test_the_policy_records_a_crash_budget() -> None:
    policy = _policy(Mode.COLD_STANDBY)
    facts = []
    for n in range(1, 4):
        policy.handle(AppStarted(pid=n), 10.0 * n)
        policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), 10.0 * n + 0.5)
        actions = policy.handle(AppExited(n, -9, False, False, ""), 10.0 * n + 1)
        facts += [dict(a.data) for a in actions if isinstance(a, Alert | StepDown)]
    common = {
        WHAT: "app on node1 exited (killed by SIGKILL)",
        RESTART_ATTEMPTS: 2,
        FAILURE_WINDOW: 300.0,
    }
    assert facts == [
        {**common, FAILURE: 1, RESTART: 1},
        {**common, FAILURE: 2, RESTART: 2},
        {**common, FAILURE: 3},  # the step-down
        {**common, FAILURE: 3},  # and its failover alert
    ]


def test_the_policy_records_running_and_serving() -> None:
    policy = _policy(Mode.WARM_STANDBY)
    policy.handle(AppStarted(pid=1), 2.0)
    (running,) = policy.handle(StatusObserved(AppState.FIRST_RUN, "HTTP 200"), 3.0)
    assert isinstance(running, Record) and running.data == {SERVING: True}
    (waiting,) = policy.handle(StatusObserved(AppState.MAINTENANCE, "HTTP 200"), 4.0)
    assert isinstance(waiting, Record) and waiting.data == {SERVING: False}
    (back,) = policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), 5.0)
    assert isinstance(back, Record) and back.data == {SERVING: True}

    standby = Policy(_settings(Mode.WARM_STANDBY), "node2")
    standby.handle(Boot(), 0.0)
    standby.handle(AppStarted(pid=9), 1.0)
    standby.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), 2.0)
    (promoted,) = standby.handle(LeaseGained(2), 3.0)
    assert isinstance(promoted, Record) and promoted.data == {SERVING: True}


def test_a_second_failed_start_handover_says_why_not_in_data() -> None:
    """on_failed_start = "failover" hands over once; the second time a human decides, and
    the reason, absent from the old sentence's "not failing over: ...", is in the data."""
    policy = Policy(_settings(Mode.COLD_STANDBY, on_failed_start=True), "node1")
    policy.handle(Boot(), 0.0)
    rows: list[Row] = []
    t = 1.0
    pid = 0
    for epoch in (1, 3):
        policy.handle(LeaseGained(epoch), t)
        while True:
            t, pid = t + 1, pid + 1
            policy.handle(AppStarted(pid=pid), t)
            exited = AppExited(pid, 1, oom=False, expected=False, description="exited with code 1")
            actions = policy.handle(exited, t + 0.5)
            for action in actions:
                if isinstance(action, Alert | StepDown):
                    rows.append(recorded(t + 0.5, "node1", epoch, action))
            if not any(isinstance(action, StartApp) for action in actions):
                break
        t += 10
    lines = explain(history(*BOOT, *rows), tz=UTC)
    assert lines[0].startswith("no failover at 04:40:") and lines[0].endswith(
        "→ manual intervention required"
    )
    assert (
        "  why no failover: this node already handed over after failed starts and the other "
        "node could not start the app either"
    ) in lines
