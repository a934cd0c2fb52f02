"""hakit.config.timing (timers derived from a recovery target) and hakit.config.worstcase
(worst-case arithmetic, timing rules)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hakit.cli import app
from hakit.config import Mode, load_config
from hakit.config.check import describe_config
from hakit.config.timing import apply_recovery_target, derive_timings
from hakit.config.worstcase import (
    Inputs,
    breakdown,
    crash_case,
    hang_case,
    hang_detect,
    node_loss_case,
    rule_problems,
    worst_case,
)
from hakit.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "examples" / "recovery-target.toml"

# --- derivation -------------------------------------------------------------------

KEYS = (
    "lease_ttl",
    "renew_interval",
    "fall",
    "interval",
    "timeout",
    "probe_timeout",
    "fence_timeout",
    "restart_attempts",
)

DERIVATIONS = [
    # T=10s: floors everywhere; a hang costs 9.5 s at N=0, 18.5 s at N=1 -> no restarts.
    pytest.param(
        10.0, 2.0, 1.0, Mode.COLD_STANDBY, (2.0, 0.5, 3, 0.5, 10 / 3, 1.0, 2.0, 0), id="10s"
    ),
    # T=60s: crashes would allow 1 restart (41.5 s), but a hang with one restart is 109.5 s.
    pytest.param(
        60.0, 20.0, 10.0, Mode.COLD_STANDBY, (6.0, 1.5, 3, 2.0, 20.0, 2.0, 10.0, 0), id="60s"
    ),
    # T=10m: ceilings; hang with 2 restarts = 3 x (70 + 30) + 2 x 60 + 62.5 = 482.5 s.
    pytest.param(
        600.0, 60.0, 30.0, Mode.COLD_STANDBY, (10.0, 2.5, 3, 5.0, 60.0, 5.0, 60.0, 2), id="10m"
    ),
    # Restart-only: the last restart is the recovery; hang 54 s per round -> 1.
    pytest.param(
        60.0,
        20.0,
        10.0,
        Mode.RESTART_ONLY,
        (6.0, 1.5, 3, 2.0, 20.0, 2.0, 10.0, 1),
        id="restart-only",
    ),
    # Restart-only where nothing fits: still 1 restart, the only way back.
    pytest.param(
        10.0, 30.0, 1.0, Mode.RESTART_ONLY, (2.0, 0.5, 3, 0.5, 10 / 3, 1.0, 2.0, 1), id="ro-floor"
    ),
    # Cold standby where neither crash nor hang fits: the fewest restarts, not the most.
    pytest.param(
        10.0, 30.0, 1.0, Mode.COLD_STANDBY, (2.0, 0.5, 3, 0.5, 10 / 3, 1.0, 2.0, 0), id="cs-floor"
    ),
    # Warm standby: the standby's app already runs, so only the handover follows restarts.
    pytest.param(
        60.0, 20.0, 10.0, Mode.WARM_STANDBY, (6.0, 1.5, 3, 2.0, 20.0, 2.0, 10.0, 0), id="warm"
    ),
    # Crash-only fits when hangs cannot fit at all: they do not veto restarts.
    pytest.param(
        60.0, 10.0, 50.0, Mode.COLD_STANDBY, (6.0, 1.5, 3, 2.0, 20.0, 2.0, 10.0, 3), id="hang-veto"
    ),
]


@pytest.mark.parametrize(("target", "startup", "stop", "mode", "expected"), DERIVATIONS)
def test_derivation_table(
    target: float, startup: float, stop: float, mode: Mode, expected: tuple[float, ...]
) -> None:
    timings = derive_timings(target, startup, stop, {}, mode=mode)
    assert tuple(getattr(timings, key) for key in KEYS) == pytest.approx(expected)
    assert len(timings.derived) == len(KEYS)  # nothing written: everything derived
    # The derived config passes its own rules.
    inputs = Inputs(
        mode, startup, stop, timings.interval, timings.probe_timeout, timings.timeout,
        timings.fall, timings.lease_ttl, timings.renew_interval, timings.restart_attempts,
        timings.fence_timeout,
    )  # fmt: skip
    assert rule_problems(inputs) == []


EXPLICIT = [
    # written key -> the derived keys that follow it
    pytest.param({"coordination.lease_ttl": 3.0}, {"renew_interval": 0.75}, id="ttl->renew"),
    pytest.param({"coordination.renew_interval": 4.0}, {"lease_ttl": 12.0}, id="renew->ttl"),
    pytest.param({"health.timeout": 3.0}, {"interval": 1.0, "probe_timeout": 1.0}, id="timeout"),
    pytest.param({"health.interval": 10.0}, {"timeout": 30.0, "probe_timeout": 5.0}, id="interval"),
    pytest.param({"health.fall": 5}, {"timeout": 20.0}, id="fall"),
    pytest.param({"failover.restart_attempts": 2}, {"fence_timeout": 10.0}, id="restarts"),
    pytest.param({"failover.fence_timeout": 1.0}, {"restart_attempts": 0}, id="fence"),
]


@pytest.mark.parametrize(("explicit", "follows"), EXPLICIT)
def test_written_keys_win_and_feed_the_rest(
    explicit: dict[str, float], follows: dict[str, float]
) -> None:
    timings = derive_timings(60.0, 20.0, 10.0, explicit)
    for key, value in explicit.items():
        assert timings.value(key) == value
        assert key not in dict(timings.derived)
    for name, value in follows.items():
        assert getattr(timings, name) == pytest.approx(value)
    assert timings.record()[-1] == "as written in the file: " + ", ".join(explicit)


def test_record_says_how_each_value_was_derived() -> None:
    record = derive_timings(60.0, 20.0, 10.0, {"health.fall": 4}).record()
    assert record[0] == "coordination.lease_ttl = 6 s: recovery_target 60 s / 10 within 2 s..10 s"
    assert "coordination.renew_interval = 1.5 s: lease_ttl / 4" in record
    assert record[-1] == "as written in the file: health.fall"


# --- applying to a parsed file --------------------------------------------------------

RAW = {
    "app": {"start": "x", "home": "h", "database_url": "sqlite:///a.db", "startup_timeout": "20s"},
    "failover": {"recovery_target": "1m"},
    "health": {"fall": 4},
}


def test_apply_fills_only_the_keys_the_file_leaves_out() -> None:
    raw, record = apply_recovery_target(RAW)
    assert raw["health"]["fall"] == 4  # written: kept
    assert raw["health"]["interval"] == 2.0
    assert raw["coordination"] == {"lease_ttl": 6.0, "renew_interval": 1.5}
    assert raw["failover"]["recovery_target"] == "1m" and "fence_timeout" in raw["failover"]
    assert raw["app"] is RAW["app"] and "interval" not in RAW["health"]  # input untouched
    assert record[-1] == "as written in the file: health.fall"


@pytest.mark.parametrize(
    "change",
    [
        {"failover": {"auto_failback": True}},  # no target: nothing to derive
        {"failover": {"recovery_target": "soon"}},  # invalid: validation reports it
        {"health": {"interval": "fast"}},
        {"health": {"fall": 0}},
        {"cluster": {"mode": "hot"}},
        {"app": "not a table"},
    ],
    ids=["no-target", "bad-target", "bad-interval", "bad-fall", "bad-mode", "bad-app"],
)
def test_apply_leaves_files_it_cannot_read_unchanged(change: dict[str, object]) -> None:
    raw = {**RAW, **change}
    assert apply_recovery_target(raw) == (raw, ())


# --- the worst cases ------------------------------------------------------------------

BASE = Inputs(
    mode=Mode.COLD_STANDBY,
    startup_timeout=30.0,
    stop_timeout=10.0,
    interval=1.0,
    probe_timeout=2.0,
    timeout=30.0,
    fall=3,
    lease_ttl=3.0,
    renew_interval=1.0,
    restart_attempts=2,
    fence_timeout=10.0,
)


@pytest.mark.parametrize(
    ("interval", "probe_timeout", "timeout", "fall", "expected"),
    [
        (1.0, 2.0, 30.0, 3, (33.0, 11)),  # timeout rules: 11 probes span 30 s after the first
        (1.0, 2.0, 5.0, 3, (9.0, 3)),  # fall rules
        (1.0, 2.0, 6.0, 3, (9.0, 3)),  # exactly divisible: the 3rd spans 6 s
        (2.0, 2.0, 20.0, 3, (24.0, 6)),
        (0.5, 1.0, 3.0, 10, (15.0, 10)),
    ],
)
def test_hang_detection(
    interval: float, probe_timeout: float, timeout: float, fall: int, expected: tuple[float, int]
) -> None:
    inputs = replace(
        BASE, interval=interval, probe_timeout=probe_timeout, timeout=timeout, fall=fall
    )
    assert hang_detect(inputs) == pytest.approx(expected)


CASES = [
    # crash: restarts x startup + handover + start on the standby
    (crash_case, BASE, 91.0),
    (crash_case, replace(BASE, restart_attempts=0), 31.0),
    (crash_case, replace(BASE, mode=Mode.WARM_STANDBY), 61.0),
    (crash_case, replace(BASE, mode=Mode.RESTART_ONLY), 60.0),
    (crash_case, replace(BASE, mode=Mode.RESTART_ONLY, restart_attempts=0), None),
    # hang: detect 33 + stop 10, then per failed restart 30 + 33 + 10 = 73
    (hang_case, BASE, 33 + 10 + 2 * 73 + 1 + 30.0),
    (hang_case, replace(BASE, restart_attempts=0), 74.0),
    (hang_case, replace(BASE, mode=Mode.ACTIVE_ACTIVE, restart_attempts=0), 44.0),
    (hang_case, replace(BASE, mode=Mode.RESTART_ONLY), 2 * 73.0),
    (hang_case, replace(BASE, mode=Mode.RESTART_ONLY, restart_attempts=1), 73.0),
    # node loss: ttl + renew + fence + start
    (node_loss_case, BASE, 44.0),
    (node_loss_case, replace(BASE, mode=Mode.WARM_STANDBY), 14.0),
    (node_loss_case, replace(BASE, mode=Mode.RESTART_ONLY), None),
]


@pytest.mark.parametrize(("fn", "inputs", "total"), CASES)
def test_case_totals(fn, inputs: Inputs, total: float | None) -> None:  # type: ignore[no-untyped-def]
    case = fn(inputs)
    assert case.total == total
    if total is not None:
        assert case.total == sum(term.total for term in case.terms)


LINES = [
    pytest.param(
        crash_case(BASE).line(),
        "crash: detect 0 s (exit seen at once) + restart 2 × 30 s (startup_timeout, fails again)"
        " + failover 1 s (renew_interval) + start 30 s (startup_timeout) = 91 s",
        id="crash-no-target",
    ),
    pytest.param(
        hang_case(replace(BASE, restart_attempts=1)).line(),
        "hang: detect 33 s (11 probes × (interval 1 s + probe_timeout 2 s), fall 3 spanning "
        "timeout 30 s) + stop 10 s (stop_timeout) + restart 1 × 73 s (start 30 s + detect 33 s"
        " + stop 10 s: hangs again) + failover 1 s (renew_interval) + start 30 s "
        "(startup_timeout) = 147 s",
        id="hang-no-target",
    ),
    pytest.param(
        breakdown(replace(BASE, target=60.0)).cases[2].line(),
        "node loss: detect 4 s (lease_ttl 3 s + renew_interval 1 s) + fence 10 s "
        "(fence_timeout) + start 30 s (startup_timeout) = 44 s ≤ target 60 s ✓",
        id="node-loss-fits",
    ),
    pytest.param(
        breakdown(replace(BASE, startup_timeout=20.0, target=60.0)).cases[0].line(),
        "crash: detect 0 s (exit seen at once) + restart 2 × 20 s (startup_timeout, fails again)"
        " + failover 1 s (renew_interval) + start 20 s (startup_timeout) = 61 s > target 60 s ✗:"
        " lower failover.restart_attempts to 1 or lower app.startup_timeout to 19 s",
        id="crash-over",
    ),
    pytest.param(
        breakdown(replace(BASE, restart_attempts=0, target=60.0)).cases[1].line(),
        "hang: detect 33 s (11 probes × (interval 1 s + probe_timeout 2 s), fall 3 spanning "
        "timeout 30 s) + stop 10 s (stop_timeout) + failover 1 s (renew_interval) + start 30 s "
        "(startup_timeout) = 74 s > target 60 s ✗: lower health.timeout to 15 s or lower "
        "app.startup_timeout to 16 s",
        id="hang-over",
    ),
    pytest.param(
        breakdown(replace(BASE, startup_timeout=60.0, target=60.0)).cases[1].line().split("✗: ")[1],
        "lower failover.restart_attempts to 0 and app.startup_timeout to 16 s",
        id="hang-needs-two-changes",
    ),
    pytest.param(
        breakdown(replace(BASE, stop_timeout=100.0, target=60.0)).cases[1].line().split("✗: ")[1],
        "no single timing fits; raise recovery_target to 490 s",
        id="hang-hopeless",
    ),
    pytest.param(
        breakdown(replace(BASE, mode=Mode.WARM_STANDBY, fence_timeout=60.0, target=60.0))
        .cases[2]
        .line(),
        "node loss: detect 4 s (lease_ttl 3 s + renew_interval 1 s) + fence 60 s (fence_timeout)"
        " + start 0 s (warm-standby: already running) = 64 s > target 60 s ✗: lower "
        "failover.fence_timeout to 56 s",
        id="warm-node-loss-over",
    ),
    pytest.param(
        breakdown(replace(BASE, mode=Mode.RESTART_ONLY, restart_attempts=0, target=60.0))
        .cases[0]
        .line(),
        "crash: no automatic recovery (restart-only mode with restart_attempts = 0) ✗: "
        "raise failover.restart_attempts to 1",
        id="restart-only-no-restarts",
    ),
    pytest.param(
        breakdown(replace(BASE, mode=Mode.RESTART_ONLY, target=60.0)).cases[2].line(),
        "node loss: no standby in restart-only mode: the app returns with its node",
        id="restart-only-node-loss",
    ),
]


@pytest.mark.parametrize(("line", "expected"), LINES)
def test_lines_spell_out_the_arithmetic(line: str, expected: str) -> None:
    assert line == expected


def test_warnings_name_what_exceeds_and_what_to_change() -> None:
    result = breakdown(replace(BASE, startup_timeout=20.0, target=60.0))
    assert result.lines()[0] == "worst-case recovery (recovery_target 60 s):"
    assert result.warnings() == [
        "crash may take 61 s, more than recovery_target 60 s; lower "
        "failover.restart_attempts to 1 or lower app.startup_timeout to 19 s",
        "hang may take 190 s, more than recovery_target 60 s; lower failover.restart_attempts "
        "to 0 and health.timeout to 24 s or lower failover.restart_attempts to 0 and "
        "app.stop_timeout to 6 s or lower failover.restart_attempts to 0 and "
        "app.startup_timeout to 16 s",
    ]
    assert breakdown(BASE).warnings() == []  # no target: nothing to exceed


# --- timing rules -----------------------------------------------------------------------

RULES = [
    pytest.param(
        replace(BASE, renew_interval=1.25),
        "coordination: renew_interval 1.25 s × 2.5 = 3.12 s is not below lease_ttl 3 s: after "
        "one failed renewal the next lands at 2.5 s, past the agent's self-fencing deadline "
        "(lease_ttl - renew_interval / 2 = 2.38 s), so the active node would stop its app for "
        "nothing; lower coordination.renew_interval to 1 s or raise coordination.lease_ttl to "
        "3.75 s",
        id="lease-margin",
    ),
    pytest.param(
        replace(BASE, fall=10, interval=5.0),
        "health: fall 10 × interval 5 s = 50 s is more than timeout 30 s: fall, not timeout, "
        "then sets the patience for a hang; lower health.fall to 6 or raise health.timeout to "
        "50 s",
        id="patience",
    ),
    pytest.param(
        replace(BASE, failure_window=300.0, startup_timeout=120.0, stop_timeout=30.0),
        "failover: failure_window 5 min is not longer than restart_attempts 2 × (start 2 min + "
        "hang detect 33 s + stop 30 s) = 366 s: the first failures would be forgotten before "
        "the budget is spent, so an app that keeps failing is restarted forever instead of "
        "failing over; raise failover.failure_window above 366 s or lower "
        "failover.restart_attempts to 1",
        id="failure-window",
    ),
]


@pytest.mark.parametrize(("inputs", "problem"), RULES)
def test_rule_violations_say_what_to_change(inputs: Inputs, problem: str) -> None:
    assert rule_problems(inputs) == [problem]
    assert breakdown(inputs).warnings() == [problem]


@pytest.mark.parametrize(
    "inputs",
    [
        BASE,
        replace(BASE, renew_interval=1.19),  # 2.975 s < 3 s
        replace(BASE, fall=30, interval=1.0),  # exactly timeout
        replace(BASE, mode=Mode.RESTART_ONLY, failure_window=1.0),  # restart-only: no failover
        replace(BASE, restart_attempts=0, failure_window=1.0),
    ],
)
def test_rules_hold(inputs: Inputs) -> None:
    assert rule_problems(inputs) == []


# --- through the loader and the CLI --------------------------------------------------------


def test_example_loads_with_derived_timers() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.failover.recovery_target == 60.0
    assert cfg.coordination.lease_ttl == 4.0  # written in the file
    assert cfg.coordination.renew_interval == 1.0  # lease_ttl / 4
    assert (cfg.health.interval, cfg.health.fall, cfg.health.timeout) == (2.0, 3, 20.0)
    assert cfg.health.probe_timeout == 2.0
    assert (cfg.failover.restart_attempts, cfg.failover.fence_timeout) == (0, 10.0)
    assert cfg.derived[-1] == "as written in the file: coordination.lease_ttl"
    assert worst_case(cfg).warnings() == []
    summary = describe_config(cfg)
    assert "timings from recovery_target 60 s:" in summary
    assert "  health.interval = 2 s: recovery_target 60 s / 30 within 0.5 s..5 s" in summary
    assert any(line.startswith("  node loss: detect 5 s") for line in summary)


def write(tmp_path: Path, failover: str, extra: str = "") -> Path:
    path = tmp_path / "hakit.toml"
    path.write_text(
        f'[app]\nstart = "x"\nhome = "h"\ndatabase_url = "sqlite:///a.db"\n'
        f'startup_timeout = "20s"\n\n[failover]\n{failover}\n{extra}\n'
        '[[nodes]]\nname = "n1"\nport = 8101\n\n[[nodes]]\nname = "n2"\nport = 8102\n'
    )
    return path


def test_loader_keeps_written_keys_and_checks_the_combination(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, 'recovery_target = "60s"', '[coordination]\nrenew_interval = "4s"\n')
    )
    assert (cfg.coordination.renew_interval, cfg.coordination.lease_ttl) == (4.0, 12.0)
    assert cfg.health.interval == 2.0
    plain = load_config(write(tmp_path, "auto_failback = false"))
    assert plain.derived == () and plain.health.interval == 1.0  # no target: defaults


def test_loader_reports_a_bad_target_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'recovery_target = "soon"')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f'{path}:8: failover.recovery_target: "soon" is not a duration; expected a number of '
        'seconds or a string such as "15s", "2m" or "500ms"'
    ]


def test_config_check_warns_and_strict_fails(tmp_path: Path) -> None:
    path = write(tmp_path, 'recovery_target = "30s"\nrestart_attempts = 2')
    runner = CliRunner()
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "WARNING: crash may take 60.75 s, more than recovery_target 30 s" in result.output
    assert runner.invoke(app, ["config", "check", "--strict", str(path)]).exit_code == 1
    # With a fence command: no warning about fencing either.
    fine = write(tmp_path, 'recovery_target = "2m"\nfence_command = ["/bin/true"]')
    result = runner.invoke(app, ["config", "check", "--strict", str(fine)])
    assert result.exit_code == 0 and "WARNING" not in result.output, result.output
