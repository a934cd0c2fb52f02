"""``hakit why`` on fencing: the fence before a promotion, and the promotions it blocked.

Fence events are recorded by the promoting node with the epoch it promotes
under in ``data["epoch"]`` and ``data["result"]`` ok / failed / skipped /
not-needed / not-configured:

- ``fence_story``: the fencing that let a term's node promote (a headline suffix
  and timeline lines), and the failed attempts under epochs given back before it;
- ``woke_and_fenced``: the old active coming back after a takeover and fencing
  itself (it was frozen, then woke);
- ``blocked_promotions``: a failed ``fence_command`` blocks the promotion, an
  incident of its own ("not failed over ...: fence_command for node1 failed
  (exit 1), promotion waits").

Pure, as hakit.history.why that tells the incidents they are part of.
"""

from __future__ import annotations

from collections.abc import Sequence

from hakit.coord.base import Event
from hakit.history.kinds import EventKind
from hakit.history.reading import (
    Clock,
    Incident,
    Term,
    command_failed,
    command_summary,
    command_words,
    fence_epoch,
    lost_epoch,
    what,
)

FORCE_HINT = "force with `hakit failover --force`"


def fence_story(
    history: Sequence[Event], prev: Term, term: Term, clock: Clock
) -> tuple[list[tuple[float, str]], str]:
    """The fencing before ``term``'s promotion: timeline lines and a headline suffix.

    Fence events carry the epoch they were for: ``term``'s own (the fencing that let
    it promote) and, before it, attempts under epochs that were given back because
    their fence_command failed (the promotion waited).
    """
    mine: list[Event] = []
    failed: list[Event] = []
    for event in history[prev.index :]:
        if event.time > term.time + 60:
            break  # fencing comes just before (a forced takeover: just after) the new term
        if event.kind != EventKind.FENCE or not prev.epoch < fence_epoch(event) <= term.epoch:
            continue
        if command_failed(event) and fence_epoch(event) < term.epoch:
            failed.append(event)
        elif event.node == term.node and fence_epoch(event) == term.epoch:
            mine.append(event)
    lines = []
    if failed:
        first, last = failed[0], failed[-1]
        lines.append((first.time, clock.line(first)))
        if len(failed) > 1:
            lines.append(
                (
                    last.time,
                    f"  {clock(last.time)}  {len(failed)} fence attempts failed since "
                    f"{clock(first.time)} (last: {command_words(last)}): the promotion waited",
                )
            )
    lines += [(event.time, clock.line(event)) for event in mine]
    suffix = ""
    for event in mine:
        target, result = event.data.get("target", "?"), event.data.get("result")
        if result == "ok" and "command" in event.data:
            summary = command_summary(event)
            how = f" (the fence command {summary})" if summary else ""
            suffix += f"; {target} fenced first{how}"
        elif result == "skipped":
            suffix += f"; {target} not fenced: the operator forced the promotion"
    return lines, suffix


def woke_and_fenced(
    history: Sequence[Event],
    prev: Term,
    term: Term,
    end: int | None,
    used: set[int],
    clock: Clock,
) -> list[tuple[float, str]]:
    """The old node coming back after the takeover and fencing itself (frozen, then woke)."""
    for index in range(term.index + 1, len(history)):
        event = history[index]
        if event.time > term.time + 60:
            break
        if (
            index != end
            and event.node == prev.node
            and event.kind in (EventKind.STOP, EventKind.LEASE)
            and lost_epoch(event) == prev.epoch
        ):
            used.add(index)  # not a lost lease nobody followed: this takeover explains it
            words = what(event)
            return [(event.time, clock.line(event, f"{words}; it killed its app (self-fencing)"))]
    return []


def blocked_promotions(
    history: Sequence[Event], all_terms: Sequence[Term], clock: Clock
) -> list[Incident]:
    """A failed fence_command: the standby did not promote. One incident per run of
    failures of one node fencing another, until the next term begins."""
    runs: dict[tuple[str, str, int], list[Event]] = {}
    for index, event in enumerate(history):
        if command_failed(event):
            following = next((t.index for t in all_terms if t.index > index), -1)
            key = (event.node, str(event.data.get("target", "?")), following)
            runs.setdefault(key, []).append(event)
    found = []
    for (node, target, following), failures in runs.items():
        first, last = failures[0], failures[-1]
        when = clock(first.time)
        failed = f"fence_command for {target} failed ({command_words(first)})"
        lines = [clock.line(first)]
        if len(failures) > 1:
            lines.append(
                f"  {clock(last.time)}  {len(failures)} fence attempts failed since {when} "
                f"(last: {command_words(last)})"
            )
        if following < 0:
            headline = (
                f"not failed over at {when}: {failed}, promotion of {node} waits; {FORCE_HINT}"
            )
            lines.append(
                f"  no node promotes until the fence command succeeds or {target}'s agent "
                "comes back and stands down (it fences itself)"
            )
        else:
            then = history[following]
            outcome = (
                f"promotion of {node} waited until {clock(then.time)}"
                if then.node == node
                else f"{node} did not promote ({then.node} took the lease at {clock(then.time)})"
            )
            headline = f"not failed over at {when}: {failed}, {outcome}"
            lines.append(clock.line(then))
        found.append(Incident(first.time, (headline, *lines), failover=False))
    return found
