"""Each vocabulary defined once (hakit.history.kinds, config.values.STICKY_COOKIES), and
``hakit why`` reading the facts events carry in their data, not their sentences."""

from __future__ import annotations

from datetime import UTC

from hakit.config import DEFAULT_NOTIFY_EVENTS, NOTIFY_EVENTS, Mode, Sticky
from hakit.config.values import STICKY_COOKIES
from hakit.contract import AppState
from hakit.history.facts import WHAT
from hakit.history.kinds import (
    CAUSE,
    FAILURE_KINDS,
    LOST_EPOCH,
    RESTART_KINDS,
    AlertKind,
    EventCause,
    EventKind,
    NotifyGroup,
)
from hakit.history.kinds import (
    NOTIFY_EVENTS as SELECTABLE,
)
from hakit.history.why import explain
from hakit.notify.base import selected
from hakit.policy import Alert, AppExited, AppStarted, LeaseLost, StartApp, StatusObserved, StopApp
from tests.unit.history.test_why import BOOT, LOST, Row, _policy, history


def test_every_notify_selector_has_an_explicit_default() -> None:
    assert set(SELECTABLE) == {*AlertKind, *NotifyGroup}
    assert all(isinstance(on, bool) for on in SELECTABLE.values())


def test_notify_lists_are_todays() -> None:
    # Derived from the registry, they are still the strings configs have always used.
    assert NOTIFY_EVENTS == (
        "failover",
        "restart",
        "manual-intervention",
        "fence",
        "database",
        "oom",
        "failed-start",
        "crash",
        "hang",
        "failsafe",
        "snapshot",
        "backup",
        "error",
    )
    assert DEFAULT_NOTIFY_EVENTS == NOTIFY_EVENTS[:-1]
    assert all(type(name) is str for name in (*NOTIFY_EVENTS, *DEFAULT_NOTIFY_EVENTS))


def test_restart_selector_and_kind_groups() -> None:
    assert RESTART_KINDS == {"crash", "oom", "hang", "error"}
    assert FAILURE_KINDS == {*RESTART_KINDS, "failed-start"}
    assert selected("hang", False, {"restart"})  # a plain string from the store still matches
    assert not selected("database", False, {"restart"})
    assert selected("database", True, {"manual-intervention"})


def test_kinds_are_the_stored_strings() -> None:
    assert (
        AlertKind.FAILED_START == "failed-start" and f"{AlertKind.FAILED_START}" == "failed-start"
    )
    assert EventKind.PATH_LOSS == "path-loss" and str(EventKind.ALERT) == "alert"


def test_every_sticky_strategy_describes_itself() -> None:
    assert set(STICKY_COOKIES) == set(Sticky)
    for words in STICKY_COOKIES.values():
        words.format(cookie_name="c", app_cookie_name="a")  # no other placeholder


# --- hakit why reads data ----------------------------------------------------------------


def test_the_policy_puts_a_lease_loss_in_data() -> None:
    policy = _policy(Mode.COLD_STANDBY)
    policy.handle(AppStarted(pid=7), 2.0)
    policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), 3.0)
    actions = policy.handle(LeaseLost(1, "could not renew"), 4.0)
    stop = next(a for a in actions if isinstance(a, StopApp))
    assert stop.kill and stop.data == {
        CAUSE: EventCause.LEASE_LOST,
        LOST_EPOCH: 1,
        WHAT: "node1 lost the leader lease (epoch 1: could not renew)",
    }


def test_the_policy_marks_a_step_down_alert() -> None:
    """An app that keeps answering ERROR: restarted, then stopped to step down."""
    policy = _policy(Mode.COLD_STANDBY)
    causes: list[str] = []
    t, pid = 100.0, 1
    policy.handle(AppStarted(pid=pid), t)
    policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), t)
    for _ in range(200):
        t += 15
        actions = policy.handle(StatusObserved(AppState.ERROR, "broken", True), t)
        causes += [a.cause for a in actions if isinstance(a, Alert)]
        if any(isinstance(a, StopApp) for a in actions):
            exited = AppExited(pid, 0, oom=False, expected=True, description="")
            if not any(isinstance(a, StartApp) for a in policy.handle(exited, t + 1)):
                break
            pid += 1
            policy.handle(AppStarted(pid=pid), t + 2)
            policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), t + 3)
    assert causes[-1] == EventCause.STEP_DOWN
    assert all(cause == "" for cause in causes[:-1])


def test_why_reads_a_shutdown_from_data_not_the_sentence() -> None:
    shutdown = {CAUSE: EventCause.SHUTDOWN}
    events = history(
        *BOOT,
        Row(40.0, "node1", 1, "stop", "node1's agent stops (worded anyhow)", shutdown),
        Row(40.1, "node1", 1, "lease", "node1 let go of its lease", shutdown),
        Row(40.6, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    )
    assert explain(events, tz=UTC)[0] == (
        "node1 handed over to node2 at 04:40:40 (epoch 1 → 2): the agent on node1 was "
        "shut down and released the lease"
    )


def test_why_reads_a_lost_lease_from_data() -> None:
    lost = {CAUSE: EventCause.LEASE_LOST, LOST_EPOCH: 1}
    events = history(
        *BOOT,
        Row(30.0, "node1", 0, "stop", LOST, lost),
        Row(33.0, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    )
    assert explain(events, tz=UTC)[0].startswith(
        "node1 failed over to node2 at 04:40:33 (epoch 1 → 2): node1 lost the leader lease"
    )
    # A cause in the data is the whole truth: the same sentence with another cause is not
    # a lease loss (the sentence is read only for events recorded without a cause).
    other = {CAUSE: EventCause.SHUTDOWN}
    events = history(
        *BOOT,
        Row(30.0, "node1", 0, "stop", LOST, other),
        Row(33.0, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    )
    assert "lost the leader lease" not in explain(events, tz=UTC)[0]
