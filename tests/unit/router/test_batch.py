"""Writes batched per loop iteration (router/batch.py): sent together, in order, never lost.

The connections are real ``UpstreamConnection`` objects (a ``BatchedWrites``) on fake
transports: a test class of its own cannot subclass ``BatchedWrites`` when the router
runs compiled (mypyc: interpreted classes cannot inherit from compiled ones).
"""

from __future__ import annotations

import asyncio
import gc

import uvloop

from hakit.config import NodeConfig
from hakit.router.batch import WriteBatch, batch_for_running_loop
from hakit.router.http import ClientConnection
from hakit.router.limits import ProxyLimits
from hakit.router.upstream import UpstreamConnection

NODE = NodeConfig(name="n1", port=8101)


class Transport:
    def __init__(self, log: list[tuple[str, object]], name: str) -> None:
        self.log, self.name, self.closing = log, name, False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def writelines(self, parts: list[bytes]) -> None:
        self.log.append((self.name, b"".join(parts)))

    def is_closing(self) -> bool:
        return self.closing

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass


def connection(transport: Transport | None, batch: WriteBatch | None) -> UpstreamConnection:
    """A connection on ``transport`` (None: not connected) writing through ``batch``."""
    conn = UpstreamConnection(NODE, ProxyLimits())
    if transport is not None:
        conn.connection_made(transport)  # type: ignore[arg-type]
    assert conn._batch is batch  # connection_made took the running loop's batch (or none)
    return conn


def test_writes_go_out_after_the_iteration_in_order() -> None:
    async def scenario() -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
        log: list[tuple[str, object]] = []
        batch = batch_for_running_loop()
        assert batch is not None and batch is batch_for_running_loop()  # one per loop
        a, b = connection(Transport(log, "a"), batch), connection(Transport(log, "b"), batch)
        a.write(b"1")
        b.writelines([b"2", b"3"])
        a.write(b"4")
        during = list(log)  # nothing sent while the iteration runs
        await asyncio.sleep(0)  # the loop's next round: the flush ran
        return during, log

    during, log = uvloop.run(scenario())
    assert during == []
    assert log == [("a", b"1"), ("b", b"23"), ("a", b"4")]


def test_flush_before_close_and_closing_transports_skipped() -> None:
    async def scenario() -> list[tuple[str, object]]:
        log: list[tuple[str, object]] = []
        batch = batch_for_running_loop()
        gone_transport = Transport(log, "gone")
        kept, gone = connection(Transport(log, "kept"), batch), connection(gone_transport, batch)
        gone.write(b"lost")
        gone_transport.closing = True  # the peer went away before the flush
        kept.write(b"answer")
        kept._flush()  # what a connection does before it closes
        assert log == [("kept", b"answer")]
        kept.write(b"more")
        await asyncio.sleep(0)
        return log

    assert uvloop.run(scenario()) == [("kept", b"answer"), ("kept", b"more")]


def test_without_a_loop_writes_are_direct() -> None:
    log: list[tuple[str, object]] = []
    assert batch_for_running_loop() is None
    conn = connection(Transport(log, "c"), None)
    conn.write(b"x")
    conn.writelines([b"y", b"z"])
    connection(None, None).write(b"nowhere")  # not connected: nothing to do
    assert log == [("c", b"x"), ("c", b"yz")]


class Context:
    """What a ClientConnection reads from its router at construction."""

    limits = ProxyLimits()


def test_the_garbage_collector_counts_each_reference_of_a_connection_once() -> None:
    """A connection's transport and batch are each one reference to the collector.

    Counted twice (compiled, a subclass that annotated the attributes its base
    declares got them visited twice), a collection took the batch for garbage and
    emptied it while connections still wrote through it: the router segfaulted.
    """

    async def scenario() -> None:
        batch = batch_for_running_loop()
        transport = Transport([], "t")
        conns: list[object] = [connection(transport, batch)]
        client = ClientConnection(Context(), None)  # type: ignore[arg-type]
        client._transport, client._batch = transport, batch  # type: ignore[assignment]
        conns.append(client)
        for conn in conns:
            referents = gc.get_referents(conn)
            assert referents.count(batch) == 1, type(conn).__name__
            assert referents.count(transport) == 1, type(conn).__name__
        gc.collect()
        conns[0].write(b"still batched")  # type: ignore[attr-defined]
        await asyncio.sleep(0)
        assert transport.log == [("t", b"still batched")]

    uvloop.run(scenario())
