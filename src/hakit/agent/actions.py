"""The agent's action dispatch: each policy event decided, each action the policy returns
carried out by the part of the agent that owns it.

The policy (hakit.policy) decides and the agent only does; this module is where the
two meet. ``ActionRunner.handle`` hands one event to the policy and carries out the
actions it returns, in order; ``execute`` maps each kind of action to what does it:
the app's supervisor (StartApp, StopApp), the lease keeper (StepDown), the operator
side (Drain, TakeLease, RequestHandover, EndHandover; hakit.agent.operator_side),
replicated storage's gates (hakit.agent.replication), the history and the notifier
(Record, Alert). It is a module of its own so that the agent (hakit.agent.agent) keeps
to wiring its parts and running its loops, and the one match over every action stays
in one place: it is exhaustive (``assert_never``), so an action added to the policy
fails the type check here until it is carried out.

Two orders matter. A start's outcome (AppStarted or AppStartFailed) is handled at once,
inside the StartApp that caused it, before any other queued event. A replicated
generation being swapped in finishes before the app starts, and a planned step-down
ships a final generation before the lease is given back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import assert_never

from hakit.agent.lease import LeaseKeeper
from hakit.agent.operator_side import OperatorSide
from hakit.agent.replication import ReplicationSide
from hakit.contract import EPOCH_VARIABLE, AppState
from hakit.errors import InvalidTransition, SupervisorError
from hakit.history.kinds import CAUSE, EventKind
from hakit.notify import Notifier
from hakit.policy import (
    Action,
    Alert,
    AppStarted,
    AppStartFailed,
    Drain,
    EndHandover,
    Policy,
    PolicyEvent,
    Record,
    RequestHandover,
    StartApp,
    StepDown,
    StopApp,
    TakeLease,
)
from hakit.supervisor.launch import check_port_free
from hakit.supervisor.process import AppProcess


class ActionRunner:
    """See the module's doc. ``record`` is the agent's history record (kind, reason, *,
    epoch=, data=, actor=), ``publish`` queues its node record, ``set_app_state`` sets
    the app state that record and the probes read."""

    def __init__(
        self,
        node: str,
        port: int,
        policy: Policy,
        app: AppProcess,
        lease: LeaseKeeper,
        operator: OperatorSide,
        replication: ReplicationSide,
        notifier: Notifier,
        *,
        monotonic: Callable[[], float],
        record: Callable[..., None],
        publish: Callable[[], None],
        set_app_state: Callable[[AppState], None],
    ) -> None:
        self.node = node
        self.port = port
        self.policy = policy
        self.app = app
        self.lease = lease
        self.operator = operator
        self.replication = replication
        self.notifier = notifier
        self.monotonic = monotonic
        self.record = record
        self.publish = publish
        self.set_app_state = set_app_state

    async def handle(self, event: PolicyEvent) -> None:
        try:
            actions = self.policy.handle(event, self.monotonic())
        except InvalidTransition as error:
            # A bug, not a cluster problem: keep the node supervised and say so.
            self.record(EventKind.INTERNAL, str(error))
            return
        for action in actions:
            await self.execute(action)
        self.publish()

    async def execute(self, action: Action) -> None:
        match action:
            case StartApp():
                self.record(EventKind.START, action.reason, actor=action.actor)
                self.operator.draining = False
                self.set_app_state(AppState.STARTING)
                self.publish()
                # The policy must hear how the start went before any other event.
                await self.replication.settled()  # a replicated generation's swap ends first
                try:
                    self.replication.app_starting()  # its generation marked first
                    await check_port_free(self.port)
                    pid = await self.app.start({EPOCH_VARIABLE: str(self.lease.epoch)})
                except SupervisorError as error:
                    self.set_app_state(AppState.STOPPED)
                    await self.handle(AppStartFailed(str(error)))
                else:
                    await self.handle(AppStarted(pid))
            case StopApp():
                self.record(EventKind.STOP, action.reason, actor=action.actor, data=action.data)
                self.set_app_state(AppState.STOPPING)
                self.publish()
                if action.kill:
                    await self.app.kill()
                else:
                    await self.app.stop(action.reason)
            case StepDown():
                # Replicated storage, a planned switchover: a final generation first.
                abandoned = await self.replication.before_release(self.app.running)
                if abandoned is not None:
                    await self.operator.end_handover(EndHandover(abandoned, action.actor))
                self.operator.draining = False
                epoch, released = await self.lease.step_down()
                self.record(
                    action.kind,
                    action.reason
                    + ("" if released else " (lease was not held; it will expire on its own)"),
                    epoch=epoch,
                    actor=action.actor,
                    data=action.data,
                )
            case Alert():
                self.record(
                    EventKind.ALERT,
                    action.reason,
                    data={
                        **action.data,
                        "alert": action.kind,
                        "manual_intervention": action.manual_intervention,
                        **({CAUSE: action.cause} if action.cause else {}),
                    },
                )
                await self.notifier.alert(
                    action.kind,
                    self.node,
                    action.reason,
                    manual_intervention=action.manual_intervention,
                    epoch=self.lease.epoch,
                )
            case Record():
                self.record(action.kind, action.reason, actor=action.actor, data=action.data)
            case Drain():
                await self.operator.drain(action)
            case TakeLease():
                forced = bool((self.operator.intents.handover or {}).get("force"))
                if self.replication.allows_takeover(forced):  # replicated storage: max_lag
                    await self.operator.take_lease_by_force(action)
            case EndHandover():
                await self.operator.end_handover(action)
            case RequestHandover():
                await self.operator.request_handover(action)
            case _:
                assert_never(action)
