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
from typing import Final


class WriteBatch:
    """One per event loop (``batch_for_running_loop``); single-threaded like the loop.

    Connections add to it through ``BatchedWrites._send``; the first write of an
    iteration schedules ``flush`` with ``call_soon``.
    """

    __slots__ = ("__weakref__", "_call_soon", "_items", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._call_soon = loop.call_soon
        # Flat: transport, data, transport, data, ... (data: bytes, or a list for writelines).
        self._items: list[object] = []
        self._scheduled = False

    def flush(self) -> None:
        """Send everything gathered so far (also called before a connection closes)."""
        self._scheduled = False
        items = self._items
        if not items:
            return
        self._items = []
        pairs = iter(items)
        for transport, data in zip(pairs, pairs, strict=True):
            if transport.is_closing():  # type: ignore[attr-defined]
                continue  # lost meanwhile: what it was sent would be dropped anyway
            if data.__class__ is list:
                transport.writelines(data)  # type: ignore[attr-defined]
            else:
                transport.write(data)  # type: ignore[attr-defined]


class BatchedWrites:
    """Mixin of a connection protocol whose writes go through its loop's batch.

    The class sets ``_transport`` (None until connected) and ``_batch`` (from
    ``batch_for_running_loop`` in ``connection_made``; None: write directly).
    """

    __slots__ = ()
    _transport: asyncio.Transport | None
    _batch: WriteBatch | None

    def _send(self, data: bytes | list[bytes]) -> None:
        transport = self._transport
        if transport is not None:
            batch = self._batch
            if batch is not None:  # added to the batch (inlined: every write comes here)
                items = batch._items
                items.append(transport)
                items.append(data)
                if not batch._scheduled:
                    batch._scheduled = True
                    batch._call_soon(batch.flush)
            elif data.__class__ is list:
                transport.writelines(data)
            else:
                transport.write(data)  # type: ignore[arg-type]

    def _flush(self) -> None:
        """Send what was written so far before the transport closes or moves."""
        if self._batch is not None:
            self._batch.flush()


_BATCHES: Final[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, WriteBatch]] = (
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
