"""``hakit why``, table-driven over event histories as the agents record them.

The sequences below are the ones real clusters wrote (taken from the end-to-end
tests' event dumps: the crash, hang, database, failed-start and node-loss runs),
with times counted from 04:40:00 UTC. They were recorded before events carried their
facts in ``data`` (hakit.history.facts): sentences only, as an older hakit's history
is read. ``test_policy_wording_is_what_why_reads`` drives the real policy, whose events
carry the facts: ``why`` tells them the same (tests/unit/history/test_facts.py shows
it is the data that is read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from hakit.config import Mode
from hakit.contract import AppState
from hakit.coord.base import Event, Lease, NodeRecord
from hakit.history.kinds import CAUSE
from hakit.history.why import ClusterNow, explain, node_condition, parse_at, terms
from hakit.policy import (
    Alert,
    AppExited,
    AppStarted,
    Boot,
    LeaseGained,
    Paused,
    Policy,
    PolicySettings,
    Record,
    StartApp,
    StatusObserved,
    StepDown,
)

BASE = datetime(2026, 11, 22, 4, 40, 0, tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Row:
    """One recorded event: seconds after BASE, node, epoch, kind, reason (+ alert data)."""

    t: float
    node: str
    epoch: int
    kind: str
    reason: str
    data: dict[str, Any] | None = None


def alert(
    t: float,
    node: str,
    epoch: int,
    kind: str,
    reason: str,
    manual: bool = False,
    facts: Mapping[str, Any] | None = None,
) -> Row:
    """An alert event; ``facts``: what the agent records beside (hakit.history.facts)."""
    data = {**(facts or {}), "alert": kind, "manual_intervention": manual}
    return Row(t, node, epoch, "alert", reason, data)


def recorded(t: float, node: str, epoch: int, action: Alert | StepDown) -> Row:
    """A policy's action as the agent records it (hakit.agent.agent): its facts in data."""
    if isinstance(action, StepDown):
        return Row(t, node, epoch, action.kind, action.reason, dict(action.data))
    facts = {**action.data, **({CAUSE: action.cause} if action.cause else {})}
    return alert(t, node, epoch, action.kind, action.reason, action.manual_intervention, facts)


def history(*rows: Row) -> list[Event]:
    return [
        Event(
            id=index,
            time=BASE + row.t,
            node=row.node,
            kind=row.kind,
            reason=row.reason,
            epoch=row.epoch,
            actor=f"agent:{row.node}",
            data=row.data or {},
        )
        for index, row in enumerate(rows, start=1)
    ]


BOOT = (
    Row(12.5, "node1", 0, "agent", "agent for node1 started (pid 27641)"),
    Row(12.5, "node1", 0, "boot", "agent on node1 started (cold-standby): the app runs here only while this node holds the leader lease"),
    Row(12.5, "node2", 0, "agent", "agent for node2 started (pid 27642)"),
    Row(12.5, "node2", 0, "boot", "agent on node2 started (cold-standby): the app runs here only while this node holds the leader lease"),
    Row(13.0, "node1", 1, "start", "node1 promoted to active under epoch 1; starting the app"),
    Row(13.1, "node1", 1, "started", "app on node1 started as pid 28001"),
    Row(14.2, "node1", 1, "running", "app on node1 FIRST_RUN after 1.2s: running, not yet configured"),
)  # fmt: skip

