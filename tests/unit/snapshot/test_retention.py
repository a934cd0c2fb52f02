"""Which generations a retention policy keeps (hakit.snapshot.retention), and why.

Table-driven cases for each rule (restic's ``forget --keep-*``), then properties
checked on many seeded random histories.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from hakit.snapshot.retention import (
    Decision,
    Generation,
    Reason,
    RetentionPolicy,
    Rule,
    choose,
    day_of,
    week_of,
)


def at(text: str) -> Generation:
    """A generation named by its UTC time ("2026-12-06 10:00")."""
    when = datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
    return Generation(text, int(when.timestamp()) * 1_000_000_000)


def kept(decisions: list[Decision]) -> list[str]:
    return [d.generation.id for d in decisions if d.keep]


def rules(decisions: list[Decision]) -> dict[str, list[str]]:
    return {d.generation.id: [str(r) for r in d.reasons] for d in decisions}


# Three days of history: Mon 2026-11-30 .. Wed 2026-12-02, two or three a day, and one
# the week before (Sun 2026-11-29, ISO week 48; the others are week 49).
HISTORY = [
    at("2026-11-29 23:00"),
    at("2026-11-30 08:00"),
    at("2026-11-30 20:00"),
    at("2026-12-01 08:00"),
    at("2026-12-01 12:00"),
    at("2026-12-01 20:00"),
    at("2026-12-02 08:00"),
    at("2026-12-02 09:00"),
]

CASES = [
    # (policy, protected, the generations kept, newest first)
    (RetentionPolicy(keep_last=1), (), ["2026-12-02 09:00"]),
    (
        RetentionPolicy(keep_last=3),
        (),
        ["2026-12-02 09:00", "2026-12-02 08:00", "2026-12-01 20:00"],
    ),
    (RetentionPolicy(keep_last=100), (), [g.id for g in reversed(HISTORY)]),
    # the newest of each of the 2 newest days
    (RetentionPolicy(keep_daily=2), (), ["2026-12-02 09:00", "2026-12-01 20:00"]),
    # 4 days with a generation: each day's newest, every count used
    (
        RetentionPolicy(keep_daily=4),
        (),
        ["2026-12-02 09:00", "2026-12-01 20:00", "2026-11-30 20:00", "2026-11-29 23:00"],
    ),
    # 7 daily over 4 days: the count is not used up, so the oldest is kept too (restic)
    (
        RetentionPolicy(keep_daily=7),
        (),
        ["2026-12-02 09:00", "2026-12-01 20:00", "2026-11-30 20:00", "2026-11-29 23:00"],
    ),
    # weekly: week 49's newest, then week 48's
    (RetentionPolicy(keep_weekly=2), (), ["2026-12-02 09:00", "2026-11-29 23:00"]),
    (RetentionPolicy(keep_weekly=1), (), ["2026-12-02 09:00"]),
    # rules add up; a generation kept by two rules is kept once
    (
        RetentionPolicy(keep_last=2, keep_daily=2, keep_weekly=2),
        (),
        ["2026-12-02 09:00", "2026-12-02 08:00", "2026-12-01 20:00", "2026-11-29 23:00"],
    ),
    # a protected generation stays whatever the rules say
    (
        RetentionPolicy(keep_last=1),
        ("2026-12-01 12:00",),
        ["2026-12-02 09:00", "2026-12-01 12:00"],
    ),
    # no policy: nothing is removed
    (RetentionPolicy(), (), [g.id for g in reversed(HISTORY)]),
]


@pytest.mark.parametrize(("policy", "protected", "expected"), CASES)
def test_rules(policy: RetentionPolicy, protected: tuple[str, ...], expected: list[str]) -> None:
    assert kept(choose(HISTORY, policy, protected)) == expected


def test_the_oldest_is_kept_when_a_count_is_left_even_in_a_used_bucket() -> None:
    # Two generations on one day, 3 daily: the day's newest, then (count left) the oldest.
    history = [at("2026-12-01 08:00"), at("2026-12-01 20:00")]
    decisions = choose(history, RetentionPolicy(keep_daily=3))
    assert kept(decisions) == ["2026-12-01 20:00", "2026-12-01 08:00"]
    assert rules(decisions)["2026-12-01 08:00"] == [
        "daily 2026-12-01, the oldest, count not used up"
    ]


def test_every_reason_is_reported() -> None:
    decisions = choose(
        HISTORY, RetentionPolicy(keep_last=2, keep_daily=2, keep_weekly=2), ["2026-11-30 08:00"]
    )
    assert rules(decisions) == {
        "2026-12-02 09:00": [
            "the newest generation",
            "last (1 of 2)",
            "daily 2026-12-02 (1 of 2)",
            "weekly 2026-W49 (1 of 2)",
        ],
        "2026-12-02 08:00": ["last (2 of 2)"],
        "2026-12-01 20:00": ["daily 2026-12-01 (2 of 2)"],
        "2026-12-01 12:00": [],
        "2026-12-01 08:00": [],
        "2026-11-30 20:00": [],
        "2026-11-30 08:00": ["in use: a capture may build on it"],
        "2026-11-29 23:00": ["weekly 2026-W48 (2 of 2)"],
    }
    assert [d.generation.id for d in decisions] == [g.id for g in reversed(HISTORY)]


def test_the_newest_is_kept_whatever_the_policy() -> None:
    decisions = choose(HISTORY, RetentionPolicy(keep_weekly=0, keep_daily=0, keep_last=0))
    assert all(d.keep for d in decisions)  # an empty policy keeps all
    only = choose([at("2026-12-02 09:00")], RetentionPolicy(keep_daily=1))
    assert only[0].reasons[0] == Reason(Rule.NEWEST)


def test_no_generations() -> None:
    assert choose([], RetentionPolicy(keep_last=3)) == []


def test_days_and_weeks_are_utc_and_iso() -> None:
    assert day_of(at("2026-12-01 23:59").taken_ns) == "2026-12-01"
    assert day_of(at("2026-12-02 00:00").taken_ns) == "2026-12-02"
    # ISO weeks start on Monday; 2027-01-01 (a Friday) is in 2026's week 53
    assert week_of(at("2026-11-29 23:59").taken_ns) == "2026-W48"  # a Sunday
    assert week_of(at("2026-11-30 00:00").taken_ns) == "2026-W49"  # the Monday after
    assert week_of(at("2027-01-01 12:00").taken_ns) == "2026-W53"
    assert week_of(at("2027-01-04 00:00").taken_ns) == "2027-W01"


def test_equal_times_are_ordered_by_id() -> None:
    same = [Generation("b", 5), Generation("a", 5), Generation("c", 5)]
    assert kept(choose(same, RetentionPolicy(keep_last=1))) == ["c"]


def test_a_negative_count_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_daily must be 0 or more"):
        RetentionPolicy(keep_daily=-1)


def test_describe() -> None:
    assert RetentionPolicy(keep_last=3, keep_weekly=4).describe() == "keep last 3, keep weekly 4"
    assert RetentionPolicy().describe() == "no policy"


# --- properties over random histories ------------------------------------------------------

HOUR = 3600 * 1_000_000_000


def random_history(rng: random.Random) -> list[Generation]:
    start = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000_000
    times = sorted(start + rng.randrange(0, 60 * 24 * HOUR) for _ in range(rng.randrange(0, 40)))
    if rng.random() < 0.3 and times:  # bursts: many in one hour
        times += [times[-1] + rng.randrange(0, HOUR) for _ in range(rng.randrange(1, 10))]
    return [Generation(f"g{index:03d}", t) for index, t in enumerate(sorted(times))]


def random_policy(rng: random.Random) -> RetentionPolicy:
    return RetentionPolicy(rng.randrange(0, 6), rng.randrange(0, 10), rng.randrange(0, 6))


SEEDS = range(400)


def test_properties_over_random_histories() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        history = random_history(rng)
        policy = random_policy(rng)
        protected = {g.id for g in history if rng.random() < 0.05}
        decisions = choose(history, policy, protected)
        ids = kept(decisions)
        newest_first = sorted(history, key=lambda g: (g.taken_ns, g.id), reverse=True)
        context = f"seed {seed}: {policy}"
        # one decision per generation, newest first
        assert [d.generation for d in decisions] == newest_first, context
        if not history:
            continue
        # the newest and every protected generation are kept
        assert newest_first[0].id in ids, context
        assert protected <= set(ids), context
        if policy.empty:
            assert len(ids) == len(history), context
            continue
        # keep_last: the N newest
        assert {g.id for g in newest_first[: policy.keep_last]} <= set(ids), context
        # keep_daily / keep_weekly: the newest of each of the N newest buckets
        for count, bucket in ((policy.keep_daily, day_of), (policy.keep_weekly, week_of)):
            newest_of: dict[str, str] = {}
            for g in newest_first:
                newest_of.setdefault(bucket(g.taken_ns), g.id)
            assert set(list(newest_of.values())[:count]) <= set(ids), context
        # nothing beyond what the counts, the newest and the protected ones allow
        bound = policy.keep_last + policy.keep_daily + policy.keep_weekly + 1 + len(protected)
        assert len(ids) <= bound, context
        # every kept generation says why; every removed one has no reason
        assert all(d.keep == bool(d.reasons) for d in decisions), context
        # applied again to what it kept, the policy keeps all of it (prune twice = once)
        survivors = [g for g in history if g.id in ids]
        assert kept(choose(survivors, policy, protected)) == ids, context
        # a larger count never removes a generation kept before
        more = RetentionPolicy(policy.keep_last + 1, policy.keep_daily + 1, policy.keep_weekly + 1)
        assert set(ids) <= set(kept(choose(history, more, protected))), context
