"""Which generations a retention policy keeps: a pure function, and the words for why.

The rules are restic's ``forget --keep-*``, applied to generations newest first:

- ``keep_last N``: the N newest generations;
- ``keep_daily N``: for the N newest days (UTC) holding a generation, the newest
  generation of each day;
- ``keep_weekly N``: the same per ISO week (Monday to Sunday, UTC);
- as restic does, a daily or weekly rule whose count is not used up once every
  generation was seen also keeps the oldest generation (so "7 daily" over 3 days of
  history keeps the history's start too, not only 3 generations).

A generation any rule keeps is kept; every reason is reported. On top of the rules:

- the newest generation is always kept (a policy can never leave a repository empty);
- a ``protected`` generation is always kept: one an in-progress capture builds on
  (its unchanged files point at that generation's blobs without writing them again,
  so removing it would leave the new generation's manifest naming deleted objects);
- an empty policy (every count 0) keeps everything: nothing was asked.

Days and weeks are UTC, so every node (and the CLI) of a cluster buckets a
generation the same way whatever its local time zone.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime


class Rule(enum.StrEnum):
    """Why a generation is kept."""

    NEWEST = "newest"  # always
    PROTECTED = "in-use"  # a capture in progress may build on it
    LAST = "last"
    DAILY = "daily"
    WEEKLY = "weekly"
    NO_POLICY = "no-policy"  # every count is 0: nothing is removed


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0

    def __post_init__(self) -> None:
        for name in ("keep_last", "keep_daily", "keep_weekly"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")

    @property
    def empty(self) -> bool:
        return not (self.keep_last or self.keep_daily or self.keep_weekly)

    def describe(self) -> str:
        parts = [
            f"{name.replace('_', ' ')} {count}"
            for name, count in (
                ("keep_last", self.keep_last),
                ("keep_daily", self.keep_daily),
                ("keep_weekly", self.keep_weekly),
            )
            if count
        ]
        return ", ".join(parts) or "no policy"


@dataclass(frozen=True, slots=True)
class Generation:
    """A generation as retention sees it: its id and when it was taken (ns since the epoch)."""

    id: str
    taken_ns: int


@dataclass(frozen=True, slots=True)
class Reason:
    rule: Rule
    bucket: str = ""  # the day ("2026-12-06") or ISO week ("2026-W49") it stands for
    nth: int = 0  # 1 for the rule's first (newest) pick
    of: int = 0  # the rule's count

    def __str__(self) -> str:
        if self.rule is Rule.NEWEST:
            return "the newest generation"
        if self.rule is Rule.PROTECTED:
            return "in use: a capture may build on it"
        if self.rule is Rule.NO_POLICY:
            return "no retention policy"
        where = f" {self.bucket}" if self.bucket else ""
        oldest = ", the oldest, count not used up" if self.bucket and self.nth == 0 else ""
        count = f" ({self.nth} of {self.of})" if self.nth else ""
        return f"{self.rule}{where}{count}{oldest}"


@dataclass(frozen=True, slots=True)
class Decision:
    generation: Generation
    reasons: tuple[Reason, ...]  # empty: removed

    @property
    def keep(self) -> bool:
        return bool(self.reasons)


def day_of(taken_ns: int) -> str:
    return datetime.fromtimestamp(taken_ns / 1e9, UTC).strftime("%Y-%m-%d")


def week_of(taken_ns: int) -> str:
    year, week, _ = datetime.fromtimestamp(taken_ns / 1e9, UTC).isocalendar()
    return f"{year}-W{week:02d}"


def choose(
    generations: Iterable[Generation],
    policy: RetentionPolicy,
    protected: Collection[str] = (),
) -> list[Decision]:
    """One decision per generation, newest first (ties broken by id, as ids sort by time)."""
    ordered = sorted(generations, key=lambda g: (g.taken_ns, g.id), reverse=True)
    reasons: list[list[Reason]] = [[] for _ in ordered]
    if ordered:
        reasons[0].append(Reason(Rule.NEWEST))
    for index, generation in enumerate(ordered):
        if generation.id in protected:
            reasons[index].append(Reason(Rule.PROTECTED))
        if policy.empty:
            reasons[index].append(Reason(Rule.NO_POLICY))
    for index in range(min(policy.keep_last, len(ordered))):
        reasons[index].append(Reason(Rule.LAST, nth=index + 1, of=policy.keep_last))
    for rule, count, bucket_of in (
        (Rule.DAILY, policy.keep_daily, day_of),
        (Rule.WEEKLY, policy.keep_weekly, week_of),
    ):
        kept, last = 0, None
        for index, generation in enumerate(ordered):
            if kept == count:
                break
            bucket = bucket_of(generation.taken_ns)
            if bucket != last:
                kept += 1
                last = bucket
                reasons[index].append(Reason(rule, bucket, kept, count))
            elif index == len(ordered) - 1:
                # restic: a count not used up keeps the oldest generation as well
                kept += 1
                reasons[index].append(Reason(rule, bucket))
    return [Decision(g, tuple(r)) for g, r in zip(ordered, reasons, strict=True)]
