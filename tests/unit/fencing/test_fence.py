"""Fencing (hakit.fencing.fence): who must be fenced before a promotion, and running the fence
command."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hakit.config import AppConfig, Config, FailoverConfig, NodeConfig, load_config
from hakit.config.check import describe_config
from hakit.coord.base import REINIT_HOLDER, Lease, NodeRecord
from hakit.coord.keys import ROUTER_REPORTS
from hakit.coord.sqlite import SqliteCoordinator
from hakit.errors import ConfigError
from hakit.fencing.command import render_fence_command, run_fence_command
from hakit.fencing.fence import (
    AGENT_ID_KEY,
    PENDING_KEY,
    FenceNeed,
    Fencer,
    Predecessor,
    application_name,
    fence_needs,
    read_predecessor,
    retry_delay,
    stood_down,
    takeover_words,
)
from hakit.fencing.watchdog import LeaseWatchdog, kill_group_now
from hakit.health.datapath import REFUSED, PathReport, Sight
from hakit.supervisor.process import live_group_members

NOW = 1_000_000.0
READ = NOW + 2.0  # when the deciding node reads the records (its clock)


def record(node: str, role: str, epoch: int, stored_at: float, **detail: Any) -> NodeRecord:
    """Stored at ``stored_at`` (on the reader's clock), read at READ: its ``age`` is the
    store's. The publisher's own clock (``updated_at``) is an hour off and changes nothing."""
    age = max(0.0, READ - stored_at)
    return NodeRecord(node, role, "RUNNING", epoch, stored_at - 3600.0, dict(detail), age)


A = {AGENT_ID_KEY: "agent-a"}  # the agent process that held node1's lease
B = {AGENT_ID_KEY: "agent-b"}  # another one: node1's agent after a restart

FROZEN = record("node1", "active", 1, NOW - 5, **A)  # last heard of before its lease ended


def seen(lease: Lease | None, last: int, holder: NodeRecord | None = None) -> Predecessor:
    return Predecessor(lease, last, holder, NOW)


def needs(
    before: Predecessor,
    gained: Lease,
    *records: NodeRecord,
    own: tuple[FenceNeed, ...] = (),
) -> tuple[list[str], list[str]]:
    to_fence, cleared = fence_needs(
        "node2", before, gained, {r.node: r for r in records}, list(own), read_at=READ
    )
    return [n.node for n in to_fence], [n.node for n in cleared]


EXPIRED = seen(Lease.as_read("node1", 1, NOW - 1, NOW), 1, FROZEN)
GAINED = Lease.as_read("node2", 2, NOW + 3, NOW)


# --- who must be fenced ----------------------------------------------------------------


def test_an_expired_lease_of_another_node_means_fencing_it() -> None:
    to_fence, cleared = fence_needs("node2", EXPIRED, GAINED, {"node1": FROZEN}, [], read_at=READ)
    assert [(n.node, n.epoch, n.agent_id) for n in to_fence] == [("node1", 1, "agent-a")]
    assert "expired" in to_fence[0].why and "without being released" in to_fence[0].why
    assert cleared == []


def test_the_hold_of_a_reinit_is_nobody_to_fence() -> None:
    # `hakit init --reinit` held the lease under the base epoch: no node ran under it.
    hold = seen(Lease.as_read(REINIT_HOLDER, 7, NOW - 1, NOW), 7)
    assert needs(hold, Lease.as_read("node2", 8, NOW + 3, NOW)) == ([], [])
    forced = FenceNeed(REINIT_HOLDER, 7, NOW, "the operator forced a failover away from it")
    assert needs(hold, Lease.as_read("node2", 8, NOW + 3, NOW), own=(forced,)) == ([], [])


def test_a_released_lease_is_a_clean_handover() -> None:
    # release() deletes the lease: nothing stored, and no epoch was handed out in between.
    standby = record("node1", "standby", 0, NOW - 1)
    assert needs(seen(None, 1), GAINED, standby) == ([], [])


def test_the_first_lease_ever_needs_no_fencing() -> None:
    assert needs(seen(None, 0), Lease.as_read("node2", 1, NOW + 3, NOW)) == ([], [])


def test_its_own_expired_lease_needs_no_stonith() -> None:
    # The agent fences itself (the deadline check); no power-off of its own node.
    assert needs(
        seen(Lease.as_read("node2", 4, NOW - 1, NOW), 4), Lease.as_read("node2", 5, NOW + 3, NOW)
    ) == ([], [])


def test_the_same_agent_publishing_after_its_lease_ended_has_fenced_itself() -> None:
    woke = record("node1", "standby", 0, NOW - 0.5, **A)  # it ran after the expiry
    assert needs(EXPIRED, GAINED, woke) == ([], ["node1"])


def test_a_restarted_agent_proves_nothing() -> None:
    # The old agent died; its app may run on, orphaned; the new agent never knew it.
    restarted = record("node1", "standby", 0, NOW - 0.5, **B)
    assert needs(EXPIRED, GAINED, restarted) == (["node1"], [])


def test_an_unknown_holder_agent_proves_nothing() -> None:
    woke = record("node1", "standby", 0, NOW - 0.5, **A)
    assert needs(seen(Lease.as_read("node1", 1, NOW - 1, NOW), 1, None), GAINED, woke) == (
        ["node1"],
        [],
    )


def test_a_record_still_claiming_the_lost_epoch_is_no_proof() -> None:
    claims = record("node1", "active", 1, NOW - 0.5, **A)
    assert needs(EXPIRED, GAINED, claims) == (["node1"], [])


def test_a_lease_valid_when_read_then_taken_is_fenced_too() -> None:
    # It ended between our read and our acquire: not released as far as we know.
    before = seen(Lease.as_read("node1", 1, NOW + 0.001, NOW), 1)
    to_fence, _ = fence_needs("node2", before, GAINED, {}, [], read_at=READ)
    assert [n.node for n in to_fence] == ["node1"]
    assert to_fence[0].since == NOW


def test_epochs_handed_out_in_between_are_fenced() -> None:
    # Between our read (last epoch 3) and our acquire (epoch 6) node3 held epoch 5.
    node3 = record("node3", "active", 5, NOW - 0.1)
    assert needs(seen(None, 3), Lease.as_read("node2", 6, NOW + 3, NOW), node3) == (["node3"], [])


def test_nodes_another_node_could_not_fence_are_fenced() -> None:
    pending = {"node1": {"epoch": 1, "since": NOW - 20, "why": "its lease expired"}}
    node3 = record("node3", "standby", 0, NOW - 1, **{PENDING_KEY: pending})
    node1 = record("node1", "active", 1, NOW - 30)
    to_fence, _ = fence_needs(
        "node2",
        seen(None, 2),
        Lease.as_read("node2", 3, NOW + 3, NOW),
        {"node1": node1, "node3": node3},
        [],
        read_at=READ,
    )
    assert [n.node for n in to_fence] == ["node1"]
    assert "node3 could not fence it yet" in to_fence[0].why


def test_a_pending_node_whose_agent_woke_is_cleared() -> None:
    pending = {"node1": {"epoch": 1, "since": NOW - 20, "why": "expired", "agent": "agent-a"}}
    node3 = record("node3", "standby", 0, NOW - 1, **{PENDING_KEY: pending})
    woke = record("node1", "standby", 0, NOW - 2, **A)
    assert needs(seen(None, 2), Lease.as_read("node2", 3, NOW + 3, NOW), node3, woke) == (
        [],
        ["node1"],
    )


def test_pending_for_oneself_is_ignored() -> None:
    # node2 woke, fenced itself, and now takes the lease: what others could not do to it
    # is moot.
    pending = {"node2": {"epoch": 1, "since": NOW - 20}}
    node3 = record("node3", "standby", 0, NOW - 1, **{PENDING_KEY: pending})
    assert needs(seen(None, 2), Lease.as_read("node2", 3, NOW + 3, NOW), node3) == ([], [])


def test_malformed_pending_entries_are_skipped() -> None:
    pending = {"node1": "yes", "node4": {"epoch": "x"}, "node5": {}}
    node3 = record("node3", "standby", 0, NOW - 1, **{PENDING_KEY: pending})
    assert needs(seen(None, 2), Lease.as_read("node2", 3, NOW + 3, NOW), node3) == ([], [])


def test_own_pending_stays_after_giving_the_lease_back() -> None:
    own = (FenceNeed("node1", 1, NOW - 10, "its lease of epoch 1 expired", "agent-a"),)
    assert needs(seen(None, 2), Lease.as_read("node2", 3, NOW + 3, NOW), FROZEN, own=own) == (
        ["node1"],
        [],
    )


def test_takeover_words_only_for_an_expired_lease_of_another_node() -> None:
    words = takeover_words(EXPIRED, "node2")
    assert words.startswith("node1's lease of epoch 1 expired at ")
    assert "without being released" in words
    assert takeover_words(seen(None, 1), "node2") == ""  # released: a clean handover
    assert (
        takeover_words(seen(Lease.as_read("node2", 1, NOW - 1, NOW), 1), "node2") == ""
    )  # its own
    assert (
        takeover_words(seen(Lease.as_read("node1", 1, NOW + 1, NOW), 1), "node2") == ""
    )  # still valid


def test_stood_down() -> None:
    need = FenceNeed("node1", 3, NOW, "", "agent-a")
    assert not stood_down(None, need, READ)
    assert not stood_down(record("node1", "standby", 0, NOW - 1, **A), need, READ)
    assert not stood_down(record("node1", "active", 3, NOW + 1, **A), need, READ)
    assert not stood_down(record("node1", "standby", 0, NOW + 1, **B), need, READ)
    assert not stood_down(record("node1", "standby", 0, NOW + 1), need, READ)
    assert stood_down(record("node1", "standby", 0, NOW + 1, **A), need, READ)
    assert stood_down(record("node1", "stopped", 0, NOW + 1, **A), need, READ)
    assert stood_down(record("node1", "active", 4, NOW + 1, **A), need, READ)  # a later term
    unknown = FenceNeed("node1", 3, NOW, "")  # e.g. an operator's forced failover
    assert not stood_down(record("node1", "standby", 0, NOW + 1, **A), unknown, READ)


def test_read_predecessor_remembers_the_holder_of_an_expired_lease(tmp_path: Path) -> None:
    clock = [NOW]
    store = SqliteCoordinator(tmp_path / "coordination.db", clock=lambda: clock[0])
    empty = read_predecessor(store, "node2", lambda: clock[0])
    assert (empty.lease, empty.last_epoch, empty.record) == (None, 0, None)
    store.acquire_or_renew("node1", 3.0)
    store.publish_node(FROZEN)
    valid = read_predecessor(store, "node2", lambda: clock[0])
    assert valid.lease is not None and valid.record is None  # still valid: not ours to take
    clock[0] = NOW + 10
    expired = read_predecessor(store, "node2", lambda: clock[0])
    assert expired.lease == Lease.as_read("node1", 1, NOW + 3.0, NOW) and expired.last_epoch == 1
    assert expired.record == FROZEN
    store.close()


def test_render_fence_command() -> None:
    argv = ("/usr/sbin/fence_ipmilan", "--plug", "{node}", "--ip={host}", "--name", "{node}")
    assert render_fence_command(argv, "db1", "10.0.0.5") == [
        "/usr/sbin/fence_ipmilan",
        "--plug",
        "db1",
        "--ip=10.0.0.5",
        "--name",
        "db1",
    ]


def test_retry_delay_doubles_up_to_a_minute() -> None:
    assert [retry_delay(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(20, 1.0) == 60.0


def test_application_name() -> None:
    assert application_name("node1") == "hakit-node1"


# --- configuration -----------------------------------------------------------------------


def test_fence_command_config() -> None:
    argv = ["fence", "--node", "{node}", "--host", "{host}"]  # as TOML gives it: a list
    failover = FailoverConfig(fence_command=argv)  # type: ignore[arg-type]
    assert failover.fence_command == ("fence", "--node", "{node}", "--host", "{host}")
    assert FailoverConfig().fence_command is None
    assert FailoverConfig().fence_database_sessions is False


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fence", "{port}"], "uses {port}; expected only {node} and {host}"),
        (["fence", "{node"], "literal brace"),
        ("fence {node}", "got a string"),
        ([], "empty list"),
    ],
)
def test_fence_command_problems(argv: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("}", r"\}")):
        FailoverConfig(fence_command=argv)  # type: ignore[arg-type]


# --- the fence command, for real ---------------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def run(argv: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> Any:
    return asyncio.run(run_fence_command(argv, timeout, env or {}, log))


def test_fence_command_success_with_its_output(tmp_path: Path) -> None:
    code = "import os; print('powered off', os.environ['HAKIT_FENCE_NODE'])"
    result = run(python(code), 10, tmp_path / "fence.log", {"HAKIT_FENCE_NODE": "node1"})
    assert result.ok and result.returncode == 0
    assert result.output == "powered off node1"
    assert result.summary.startswith("exited 0 after")
    assert "powered off node1" in (tmp_path / "fence.log").read_text()


def test_fence_command_failure(tmp_path: Path) -> None:
    code = "import sys; print('BMC unreachable'); sys.exit(3)"
    result = run(python(code), 10, tmp_path / "fence.log")
    assert not result.ok and result.returncode == 3
    assert "exited with status 3" in result.summary
    assert result.output == "BMC unreachable"


def test_fence_command_that_cannot_start(tmp_path: Path) -> None:
    result = run([str(tmp_path / "missing-fence-agent")], 10, tmp_path / "fence.log")
    assert not result.ok and result.returncode is None
    assert "could not be started" in result.summary


def test_fence_command_timeout_kills_its_whole_group(tmp_path: Path) -> None:
    # The fence agent starts a child, prints its pid, then hangs.
    code = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(child.pid, flush=True); time.sleep(60)"
    )
    started = time.monotonic()
    result = run(python(code), 1.0, tmp_path / "fence.log")
    assert time.monotonic() - started < 10
    assert not result.ok and "did not finish within fence_timeout 1 s" in result.summary
    child = int(result.output.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child):
        time.sleep(0.02)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # gone meanwhile
        return False


def test_kill_group_now() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        assert kill_group_now(process.pid)
        assert process.wait(timeout=10) == -signal.SIGKILL
        assert live_group_members(process.pid) == []
        assert not kill_group_now(process.pid)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not kill_group_now(None)
    assert not kill_group_now(0)  # never "the caller's own group"


# --- the watchdog: self-fencing that a blocked main loop cannot hold back ------------------


def ticks(watchdog: LeaseWatchdog, start: float, end: float, every: float = 0.05) -> list[float]:
    """Feed regular ticks from ``start`` to ``end``; the times at which it said kill."""
    kills, now = [], start
    while now <= end + 1e-9:
        if watchdog.step(now):
            kills.append(round(now, 2))
        now += every
    return kills


def test_watchdog_kills_at_the_deadline_when_it_ran_there() -> None:
    watchdog = LeaseWatchdog(lambda: None, threshold=1.0, grace=3.0)
    watchdog.arm(10.0)
    assert ticks(watchdog, 9.0, 12.0) == [10.0]  # once: then it waits to be armed again
    reason = watchdog.take_fired()
    assert reason is not None and "not renewed before its deadline" in reason
    assert "watchdog" in reason and watchdog.take_fired() is None


def test_watchdog_renewed_in_time_never_kills() -> None:
    watchdog = LeaseWatchdog(lambda: None)
    now = 0.0
    for _ in range(200):  # a renewal every second pushes the deadline 2.5 s ahead
        watchdog.arm(now + 2.5)
        assert ticks(watchdog, now, now + 0.95) == []
        now += 1.0
    assert watchdog.take_fired() is None


def test_watchdog_disarmed_never_kills() -> None:
    watchdog = LeaseWatchdog(lambda: None)
    watchdog.arm(1.0)
    watchdog.disarm()
    assert ticks(watchdog, 0.0, 10.0) == []


def test_watchdog_frozen_across_the_deadline_leaves_the_waking_loop_first() -> None:
    """The whole agent was frozen (its own ticks stopped too): the main loop renews on
    waking if nobody took over and re-arms; the watchdog kills only after ``grace``."""
    watchdog = LeaseWatchdog(lambda: None, threshold=1.0, grace=3.0)
    watchdog.arm(10.0)
    assert ticks(watchdog, 8.0, 9.0) == []
    assert not watchdog.step(15.0)  # first tick after a 6 s freeze: not yet
    watchdog.arm(17.0)  # the main loop renewed on waking
    assert ticks(watchdog, 15.05, 16.9) == []
    assert ticks(watchdog, 16.95, 17.2) == [17.0]  # a later deadline counts as usual

    silent = LeaseWatchdog(lambda: None, threshold=1.0, grace=3.0)
    silent.arm(10.0)
    silent.step(9.9)
    assert silent.step(15.0) is False  # frozen across it
    assert ticks(silent, 15.05, 19.0) == [18.0]  # the loop did nothing within grace: kill


def test_watchdog_thread_kills_a_real_group_while_the_caller_is_busy() -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    told: list[str] = []
    watchdog = LeaseWatchdog(lambda: process.pid, on_fire=told.append)
    try:
        watchdog.start()
        deadline = time.monotonic() + 0.3
        watchdog.arm(deadline)
        # This thread stands for a blocked main loop: it never renews nor checks.
        assert process.wait(timeout=10) == -signal.SIGKILL
        assert time.monotonic() >= deadline  # not before the deadline
        watchdog.stop()  # joined: on_fire has run
        assert len(told) == 1 and "watchdog" in told[0]
    finally:
        watchdog.stop()
        if process.poll() is None:
            process.kill()
        process.wait()


# --- the agent's side, against a real store -----------------------------------------------


def make_config(tmp_path: Path, fence_command: list[str] | None) -> Config:
    return Config(
        app=AppConfig(start=("app",), home=tmp_path, database_url="sqlite:///x.db"),
        nodes=(NodeConfig(name="node1", port=8101), NodeConfig(name="node2", port=8102)),
        failover=FailoverConfig(
            fence_command=tuple(fence_command) if fence_command else None, fence_timeout=5.0
        ),
    )


class Harness:
    def __init__(self, tmp_path: Path, fence_command: list[str] | None) -> None:
        self.store = SqliteCoordinator(tmp_path / "coordination.db")
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.fencer = Fencer(
            make_config(tmp_path, fence_command),
            "node2",
            self.store,
            lambda kind, reason, data: self.events.append((kind, reason, data)),
            tmp_path / "fence-node2.log",
        )

    def takeover(self) -> Any:
        """node1 held epoch 1 and froze; node2 takes the lease after it expired."""
        now = time.time()
        frozen = record("node1", "active", 1, now - 10, **A)
        self.store.publish_node(frozen)
        before = Predecessor(Lease.as_read("node1", 1, now - 1, now), 1, frozen, now)
        return asyncio.run(
            self.fencer.clear_to_promote(Lease.as_read("node2", 2, now + 3, now), before)
        )


def test_fencer_runs_the_command_against_the_old_holder(tmp_path: Path) -> None:
    marker = tmp_path / "fenced"
    code = f"import sys; open({str(marker)!r}, 'w').write(sys.argv[1])"
    harness = Harness(tmp_path, [*python(code), "{node}"])
    verdict = harness.takeover()
    assert marker.read_text() == "node1"
    [(kind, reason, data)] = harness.events
    assert kind == "fence" and reason.startswith("fenced node1 before node2 promotes under epoch 2")
    # A node was powered off: the agent sends this as a "fence" alert (webhook, e-mail).
    assert verdict.ok and verdict.alerts == (reason,)
    assert data["result"] == "ok" and data["target"] == "node1" and data["returncode"] == 0
    # `hakit why` tells the command's own account from the data, not from the sentence.
    assert data["summary"].startswith("exited 0 after ") and data["summary"] in reason
    assert harness.fencer.pending == {}


def test_fencer_refuses_when_the_command_fails_and_remembers(tmp_path: Path) -> None:
    harness = Harness(tmp_path, python("import sys; print('no route to BMC'); sys.exit(1)"))
    verdict = harness.takeover()
    assert not verdict.ok
    assert "could not fence node1" in verdict.reason and "no route to BMC" in verdict.reason
    assert "--force" in verdict.reason
    assert harness.events[-1][2]["result"] == "failed"
    assert harness.events[-1][2]["summary"].startswith("exited with status 1 after ")
    assert list(harness.fencer.pending) == ["node1"]
    assert harness.fencer.published()["node1"]["epoch"] == 1
    assert harness.fencer.failures == 1
    # Next turn, the lease was given back (nothing stored): still fenced first.
    released = Predecessor(None, 2, None, time.time())
    again = asyncio.run(
        harness.fencer.clear_to_promote(
            Lease.as_read("node2", 3, time.time() + 3, time.time()), released
        )
    )
    assert not again.ok and harness.fencer.failures == 2


def test_operator_force_skips_the_fence_once(tmp_path: Path) -> None:
    harness = Harness(tmp_path, python("import sys; sys.exit(1)"))
    harness.fencer.skip_next = True
    assert harness.takeover().ok
    assert harness.events[-1][2]["result"] == "skipped"
    assert "operator forced" in harness.events[-1][1]
    assert not harness.fencer.skip_next


def test_without_a_fence_command_self_fencing_is_trusted_and_said(tmp_path: Path) -> None:
    harness = Harness(tmp_path, None)
    assert harness.takeover().ok
    [(_kind, reason, data)] = harness.events
    assert data["result"] == "not-configured" and "no failover.fence_command" in reason


def test_without_a_fence_command_no_promotion_while_a_router_hears_the_old_app(
    tmp_path: Path,
) -> None:
    """The data path: this node cannot reach node1's app (nothing on its port here), but a
    router got an answer from it after its lease ended: it still runs. No promotion."""
    harness = Harness(tmp_path, None)
    now = time.time()
    heard = Sight(answered_at=now - 0.2, checked_at=now - 0.2)
    report = PathReport("r1", now, 0.5, 1.5, {"node1": heard})
    harness.store.set_state(ROUTER_REPORTS + "r1", report.as_json())
    verdict = harness.takeover()
    assert not verdict.ok
    assert "node1's app still answers (router r1 got an answer from it" in verdict.reason
    assert harness.events[-1][2]["result"] == "still-answering"
    assert list(harness.fencer.pending) == ["node1"]
    # An answer from before the lease ended proves nothing: self-fencing is trusted.
    stale = PathReport(
        "r1",
        now,
        0.5,
        1.5,
        {
            "node1": Sight(
                answered_at=now - 5, checked_at=now - 0.2, failure=REFUSED, failing_since=now - 4
            )
        },
    )
    harness.store.set_state(ROUTER_REPORTS + "r1", stale.as_json())
    assert harness.takeover().ok


def test_an_old_app_still_answering_waits_for_its_live_agent_to_stand_down(
    tmp_path: Path,
) -> None:
    """The old holder's agent lives: at its next renewal it learns the lease is gone and
    kills its app (then, in warm standby, starts it again as a standby, which answers).
    Its app answering meanwhile is that race, not a failed self-fence: the fencer waits
    for the very agent's record instead of refusing and giving the lease back."""
    harness = Harness(tmp_path, None)
    now = time.time()
    heard = Sight(answered_at=now - 0.2, checked_at=now - 0.2)
    harness.store.set_state(
        ROUTER_REPORTS + "r1", PathReport("r1", now, 0.5, 1.5, {"node1": heard}).as_json()
    )
    published = threading.Event()

    def stand_down() -> None:
        harness.store.publish_node(record("node1", "standby", 0, time.time(), **A))
        published.set()

    timer = threading.Timer(0.4, stand_down)
    timer.start()
    try:
        verdict = harness.takeover()
    finally:
        timer.cancel()
    assert published.is_set() and verdict.ok
    [(_kind, reason, data)] = harness.events
    assert data["result"] == "not-needed" and "fenced itself" in reason
    assert harness.fencer.pending == {}


def test_no_fence_after_a_clean_handover(tmp_path: Path) -> None:
    harness = Harness(tmp_path, python("import sys; sys.exit(1)"))
    released = Predecessor(None, 1, None, time.time())
    verdict = asyncio.run(
        harness.fencer.clear_to_promote(
            Lease.as_read("node2", 2, time.time() + 3, time.time()), released
        )
    )
    assert verdict.ok and harness.events == []


def test_the_old_node_woke_and_fenced_itself_meanwhile(tmp_path: Path) -> None:
    harness = Harness(tmp_path, python("import sys; sys.exit(1)"))
    now = time.time()
    frozen = record("node1", "active", 1, now - 10, **A)
    harness.store.publish_node(record("node1", "standby", 0, now, **A))  # awake again
    before = Predecessor(Lease.as_read("node1", 1, now - 1, now), 1, frozen, now)
    verdict = asyncio.run(
        harness.fencer.clear_to_promote(Lease.as_read("node2", 2, now + 3, now), before)
    )
    assert verdict.ok
    [(_kind, reason, data)] = harness.events
    assert data["result"] == "not-needed" and "fenced itself" in reason


def write_toml(tmp_path: Path, failover: str, database_url: str) -> Path:
    path = tmp_path / "hakit.toml"
    path.write_text(
        f"""
[app]
start = ["app"]
home = "home"
database_url = "{database_url}"

[failover]
{failover}

[[nodes]]
name = "node1"
port = 8101

[[nodes]]
name = "node2"
port = 8102
"""
    )
    return path


def test_config_check_describes_fencing(tmp_path: Path) -> None:
    failover = (
        'fence_command = ["/usr/sbin/fence_ipmilan", "--plug", "{node}"]\n'
        'fence_timeout = "15s"\nfence_database_sessions = true'
    )
    cfg = load_config(write_toml(tmp_path, failover, "postgresql://app@db/app"))
    [line] = [line for line in describe_config(cfg) if line.startswith("fencing:")]
    assert "`/usr/sbin/fence_ipmilan --plug {node}`" in line and "up to 15s" in line
    assert "database sessions are terminated" in line
    plain = load_config(write_toml(tmp_path, "", "sqlite:///app.db"))
    [line] = [line for line in describe_config(plain) if line.startswith("fencing:")]
    assert "no fence_command" in line


def test_session_fencing_needs_postgresql(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "fence_database_sessions = true", "sqlite:///app.db")
    with pytest.raises(ConfigError, match=r"failover.fence_database_sessions: only applies to"):
        load_config(path)


def test_fence_command_problem_names_file_and_line(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'fence_command = ["fence", "{port}"]', "sqlite:///app.db")
    with pytest.raises(ConfigError, match=r"hakit.toml:\d+: failover.fence_command: .*\{port\}"):
        load_config(path)
