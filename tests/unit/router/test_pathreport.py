"""The router's data-path tracker and report (router/pathreport.py), with real times passed in."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from hakit.config import AppConfig, ClusterConfig, Config, CoordinationConfig, RouterConfig
from hakit.contract import AppState
from hakit.coord.sqlite import SqliteCoordinator
from hakit.health.datapath import ANSWERED, REFUSED, SILENT, LeaseSeen, report_ttl, reports_in
from hakit.health.probe import Observation, closed_detail, refused_detail
from hakit.router.pathreport import (
    PathReporter,
    PathTracker,
    path_kind,
    reach,
    report_every,
    router_name,
)


def obs(state: AppState, http: int | None, detail: str) -> Observation:
    return Observation(state, http, detail, 0.01)


@pytest.mark.parametrize(
    ("observation", "kind"),
    [
        (obs(AppState.RUNNING, 200, "reports RUNNING"), ANSWERED),
        (obs(AppState.ERROR, 500, "reports ERROR"), ANSWERED),
        (obs(AppState.NOT_DEPLOYED, 404, "HTTP 404"), ANSWERED),
        # The words the probes themselves use (hakit.health.probe), not copies of them.
        (obs(AppState.DOWN, None, refused_detail("http://h:1/status")), REFUSED),
        (obs(AppState.DOWN, None, closed_detail("http://h/status", "reset")), REFUSED),
        (obs(AppState.DOWN, None, "cannot connect to http://h/: [Errno 101] unreachable"), SILENT),
        (obs(AppState.TIMEOUT, None, "no answer within 1s"), SILENT),
    ],
)
def test_path_kind(observation: Observation, kind: str) -> None:
    assert path_kind(observation) == kind


def test_tracker_keeps_the_last_answer_and_the_failure_streak() -> None:
    tracker = PathTracker(["n1"])
    assert tracker.feed("n1", ANSWERED, "ok", 10.0, 10.1)  # first sight: changed
    assert not tracker.feed("n1", ANSWERED, "ok", 11.0, 11.1)  # same: no hurry
    assert tracker.feed("n1", SILENT, "timeout", 12.0, 13.0)
    assert not tracker.feed("n1", SILENT, "timeout", 14.0, 15.0)
    sight = tracker.sight("n1")
    assert (sight.answered_at, sight.checked_at) == (11.0, 15.0)
    assert (sight.failure, sight.failing_since, sight.failures) == (SILENT, 12.0, 2)
    assert tracker.feed("n1", REFUSED, "refused", 16.0, 16.0)  # another kind: a new streak
    assert (tracker.sight("n1").failing_since, tracker.sight("n1").failures) == (16.0, 1)
    assert tracker.feed("n1", ANSWERED, "ok", 17.0, 17.1)
    sight = tracker.sight("n1")
    assert (sight.failure, sight.failing_since, sight.failures, sight.answered_at) == (
        None,
        None,
        0,
        17.0,
    )


def test_report_round_trips_through_json() -> None:
    tracker = PathTracker(["n1", "n2"])
    tracker.feed("n1", ANSWERED, "ok", 10.0, 10.1)
    tracker.feed("n2", REFUSED, "refused", 10.0, 10.0)
    report = tracker.report("r1", 11.0, 0.5, 3.0)
    [back] = reports_in({"router/r1": report.as_json(), "paused": {"paused": False}})
    assert back == report
    assert back.nodes["n2"].reachable and back.nodes["n1"].reachable


def test_report_carries_the_requests_in_flight_and_the_drains() -> None:
    tracker = PathTracker(["n1", "n2", "n3"])
    tracker.feed("n1", ANSWERED, "ok", 10.0, 10.1)
    report = tracker.report("r1", 11.0, 0.5, 3.0, {"n1": 3, "n2": 0, "gone": 7}, {"n2"})
    sights = report.nodes
    assert (sights["n1"].in_flight, sights["n1"].draining) == (3, False)
    assert (sights["n2"].in_flight, sights["n2"].draining) == (0, True)
    assert (sights["n3"].in_flight, sights["n3"].draining) == (0, False)
    assert "gone" not in sights  # only configured nodes are reported
    assert sights["n1"].answered_at == 10.0  # what the checks saw is kept
    [back] = reports_in({"router/r1": report.as_json()})
    assert back == report
    # Without a load (or all idle) the report is the tracker's, unchanged.
    assert tracker.report("r1", 11.0, 0.5, 3.0, {"n1": 0}, ()) == tracker.report(
        "r1", 11.0, 0.5, 3.0
    )


def test_router_name() -> None:
    assert router_name("127.0.0.1", 8080) == "127.0.0.1:8080"
    assert router_name("0.0.0.0", 80) == f"{socket.gethostname()}:80"


def cfg(tmp_path: Path, renew: float = 0.5) -> Config:
    return Config(
        cluster=ClusterConfig(state_dir=tmp_path),
        coordination=CoordinationConfig(lease_ttl=3 * renew, renew_interval=renew),
        app=AppConfig(start="true", home=tmp_path / "home", database_url="sqlite:///app.db"),
        router=RouterConfig(check_interval=0.2),
        nodes=(),
    )


def test_report_period_follows_the_renewal_within_bounds(tmp_path: Path) -> None:
    assert report_every(cfg(tmp_path, 0.2)) == 0.5
    assert report_every(cfg(tmp_path, 0.7)) == 0.7
    assert report_every(cfg(tmp_path, 5.0)) == 1.0


def test_reporter_publishes_periodically_and_on_change_then_clears(tmp_path: Path) -> None:
    store = SqliteCoordinator(tmp_path / "coord.db")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        tracker = PathTracker(["n1"])
        reporter = PathReporter(
            cfg(tmp_path),
            tracker,
            store,
            lambda call: loop.run_in_executor(None, call),
        )
        reporter.start("r1")
        deadline = loop.time() + 5
        while not reports_in(await loop.run_in_executor(None, store.cluster_state)):
            assert loop.time() < deadline, "no report published"
            await asyncio.sleep(0.02)
        first = reports_in(store.cluster_state())[0]
        assert first.router == "r1" and first.every == 0.5
        tracker.feed("n1", REFUSED, "refused", 1.0, 1.0)
        reporter.changed()
        while reports_in(store.cluster_state())[0].nodes["n1"].failure != REFUSED:
            assert loop.time() < deadline, "the change was not published"
            await asyncio.sleep(0.02)
        await reporter.close()
        assert reports_in(store.cluster_state()) == []

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_reporter_publishes_the_load_it_reads_at_each_report(tmp_path: Path) -> None:
    store = SqliteCoordinator(tmp_path / "coord.db")
    load: dict[str, int] = {"n1": 2}
    draining: set[str] = set()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reporter = PathReporter(
            cfg(tmp_path, renew=5.0),  # a 1 s period: a change is published well before it
            PathTracker(["n1"]),
            store,
            lambda call: loop.run_in_executor(None, call),
            load=lambda: (load, draining),
        )

        async def published() -> tuple[int, bool]:
            reports = reports_in(await loop.run_in_executor(None, store.cluster_state))
            sight = reports[0].nodes["n1"] if reports else None
            return (sight.in_flight, sight.draining) if sight else (-1, False)

        async def until(expected: tuple[int, bool], what: str) -> float:
            began = loop.time()
            while await published() != expected:
                assert loop.time() - began < 5, what
                await asyncio.sleep(0.01)
            return loop.time() - began

        reporter.start("r1")
        await until((2, False), "the first report")
        await asyncio.sleep(reporter.every / 5)  # past the minimum gap
        load["n1"] = 0
        draining.add("n1")
        reporter.changed()
        waited = await until((0, True), "the drained count")
        # At once (within the minimum gap, every / 5), not at the next period.
        assert waited < reporter.every / 2
        await reporter.close()

    try:
        asyncio.run(scenario())
    finally:
        store.close()


def test_reach_tells_refused_from_accepted() -> None:
    async def scenario() -> tuple[str, str]:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        accepted = (await reach("127.0.0.1", port, 1.0))[0]
        server.close()
        await server.wait_closed()
        refused = (await reach("127.0.0.1", port, 1.0))[0]
        return accepted, refused

    assert asyncio.run(scenario()) == (ANSWERED, REFUSED)


def test_answers_carry_the_routers_view_of_the_lease_and_reports_expire_in_the_store(
    tmp_path: Path,
) -> None:
    """Each answer keeps the lease stamp of its check (through later failures); the
    report carries the view at its writing and goes to the store with a TTL, so the
    store forgets it once the router stops publishing (its clock, not the readers')."""
    tracker = PathTracker(["n1"])
    renewed = LeaseSeen(4, 9, 2.0, 1.0)
    tracker.feed("n1", ANSWERED, "ok", 10.0, 10.1, renewed)
    tracker.feed("n1", SILENT, "timeout", 11.0, 12.0, LeaseSeen(4, 9, 0.5, 2.5))
    assert tracker.sight("n1").answered_lease == renewed
    now_view = LeaseSeen(4, 9, -0.5, 3.5)
    report = tracker.report("r1", 12.5, 0.5, 3.0, lease=now_view)
    assert report.expiring and report.lease == now_view
    assert reports_in({"router/r1": report.as_json()}) == [report]

    clock = [5_000.0]
    store = SqliteCoordinator(tmp_path / "coord.db", clock=lambda: clock[0])

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reporter = PathReporter(
            cfg(tmp_path),
            tracker,
            store,
            lambda call: loop.run_in_executor(None, call),
            lease=lambda now: now_view,
        )
        reporter.name = "r1"
        await reporter.publish()

    try:
        asyncio.run(scenario())
        (published,) = reports_in(store.cluster_state())
        assert published.expiring and published.lease == now_view
        clock[0] += report_ttl(0.5) + 0.01  # silent for STALE_REPORTS periods
        assert reports_in(store.cluster_state()) == []
    finally:
        store.close()


def test_the_checks_stamp_what_the_view_shows_of_the_lease(tmp_path: Path) -> None:
    """How long a revision has been shown and the validity left are measured on the
    router's own clock from when its view showed them (ClusterView: the store's
    ``remaining`` at the read)."""
    from hakit.coord.base import Lease
    from hakit.coord.view import ClusterView
    from hakit.router.checks import RouterChecks

    views = [ClusterView(Lease("n1", 4, 9e9, 3.0, 9), {}, 100.0)]
    checks = RouterChecks(cfg(tmp_path), lambda: views[-1])
    checks.observe(views[-1])
    assert checks.lease_seen(101.0) == LeaseSeen(4, 9, 2.0, 1.0)
    views.append(views[-1].at(102.0))  # the same read kept: nothing new shown
    checks.observe(views[-1])
    assert checks.lease_seen(104.0) == LeaseSeen(4, 9, -1.0, 4.0)
    views.append(ClusterView(Lease("n1", 4, 9e9, 3.0, 10), {}, 104.5))  # renewed
    checks.observe(views[-1])
    assert checks.lease_seen(105.0) == LeaseSeen(4, 10, 2.5, 0.5)
    views.append(ClusterView(None, {}, 106.0))  # released
    checks.observe(views[-1])
    assert checks.lease_seen(106.0) == LeaseSeen()
