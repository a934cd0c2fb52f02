"""SeenLease: the lease loop's last answer, lent to the operator loop (hakit.agent.lease)."""

from __future__ import annotations

from hakit.agent.lease import SeenLease
from hakit.coord.base import Lease


def test_a_seen_lease_is_counted_down_from_when_it_was_asked() -> None:
    seen = SeenLease(Lease.as_read("node1", 4, 1_003.0, 1_000.0, 7), asked=50.0)
    later = seen.at(50.75)
    assert later is not None
    assert (later.holder, later.epoch, later.revision) == ("node1", 4, 7)
    assert abs(later.remaining - 2.25) < 1e-9 and later.valid
    gone = seen.at(53.5)  # past what the store judged: expired, as a read would say
    assert gone is not None and not gone.valid
    assert seen.at(49.0) == seen.lease  # a clock read before the question adds nothing


def test_no_lease_stays_none() -> None:
    assert SeenLease(None, asked=10.0).at(11.0) is None


def test_only_a_recent_answer_is_lent() -> None:
    seen = SeenLease(None, asked=10.0)
    assert seen.recent(10.0, 1.0) and seen.recent(10.99, 1.0)
    assert not seen.recent(11.0, 1.0)  # a renewal interval old: read again
    assert not seen.recent(9.0, 1.0)  # asked "after" now: not trusted
