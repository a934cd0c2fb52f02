"""Writes batched per loop iteration (router/batch.py): sent together, in order, never lost."""

from __future__ import annotations

import asyncio

import uvloop

from hakit.router.batch import BatchedWrites, WriteBatch, batch_for_running_loop


class Transport:
    def __init__(self, log: list[tuple[str, object]], name: str) -> None:
        self.log, self.name, self.closing = log, name, False

    def write(self, data: bytes) -> None:
        self.log.append((self.name, data))

    def writelines(self, parts: list[bytes]) -> None:
        self.log.append((self.name, b"".join(parts)))

    def is_closing(self) -> bool:
        return self.closing


class Conn(BatchedWrites):
    __slots__ = ("_batch", "_transport")

    def __init__(self, transport: Transport | None, batch: WriteBatch | None) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._batch = batch


def test_writes_go_out_after_the_iteration_in_order() -> None:
    async def scenario() -> tuple[list[tuple[str, object]], list[tuple[str, object]]]:
        log: list[tuple[str, object]] = []
        batch = batch_for_running_loop()
        assert batch is not None and batch is batch_for_running_loop()  # one per loop
        a, b = Conn(Transport(log, "a"), batch), Conn(Transport(log, "b"), batch)
        a._send(b"1")
        b._send([b"2", b"3"])
        a._send(b"4")
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
        kept, gone = Conn(Transport(log, "kept"), batch), Conn(gone_transport, batch)
        gone._send(b"lost")
        gone_transport.closing = True  # the peer went away before the flush
        kept._send(b"answer")
        kept._flush()  # what a connection does before it closes
        assert log == [("kept", b"answer")]
        kept._send(b"more")
        await asyncio.sleep(0)
        return log

    assert uvloop.run(scenario()) == [("kept", b"answer"), ("kept", b"more")]


def test_without_a_loop_writes_are_direct() -> None:
    log: list[tuple[str, object]] = []
    assert batch_for_running_loop() is None
    conn = Conn(Transport(log, "c"), None)
    conn._send(b"x")
    conn._send([b"y", b"z"])
    Conn(None, None)._send(b"nowhere")  # not connected: nothing to do
    assert log == [("c", b"x"), ("c", b"yz")]
