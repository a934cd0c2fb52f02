"""Property-style: random plausible worlds (what a real agent, supervisor and coordinator would
feed the policy), with and without an operator pausing; random garbage raises cleanly."""

from __future__ import annotations

import random

import pytest

from hakit.config import Mode
from hakit.contract import AppState
from hakit.errors import InvalidTransition
from hakit.policy import (
    Action,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    LeaseGained,
    LeaseLost,
    LeaseVacant,
    Policy,
    PolicyEvent,
    PolicyState,
    Resumed,
    Role,
    StartApp,
    StatusObserved,
    StepDown,
    StopApp,
    Tick,
)
from tests.support.policy_builders import (
    ACTING,
    COLD,
    RESTART_ONLY,
    S,
    paused,
    resumed,
    settings,
    sig,
)


class World:
    """What a real agent, supervisor and coordinator would feed the policy.

    Carries out the policy's actions and checks the invariants on each one.
    """

    def __init__(self, policy: Policy, rng: random.Random) -> None:
        self.policy = policy
        self.rng = rng
        self.pid: int | None = None  # a process exists (running or stopping)
        self.stopping = False
        self.start_pending = False  # StartApp done; AppStarted/AppStartFailed due next
        self.holds_lease = False
        self.epoch = 0
        self.next_pid = 1000
        self.counts: dict[str, int] = {}
        self.now = 0.0

    def carry_out(
        self, actions: list[Action], state_before: PolicyState, operator: bool = False
    ) -> None:
        """``operator``: the actions come from ``reset()``, the one way out of MANUAL."""
        mode = self.policy.settings.mode
        for action in actions:
            name = sig(action)
            self.counts[name] = self.counts.get(name, 0) + 1
            assert action.reason.strip()
            if isinstance(action, StartApp):
                assert self.pid is None and not self.start_pending, "StartApp while a process runs"
                assert operator or state_before is not S.MANUAL
                if mode in (COLD, RESTART_ONLY):
                    assert self.holds_lease, "cold standby: the app runs only on the lease holder"
                self.start_pending = True
            elif isinstance(action, StopApp):
                assert self.pid is not None or self.start_pending, "StopApp without a process"
                self.stopping = True
            elif isinstance(action, StepDown):
                assert self.pid is None and not self.start_pending, "StepDown while the app runs"
                assert self.holds_lease and (operator or state_before is not S.MANUAL)
                assert mode is not RESTART_ONLY
                self.holds_lease = False

    def next_event(self) -> PolicyEvent:
        rng = self.rng
        if self.start_pending:  # the supervisor's start is synchronous
            self.start_pending = False
            if rng.random() < 0.1:
                return AppStartFailed("exec failed")
            self.next_pid += 1
            self.pid = self.next_pid
            return AppStarted(self.pid)
        roll = rng.random()
        if self.pid is not None and roll < 0.12:
            pid, expected = self.pid, self.stopping
            self.pid, self.stopping = None, False
            crash_oom = not expected and rng.random() < 0.3
            return AppExited(pid, 137 if crash_oom else -9, crash_oom, expected, "")
        if roll < 0.2 and not self.holds_lease and self.policy.may_lead(self.now):
            self.holds_lease = True
            self.epoch += rng.randint(1, 3)
            return LeaseGained(self.epoch)
        if roll < 0.23 and self.holds_lease:
            self.holds_lease = False
            return LeaseLost(self.epoch, "could not renew in time")
        if roll < 0.35:
            return Tick()
        # Mostly healthy, as real apps are, so runs reach the later paths too.
        state = AppState.RUNNING if rng.random() < 0.5 else rng.choice(list(AppState))
        reachable = rng.choice([True, False, None]) if state is AppState.ERROR else None
        return StatusObserved(state, "random", reachable)


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("seed", range(12))
def test_random_event_sequences_keep_invariants(mode: Mode, seed: int) -> None:
    rng = random.Random(seed * 31 + len(mode.value))
    policy = Policy(
        settings(
            mode,
            restart_attempts=rng.randint(0, 3),
            fall=rng.randint(1, 3),
            failure_window=rng.choice([60.0, 600.0]),
            startup_timeout=rng.choice([10.0, 120.0]),
            health_timeout=rng.choice([5.0, 30.0]),
            failover_on_failed_start=rng.random() < 0.5,
        ),
        "node1",
    )
    world = World(policy, rng)
    world.carry_out(policy.handle(Boot(), 0.0), S.INIT)
    for _ in range(600):
        world.now += rng.choice([0.0, 0.5, 1.0, 5.0, 30.0, 200.0])
        event = world.next_event()
        before = policy.state
        world.carry_out(policy.handle(event, world.now), before)
        view = policy.view()
        process_believed = world.pid is not None or world.start_pending
        assert view.app_running == process_believed, (event, view)
        assert (view.role is Role.ACTIVE) == world.holds_lease, (event, view)
        if view.state is S.STANDBY:
            assert view.role is Role.STANDBY and not view.app_running
        if mode in (COLD, RESTART_ONLY) and world.pid is not None and not world.stopping:
            assert world.holds_lease, "cold standby: a live app without the lease"
        if policy.state is S.MANUAL and world.pid is None and rng.random() < 0.2:
            world.carry_out(policy.reset(world.now), S.MANUAL, operator=True)
    # The sequences are long enough to exercise the interesting paths.
    assert (
        world.counts.get("start", 0) > 0
        and world.counts.get("stop", 0) + world.counts.get("kill", 0) > 0
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_garbage_either_raises_cleanly_or_is_handled(seed: int) -> None:
    """Any event in any state: InvalidTransition leaves the policy unchanged."""
    rng = random.Random(seed)
    policy = Policy(settings(rng.choice(list(Mode)), fall=1, restart_attempts=1), "node1")
    now = 0.0
    raised = handled = 0
    for _ in range(500):
        now += rng.choice([0.0, 1.0, 50.0])
        event = rng.choice(
            [
                Boot(),
                Tick(),
                LeaseGained(rng.randint(1, 40)),
                LeaseLost(rng.randint(1, 40), "lost"),
                AppStarted(rng.randint(1, 3)),
                AppStartFailed("no"),
                AppExited(rng.randint(1, 3), -9, rng.random() < 0.3, rng.random() < 0.5, ""),
                StatusObserved(rng.choice(list(AppState)), "x", rng.choice([True, False, None])),
            ]
        )
        before = policy.view()
        try:
            actions = policy.handle(event, now)
        except InvalidTransition as error:
            raised += 1
            assert policy.view() == before
            assert before.state.value == error.state
            continue
        handled += 1
        assert all(a.reason for a in actions)
    assert raised > 0 and handled > 0


@pytest.mark.parametrize("mode", list(Mode))
@pytest.mark.parametrize("seed", range(8))
def test_random_sequences_with_pauses_never_act_while_paused(mode: Mode, seed: int) -> None:
    """The random worlds above, with an operator pausing and resuming now and then."""
    rng = random.Random(seed * 17 + len(mode.value))
    policy = Policy(
        settings(mode, restart_attempts=rng.randint(0, 2), fall=rng.randint(1, 3)), "node1"
    )
    world = World(policy, rng)
    world.carry_out(policy.handle(Boot(), 0.0), S.INIT)
    for _ in range(600):
        world.now += rng.choice([0.0, 0.5, 1.0, 5.0, 30.0, 200.0])
        roll = rng.random()
        event: PolicyEvent
        if roll < 0.04:
            event = paused()
        elif roll < 0.07:
            event = resumed()
        elif roll < 0.09:
            event = LeaseVacant()
        else:
            event = world.next_event()
        was_paused = policy.view().paused
        before = policy.state
        actions = policy.handle(event, world.now)
        if was_paused and not isinstance(event, Resumed):
            acted = [sig(a) for a in actions if sig(a) in ACTING]
            assert not acted, (event, acted)
        world.carry_out(actions, before)
        view = policy.view()
        assert view.app_running == (world.pid is not None or world.start_pending), (event, view)
        assert (view.role is Role.ACTIVE) == world.holds_lease, (event, view)
        if view.state is S.PAUSED:
            assert not view.app_running and view.paused
        if mode in (COLD, RESTART_ONLY) and world.pid is not None and not world.stopping:
            assert world.holds_lease, "cold standby: a live app without the lease"
        if policy.state is S.MANUAL and world.pid is None and rng.random() < 0.2:
            world.carry_out(policy.reset(world.now), S.MANUAL, operator=True)
