"""The pure rules (hakit.policy.rules, hakit.policy.vocabulary) and PolicySettings from a config."""

from __future__ import annotations

from pathlib import Path

from hakit.config import AppConfig, Config, CoordinationConfig, HealthConfig, NodeConfig
from hakit.contract import AppState
from hakit.history.facts import human_duration
from hakit.policy import (
    AppExited,
    PolicySettings,
)
from hakit.policy.rules import (
    Verdict,
    classify,
    extend_streak,
    failures_in_window,
    streak_is_failure,
)
from hakit.policy.vocabulary import describe_exit
from tests.support.policy_builders import (
    COLD,
    DOWN,
    ERROR,
    RUNNING,
    TIMEOUT,
)


def test_pure_helpers() -> None:
    assert failures_in_window((1.0, 50.0, 100.0), now=105.0, window=60.0) == (50.0, 100.0)
    assert failures_in_window((50.0, 100.0), now=110.0, window=60.0) == (100.0,)
    streak = extend_streak(None, TIMEOUT, 10.0)
    streak = extend_streak(extend_streak(streak, TIMEOUT, 20.0), TIMEOUT, 39.0)
    assert (streak.count, streak.first_at) == (3, 10.0)
    assert not streak_is_failure(streak, fall=3, health_timeout=30.0, now=39.0)
    assert streak_is_failure(streak, fall=3, health_timeout=30.0, now=40.0)
    assert extend_streak(streak, DOWN, 41.0).count == 1
    assert classify(RUNNING, None) is classify(AppState.FIRST_RUN, None) is Verdict.HEALTHY
    assert classify(AppState.MAINTENANCE, None) is Verdict.WAITING
    assert classify(ERROR, False) is Verdict.DATABASE_DOWN
    assert classify(ERROR, None) is classify(ERROR, True) is Verdict.FAILING
    assert classify(TIMEOUT, None) is classify(DOWN, None) is Verdict.FAILING
    assert classify(AppState.STOPPED, None) is Verdict.NO_PROCESS
    assert human_duration(600) == "10m" and human_duration(30) == "30s"
    assert human_duration(1.25) == "1.2s" and human_duration(5400) == "1.5h"
    assert describe_exit(AppExited(1, -9, False, False, "")) == "killed by SIGKILL"
    assert describe_exit(AppExited(1, 3, False, False, "")) == "exit code 3"


def test_settings_from_config() -> None:
    cfg = Config(
        app=AppConfig(start=("app",), home=Path("/srv/home"), database_url="sqlite:///x.db"),
        nodes=(NodeConfig(name="node1", port=8101),),
        coordination=CoordinationConfig(lease_ttl=2.5),
        health=HealthConfig(timeout=45.0, fall=4),
    )
    got = PolicySettings.from_config(cfg)
    assert got == PolicySettings(
        mode=COLD,
        restart_attempts=2,
        failure_window=600.0,
        startup_timeout=120.0,
        health_timeout=45.0,
        fall=4,
        step_down_cooldown=7.5,
        boot_grace=5.0,
        no_failover=False,
    )


def test_settings_take_on_failed_start_from_the_config(tmp_path: Path) -> None:
    from hakit.config import FailoverConfig, OnFailedStart

    cfg = Config(
        app=AppConfig(start=("app",), home=tmp_path, database_url="sqlite:///x.db"),
        nodes=(NodeConfig(name="node1", port=8101), NodeConfig(name="node2", port=8102)),
        failover=FailoverConfig(on_failed_start=OnFailedStart.FAILOVER),
    )
    assert PolicySettings.from_config(cfg, "node1").failover_on_failed_start
    default = cfg.model_copy(update={"failover": FailoverConfig()})
    assert not PolicySettings.from_config(default, "node1").failover_on_failed_start
