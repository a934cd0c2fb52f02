"""Health of a proxy's targets: a pure check state machine, and a board of them.

One machine per target (a cluster node behind the HTTP router, an upstream of
a TCP proxy), like HAProxy's server check: it is fed check results with
``now`` and answers the transitions they cause, each with a reason. No I/O
and no clock reads here; checks.py and tcp.py do the checking.

States:

- UNKNOWN: no verdict yet (nothing checked, or the verdict was reset because a
  new app instance took over). Routable: whoever publishes the target's state
  (the node's agent) still gates routing.
- UP: answered and serving.
- DRAIN: answered, but the app says it takes no new users (STARTING, STOPPING,
  MAINTENANCE): sticky users stay, new ones go elsewhere.
- DOWN: failed ``fall`` checks in a row, or failed real traffic; needs ``rise``
  answers in a row to come back.

Why the asymmetry: a failed check may be a lost packet or a GC pause, so going
down needs ``fall`` failures in a row; a DOWN target must prove it is back
with ``rise`` answers. An answer that says "drain" or "serving" is certain (the
app itself said so), so between UP and DRAIN the machine moves at once.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final


class HealthState(enum.StrEnum):
    UNKNOWN = "UNKNOWN"
    UP = "UP"
    DRAIN = "DRAIN"
    DOWN = "DOWN"


class ResultKind(enum.StrEnum):
    OK = "ok"  # answered and serving
    DRAIN = "drain"  # answered: not for new users (STARTING, STOPPING, MAINTENANCE)
    FAIL = "fail"  # a failed check: counts toward `fall`
    DEAD = "dead"  # a certain failure on real traffic (connect refused): down at once


@dataclass(frozen=True, slots=True)
class Result:
    kind: ResultKind
    detail: str  # one sentence: what the check saw


def ok(detail: str = "answered") -> Result:
    return Result(ResultKind.OK, detail)


def drain(detail: str) -> Result:
    return Result(ResultKind.DRAIN, detail)


def fail(detail: str) -> Result:
    return Result(ResultKind.FAIL, detail)


def dead(detail: str) -> Result:
    return Result(ResultKind.DEAD, detail)


@dataclass(frozen=True, slots=True)
class Check:
    """One target's machine state."""

    state: HealthState = HealthState.UNKNOWN
    streak: int = 0  # consecutive results counting toward the pending transition
    since: float = 0.0  # monotonic time the state was entered
    last: str = ""  # the last result's detail


@dataclass(frozen=True, slots=True)
class Transition:
    old: HealthState
    new: HealthState
    reason: str


# --- the table ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Stay:
    """No transition; the streak starts over."""


@dataclass(frozen=True, slots=True)
class _Move:
    """Move at once."""

    to: HealthState


@dataclass(frozen=True, slots=True)
class _Count:
    """Count toward ``threshold`` ("fall" or "rise"); move when it is reached."""

    threshold: str
    to: HealthState


_Rule = _Stay | _Move | _Count
S, R = HealthState, ResultKind

TRANSITIONS: Final[dict[tuple[HealthState, ResultKind], _Rule]] = {
    (S.UNKNOWN, R.OK): _Move(S.UP),
    (S.UNKNOWN, R.DRAIN): _Move(S.DRAIN),
    (S.UNKNOWN, R.FAIL): _Count("fall", S.DOWN),
    (S.UNKNOWN, R.DEAD): _Move(S.DOWN),
    (S.UP, R.OK): _Stay(),
    (S.UP, R.DRAIN): _Move(S.DRAIN),
    (S.UP, R.FAIL): _Count("fall", S.DOWN),
    (S.UP, R.DEAD): _Move(S.DOWN),
    (S.DRAIN, R.OK): _Move(S.UP),
    (S.DRAIN, R.DRAIN): _Stay(),
    (S.DRAIN, R.FAIL): _Count("fall", S.DOWN),
    (S.DRAIN, R.DEAD): _Move(S.DOWN),
    # Back from DOWN: `rise` answers in a row, serving or draining alike (both prove
    # the path works); the state it lands in is the last answer's.
    (S.DOWN, R.OK): _Count("rise", S.UP),
    (S.DOWN, R.DRAIN): _Count("rise", S.DRAIN),
    (S.DOWN, R.FAIL): _Stay(),
    (S.DOWN, R.DEAD): _Stay(),
}


def step(
    check: Check, result: Result, now: float, *, fall: int, rise: int
) -> tuple[Check, Transition | None]:
    """Feed one result: the new machine state and the transition it caused, if any."""
    rule = TRANSITIONS[(check.state, result.kind)]
    if isinstance(rule, _Stay):
        return Check(check.state, 0, check.since, result.detail), None
    if isinstance(rule, _Move):
        if rule.to is check.state:
            return Check(check.state, 0, check.since, result.detail), None
        reason = _move_reason(rule.to, result)
        return Check(rule.to, 0, now, result.detail), Transition(check.state, rule.to, reason)
    needed = fall if rule.threshold == "fall" else rise
    streak = check.streak + 1
    if streak < needed:
        return Check(check.state, streak, check.since, result.detail), None
    reason = _count_reason(rule, streak, result)
    return Check(rule.to, 0, now, result.detail), Transition(check.state, rule.to, reason)


