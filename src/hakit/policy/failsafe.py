"""Failsafe mode (``[coordination] failsafe = true``): the decisions, pure.

The idea is Patroni's ``failsafe_mode``: when the coordination store cannot be
reached, the active node keeps serving only while every other node's agent confirms,
over the authenticated admin API, that it is not promoting and will not. Without it
(the default) the active fences itself at its lease deadline, as always.

The protocol, and why it never lets two nodes serve at once:

- **The active asks** (``round_due``): once its lease has gone unrenewed for more
  than one and a half renewal intervals, every renewal interval, it notes the time
  ``sent`` on its monotonic clock and asks every other configured node's agent at
  once: "I am NODE holding epoch E; confirm you are not promoting", each answer
  awaited at most ``FailsafeTimes.ask_timeout``.
- **A node confirms** (``answer``) only if it holds no lease itself and either cannot
  read the store itself within ``store_check``, or reads the asker's lease of epoch E
  still valid there, or reads it expired but cannot write to the store either. Before
  it answers it has promised: it takes no lease, by election or by a forced failover,
  until ``hold`` after it was asked on its own clock (``Policy.hold_failsafe``; the
  policy's ``may_lead`` honours it even when the store comes back to this node first,
  showing the lease expired). A takeover that was already in flight (a locked store
  holds it for its busy timeout) and succeeds while the promise holds is given back,
  never acted under: the decision and the check run in one step of the event loop.
- **The active extends** (``judge_round``): only when every other node confirmed does
  its serving deadline become ``sent + period - margin``; the watchdog thread and the
  app's shim are re-armed with it. Any missing confirmation extends nothing: the
  deadline of the last complete round (or of the last renewal) stands and the active
  fences there, as without failsafe mode.

Each promise was made after ``sent`` and lasts ``hold = period + lease_ttl`` from
then, so it outlasts the deadline it bought by more than a lease TTL:
``sent + period - margin < asked + period + ttl``. A node can therefore only take the
lease once every active serving on failsafe confirmations has fenced itself. An
agent that restarts has forgotten its promises: with failsafe on it does not lead
for ``hold`` after it starts (``boot_hold``). When the store is back, the active
renews under its own epoch as always (a compare-and-set: if another node had taken
the lease, it fences at once).

The agent (hakit.agent.failsafe) does the asking and the answering over HTTP; this
module only decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hakit.history.facts import (
    FAILSAFE_FENCED,
    FAILSAFE_NO_PROMOTION,
    FAILSAFE_RECOVERED,
    FAILSAFE_REFUSED,
    FAILSAFE_SERVING,
)

# data["failsafe"] of a failsafe event (hakit.history.facts.FAILSAFE): which case it was.
SERVING = FAILSAFE_SERVING
FENCED = FAILSAFE_FENCED
NO_PROMOTION = FAILSAFE_NO_PROMOTION
REFUSED = FAILSAFE_REFUSED
RECOVERED = FAILSAFE_RECOVERED


@dataclass(frozen=True, slots=True)
class FailsafeTimes:
    """The failsafe timers, all derived from the lease's (``failsafe_times``)."""

    period: float  # how long one complete round lets the active serve, from ``sent``
    ask_timeout: float  # how long the active waits for each node's answer
    store_check: float  # how long a node asked reads the store before calling it unreachable
    hold: float  # how long a confirming node takes no lease, from when it was asked
    margin: float  # the self-fence margin: stop this much before the period ends
    due_after: float  # a round is due once the lease went unrenewed this long
    every: float  # rounds follow each other this often while the store stays down


def failsafe_times(ttl: float, renew: float, margin: float) -> FailsafeTimes:
    """One lease TTL of serving per round; a promise lasts that plus one TTL more."""
    return FailsafeTimes(
        period=ttl,
        ask_timeout=renew / 2,
        store_check=renew / 4,
        hold=2 * ttl,
        margin=margin,
        due_after=1.5 * renew,
        every=renew,
    )


def round_due(now: float, renewed_at: float, last_round: float, times: FailsafeTimes) -> bool:
    """Should the active ask the other nodes now? Only once its lease has gone unrenewed
    for ``due_after`` (a renewal in flight on a slow store counts as unrenewed), and not
    more often than ``every``."""
    return now - renewed_at >= times.due_after and now - last_round >= times.every