CRASH1 = "app on node1 exited (killed by SIGKILL); restart 1 of 2 within 5m"
CRASH2 = "app on node1 exited (killed by SIGKILL); restart 2 of 2 within 5m"
CRASH3 = (
    "app on node1 exited (killed by SIGKILL); 3rd failure within 5m (restart_attempts = 2): "
    "stepping down so a standby takes over"
)
RESTARTS = (
    Row(14.7, "node1", 1, "start", CRASH1),
    Row(14.7, "node1", 1, "started", "app on node1 started as pid 28022"),
    alert(14.7, "node1", 1, "crash", CRASH1),
    Row(15.9, "node1", 1, "running", "app on node1 FIRST_RUN after 1.3s: running, not yet configured"),
    Row(16.0, "node1", 1, "start", CRASH2),
    Row(16.0, "node1", 1, "started", "app on node1 started as pid 28081"),
    alert(16.0, "node1", 1, "crash", CRASH2),
    Row(17.2, "node1", 1, "running", "app on node1 FIRST_RUN after 1.2s: running, not yet configured"),
)  # fmt: skip
CRASH_FAILOVER = (
    *BOOT,
    *RESTARTS,
    Row(17.3, "node1", 1, "failover", CRASH3),
    alert(17.3, "node1", 0, "failover", CRASH3),
    Row(17.7, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    Row(17.7, "node2", 2, "started", "app on node2 started as pid 28122"),
    Row(18.9, "node2", 2, "running", "app on node2 FIRST_RUN after 1.2s: running, not yet configured"),
)  # fmt: skip

HANG = "app on node1 did not answer /status 5 times in a row over 2.7s (patience: 2 over 2.0s)"
HANG_RESTART = (
    *BOOT,
    Row(15.8, "node1", 1, "detected", "app on node1 /status: TIMEOUT (no answer from http://127.0.0.1:48599/status within 0.5s); a hang counts after 2 in a row over 2.0s"),
    Row(18.5, "node1", 1, "stop", f"{HANG}; stopping it to restart it (restart 1 of 2 within 5m)"),
    alert(23.5, "node1", 1, "hang", f"{HANG}; stopping it to restart it (restart 1 of 2 within 5m)"),
    Row(23.5, "node1", 1, "start", "app on node1 stopped; starting it again (restart 1 of 2 within 5m)"),
    Row(23.5, "node1", 1, "started", "app on node1 started as pid 28351"),
    Row(24.6, "node1", 1, "running", "app on node1 FIRST_RUN after 1.2s: running, not yet configured"),
)  # fmt: skip

HANG3 = (
    "app on node1 did not answer /status 3 times in a row over 31s (patience: 3 over 30s); "
    "3rd failure within 10m (restart_attempts = 2): stopping it, then stepping down so a "
    "standby takes over"
)
HANG_FAILOVER_WARM = (
    *BOOT,
    alert(100, "node1", 1, "hang", "app on node1 did not answer /status 3 times in a row over 30s (patience: 3 over 30s); stopping it to restart it (restart 1 of 2 within 10m)"),
    alert(200, "node1", 1, "hang", "app on node1 did not answer /status 3 times in a row over 30s (patience: 3 over 30s); stopping it to restart it (restart 2 of 2 within 10m)"),
    Row(300, "node1", 1, "stop", HANG3),
    alert(300, "node1", 1, "hang", HANG3),
    Row(305, "node1", 1, "failover", "app on node1 stopped; releasing the lease of epoch 1 so a standby takes over"),
    alert(305, "node1", 0, "failover", "app on node1 stopped; releasing the lease of epoch 1 so a standby takes over"),
    Row(305.5, "node2", 2, "promoted", "node2 promoted to active under epoch 2; the app is already running"),
)  # fmt: skip

DATABASE = (
    *BOOT,
    alert(54.2, "node1", 1, "database", "app on node1 reports ERROR and its database is unreachable (reports ERROR): no restart, no failover (a standby would fail the same way); it recovers when the database does"),
    Row(58.4, "node1", 1, "status", "app on node1 reports FIRST_RUN: running, not yet configured"),
)  # fmt: skip

START1 = "app on node1 exited (exited with code 1) while starting; failed start 1: retry 1 of 2"
START3 = (
    "app on node1 exited (exited with code 1) while starting; 3 failed starts in a row "
    "(restart_attempts = 2); not failing over: another node would fail to start too; "
    "manual intervention needed"
)
FAILED_START = (
    *BOOT[:5],
    Row(13.1, "node1", 1, "started", "app on node1 started as pid 28507"),
    Row(14.0, "node1", 1, "start", START1),
    alert(14.0, "node1", 1, "failed-start", START1),
    Row(15.2, "node1", 1, "start", START1.replace("1: retry 1", "2: retry 2")),
    alert(15.2, "node1", 1, "failed-start", START1.replace("1: retry 1", "2: retry 2")),
    alert(16.4, "node1", 1, "failed-start", START3, manual=True),
)  # fmt: skip

NODE_LOSS = (
    *BOOT,
    Row(20.0, "node1", 1, "status", "app on node1 reports RUNNING again (was FIRST_RUN)"),
    Row(25.1, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
    Row(25.1, "node2", 2, "started", "app on node2 started as pid 28231"),
    Row(26.2, "node2", 2, "running", "app on node2 FIRST_RUN after 1.2s: running, not yet configured"),
)  # fmt: skip


def came_back(t: float, rebooted: bool) -> Row:
    """node1's next agent starts and finds the pid file its predecessor left."""
    data = {"unclean_end": True, "rebooted": rebooted, "previous_agent_pid": 4242, "leftovers": []}
    return Row(t, "node1", 0, "agent", "agent for node1 started again", data)


AGENT_DEATH = (*NODE_LOSS, came_back(40.0, rebooted=False))
HOST_LOST = (*NODE_LOSS, came_back(90.0, rebooted=True))

LOST = (
    "node1 lost the leader lease (epoch 1: could not renew the lease: the store is "
    "unreachable); killing its app at once so it cannot write beside a new active"
)
FENCED = (
    *BOOT,
    Row(30.0, "node1", 0, "stop", LOST),
    alert(30.0, "node1", 0, "fence", LOST),
    Row(30.1, "node1", 0, "fenced", "app on node1 is gone after fencing; staying standby"),
    Row(33.0, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
)  # fmt: skip

SHUTDOWN = (
    *BOOT,
    Row(40.0, "node1", 1, "stop", "agent for node1 is shutting down; stopping the app"),
    Row(40.1, "node1", 1, "lease", "node1 released the lease on shutdown"),
    Row(40.6, "node2", 2, "start", "node2 promoted to active under epoch 2; starting the app"),
)  # fmt: skip

RESTART_ONLY_EXHAUSTED = (
    *BOOT,
    *RESTARTS,
    alert(18.0, "node1", 1, "crash", "app on node1 exited (killed by SIGKILL); 3rd failure within 5m (restart_attempts = 2) and restart-only mode has no standby to fail over to; manual intervention needed", manual=True),
)  # fmt: skip

OOM = (
    *BOOT,
    alert(50, "node1", 1, "oom", "app on node1 exited (killed by SIGKILL), out of memory; 3rd failure within 10m (restart_attempts = 2); not failing over: another node with the same heap would run out of memory the same way; manual intervention needed", manual=True),
)  # fmt: skip

NOBODY_TOOK_OVER = (*BOOT, *RESTARTS, Row(17.3, "node1", 1, "failover", CRASH3))

DATABASE_AFTER_FAILOVER = (
    *CRASH_FAILOVER,
    alert(90.0, "node2", 2, "database", "app on node2 reports ERROR and its database is unreachable (reports ERROR): no restart, no failover (a standby would fail the same way); it recovers when the database does"),
)  # fmt: skip

FAILED_OVER_1 = (
    "node1 failed over to node2 at 04:40:17 (epoch 1 → 2): app on node1 exited "
    "(killed by SIGKILL); 3rd failure within 5m (restart_attempts = 2)"
)

CASES: list[tuple[str, tuple[Row, ...], float | None, list[str]]] = [
    (
        "crash three times: restarts, then a failover",
        CRASH_FAILOVER,
        None,
        [
            FAILED_OVER_1,
            f"  04:40:14  {CRASH1}",
            f"  04:40:16  {CRASH2}",
            f"  04:40:17  {CRASH3}",
            "  04:40:17  node2 promoted to active under epoch 2; starting the app",
            "  04:40:18  node2 serving: app on node2 FIRST_RUN after 1.2s: running, not yet "
            "configured (1.6s after node1 gave up)",
        ],
    ),
    (
        "--at an earlier restart explains that restart",
        CRASH_FAILOVER,
        BASE + 16,
        [
            "not failed over at 04:40:16: app on node1 exited (killed by SIGKILL) → restarted "
            "on node1 instead (restart 2 of 2 within 5m)",
            f"  04:40:16  {CRASH2}",
            "  hakit fails over only once 2 restarts within 5m did not help (restart_attempts = 2)",
        ],
    ),
    (
        "a hang within the restart budget",
        HANG_RESTART,
        None,
        [
            f"not failed over at 04:40:23: {HANG} → restarted on node1 instead "
            "(restart 1 of 2 within 5m)",
            f"  04:40:23  {HANG}; stopping it to restart it (restart 1 of 2 within 5m)",
            "  hakit fails over only once 2 restarts within 5m did not help (restart_attempts = 2)",
        ],
    ),
    (
        "a third hang: stop, step down, a warm standby takes over",
        HANG_FAILOVER_WARM,
        None,
        [
            "node1 failed over to node2 at 04:45:05 (epoch 1 → 2): app on node1 did not "
            "answer /status 3 times in a row over 31s (patience: 3 over 30s); 3rd failure "
            "within 10m (restart_attempts = 2)",
            "  04:41:40  app on node1 did not answer /status 3 times in a row over 30s "
            "(patience: 3 over 30s); stopping it to restart it (restart 1 of 2 within 10m)",
            "  04:43:20  app on node1 did not answer /status 3 times in a row over 30s "
            "(patience: 3 over 30s); stopping it to restart it (restart 2 of 2 within 10m)",
            f"  04:45:00  {HANG3}",
            "  04:45:05  app on node1 stopped; releasing the lease of epoch 1 so a standby "
            "takes over",
            "  04:45:05  node2 promoted to active under epoch 2; the app is already running",
            "  04:45:05  node2 serving: node2 promoted to active under epoch 2; the app is "
            "already running (5.5s after node1 gave up)",
        ],
    ),
    (
        "database outage: an alert, never a failover",
        DATABASE,
        None,
        [
            "not failed over at 04:40:54: database unreachable from node1 → database "
            "outage, alert sent",
            "  04:40:54  app on node1 reports ERROR and its database is unreachable (reports "
            "ERROR): no restart, no failover (a standby would fail the same way); it "
            "recovers when the database does",
            "  a database outage is never a reason to restart or fail over: a standby would "
            "fail the same way",
            "  04:40:58  recovered: app on node1 reports FIRST_RUN: running, not yet configured",
        ],
    ),
    (
        "failed starts: manual intervention",
        FAILED_START,
        None,
        [
            "no failover at 04:40:16: app on node1 failed to start 3 times (restart_attempts "
            "= 2); last: app on node1 exited (exited with code 1) while starting → manual "
            "intervention required",
            f"  04:40:16  {START3}",
            "  why no failover: another node would fail to start too",
            "  hakit has stopped acting on node1: fix the cause, then restart its agent",
        ],
    ),
    (
        "a failed start being retried",
        FAILED_START,
        BASE + 14,
        [
            "not failed over at 04:40:14: app on node1 exited (exited with code 1) while "
            "starting → retrying the start on node1 (retry 1 of 2)",
            f"  04:40:14  {START1}",
            "  by default a failed start does not fail over: another node would fail to start"
            ' the same way (failover.on_failed_start = "failover" changes that)',
        ],
    ),
    (
        "an agent killed alone: its next agent tells, the host stayed up",
        AGENT_DEATH,
        None,
        [
            "node1 failed over to node2 at 04:40:25 (epoch 1 → 2): its agent (pid 4242) on "
            "node1 died (killed or crashed) while the host stayed up; the app's shim stopped "
            "the app with it, and the lease expired",
            "  04:40:20  last heard from node1: app on node1 reports RUNNING again (was FIRST_RUN)",
            "  04:40:25  node2 promoted to active under epoch 2; starting the app",
            "  04:40:26  node2 serving: app on node2 FIRST_RUN after 1.2s: running, not yet "
            "configured (1.1s after the takeover)",
        ],
    ),
    (
        "a node lost: its next agent finds the pid file of another boot",
        HOST_LOST,
        None,
        [
            "node1 failed over to node2 at 04:40:25 (epoch 1 → 2): node1 was lost: its host "
            "went down with its agent (pid 4242) and app (it restarted since), so the lease "
            "expired",
            "  04:40:20  last heard from node1: app on node1 reports RUNNING again (was FIRST_RUN)",
            "  04:40:25  node2 promoted to active under epoch 2; starting the app",
            "  04:40:26  node2 serving: app on node2 FIRST_RUN after 1.2s: running, not yet "
            "configured (1.1s after the takeover)",
        ],
    ),
    (
        "node loss: the old active says nothing, its lease expires",
        NODE_LOSS,
        None,
        [
            "node1 failed over to node2 at 04:40:25 (epoch 1 → 2): node1's lease expired "
            "without a word from its agent: the node was lost (agent and app gone together), "
            "its agent died, or it was cut off from the coordination store (no agent has come "
            "back on it yet to tell)",
            "  04:40:20  last heard from node1: app on node1 reports RUNNING again (was FIRST_RUN)",
            "  04:40:25  node2 promoted to active under epoch 2; starting the app",
            "  04:40:26  node2 serving: app on node2 FIRST_RUN after 1.2s: running, not yet "
            "configured (1.1s after the takeover)",
        ],
    ),
    (
        "lost lease: the old active fences itself",
        FENCED,
        None,
        [
            "node1 failed over to node2 at 04:40:33 (epoch 1 → 2): node1 lost the leader "
            "lease (epoch 1: could not renew the lease: the store is unreachable); it killed "
            "its app (self-fencing)",
            f"  04:40:30  {LOST}",
            "  04:40:33  node2 promoted to active under epoch 2; starting the app",
            "  node2 has not reported RUNNING since",
        ],
    ),
    (
        "planned shutdown of the active's agent",
        SHUTDOWN,
        None,
        [
            "node1 handed over to node2 at 04:40:40 (epoch 1 → 2): the agent on node1 was "
            "shut down and released the lease",
            "  04:40:40  node1 released the lease on shutdown",
            "  04:40:40  node2 promoted to active under epoch 2; starting the app",
            "  node2 has not reported RUNNING since",
        ],
    ),
    (
        "restart-only: no standby, manual intervention",
        RESTART_ONLY_EXHAUSTED,
        None,
        [
            "no failover at 04:40:18: app on node1 exited (killed by SIGKILL) → manual "
            "intervention required",
            "  04:40:18  app on node1 exited (killed by SIGKILL); 3rd failure within 5m "
            "(restart_attempts = 2) and restart-only mode has no standby to fail over to; "
            "manual intervention needed",
            "  why no failover: restart-only mode has no standby to fail over to",
            "  hakit has stopped acting on node1: fix the cause, then restart its agent",
        ],
    ),
    (
        "out of memory: the same heap would fail elsewhere",
        OOM,
        None,
        [
            "no failover at 04:40:50: app on node1 exited (killed by SIGKILL), out of memory "
            "→ manual intervention required",
            "  04:40:50  app on node1 exited (killed by SIGKILL), out of memory; 3rd failure "
            "within 10m (restart_attempts = 2); not failing over: another node with the "
            "same heap would run out of memory the same way; manual intervention needed",
            "  why no failover: another node with the same heap would run out of memory the "
            "same way",
            "  hakit has stopped acting on node1: fix the cause, then restart its agent",
        ],
    ),
    (
        "stepped down, but no standby took over",
        NOBODY_TOOK_OVER,
        None,
        [
            "no failover at 04:40:17: node1 stepped down (epoch 1) but no other node has "
            "taken the lease since: are the other agents running?",
            f"  04:40:17  {CRASH3}",
        ],
    ),
    (
        "an outage after a failover also names the failover",
        DATABASE_AFTER_FAILOVER,
        None,
        [
            "not failed over at 04:41:30: database unreachable from node2 → database "
            "outage, alert sent",
            "  04:41:30  app on node2 reports ERROR and its database is unreachable (reports "
            "ERROR): no restart, no failover (a standby would fail the same way); it "
            "recovers when the database does",
            "  a database outage is never a reason to restart or fail over: a standby would "
            "fail the same way",
            f"last failover before that: {FAILED_OVER_1}",
        ],
    ),
    (
        "quiet history",
        BOOT,
        None,
        [
            "no failover and no alert from 04:40:12 to 04:40:14; node1 active since 04:40:13 (epoch 1)"
        ],
    ),
    ("--at before anything happened", BOOT, BASE - 60, ["no events at or before 04:39:00"]),
    ("empty history", (), None, ["no events recorded yet: has an agent of this cluster run?"]),
]


@pytest.mark.parametrize(
    ("events", "at", "expected"),
    [pytest.param(rows, at, lines, id=name) for name, rows, at, lines in CASES],
)
def test_explain(events: tuple[Row, ...], at: float | None, expected: list[str]) -> None:
    assert explain(history(*events), at=at, tz=UTC) == expected


def test_at_counts_the_whole_second_it_names() -> None:
    # The failover's cause is at 04:40:17.3: "--at 04:40:17" includes it.
    lines = explain(history(*CRASH_FAILOVER), at=BASE + 17, tz=UTC)
    assert lines[0] == FAILED_OVER_1


def test_several_days_show_the_date() -> None:
    rows = (*BOOT, *DATABASE[len(BOOT) :])
    events = history(*rows)
    events[-2:] = [
        Event(e.id, e.time + 86_400, e.node, e.kind, e.reason, e.epoch, e.actor, e.data)
        for e in events[-2:]
    ]
    assert explain(events, tz=UTC)[0] == (
        "not failed over at 2026-11-23 04:40:54: database unreachable from node1 → "
        "database outage, alert sent"
    )


def test_terms_follow_the_epochs() -> None:
    found = terms(history(*CRASH_FAILOVER))
    assert [(t.node, t.epoch) for t in found] == [("node1", 1), ("node2", 2)]


def test_parse_at() -> None:
    now = datetime(2026, 11, 22, 15, 0, 0, tzinfo=UTC).timestamp()
    assert parse_at("12:03:10", now, UTC) == BASE + 7 * 3600 + 23 * 60 + 10
    assert parse_at("04:40", now, UTC) == BASE
    assert parse_at("2026-11-22 04:40:17", now, UTC) == BASE + 17
    assert parse_at("2026-11-22T04:40:17+00:00", now, UTC) == BASE + 17
    assert parse_at(str(BASE), now, UTC) == BASE
    with pytest.raises(ValueError, match="expected HH:MM"):
        parse_at("yesterday", now, UTC)
    for wrong in ("25:00", "nan", "12:3"):
        with pytest.raises(ValueError, match="expected HH:MM"):
            parse_at(wrong, now, UTC)


# --- the policy's wording is what ``why`` reads ------------------------------------------


def _policy(mode: Mode) -> Policy:
    settings = PolicySettings(
        mode=mode,
        restart_attempts=2,
        failure_window=300.0,
        startup_timeout=120.0,
        health_timeout=30.0,
        fall=3,
        step_down_cooldown=9.0,
    )
    policy = Policy(settings, "node1")
    policy.handle(Boot(), 0.0)
    policy.handle(LeaseGained(1), 1.0)
    return policy


def _crash_until_it_stops(policy: Policy) -> list[Row]:
    """Crash the app until the policy stops restarting it; record what the agent would."""
    rows: list[Row] = []
    for n in range(1, 5):
        t = 100.0 + 10 * n
        policy.handle(AppStarted(pid=n), t)
        policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), t + 1)
        actions = policy.handle(AppExited(n, -9, oom=False, expected=False, description=""), t + 2)
        for action in actions:
            if isinstance(action, StepDown):
                rows.append(recorded(t + 2, "node1", 1, action))
            elif isinstance(action, Alert):
                # The agent records the failover alert after releasing the lease: epoch 0.
                epoch = 0 if action.kind == "failover" else 1
                rows.append(recorded(t + 2, "node1", epoch, action))
        if not any(isinstance(action, StartApp) for action in actions):
            return rows
    raise AssertionError("the policy kept restarting")


def test_policy_wording_is_what_why_reads() -> None:
    """Drive the real policy through three crashes and explain what it wrote."""
    rows = _crash_until_it_stops(_policy(Mode.COLD_STANDBY))
    rows.append(Row(140, "node2", 2, "start", "node2 promoted to active under epoch 2"))
    lines = explain(history(*BOOT, *rows), tz=UTC)
    assert lines[:3] == [
        "node1 failed over to node2 at 04:42:20 (epoch 1 → 2): app on node1 exited "
        "(killed by SIGKILL); 3rd failure within 5m (restart_attempts = 2)",
        f"  04:41:52  {CRASH1}",
        f"  04:42:02  {CRASH2}",
    ]

    lines = explain(history(*BOOT, *_crash_until_it_stops(_policy(Mode.RESTART_ONLY))), tz=UTC)
    assert lines[0].endswith("→ manual intervention required")
    assert "  why no failover: restart-only mode has no standby to fail over to" in lines


def test_policy_wording_of_failed_starts_is_what_why_reads() -> None:
    policy = _policy(Mode.COLD_STANDBY)
    rows: list[Row] = []
    for n in range(1, 4):
        policy.handle(AppStarted(pid=n), 100.0 + n)
        exited = AppExited(n, 1, oom=False, expected=False, description="exited with code 1")
        for action in policy.handle(exited, 100.5 + n):
            if isinstance(action, Alert):
                rows.append(recorded(100.5 + n, "node1", 1, action))
    lines = explain(history(*BOOT, *rows), tz=UTC)
    assert lines[0] == (
        "no failover at 04:41:43: app on node1 failed to start 3 times (restart_attempts = 2); "
        "last: app on node1 exited (exited with code 1) while starting → manual intervention "
        "required"
    )
    assert "  why no failover: another node would fail to start too" in lines


# --- what a node record says now ---------------------------------------------------------


def record(role: str, state: str, at: float) -> NodeRecord:
    """Stored at ``at`` by the store's clock, read at 100.0: its age is the store's. The
    publisher's clock (``updated_at``) is two hours off and changes nothing."""
    epoch = 1 if role == "active" else 0
    return NodeRecord("node1", role, state, epoch, at + 7200.0, age=max(0.0, 100.0 - at))


@pytest.mark.parametrize(
    ("rec", "now", "role", "state", "lost", "age", "style"),
    [
        pytest.param(None, 100.0, "unknown", "-", False, None, "dim", id="never reported"),
        pytest.param(
            record("active", "RUNNING", 99.0),
            100.0,
            "active",
            "RUNNING",
            False,
            1.0,
            "green",
            id="fresh active",
        ),
        pytest.param(
            record("active", "RUNNING", 97.0),
            100.0,
            "active",
            "RUNNING",
            False,
            3.0,
            "green",
            id="exactly the ttl old is not lost yet",
        ),
        pytest.param(
            record("active", "RUNNING", 96.9),
            100.0,
            "lost",
            "unknown",
            True,
            3.1,
            "bold red",
            id="killed agent: its last words are not shown as the truth",
        ),
        pytest.param(
            record("standby", "STOPPED", 40.0),
            100.0,
            "lost",
            "unknown",
            True,
            60.0,
            "bold red",
            id="silent standby",
        ),
        pytest.param(
            record("stopped", "STOPPED", 0.0),
            100.0,
            "stopped",
            "STOPPED",
            False,
            100.0,
            "dim",
            id="agent shut down: its record says so, not lost",
        ),
        pytest.param(
            record("active", "ERROR", 99.5),
            100.0,
            "active",
            "ERROR",
            False,
            0.5,
            "red",
            id="failing app",
        ),
        pytest.param(
            record("standby", "STARTING", 99.5),
            100.0,
            "standby",
            "STARTING",
            False,
            0.5,
            "yellow",
            id="starting app",
        ),
        pytest.param(
            record("standby", "RUNNING", 99.5),
            100.0,
            "standby",
            "RUNNING",
            False,
            0.5,
            "",
            id="warm standby",
        ),
        pytest.param(
            record("active", "RUNNING", 101.0),
            100.0,
            "active",
            "RUNNING",
            False,
            0.0,
            "green",
            id="a record from a clock slightly ahead",
        ),
    ],
)
def test_node_condition(
    rec: NodeRecord | None,
    now: float,
    role: str,
    state: str,
    lost: bool,
    age: float | None,
    style: str,
) -> None:
    condition = node_condition(rec, now, ttl=3.0)
    assert (condition.role, condition.state, condition.lost, condition.style) == (
        role,
        state,
        lost,
        style,
    )
    assert condition.age == (pytest.approx(age) if age is not None else None)


# --- while paused: the outage now, not only the history -----------------------------------

PAUSED_AT = BASE + 30
HELD = (
    "would start the app (app on node1 exited (killed by SIGKILL); restart 1 of 2 within 5m), "
    "but operator:alice (storage work) paused the cluster: no action"
)
PAUSED_HISTORY = (
    *BOOT,
    Row(30, "", 1, "pause", "operator:alice paused the cluster (storage work): agents keep monitoring and take no action (no restart, no failover, no start) until resumed"),
    Row(30.2, "node1", 1, "pause", "operator:alice (storage work) paused the cluster: node1 keeps monitoring and reporting, and takes no action until resumed"),
    Row(40, "node1", 1, "paused", HELD),
    Row(41, "node2", 1, "paused", "no node holds the leader lease: node2 would take it and start the app, but operator:alice (storage work) paused the cluster: no failover"),
)  # fmt: skip
PAUSE = {"paused": True, "actor": "operator:alice", "reason": "storage work", "at": PAUSED_AT}


def now_paused(
    t: float,
    records: dict[str, NodeRecord],
    lease: Lease | None,
    paused: dict[str, Any] | None = PAUSE,
) -> ClusterNow:
    # The records were stored at their updated_at by the store's clock, read at BASE + t:
    # their age is what the store answers (the reader never compares updated_at itself).
    stored = {
        name: replace(record, age=max(0.0, BASE + t - record.updated_at))
        for name, record in records.items()
    }
    return ClusterNow(
        time=BASE + t,
        lease_ttl=3.0,
        nodes=("node1", "node2"),
        records=stored,
        lease=lease,
        paused=paused,
    )


def test_paused_explains_the_outage_now() -> None:
    # node1's agent was killed after its app crashed (record 20 s old), its lease expired;
    # node2 is a live standby that would take over but does not: the cluster is paused.
    current = now_paused(
        60,
        {
            "node1": NodeRecord("node1", "active", "STOPPED", 1, BASE + 40),
            "node2": NodeRecord("node2", "standby", "STOPPED", 0, BASE + 59.5),
        },
        Lease.as_read("node1", 1, BASE + 43, BASE + 60),
    )
    lines = explain(history(*PAUSED_HISTORY), tz=UTC, current=current)
    assert lines == [
        "the cluster is paused since 2026-11-22 04:40:30 (30s ago) by operator:alice "
        "(storage work): agents keep monitoring and reporting but take no action (no restart, "
        "no failover, no start) until `hakit resume`",
        "now: no node is RUNNING; no node holds the leader lease (node1's of epoch 1 expired "
        "at 2026-11-22 04:40:43); lost: node1",
        "  node1: lost: its agent has not reported for 20s (more than lease_ttl 3s); it last "
        "said active, app STOPPED",
        "  node2: standby, app STOPPED (reported 0.5s ago)",
        "held back since the pause (2; the last per node):",
        f"  04:40:40  {HELD}",
        "  04:40:41  no node holds the leader lease: node2 would take it and start the app, "
        "but operator:alice (storage work) paused the cluster: no failover",
        "  nothing changes until someone acts: fix it by hand, or `hakit resume -r WHY` and "
        "the agents act on it",
        "from the history: no failover and no alert from 04:40:12 to 04:40:41; node1 active "
        "since 04:40:13 (epoch 1)",
    ]


def test_paused_names_the_lease_holder_whose_app_is_down() -> None:
    current = now_paused(
        50,
        {
            "node1": NodeRecord("node1", "active", "STOPPED", 1, BASE + 49.8),
            "node2": NodeRecord("node2", "standby", "STOPPED", 0, BASE + 49.9),
        },
        Lease.as_read("node1", 1, BASE + 52, BASE + 50),
    )
    lines = explain(history(*PAUSED_HISTORY[:-1]), tz=UTC, current=current)
    assert lines[1] == (
        "now: no node is RUNNING; node1 holds the leader lease (epoch 1) but its app is STOPPED"
    )
    assert lines[2] == "  node1: active, app STOPPED (reported 0.2s ago)"


def test_paused_with_nothing_wrong_says_so() -> None:
    current = now_paused(
        35,
        {
            "node1": NodeRecord("node1", "active", "RUNNING", 1, BASE + 34.5),
            "node2": NodeRecord("node2", "stopped", "STOPPED", 0, BASE + 5),
        },
        Lease.as_read("node1", 1, BASE + 37, BASE + 35),
    )
    lines = explain(history(*PAUSED_HISTORY[:-2]), tz=UTC, current=current)
    assert lines[1:4] == [
        "now: nothing looks wrong (the pause holds back only what would be needed)",
        "  node1: active, app RUNNING (reported 0.5s ago)",
        "  node2: stopped: its agent shut down 30s ago",
    ]
    assert not any(line.startswith("held back") or "nothing changes" in line for line in lines)


def test_not_paused_or_asked_about_the_past_is_the_history_alone() -> None:
    events = history(*CRASH_FAILOVER)
    records = {"node2": NodeRecord("node2", "active", "RUNNING", 2, BASE + 59.9)}
    running = now_paused(60, records, Lease.as_read("node2", 2, BASE + 62, BASE + 60), paused=None)
    assert explain(events, tz=UTC, current=running) == explain(events, tz=UTC)
    paused = now_paused(60, records, Lease.as_read("node2", 2, BASE + 62, BASE + 60))
    at = BASE + 20
    assert explain(events, at=at, tz=UTC, current=paused) == explain(events, at=at, tz=UTC)
    assert explain(events, tz=UTC, current=paused)[0].startswith("the cluster is paused since")


def test_policy_records_held_actions_as_why_reads_them() -> None:
    """The real policy, paused, records what it would have done under kind "paused"."""
    policy = _policy(Mode.COLD_STANDBY)
    policy.handle(AppStarted(pid=7), 2.0)
    policy.handle(StatusObserved(AppState.RUNNING, "HTTP 200"), 3.0)
    policy.handle(Paused("operator:alice", "storage work"), 4.0)
    actions = policy.handle(AppExited(7, -9, oom=False, expected=False, description=""), 5.0)
    (held,) = [a for a in actions if isinstance(a, Record) and a.kind == "paused"]
    rows = (*PAUSED_HISTORY[:2], Row(40, "node1", 1, held.kind, held.reason))
    current = now_paused(60, {}, None)
    lines = explain(history(*rows), tz=UTC, current=current)
    assert f"  04:40:40  {held.reason}" in lines
    assert "operator:alice (storage work) paused the cluster" in held.reason
