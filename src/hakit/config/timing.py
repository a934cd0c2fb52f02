"""Timings derived from a recovery target: the timers a file leaves out, from ``recovery_target``.

An operator may write ``recovery_target = "60s"`` in ``[failover]`` instead of
tuning timers. The loader then derives every timer the file leaves out
(T = the target, S = app.startup_timeout, P = app.stop_timeout); keys the file
does set are kept and feed the derivations that follow them::

    coordination.lease_ttl       clamp(T / 10, 2 s, 10 s), at least 3 x a written renew_interval
    coordination.renew_interval  lease_ttl / 4
    health.fall                  3
    health.interval              clamp(T / 30, 0.5 s, 5 s), at most a written timeout / fall
    health.timeout               clamp(T / 3, 2 s, 60 s), at least fall x interval
    health.probe_timeout         clamp(interval, 1 s, 5 s)
    failover.fence_timeout       clamp(T / 6, 2 s, 60 s)
    failover.restart_attempts    the largest N in 0..3 (1..3 in restart-only mode) for which
                                 every failure kind that can fit the target at N = 0 still does

Why these: a node loss costs a lease TTL, so the TTL takes a tenth of the
target, but never under 2 s (a busy machine must not lose its lease) nor over
10 s. Renewing four times per TTL survives a failed renewal with room to spare.
Patience for a hang takes a third of the target: a slow ``/status`` may be a
stop-the-world GC pause, and patience is what keeps it from becoming a restart.
Restarts are counted against every failure kind, not only crashes: a hang costs
patience + stop + start per round, so a budget that fits crashes alone would
make the derived config miss its own target for hangs. Beyond 3 restarts a
failing app rarely recovers on the same node; failing over wins.

The derived timers are checked like written ones: ``restart_budget`` tries each
budget against the worst cases of hakit.config.worstcase, and `hakit config check`
prints them (hakit.config.worstcase.timing_lines).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from hakit.config.sections.app import AppConfig
from hakit.config.values import Mode, parse_duration
from hakit.config.worstcase import CASES, Inputs, fits, seconds_text

# Derivation constants (see the module docstring).
LEASE_TTL_RANGE = (2.0, 10.0)
INTERVAL_RANGE = (0.5, 5.0)
PATIENCE_RANGE = (2.0, 60.0)
PROBE_TIMEOUT_RANGE = (1.0, 5.0)
FENCE_TIMEOUT_RANGE = (2.0, 60.0)
DERIVED_FALL = 3
MAX_DERIVED_RESTARTS = 3

DERIVED_KEYS: tuple[str, ...] = (
    "coordination.lease_ttl",
    "coordination.renew_interval",
    "health.fall",
    "health.interval",
    "health.timeout",
    "health.probe_timeout",
    "failover.fence_timeout",
    "failover.restart_attempts",
)
_INT_KEYS = {"health.fall": 1, "failover.restart_attempts": 0}  # key -> smallest valid value

_s = seconds_text


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return min(max(value, low), high)


# --- the derivation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timings:
    lease_ttl: float
    renew_interval: float
    fall: int
    interval: float
    timeout: float
    probe_timeout: float
    fence_timeout: float
    restart_attempts: int
    # (dotted key, how it was derived) for each key the file left out, in DERIVED_KEYS order.
    derived: tuple[tuple[str, str], ...] = ()

    def value(self, key: str) -> float | int:
        value: float | int = getattr(self, key.rpartition(".")[2])
        return value

    def record(self) -> tuple[str, ...]:
        """Lines for Config.derived: each derived key with its arithmetic, then the kept ones."""
        lines = [f"{key} = {self._shown(key)}: {how}" for key, how in self.derived]
        kept = [key for key in DERIVED_KEYS if key not in dict(self.derived)]
        if kept:
            lines.append("as written in the file: " + ", ".join(kept))
        return tuple(lines)

    def _shown(self, key: str) -> str:
        return str(self.value(key)) if key in _INT_KEYS else _s(float(self.value(key)))


def derive_timings(
    target: float,
    startup_timeout: float,
    stop_timeout: float,
    explicit: Mapping[str, float],
    *,
    mode: Mode = Mode.COLD_STANDBY,
) -> Timings:
    """Timers for ``target`` (module docstring); keys in ``explicit`` (dotted, e.g.
    ``"health.interval"``, in seconds) are kept as written and used by later steps."""
    derived: dict[str, str] = {}
    t = _s(target)

    def pick(key: str, value: float, how: str) -> float:
        if key in explicit:
            return explicit[key]
        derived[key] = how
        return value

    renew_written = explicit.get("coordination.renew_interval")
    ttl = pick(
        "coordination.lease_ttl",
        max(_clamp(target / 10, LEASE_TTL_RANGE), 3 * (renew_written or 0)),
        f"recovery_target {t} / 10 within {_s(LEASE_TTL_RANGE[0])}..{_s(LEASE_TTL_RANGE[1])}"
        + (", at least 3 × renew_interval" if renew_written else ""),
    )
    renew = pick("coordination.renew_interval", ttl / 4, "lease_ttl / 4")
    fall = int(pick("health.fall", DERIVED_FALL, f"{DERIVED_FALL} in a row"))
    timeout_written = explicit.get("health.timeout")
    interval = pick(
        "health.interval",
        min(_clamp(target / 30, INTERVAL_RANGE), (timeout_written or math.inf) / fall),
        f"recovery_target {t} / 30 within {_s(INTERVAL_RANGE[0])}..{_s(INTERVAL_RANGE[1])}"
        + (", at most timeout / fall" if timeout_written else ""),
    )
    timeout = pick(
        "health.timeout",
        max(_clamp(target / 3, PATIENCE_RANGE), fall * interval),
        f"recovery_target {t} / 3 within {_s(PATIENCE_RANGE[0])}..{_s(PATIENCE_RANGE[1])}, "
        "at least fall × interval",
    )
    probe_timeout = pick(
        "health.probe_timeout",
        _clamp(interval, PROBE_TIMEOUT_RANGE),
        f"interval within {_s(PROBE_TIMEOUT_RANGE[0])}..{_s(PROBE_TIMEOUT_RANGE[1])}",
    )
    fence = pick(
        "failover.fence_timeout",
        _clamp(target / 6, FENCE_TIMEOUT_RANGE),
        f"recovery_target {t} / 6 within {_s(FENCE_TIMEOUT_RANGE[0])}..{_s(FENCE_TIMEOUT_RANGE[1])}",
    )
    inputs = Inputs(
        mode=mode,
        startup_timeout=startup_timeout,
        stop_timeout=stop_timeout,
        interval=interval,
        probe_timeout=probe_timeout,
        timeout=timeout,
        fall=fall,
        lease_ttl=ttl,
        renew_interval=renew,
        restart_attempts=0,
        fence_timeout=fence,
        target=target,
    )
    budget, how = restart_budget(inputs)
    restarts = int(pick("failover.restart_attempts", budget, how))
    return Timings(
        lease_ttl=ttl,
        renew_interval=renew,
        fall=fall,
        interval=interval,
        timeout=timeout,
        probe_timeout=probe_timeout,
        fence_timeout=fence,
        restart_attempts=restarts,
        derived=tuple((key, derived[key]) for key in DERIVED_KEYS if key in derived),
    )


def restart_budget(i: Inputs) -> tuple[int, str]:
    """The largest restart_attempts that keeps crash and hang within the target."""
    lowest = 1 if i.mode is Mode.RESTART_ONLY else 0
    floor_note = " (restart-only: at least 1, the only way back)" if lowest else ""
    # Only crash and hang depend on the budget. A kind already over the target at
    # the lowest budget cannot be helped by fewer restarts; letting it veto would
    # only take restarts away from the other.
    bounded = [
        (kind, fn)
        for kind, fn in CASES
        if kind != "node loss" and fits(fn, replace(i, restart_attempts=lowest))
    ]
    if not bounded:
        # Nothing fits: the fewest restarts keep the worst cases smallest.
        return lowest, f"{lowest}: neither crash nor hang fits the target{floor_note}"
    budget = lowest
    for n in range(lowest + 1, MAX_DERIVED_RESTARTS + 1):
        if all(fits(fn, replace(i, restart_attempts=n)) for _, fn in bounded):
            budget = n
    kinds = " and ".join(kind for kind, _ in bounded)
    how = f"the most restarts (at most {MAX_DERIVED_RESTARTS}) with {kinds} within the target"
    return budget, how + (floor_note if budget == lowest else "")


# --- applying it to a parsed TOML file -------------------------------------------------


def _written(key: str, value: Any) -> float:
    """A key as the file wrote it, in seconds (or a count); ValueError/TypeError when invalid."""
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < _INT_KEYS[key]:
            raise ValueError(f"{key}: not a valid count")
        return value
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"{key}: not a positive duration")
    return seconds


def apply_recovery_target(raw: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``raw`` (a parsed hakit.toml) with the timers it leaves out derived from
    failover.recovery_target, and the record of what was derived (Config.derived).

    Runs before validation, so the section validators check the combination. A
    file whose inputs do not parse is returned unchanged: validation reports the
    bad value, and the derivation happens once it is fixed.
    """
    result = dict(raw)
    sections = {name: raw.get(name, {}) for name in ("cluster", "coordination", "health", "app")}
    failover = raw.get("failover", {})
    if not isinstance(failover, dict) or "recovery_target" not in failover:
        return result, ()
    if not all(isinstance(section, dict) for section in sections.values()):
        return result, ()
    sections["failover"] = failover
    app_fields = AppConfig.model_fields
    try:
        target = _written("failover.recovery_target", failover["recovery_target"])
        startup = _written(
            "app.startup_timeout",
            sections["app"].get("startup_timeout", app_fields["startup_timeout"].default),
        )
        stop = parse_duration(
            sections["app"].get("stop_timeout", app_fields["stop_timeout"].default)
        )
        mode = Mode(sections["cluster"].get("mode", Mode.COLD_STANDBY.value))
        explicit = {
            key: _written(key, sections[section][name])
            for key in DERIVED_KEYS
            for section, _, name in [key.partition(".")]
            if name in sections[section]
        }
    except (ValueError, TypeError):
        return result, ()
    timings = derive_timings(target, startup, stop, explicit, mode=mode)
    for key, _ in timings.derived:
        section, _, name = key.partition(".")
        result[section] = {**result.get(section, {}), name: timings.value(key)}
    return result, timings.record()
