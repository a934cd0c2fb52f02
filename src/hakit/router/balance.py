"""Spreading NEW users over the nodes that may take them (pure; no I/O, no clock).

Sticky users never come here: pool.py sends them to their node. Two rules:

- ``least-outstanding``: the node with the fewest requests in flight (the
  router counts them per node); ties go round the turn counter.
- ``round-robin``: the turn counter modulo the candidates.

Slow start (``router.slowstart`` > 0): a node that came back less than
``slowstart`` ago has a weight ramping linearly from 0 to 1. On each turn the
node is *admitted* to the choice only if a deterministic low-discrepancy
number for that turn is below its weight, so over many turns it gets
``weight`` times its fair share of new users, whatever the balance rule. The
sequence (the golden-ratio Weyl sequence) is fixed, so tests can count the
exact outcome of N turns instead of relying on chance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from hakit.config import Balance, NodeConfig

GOLDEN: Final = 0.6180339887498949  # frac of the golden ratio: the most evenly spread sequence


class HealthView(Protocol):
    """What routing reads from the router's health board (health.HealthBoard)."""

    def routable(self, name: str) -> bool: ...

    def draining(self, name: str) -> bool: ...

    def up_since(self, name: str) -> float | None: ...

    def answering(self, name: str) -> bool: ...


def turn_fraction(turn: int) -> float:
    """A number in [0, 1) for ``turn``; any run of turns covers [0, 1) evenly."""
    return (turn * GOLDEN) % 1.0


def ramp_weight(up_since: float | None, now: float, slowstart: float) -> float:
    """0..1: the share of new users a node that came back at ``up_since`` gets now.

    None (up since before we looked, or never down) and ``slowstart`` <= 0 mean
    full weight. Times are the router's monotonic clock.
    """
    if up_since is None or slowstart <= 0:
        return 1.0
    elapsed = now - up_since
    if elapsed >= slowstart:
        return 1.0
    return max(elapsed, 0.0) / slowstart


def track_up(
    previous: Mapping[str, float | None] | None, routable: Sequence[str], now: float
) -> dict[str, float | None]:
    """When each routable node became routable, from successive observations.

    ``previous`` is the last result (None before the first observation: what
    is routable then counts as up since ever, so a router restart ramps
    nobody). A node routable now but not before came back ``now``.
    """
    if previous is None:
        return dict.fromkeys(routable)
    return {name: previous.get(name, now) for name in routable}


def admitted(
    candidates: Sequence[NodeConfig], weights: Sequence[float], turn: int
) -> Sequence[NodeConfig]:
    """The candidates taking part in this turn's choice (slow start's gate)."""
    threshold = turn_fraction(turn)
    chosen = [node for node, weight in zip(candidates, weights, strict=True) if threshold < weight]
    if chosen:
        return chosen
    # Every node is ramping and none passed: the heaviest one serves (never nobody).
    best = max(range(len(candidates)), key=lambda index: weights[index])
    return [candidates[best]]


def pick_new(
    candidates: Sequence[NodeConfig],
    *,
    balance: Balance,
    in_flight: Mapping[str, int],
    turn: int,
    weights: Sequence[float] | None = None,
) -> NodeConfig | None:
    """The node for a new user among ``candidates`` (config order), or None if empty.

    ``weights``: one slow-start weight per candidate, None when nobody ramps.
    """
    if weights is not None:
        candidates = admitted(candidates, weights, turn)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    if balance is Balance.ROUND_ROBIN:
        return candidates[turn % len(candidates)]
    least = min(in_flight.get(node.name, 0) for node in candidates)
    ties = [node for node in candidates if in_flight.get(node.name, 0) == least]
    return ties[turn % len(ties)]
