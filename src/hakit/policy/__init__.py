"""The policy: what one node's agent does, as a pure state machine (no I/O, no clock reads).

- machine.py     ``Policy``: ``handle(event, now) -> actions``; the app's life cycle and
                 the transition table
- vocabulary.py  settings, the events the policy is fed, the actions it returns (plain data)
- base.py        the policy's state and the steps every part shares
- failures.py    the restart budget: restart, fail over, or give up
- handover.py    switchover, forced failover, the routers' lost path
- pause.py       the operator's pause
- rules.py       pure rules: what an observation means, when a streak is a failure
- replication.py replicated storage: may a standby's copy be promoted (max_lag, forced)
- failsafe.py    failsafe mode: when to ask, whether to confirm, what a round of
                 confirmations lets the active do (the store unreachable)

Callers import from here: ``Policy`` and the vocabulary.
"""

from hakit.policy.machine import Policy
from hakit.policy.vocabulary import (
    Action,
    Alert,
    AppExited,
    AppStarted,
    AppStartFailed,
    Boot,
    Drain,
    EndHandover,
    HandoverEnded,
    HandoverRequested,
    LeaseGained,
    LeaseLost,
    LeaseVacant,
    PathLost,
    Paused,
    PolicyEvent,
    PolicySettings,
    PolicyState,
    PolicyView,
    Record,
    RequestHandover,
    Resumed,
    Role,
    StartApp,
    StatusObserved,
    StepDown,
    StopApp,
    TakeLease,
    Tick,
)

__all__ = [
    "Action",
    "Alert",
    "AppExited",
    "AppStartFailed",
    "AppStarted",
    "Boot",
    "Drain",
    "EndHandover",
    "HandoverEnded",
    "HandoverRequested",
    "LeaseGained",
    "LeaseLost",
    "LeaseVacant",
    "PathLost",
    "Paused",
    "Policy",
    "PolicyEvent",
    "PolicySettings",
    "PolicyState",
    "PolicyView",
    "Record",
    "RequestHandover",
    "Resumed",
    "Role",
    "StartApp",
    "StatusObserved",
    "StepDown",
    "StopApp",
    "TakeLease",
    "Tick",
]
