"""Records written to the sample app while something else runs (a capture, a backup)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from tests.support.waiting import wait_until


class Requests(Protocol):
    def request(self, method: str, path: str, **kwargs: Any) -> Any: ...


@contextmanager
def records_written(app: Requests, *, at_least: int = 3) -> Iterator[list[str]]:
    """POST records to ``app`` one after another in a thread (10,000 at most) for as long
    as the block runs; it starts once ``at_least`` were acknowledged. Yields the ids
    acknowledged so far (a list that grows)."""
    stop = threading.Event()
    during: list[str] = []

    def write() -> None:
        for index in range(10_000):
            if stop.is_set():
                return
            response = app.request(
                "POST", "/records", json={"title": f"w{index}", "attachment": "w"}
            )
            during.append(response.json()["id"])

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(during) >= at_least, 20, f"{at_least} records written")
        yield during
    finally:
        stop.set()
        thread.join(timeout=30)
