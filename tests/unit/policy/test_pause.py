"""Pause and resume (the operator's commands): nothing is acted on while paused, the
history says what would have been done and who paused; resume acts on what is left."""

from __future__ import annotations

import pytest

from hakit.contract import AppState
from hakit.errors import InvalidTransition
from hakit.policy import (
    AppExited,
    Boot,
    HandoverEnded,
    LeaseLost,
    LeaseVacant,
    Role,
    Tick,
)
from tests.support.policy_builders import (
    ACTING,
    DOWN,
    ERROR,
    RUNNING,
    TIMEOUT,
    WARM,
    Node,
    Row,
    S,
    booted,
    crash,
    hang,
    paused,
    play,
    restart_cycle,
    resumed,
    running_active,
    starting_active,
    status,
    stopped,
    switchover,
)

PAUSE_ROWS: list[Row] = [
    Row(
        "pause: a crash is not restarted, the history says what would have been; resume restarts",
        running_active,
        [
            (1, paused(), ["record:pause"]),
            (5, crash(), ["record:paused"]),
            *[(30, Tick(), []) for _ in range(3)],
            (1, status(AppState.STOPPED), []),
            (1, LeaseVacant(), []),  # the active holds the lease: nothing to say
            (60, resumed(), ["start"]),
            *restart_cycle(),
        ],
        S.RUNNING,
        never=frozenset({"step-down", "alert:crash"}),
    ),
    Row(
        "pause: a hang past patience is not acted on, and said once",
        running_active,
        [
            (1, paused(), ["record:pause"]),
            *hang(1, span=29, count=3),
            (1, status(TIMEOUT), ["record:paused"]),
            *[(5, status(TIMEOUT), []) for _ in range(10)],
            (1, status(RUNNING), ["record:status"]),
        ],
        S.RUNNING,
        never=ACTING | {"kill"},
    ),
    Row(
        "pause: ERROR streak is held back; after resume the next ERROR restarts at once",
        running_active,
        [
            (1, paused(), ["record:pause"]),
            (1, status(ERROR, database_reachable=True), ["record:detected"]),
            (1, status(ERROR, database_reachable=True), []),
            (1, status(ERROR, database_reachable=True), ["record:paused"]),
            (1, status(ERROR, database_reachable=True), []),
            (1, resumed(), ["record:resume"]),
            (1, status(ERROR, database_reachable=True), ["stop", "alert:error"]),
        ],
        S.RESTARTING,
    ),
    Row(
        "pause: the startup deadline passes without a retry",
        starting_active,
        [
            (0, paused(), ["record:pause"]),
            (121, Tick(), ["record:paused"]),
            *[(30, Tick(), []) for _ in range(5)],
            (1, status(RUNNING), ["record:running"]),
        ],
        S.RUNNING,
        never=ACTING,
    ),
    Row(
        "pause: a standby does not take a free lease, and says it would",
        booted,
        [
            (0, paused(), ["record:pause"]),
            (5, LeaseVacant(), ["record:paused"]),
            (5, resumed(), ["record:resume"]),
            (1, LeaseVacant(), []),  # not paused: the lease loop takes it
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "pause: a lost lease still fences (safety is never paused)",
        running_active,
        [
            (0, paused(), ["record:pause"]),
            (1, LeaseLost(1, "could not renew in time"), ["kill", "alert:fence"]),
            (0.2, stopped(), ["record:fenced"]),
        ],
        S.STANDBY,
        end_role=Role.STANDBY,
    ),
    Row(
        "pause: the exit after a restart's stop does not start the app again",
        running_active,
        [
            *[
                (1, status(DOWN), sigs)
                for sigs in (["record:detected"], [], ["stop", "alert:crash"])
            ],
            (0, paused(), ["record:pause"]),
            (2, stopped(), ["record:paused"]),
            (2, resumed(), ["start"]),
        ],
        S.STARTING,
    ),
    Row(
        "pause before boot (warm standby): no self-start; resume starts the standby app",
        lambda: Node(WARM),
        [
            (0, paused(), ["record:pause"]),
            (0, Boot(), ["record:paused"]),
            (60, Tick(), []),
            (1, resumed(), ["start"]),
        ],
        S.STARTING,
        end_role=Role.STANDBY,
    ),
    Row(
        "resume when nothing was held back: recorded only",
        running_active,
        [(0, paused(), ["record:pause"]), (0, paused(), []), (5, resumed(), ["record:resume"])],
        S.RUNNING,
    ),
]


@pytest.mark.parametrize("row", PAUSE_ROWS, ids=[row.name for row in PAUSE_ROWS])
def test_pause_table(row: Row) -> None:
    play(row)


def test_pause_record_says_what_would_have_been_done_and_who_paused() -> None:
    node = running_active()
    node.feed(paused())
    node.feed(crash(), after=5)
    (reason,) = node.reasons("record:paused")
    assert reason.startswith("would start the app (app on node1 exited (killed by SIGKILL)")
    assert "operator:alice (maintenance) paused the cluster: no action" in reason
    view = node.policy.view()
    assert view.paused and view.state is S.PAUSED and view.role is Role.ACTIVE
    assert not view.app_running and view.failure_times == ()  # nothing counted while paused


def test_resume_reason_names_the_operator() -> None:
    node = running_active()
    node.feed(paused())
    node.feed(crash(), after=5)
    node.feed(resumed(), after=5)
    (reason,) = node.reasons("start")
    assert reason == (
        "operator:alice (done) resumed the cluster: the app on node1 is not running; starting it"
    )


def test_paused_nodes_never_lead_but_a_handover_target_does() -> None:
    node = booted(step_down_cooldown=9.0)
    assert node.policy.may_lead(node.now + 7)  # past the boot grace: no records, no wait
    node.feed(paused())
    assert not node.policy.may_lead(node.now + 1e6)
    node.feed(switchover("node1", "node2", 4))
    assert node.policy.may_lead(node.now)  # the operator's target, paused or not
    node.feed(HandoverEnded("done"))
    assert not node.policy.may_lead(node.now + 1e6)
    node.feed(resumed())
    assert node.policy.may_lead(node.now)


def test_a_held_back_event_that_raises_leaves_the_policy_unchanged() -> None:
    node = running_active()
    node.feed(paused())
    before = node.policy.view()
    with pytest.raises(InvalidTransition):
        node.policy.handle(AppExited(999, -9, False, False, ""), node.now)  # not our pid
    assert node.policy.view() == before
