"""Planning a generation's fetches: each object once, in the order first needed."""

from __future__ import annotations

from hakit.snapshot.format import ChunkRef, blob_key, pack_key
from hakit.snapshot.reader import LOCAL_CONCURRENCY, ObjectFetch, plan_fetches, read_concurrency


def test_chunks_are_grouped_by_the_object_holding_them_in_first_use_order() -> None:
    a = ChunkRef("a" * 64, 10, "p" * 64, 0)
    b = ChunkRef("b" * 64, 5, "p" * 64, 10)
    big = ChunkRef("c" * 64, 100)
    other = ChunkRef("d" * 64, 7, "q" * 64, 30)
    plan = plan_fetches([a, big, b, a, other, big])
    assert plan == [
        ObjectFetch(pack_key("p" * 64), "p" * 64, (a, b)),
        ObjectFetch(blob_key("c" * 64), "c" * 64, (big,)),
        ObjectFetch(pack_key("q" * 64), "q" * 64, (other,)),
    ]
    assert [fetch.size for fetch in plan] == [15, 100, 37]  # a pack: its last byte needed
    assert plan_fetches([]) == []


class _Inner:
    read_concurrency = 12


class _Wrapper:
    def __init__(self) -> None:
        self.inner = _Inner()


def test_the_concurrency_comes_from_the_store_or_the_store_it_wraps() -> None:
    assert read_concurrency(_Wrapper()) == 12  # type: ignore[arg-type]
    assert read_concurrency(_Inner()) == 12  # type: ignore[arg-type]
    assert read_concurrency(object()) == LOCAL_CONCURRENCY  # type: ignore[arg-type]
