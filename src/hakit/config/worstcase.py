"""The worst-case recovery arithmetic of a config, and its timing rules.

``worst_case(cfg)`` spells out the worst case of each failure kind, following
what the agent and the policy actually do (hakit.agent, hakit.policy):

- crash: the exit is seen at once; each of the restart_attempts restarts may
  take startup_timeout before the app fails again; then the active steps down,
  a standby takes the released lease at its next attempt (renew_interval) and
  starts the app (startup_timeout; 0 in warm-standby / active-active where it
  already runs). Restart-only: the last of the restarts is the one that works.
- hang: probes run one after the other, so a hung app is probed every
  interval + probe_timeout (a "cycle"); the policy acts on the k-th timeout
  with k = max(fall, ceil(timeout / cycle) + 1) (fall in a row spanning
  timeout), i.e. after k cycles. Then the graceful stop gets stop_timeout
  before the kill; each failed restart costs start + detect + stop again.
- node loss: the lost node's lease runs out (lease_ttl), a standby takes it at
  its next attempt (renew_interval), the fence command may take fence_timeout,
  then the app starts on the standby.

and checks the timing rules (each broken rule is a line saying what to change):

- renew_interval x 2.5 < lease_ttl: after one failed renewal the next lands at
  2 x renew_interval, which must come before the agent's self-fencing deadline
  lease_ttl - renew_interval / 2 (the margin: one lost renewal, plus half an
  interval for the store's answer). The loader already rejects x 2.
- fall x interval <= timeout: timeout is the patience; a larger fall x interval
  silently stretches it.
- failure_window > restart_attempts x (start + hang detect + stop): otherwise
  the first failures are forgotten before the budget is spent, and an app that
  keeps failing is restarted forever instead of failing over (standby modes).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from hakit.config.schema import Config
from hakit.config.values import Mode

# renew_interval x RENEWAL_MARGIN must stay below lease_ttl: two renewals (one
# lost) plus half a renewal before the agent's own deadline (hakit.agent.lease,
# LeaseKeeper.try_lease).
RENEWAL_MARGIN = 2.5
_APP_ON_STANDBY = frozenset({Mode.WARM_STANDBY, Mode.ACTIVE_ACTIVE})


def seconds_text(seconds: float) -> str:
    """Seconds for arithmetic lines: '0.5 s', '86 s', '10 min' (whole minutes from 2 min)."""
    if seconds >= 120 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{round(seconds, 2):g} s"


_s = seconds_text


def _floor_nice(value: float) -> float:
    """Round a suggested upper limit down to a value worth typing (never up: it must still fit)."""
    step = 1.0 if value >= 10 else 0.1 if value >= 1 else 0.01
    return math.floor(value / step + 1e-9) * step


@dataclass(frozen=True, slots=True)
class Inputs:
    """The timings the worst cases depend on (seconds), taken from a Config or a derivation."""

    mode: Mode
    startup_timeout: float
    stop_timeout: float
    interval: float
    probe_timeout: float
    timeout: float
    fall: int
    lease_ttl: float
    renew_interval: float
    restart_attempts: int
    fence_timeout: float
    failure_window: float = 600.0
    target: float | None = None

    @classmethod
    def from_config(cls, cfg: Config) -> Inputs:
        return cls(
            mode=cfg.cluster.mode,
            startup_timeout=cfg.app.startup_timeout,
            stop_timeout=cfg.app.stop_timeout,
            interval=cfg.health.interval,
            probe_timeout=cfg.health.probe_timeout,
            timeout=cfg.health.timeout,
            fall=cfg.health.fall,
            lease_ttl=cfg.coordination.lease_ttl,
            renew_interval=cfg.coordination.renew_interval,
            restart_attempts=cfg.failover.restart_attempts,
            fence_timeout=cfg.failover.fence_timeout,
            failure_window=cfg.failover.failure_window,
            target=cfg.failover.recovery_target,
        )


@dataclass(frozen=True, slots=True)
class Term:
    """One addend: ``label seconds (why)``, or ``label count x seconds (why)``."""

    label: str
    seconds: float
    why: str = ""
    count: int | None = None

    @property
    def total(self) -> float:
        return self.seconds * (1 if self.count is None else self.count)

    def text(self) -> str:
        amount = _s(self.seconds) if self.count is None else f"{self.count} × {_s(self.seconds)}"
        return f"{self.label} {amount}" + (f" ({self.why})" if self.why else "")


@dataclass(frozen=True, slots=True)
class Case:
    """The worst case of one failure kind. ``total`` None: no automatic recovery (see note)."""

    kind: str
    terms: tuple[Term, ...]
    total: float | None
    target: float | None = None
    advice: tuple[str, ...] = ()  # what to change, when over the target
    note: str = ""
    out_of_scope: bool = False  # e.g. node loss in restart-only mode: no target can apply

    @property
    def exceeded(self) -> bool:
        if self.target is None or self.out_of_scope:
            return False
        return self.total is None or self.total > self.target + 1e-9

    def line(self) -> str:
        if self.total is None:
            text = f"{self.kind}: {self.note}"
        else:
            text = f"{self.kind}: {' + '.join(t.text() for t in self.terms)} = {_s(self.total)}"
            if self.target is not None:
                sign = "≤" if not self.exceeded else ">"
                text += f" {sign} target {_s(self.target)}"
        if self.target is None or self.out_of_scope:
            return text
        if not self.exceeded:
            return text + " ✓"
        return text + " ✗" + (f": {' or '.join(self.advice)}" if self.advice else "")


@dataclass(frozen=True, slots=True)
class Breakdown:
    target: float | None
    cases: tuple[Case, ...]
    problems: tuple[str, ...]  # broken timing rules, each saying what to change

    def lines(self) -> list[str]:
        head = "worst-case recovery"
        if self.target is not None:
            head += f" (recovery_target {_s(self.target)})"
        return [f"{head}:", *(f"  {case.line()}" for case in self.cases)]

    def warnings(self) -> list[str]:
        """Worst cases over the target and broken rules: what ``config check`` warns about."""
        over = [
            f"{case.kind} may take {'forever' if case.total is None else _s(case.total)}, "
            f"more than recovery_target {_s(case.target or 0)}"
            + (f"; {' or '.join(case.advice)}" if case.advice else "")
            for case in self.cases
            if case.exceeded
        ]
        return over + list(self.problems)


def hang_detect(i: Inputs) -> tuple[float, int]:
    """(seconds, probes) until the policy acts on a hang: see the module docstring."""
    cycle = i.interval + i.probe_timeout
    probes = max(i.fall, math.ceil(i.timeout / cycle - 1e-9) + 1)
    return probes * cycle, probes


def _handover(i: Inputs) -> Term:
    return Term("failover", i.renew_interval, "renew_interval")


def _standby_start(i: Inputs) -> Term:
    if i.mode in _APP_ON_STANDBY:
        return Term("start", 0.0, f"{i.mode}: already running")
    return Term("start", i.startup_timeout, "startup_timeout")


def _case(kind: str, terms: list[Term], i: Inputs) -> Case:
    return Case(kind, tuple(terms), sum(t.total for t in terms), i.target)


def crash_case(i: Inputs) -> Case:
    n, start = i.restart_attempts, i.startup_timeout
    terms = [Term("detect", 0.0, "exit seen at once")]
    if i.mode is Mode.RESTART_ONLY:
        if n == 0:
            note = "no automatic recovery (restart-only mode with restart_attempts = 0)"
            return Case("crash", (), None, i.target, note=note)
        why = "startup_timeout; the last one works"
        return _case("crash", [*terms, Term("restart", start, why, n)], i)
    if n:
        terms.append(Term("restart", start, "startup_timeout, fails again", n))
    return _case("crash", [*terms, _handover(i), _standby_start(i)], i)


def hang_case(i: Inputs) -> Case:
    n, start, stop = i.restart_attempts, i.startup_timeout, i.stop_timeout
    detect, probes = hang_detect(i)
    terms = [
        Term(
            "detect",
            detect,
            f"{probes} probes × (interval {_s(i.interval)} + probe_timeout "
            f"{_s(i.probe_timeout)}), fall {i.fall} spanning timeout {_s(i.timeout)}",
        ),
        Term("stop", stop, "stop_timeout"),
    ]
    each = f"start {_s(start)} + detect {_s(detect)} + stop {_s(stop)}: hangs again"
    if i.mode is Mode.RESTART_ONLY:
        if n == 0:
            note = "no automatic recovery (restart-only mode with restart_attempts = 0)"
            return Case("hang", (), None, i.target, note=note)
        if n > 1:
            terms.append(Term("restart", start + detect + stop, each, n - 1))
        return _case("hang", [*terms, Term("start", start, "startup_timeout")], i)
    if n:
        terms.append(Term("restart", start + detect + stop, each, n))
    return _case("hang", [*terms, _handover(i), _standby_start(i)], i)


def node_loss_case(i: Inputs) -> Case:
    if i.mode is Mode.RESTART_ONLY:
        note = "no standby in restart-only mode: the app returns with its node"
        return Case("node loss", (), None, i.target, note=note, out_of_scope=True)
    terms = [
        Term(
            "detect",
            i.lease_ttl + i.renew_interval,
            f"lease_ttl {_s(i.lease_ttl)} + renew_interval {_s(i.renew_interval)}",
        ),
        Term("fence", i.fence_timeout, "fence_timeout"),
        _standby_start(i),
    ]
    return _case("node loss", terms, i)


CaseFn = Callable[[Inputs], Case]
# Which timings can bring each failure kind under the target: (key, Inputs field, lowest sane value).
_LEVERS: dict[str, tuple[tuple[str, str, Callable[[Inputs], float]], ...]] = {
    "crash": (("app.startup_timeout", "startup_timeout", lambda i: 1.0),),
    "hang": (
        ("health.timeout", "timeout", lambda i: i.interval),
        ("app.stop_timeout", "stop_timeout", lambda i: 0.0),
        ("app.startup_timeout", "startup_timeout", lambda i: 1.0),
    ),
    "node loss": (
        ("failover.fence_timeout", "fence_timeout", lambda i: 1.0),
        ("coordination.lease_ttl", "lease_ttl", lambda i: i.renew_interval * 3),
        ("app.startup_timeout", "startup_timeout", lambda i: 1.0),
    ),
}


def fits(fn: CaseFn, i: Inputs) -> bool:
    case = fn(i)
    return case.total is not None and (i.target is None or case.total <= i.target + 1e-9)


def _with(i: Inputs, name: str, value: float) -> Inputs:
    changes: dict[str, Any] = {name: value}
    return replace(i, **changes)


def _largest_fitting(fn: CaseFn, i: Inputs, name: str, low: float) -> float | None:
    """The largest value of timing ``name`` in [low, now] worth typing that fits the target."""
    current = getattr(i, name)
    if current <= low or not fits(fn, _with(i, name, low)):
        return None
    # Every case grows with each of these timings: bisect.
    good, bad = low, current
    for _ in range(60):
        middle = (good + bad) / 2
        good, bad = (middle, bad) if fits(fn, _with(i, name, middle)) else (good, middle)
    suggestion = max(_floor_nice(good), low)
    return suggestion if fits(fn, _with(i, name, suggestion)) else None


def _timing_advice(fn: CaseFn, i: Inputs, kind: str) -> list[tuple[str, float]]:
    levers = []
    for key, name, floor_of in _LEVERS[kind]:
        if name == "startup_timeout" and kind == "node loss" and i.mode in _APP_ON_STANDBY:
            continue  # the standby's app already runs: its startup costs nothing here
        value = _largest_fitting(fn, i, name, floor_of(i))
        if value is not None:
            levers.append((key, value))
    return levers


def _advice(fn: CaseFn, i: Inputs, kind: str) -> tuple[str, ...]:
    """Each single change that brings the case under the target; failing that, fewer
    restarts together with one timing; failing that, the target it would need."""
    advice: list[str] = []
    n = i.restart_attempts
    lowest = 1 if i.mode is Mode.RESTART_ONLY else 0
    restarts_matter = kind in ("crash", "hang")
    if restarts_matter:
        if n < lowest:
            return (f"raise failover.restart_attempts to {lowest}",)
        fitting = [
            k for k in range(n - 1, lowest - 1, -1) if fits(fn, replace(i, restart_attempts=k))
        ]
        if fitting:
            advice.append(f"lower failover.restart_attempts to {fitting[0]}")
    advice += [f"lower {key} to {_s(value)}" for key, value in _timing_advice(fn, i, kind)]
    if not advice and restarts_matter and n > lowest:
        fewer = replace(i, restart_attempts=lowest)
        advice += [
            f"lower failover.restart_attempts to {lowest} and {key} to {_s(value)}"
            for key, value in _timing_advice(fn, fewer, kind)
        ]
    return tuple(advice) or (
        f"no single timing fits; raise recovery_target to {_s(fn(i).total or 0)}",
    )


CASES: tuple[tuple[str, CaseFn], ...] = (
    ("crash", crash_case),
    ("hang", hang_case),
    ("node loss", node_loss_case),
)


def rule_problems(i: Inputs) -> list[str]:
    """Broken timing rules (module docstring), each with what to change."""
    problems: list[str] = []
    ttl, renew = i.lease_ttl, i.renew_interval
    if renew * RENEWAL_MARGIN >= ttl:
        problems.append(
            f"coordination: renew_interval {_s(renew)} × {RENEWAL_MARGIN:g} = "
            f"{_s(renew * RENEWAL_MARGIN)} is not below lease_ttl {_s(ttl)}: after one failed "
            f"renewal the next lands at {_s(2 * renew)}, past the agent's self-fencing deadline "
            f"(lease_ttl - renew_interval / 2 = {_s(ttl - renew / 2)}), so the active node would "
            f"stop its app for nothing; lower coordination.renew_interval to "
            f"{_s(_floor_nice(ttl / 3))} or raise coordination.lease_ttl to {_s(renew * 3)}"
        )
    if i.fall * i.interval > i.timeout + 1e-9:
        fall_fits = math.floor(i.timeout / i.interval + 1e-9)
        problems.append(
            f"health: fall {i.fall} × interval {_s(i.interval)} = {_s(i.fall * i.interval)} is "
            f"more than timeout {_s(i.timeout)}: fall, not timeout, then sets the patience for "
            f"a hang; lower health.fall to {fall_fits} or raise health.timeout to "
            f"{_s(i.fall * i.interval)}"
        )
    n = i.restart_attempts
    if i.mode is not Mode.RESTART_ONLY and n:
        detect, _ = hang_detect(i)
        cycle = i.startup_timeout + detect + i.stop_timeout
        if n * cycle >= i.failure_window:
            keep = max(math.ceil(i.failure_window / cycle - 1e-9) - 1, 0)
            problems.append(
                f"failover: failure_window {_s(i.failure_window)} is not longer than "
                f"restart_attempts {n} × (start {_s(i.startup_timeout)} + hang detect "
                f"{_s(detect)} + stop {_s(i.stop_timeout)}) = {_s(n * cycle)}: the first "
                "failures would be forgotten before the budget is spent, so an app that keeps "
                "failing is restarted forever instead of failing over; raise "
                f"failover.failure_window above {_s(n * cycle)} or lower "
                f"failover.restart_attempts to {keep}"
            )
    return problems


def breakdown(i: Inputs) -> Breakdown:
    cases = []
    for kind, fn in CASES:
        case = fn(i)
        if case.exceeded:
            case = replace(case, advice=_advice(fn, i, kind))
        cases.append(case)
    return Breakdown(i.target, tuple(cases), tuple(rule_problems(i)))


def worst_case(cfg: Config) -> Breakdown:
    """The worst-case recovery of each failure kind for ``cfg``, and its broken timing rules."""
    return breakdown(Inputs.from_config(cfg))


def timing_lines(cfg: Config) -> list[str]:
    """For ``hakit config check``: what was derived from the target, then the breakdown."""
    lines: list[str] = []
    if cfg.failover.recovery_target is not None and cfg.derived:
        lines.append(f"timings from recovery_target {_s(cfg.failover.recovery_target)}:")
        lines += [f"  {line}" for line in cfg.derived]
    return lines + worst_case(cfg).lines()
