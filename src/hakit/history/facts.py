"""The facts events carry in ``data`` beside their sentence, named once, and the words
for the numbers among them.

The policy (hakit.policy.failures, hakit.policy.machine) and the agent put these facts
in the events they record; ``hakit why`` (hakit.history.reading) reads them there,
never out of the sentence, and words them with the same ``human_duration`` and
``ordinal`` the policy's sentences use. The cause of a lease loss, a shutdown or a
step-down is keyed in hakit.history.kinds (``CAUSE``, ``LOST_EPOCH``).

No hakit imports: the policy, the agent and ``hakit why`` all take their keys from here.
"""

from __future__ import annotations

from typing import Final

# A failure alert, a step-down and a lost lease: what went wrong, in words, without what
# is done about it ("app on node1 exited (killed by SIGKILL)").
WHAT: Final = "what"

# The restart budget (failover.restart_attempts within failover.failure_window).
FAILURE: Final = "failure"  # this failure is the Nth within the window
RESTART: Final = "restart"  # it led to restart n of RESTART_ATTEMPTS
RESTART_ATTEMPTS: Final = "restart_attempts"  # the budget, as configured
FAILURE_WINDOW: Final = "failure_window"  # seconds, as configured

# Failed starts: a retry k of RESTART_ATTEMPTS, or k failed starts in a row (used up).
RETRY: Final = "retry"
FAILED_STARTS: Final = "failed_starts"

# Manual intervention: why the node does not fail over, in words ("another node would
# fail to start too", "restart-only mode has no standby to fail over to").
NO_FAILOVER: Final = "no_failover"

# A running / status / promoted record: whether the app serves (it answered RUNNING or
# FIRST_RUN; a warm standby promoted with its app already running).
SERVING: Final = "serving"

# Failsafe mode (hakit.policy.failsafe), a ``failsafe`` event: which case it was
# (FAILSAFE_SERVING, ...), the nodes
# that confirmed, and those that did not with why ({node: why}).
FAILSAFE: Final = "failsafe"
FAILSAFE_SERVING: Final = "serving"  # the active kept serving on every other node's word
FAILSAFE_FENCED: Final = "fenced"  # the active fenced: a node did not confirm
FAILSAFE_NO_PROMOTION: Final = "no-promotion"  # a node confirmed: the store is unreachable
FAILSAFE_REFUSED: Final = "refused"  # a node did not confirm (the store answers it, or it leads)
FAILSAFE_RECOVERED: Final = "recovered"  # the active renewed its lease in the store again
CONFIRMED: Final = "confirmed"
MISSING: Final = "missing"
ASKER: Final = "asker"  # the active that asked a node to confirm


def human_duration(seconds: float) -> str:
    """600 -> '10m', 30 -> '30s', 1.25 -> '1.2s', 5400 -> '1.5h'."""
    if seconds >= 3600 and seconds % 360 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 60 and seconds % 6 == 0:
        return f"{seconds / 60:g}m"
    if seconds >= 10:
        return f"{seconds:.0f}s"
    return f"{seconds:.1f}s"


def ordinal(n: int) -> str:
    """1 -> '1st', 2 -> '2nd', 11 -> '11th', 23 -> '23rd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# Replicated storage (hakit.policy.replication), a ``replication`` event at a promotion:
# the data-loss window (seconds: the age of the generation the node starts from; absent
# when the node's own data was current), the generation, and whether it was forced.
DATA_LOSS_WINDOW: Final = "data_loss_window"
GENERATION: Final = "generation"
FORCED: Final = "forced"
