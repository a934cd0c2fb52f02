"""Writes gathered while the event loop handles one round of I/O, sent together after it.

Why: every send that makes a sleeping peer runnable (wrk, a browser's
connection, the backend's worker) wakes it, and on a virtual machine waking an
idle vCPU is an inter-processor interrupt paid by the sender: measured here,
that was the largest item of the router's kernel time (~10 of ~19 µs per
request, ``_raw_spin_unlock_irqrestore`` under ``sock_def_readable``), and it
grows as the router gets busier because its peers sleep between its sends.
Sending what one loop iteration produced in one burst wakes each peer once per
burst instead of once per send. HAProxy and nginx work the same way (all
events of a poll handled, then the sends). Measured with a bare proxy: 20.6 ->
17.0 µs per request; with the router see benchmarks/RESULTS.md.

Order is kept: every write of a connection goes through its loop's batch, and
a connection flushes the batch before it closes, aborts, half-closes or hands
its transport over (tunnel), so nothing it wrote is lost or overtaken. The
delay is bounded by one loop iteration (the ready callbacks run right after
the I/O callbacks of the same iteration).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Protocol


class Writable(Protocol):
    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def is_closing(self) -> bool: ...


class WriteBatch:
    """One per event loop (``batch_for``); single-threaded like the loop."""

    __slots__ = ("_call_soon", "_items", "_scheduled", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        # Flat: transport, data, transport, data, ... (data: bytes, or a list for writelines).
        self._items: list[object] = []
        self._scheduled = False

    def write(self, transport: Writable, data: bytes | list[bytes]) -> None:
        items = self._items
        items.append(transport)
        items.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)

    def flush(self) -> None:
        """Send everything gathered so far (also called before a connection closes)."""
        self._scheduled = False
        items = self._items
        if not items:
            return
        self._items = []
        for i in range(0, len(items), 2):
            transport: Writable = items[i]  # type: ignore[assignment]
            if transport.is_closing():
                continue  # lost meanwhile: what it was sent would be dropped anyway
            data = items[i + 1]
            if type(data) is list:
                transport.writelines(data)
            else:
                transport.write(data)  # type: ignore[arg-type]


_BATCHES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch] = (
    weakref.WeakKeyDictionary()
)


def batch_for_running_loop() -> WriteBatch | None:
    """The running loop's batch (made on first use); None outside a loop (write directly)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    batch = _BATCHES.get(loop)
    if batch is None:
        batch = _BATCHES[loop] = WriteBatch(loop)
    return batch
