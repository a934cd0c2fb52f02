"""Impossible transitions raise InvalidTransition naming the state and the event, and change nothing."""

from __future__ import annotations

import pytest

from hakit.errors import HakitError, InvalidTransition
from hakit.policy import (
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    HandoverEnded,
    LeaseGained,
    LeaseVacant,
    PolicyEvent,
    Resumed,
    Tick,
)
from tests.support.policy_builders import (
    S,
    crash,
    in_state,
    paused,
    running_active,
    switchover,
)

IMPOSSIBLE: list[tuple[str, PolicyEvent, str]] = [
    ("INIT", Tick(), "Tick"),
    ("INIT", LeaseGained(1), "LeaseGained"),
    ("STANDBY", Boot(), "Boot"),
    ("STANDBY", AppStarted(5), "AppStarted"),
    ("STANDBY", AppExited(5, 0, False, False, ""), "AppExited"),
    ("STANDBY", AppStartFailed("x"), "AppStartFailed"),
    ("STARTING", AppStarted(5), "AppStarted"),  # no StartApp is waiting any more
    ("STARTING", AppExited(101, 0, False, True, ""), "AppExited"),  # nobody asked for a stop
    ("STARTING", LeaseGained(2), "LeaseGained"),  # already active
    ("RUNNING", AppExited(999, -9, False, False, ""), "AppExited"),  # not our pid
    ("RUNNING", AppStartFailed("x"), "AppStartFailed"),
    ("RUNNING", Boot(), "Boot"),
    ("MANUAL", AppStarted(5), "AppStarted"),
]


@pytest.mark.parametrize(("state", "event", "event_name"), IMPOSSIBLE)
def test_impossible_event_raises_naming_state_and_event(
    state: str, event: PolicyEvent, event_name: str
) -> None:
    node = in_state(state)
    before = node.policy.view()
    with pytest.raises(InvalidTransition) as caught:
        node.policy.handle(event, node.now + 1)
    assert isinstance(caught.value, HakitError)
    assert caught.value.state == state
    assert event_name in caught.value.event and state in str(caught.value)
    assert node.policy.view() == before  # an impossible event changes nothing


OPERATOR_IMPOSSIBLE: list[tuple[str, PolicyEvent, str]] = [
    ("INIT", Resumed("a", "b"), "Resumed"),
    ("INIT", switchover(), "HandoverRequested"),
    ("INIT", HandoverEnded("x"), "HandoverEnded"),
    ("INIT", LeaseVacant(), "LeaseVacant"),
    ("PAUSED", AppStarted(5), "AppStarted"),
    ("PAUSED", AppExited(5, 0, False, False, ""), "AppExited"),
    ("PAUSED", Boot(), "Boot"),
]


@pytest.mark.parametrize(("state", "event", "event_name"), OPERATOR_IMPOSSIBLE)
def test_impossible_operator_events_raise(state: str, event: PolicyEvent, event_name: str) -> None:
    if state == "PAUSED":
        node = running_active()
        node.feed(paused())
        node.feed(crash())
        assert node.policy.state is S.PAUSED
    else:
        node = in_state(state)
    before = node.policy.view()
    with pytest.raises(InvalidTransition) as caught:
        node.policy.handle(event, node.now + 1)
    assert caught.value.state == state and event_name in caught.value.event
    assert node.policy.view() == before