def _move_reason(to: HealthState, result: Result) -> str:
    if result.kind is ResultKind.DEAD:
        return f"failed on real traffic: {result.detail}"
    if to is HealthState.DRAIN:
        return f"{result.detail}: no new users, sticky users stay"
    return result.detail


def _count_reason(rule: _Count, streak: int, result: Result) -> str:
    if rule.threshold == "fall":
        return f"{streak} failed checks in a row (fall {streak}); last: {result.detail}"
    return f"{streak} answers in a row (rise {streak}); last: {result.detail}"


# --- the board ------------------------------------------------------------------------


class HealthBoard:
    """One machine per target, read on the hot path; fed by the checkers.

    ``routable`` is a set lookup (the set changes only on transitions), so the
    router can ask it for every request. Targets never fed are routable.
    """

    def __init__(self, fall: int, rise: int, names: Iterable[str] = ()) -> None:
        if fall < 1 or rise < 1:
            raise ValueError(f"fall and rise must be at least 1 (got fall={fall}, rise={rise})")
        self.fall = fall
        self.rise = rise
        self._checks: dict[str, Check] = {name: Check() for name in names}
        self._unroutable: set[str] = set()  # DOWN or DRAIN: both read per request, as sets
        self._draining: set[str] = set()
        self._up_since: dict[str, float] = {}
        self._reasons: dict[str, str] = {}  # the last transition's reason, for observability

    # --- the hot path ---------------------------------------------------------------

    def routable(self, name: str) -> bool:
        """New users may go there: UP, or no verdict yet (UNKNOWN)."""
        return name not in self._unroutable

    def answering(self, name: str) -> bool:
        """UP and its last check answered: the router's own word that ``name`` serves
        (what lets the holder of an expired lease keep its users, pool.serves_expired)."""
        check = self._checks.get(name)
        return check is not None and check.state is HealthState.UP and check.streak == 0

    def draining(self, name: str) -> bool:
        """The app answers but takes no new users: sticky users stay."""
        return name in self._draining

    def up_since(self, name: str) -> float | None:
        """Monotonic time ``name`` last became routable after being unroutable (slow start).

        None while it is not routable, and for a target routable ever since the
        board started (nothing came back: no ramp needed).
        """
        return self._up_since.get(name)

    # --- feeding ------------------------------------------------------------------------

    def state(self, name: str) -> HealthState:
        check = self._checks.get(name)
        return check.state if check is not None else HealthState.UNKNOWN

    def feed(self, name: str, result: Result, now: float) -> Transition | None:
        """One check result (or a passive failure) for ``name`` at monotonic ``now``."""
        check, transition = step(
            self._checks.get(name) or Check(since=now), result, now, fall=self.fall, rise=self.rise
        )
        self._checks[name] = check
        if transition is not None:
            self._settle(name, transition, now)
        return transition

    def reset(self, name: str, now: float, reason: str) -> Transition | None:
        """Forget the verdict: a new app instance (or role) took over ``name``.

        It is routable again at once and counts as coming back (slow start).
        """
        old = self.state(name)
        self._checks[name] = Check(since=now)
        transition = Transition(old, HealthState.UNKNOWN, reason)
        self._settle(name, transition, now)
        self._up_since[name] = now  # even from UP: the instance behind the name is new
        return transition if old is not HealthState.UNKNOWN else None

    def _settle(self, name: str, transition: Transition, now: float) -> None:
        self._reasons[name] = transition.reason
        if transition.new is HealthState.DRAIN:
            self._draining.add(name)
        else:
            self._draining.discard(name)
        routable = transition.new in (HealthState.UP, HealthState.UNKNOWN)
        if not routable:
            self._unroutable.add(name)
            self._up_since.pop(name, None)
        elif name in self._unroutable:
            self._unroutable.discard(name)
            self._up_since[name] = now

    # --- observability -------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Every target's state, for /nodes and ``hakit status``; ages in seconds."""
        if now is None:
            now = time.monotonic()
        shown: dict[str, dict[str, Any]] = {}
        for name, check in self._checks.items():
            up_since = self._up_since.get(name)
            shown[name] = {
                "state": str(check.state),
                "routable": name not in self._unroutable,
                "for_seconds": round(max(now - check.since, 0.0), 3),
                "streak": check.streak,
                "last_check": check.last,
                "reason": self._reasons.get(name, ""),
                "up_for_seconds": None if up_since is None else round(max(now - up_since, 0), 3),
            }
        return shown
