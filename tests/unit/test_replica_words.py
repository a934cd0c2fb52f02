"""``hakit status``: a node's replica line (replicated storage), its age now."""

from __future__ import annotations

from hakit.cli.readers import replica_words


def test_a_standbys_copy_its_source_and_no_copy() -> None:
    copy = {
        "role": "copy",
        "generation": "G2",
        "epoch": 3,
        "from": "node1",
        "age": 10.0,
        "data_age": 10.0,
    }
    assert replica_words({"node": "node2", "age": 2.0, "replica": copy}, 300.0) == (
        "replica node2: generation G2 (epoch 3, from node1), 12s old: its recovery point"
    )
    stale = dict(copy, age=400.0, data_age=400.0)
    assert "older than max_lag 5m: not promoted unless forced" in str(
        replica_words({"node": "node2", "age": 0.5, "replica": stale}, 300.0)
    )
    source = {"role": "source", "generation": "G3", "age": 1.0, "problem": "disk full"}
    assert replica_words({"node": "node1", "age": 0.5, "replica": source}, 300.0) == (
        "replica node1: captures; newest generation G3, 1.5s ago; failing: disk full"
    )
    none = {"role": "copy", "generation": None}
    assert "no copy applied yet" in str(replica_words({"node": "node2", "replica": none}, 300.0))
    assert replica_words({"node": "node1", "replica": None}, 300.0) is None
