"""hakit.health.datapath.path_lost with ``answering_since``: the routers' failures from before the
app answered locally (it was starting, or the node was frozen) are not a lost path.

Found under load (tests/e2e, a CPU-starved run): an app that took 2 s to start was
refused by the router's checks meanwhile; the moment its agent saw it RUNNING, it read
the router's report (3 refused checks, streak older than the app) and handed over to the
standby, whose new app was then handed back the same way.
"""

from __future__ import annotations

from hakit.health.datapath import REFUSED, SILENT, PathReport, Sight, path_lost

FALL, PATIENCE = 2, 2.0
STANDBY = Sight(answered_at=None, checked_at=111.9, failure=REFUSED, failing_since=90.0)


def failing(kind: str, since: float, count: int, checked: float) -> Sight:
    return Sight(None, checked, kind, since, count, f"{kind} check")


def target(now: float, node1: Sight, answering_since: float | None) -> str | None:
    report = PathReport("r1", now - 0.1, 0.5, 1.5, {"node1": node1, "node2": STANDBY})
    loss = path_lost(
        "node1",
        [report],
        ["node2"],
        now,
        fall=FALL,
        patience=PATIENCE,
        answering_since=answering_since,
    )
    return loss.target if loss is not None else None


def test_refused_while_the_app_was_starting_is_not_a_lost_path() -> None:
    # Refused from 100 to 103 (the app was not listening yet); it answers here since 103.5.
    starting = failing(REFUSED, 100.0, 3, checked=103.0)
    assert target(103.6, starting, answering_since=None) == "node2"  # the old judgement
    assert target(103.6, starting, answering_since=103.5) is None
    # Still refused by a check after it answers here, but not yet for the patience.
    assert target(104.6, failing(REFUSED, 100.0, 4, checked=104.5), 103.5) is None
    # Refused for the patience since it answers here: the path is lost.
    assert target(105.6, failing(REFUSED, 100.0, 6, checked=105.5), 103.5) == "node2"


def test_silent_while_this_node_was_frozen_counts_only_after_waking() -> None:
    # Silent since 100 while the whole node was frozen; it answers again since 106.
    frozen = failing(SILENT, 100.0, 4, checked=105.0)
    assert target(106.2, frozen, answering_since=None) == "node2"
    assert target(106.2, frozen, answering_since=106.0) is None
    assert target(108.2, failing(SILENT, 100.0, 6, checked=108.0), 106.0) == "node2"


def test_a_streak_that_began_after_the_app_answered_is_judged_as_before() -> None:
    cut = failing(SILENT, 110.0, 3, checked=112.5)
    assert target(112.6, cut, answering_since=50.0) == "node2"
    assert target(112.6, cut, answering_since=None) == "node2"
    # Not past the patience yet: no loss either way.
    assert target(111.0, failing(SILENT, 110.0, 2, checked=110.9), 50.0) is None
