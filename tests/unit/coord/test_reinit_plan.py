"""``hakit init`` on a distributed store: what ``hakit.coord.reinit.plan`` decides from the
identity a store holds and this host's node memories (no store needed: a pure function)."""

from __future__ import annotations

import pytest

from hakit.coord.memory import Memory
from hakit.coord.reinit import HOLD_MARGIN, Request, Stored, plan
from hakit.errors import CoordinationError

WHERE = "zookeeper://127.0.0.1:2181/hakit/c1"
EMPTY = Stored(None)
OLD = Stored("old", ("older",), 5, epoch_left=True)
NODE1 = Memory("old", 5, ("older",))


def ask(*, reinit: bool, memories: dict[str, Memory] | None = None, **options: object) -> Request:
    return Request("c1", memories or {}, 2.0, reinit, **options)  # type: ignore[arg-type]


def decide(stored: Stored, request: Request) -> tuple[str, tuple[str, ...], int]:
    done = plan(stored, request, WHERE, new_identity=lambda: "new")
    return done.identity, done.lineage, done.base_epoch


def refusal(stored: Stored, request: Request) -> str:
    with pytest.raises(CoordinationError) as refused:
        plan(stored, request, WHERE)
    return str(refused.value)


def test_init_makes_the_identity_of_an_empty_store_without_a_hold() -> None:
    assert decide(EMPTY, ask(reinit=False)) == ("new", (), 0)
    assert ask(reinit=False).hold == 0


def test_init_refuses_an_identity_a_damaged_one_or_one_that_was_lost() -> None:
    assert "already holds a cluster (identity old" in refusal(OLD, ask(reinit=False))
    assert "a damaged cluster identity" in refusal(Stored(None, damaged=True), ask(reinit=False))
    lost = refusal(EMPTY, ask(reinit=False, memories={"node1": NODE1}))
    assert "nodes here remember one (node1)" in lost and "hakit init --reinit" in lost
    left = refusal(Stored(None, last_epoch=9, epoch_left=True), ask(reinit=False))
    assert "an epoch counter at 9 is left" in left


def test_reinit_lists_every_replaced_identity_and_continues_above_every_epoch() -> None:
    memories = {"node1": Memory("lost", 7, ("older",)), "node2": Memory("old", 3)}
    assert decide(OLD, ask(reinit=True, memories=memories)) == (
        "new",
        ("lost", "old", "older"),
        7,
    )
    assert decide(EMPTY, ask(reinit=True, min_epoch=41)) == ("new", (), 41)
    assert ask(reinit=True).hold == 2.0 + HOLD_MARGIN


def test_a_store_every_memory_trusts_is_kept_unless_forced() -> None:
    trusting = ask(reinit=True, memories={"node1": NODE1})
    assert "--force" in refusal(OLD, trusting)
    assert decide(OLD, ask(reinit=True, memories={"node1": NODE1}, force=True))[2] == 5
    # Not trusted: a memory saw a higher epoch, or knows another identity; no memory here.
    assert decide(OLD, ask(reinit=True, memories={"node1": Memory("old", 6)}))[2] == 6
    assert decide(OLD, ask(reinit=True, memories={"node1": Memory("x", 1)}))[1][-1] == "x"
    assert decide(OLD, ask(reinit=True))[1] == ("old", "older")


def test_a_negative_min_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="min_epoch"):
        plan(EMPTY, ask(reinit=True, min_epoch=-1), WHERE)