@dataclass(frozen=True, slots=True)
class StoreRead:
    """What a node asked to confirm sees of the store itself, read just then."""

    reachable: bool  # its read of the lease answered within ``store_check``
    holder: str | None = None  # the lease read (None: no lease stored)
    epoch: int = 0
    valid: bool = False  # the lease read had not expired (the store's own judgement)
    writes_failing: bool = False  # this node's own writes to the store are failing
    error: str = ""  # why it is unreachable, in words


@dataclass(frozen=True, slots=True)
class Answer:
    """A node's answer to the active's question: confirm (and promise), or why not."""

    confirm: bool
    reason: str


def answer(
    asker: str,
    epoch: int,
    *,
    me: str,
    held_epoch: int,
    store: StoreRead,
) -> Answer:
    """Does node ``me`` confirm to ``asker`` (holding ``epoch``) that it is not promoting?

    ``held_epoch``: the epoch of the lease ``me`` holds (0: none). Confirming means ``me``
    promises; a call that hands ``me`` the lease while the promise holds (one in flight
    when it was made) is given back, never acted under (``LeaseKeeper``)."""
    if asker == me:
        return Answer(False, f"{me} cannot confirm its own failsafe request")
    if epoch <= 0:
        return Answer(False, f"{asker} asked without an epoch; it holds no lease")
    if held_epoch:
        return Answer(False, f"{me} holds the lease itself (epoch {held_epoch})")
    if not store.reachable:
        why = f" ({store.error})" if store.error else ""
        return Answer(
            True, f"{me} cannot reach the coordination store either{why}: it will not promote"
        )
    if store.holder is None:
        return Answer(
            False,
            f"the store answers {me} and holds no lease: {asker} is cut off from it alone",
        )
    if (store.holder, store.epoch) != (asker, epoch):
        return Answer(
            False,
            f"the store answers {me} and shows the lease held by {store.holder} under epoch "
            f"{store.epoch}, not by {asker} under epoch {epoch}",
        )
    if store.valid:
        return Answer(
            True,
            f"the store answers {me} and shows {asker}'s lease of epoch {epoch} still valid: "
            "it will not promote",
        )
    if store.writes_failing:
        return Answer(
            True,
            f"the store shows {asker}'s lease of epoch {epoch} expired but refuses {me}'s "
            "writes too: it will not promote",
        )
    return Answer(
        False,
        f"the store answers {me} and shows {asker}'s lease of epoch {epoch} expired: "
        f"{asker} is cut off from it alone and must fence",
    )


@dataclass(frozen=True, slots=True)
class RoundVerdict:
    """What one round of confirmations means for the active."""

    serve_until: float | None  # the new serving deadline (None: nothing extended)
    confirmed: tuple[str, ...]  # the nodes that confirmed
    missing: tuple[tuple[str, str], ...]  # (node, why) of each that did not
    reason: str


def judge_round(
    others: Sequence[str],
    answers: Mapping[str, Answer | str],
    *,
    sent: float,
    deadline: float,
    times: FailsafeTimes,
) -> RoundVerdict:
    """The active asked ``others`` at ``sent`` (monotonic); ``answers`` holds each node's
    Answer, or in words why none came (refused connection, timeout, wrong token...).

    Every other node confirmed: serve until ``sent + period - margin`` (never earlier than
    ``deadline``, the one held already). Otherwise nothing is extended."""
    confirmed: list[str] = []
    missing: list[tuple[str, str]] = []
    for node in others:
        got = answers.get(node, "no answer")
        if isinstance(got, Answer) and got.confirm:
            confirmed.append(node)
        elif isinstance(got, Answer):
            missing.append((node, got.reason))
        else:
            missing.append((node, got))
    if missing:
        words = "; ".join(f"{node} did not confirm ({why})" for node, why in missing)
        return RoundVerdict(None, tuple(confirmed), tuple(missing), words)
    until = max(deadline, sent + times.period - times.margin)
    count = len(confirmed)
    nodes = ", ".join(confirmed) if confirmed else "no other node to ask"
    reason = (
        f"failsafe: serving on {count} confirmation{'s' if count != 1 else ''} ({nodes}) "
        "while the coordination store is unreachable"
    )
    return RoundVerdict(until, tuple(confirmed), (), reason)


def promise_until(asked_at: float, times: FailsafeTimes) -> float:
    """Until when (this node's monotonic clock) a node that confirmed takes no lease."""
    return asked_at + times.hold


def boot_hold(started_at: float, times: FailsafeTimes) -> float:
    """An agent that starts may have promised before it restarted: it takes no lease
    until then (its own clock; a promise is never longer than ``hold``)."""
    return started_at + times.hold
