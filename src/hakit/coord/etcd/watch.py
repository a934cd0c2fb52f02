"""The change token: a background etcd watch on the cluster's prefix.

One daemon thread per coordinator object (started by the first
``data_version`` call: agents, which never ask, run none) holds a streaming
``POST /v3/watch`` on ``P`` through the gateway, on its own connection. Each
event raises the token's revision and wakes the threads in ``wait_change``.
The token is ``(generation, revision)``: ``generation`` counts the watches
created, so a reconnect (after which changes made meanwhile are unknown) is
itself a change; ``revision`` is the highest store revision of a change under
``P`` seen (watch events, and this object's own writes as their answers
arrive, so a writer's own token changes at once). While no watch is
established there is no token (``token()`` is None): the caller reads the store.

Reconnects: an error, the end of the stream, a cancelled watch or no byte for
``IDLE`` seconds ends the watch; the next one is made on the next endpoint
after a backoff (50 ms doubling to 1 s, back to 50 ms once a watch is made).
The watch asks for a leader (gRPC metadata ``hasleader``): a member cut off from
the quorum cancels it instead of staying silent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Hashable
from typing import Any

import requests

from hakit.coord.etcd.layout import b64, range_end
from hakit.coord.etcd.transport import Transport, error_message

log = logging.getLogger("hakit.coord")
IDLE = 10.0  # seconds without a byte after which the watch is made again
BACKOFF_FIRST, BACKOFF_MAX = 0.05, 1.0


class Watch:
    """The change token of ``prefix`` (see the module docstring)."""

    def __init__(self, transport: Transport, prefix: str) -> None:
        self._transport = transport
        self._prefix = prefix
        self._changed = threading.Condition()
        self._generation = 0
        self._revision = 0
        self._synced = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._response: requests.Response | None = None
        self.watches_made = 0  # for tests and benchmarks

    # --- the token ------------------------------------------------------------

    def token(self) -> Hashable | None:
        with self._changed:
            return (self._generation, self._revision) if self._synced else None

    def wrote(self, revision: int) -> None:
        """This object's own write was committed at ``revision``."""
        with self._changed:
            if revision > self._revision:
                self._revision = revision
                self._changed.notify_all()

    def wait_change(self, token: Hashable | None, timeout: float) -> Hashable | None:
        """The token once it differs from ``token`` (or the current one after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = (self._generation, self._revision) if self._synced else None
                left = deadline - time.monotonic()
                if (now is not None and now != token) or left <= 0:
                    return now
                self._changed.wait(left)

    def wait_synced(self, timeout: float) -> Hashable | None:
        """The token, waiting up to ``timeout`` seconds for a watch to be made."""
        self.start()
        if self._stop.is_set():
            return None  # closed
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._synced:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return (self._generation, self._revision)

    # --- the thread -----------------------------------------------------------

    def start(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's thread is not here
            self._thread, self._pid, self._response = None, os.getpid(), None
            self._stop = threading.Event()
            with self._changed:
                self._synced = False
        if self._thread is not None and self._thread.is_alive():
            return
        if self._stop.is_set():
            return  # closed
        self._thread = threading.Thread(
            target=self._run, name=f"etcd-watch {self._prefix}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            response.close()  # wakes the thread's read
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self._transport.timeout + 1)
        self._thread = None

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._watch_once(attempt):
                    backoff = BACKOFF_FIRST
            except Exception as error:  # any failure: make the watch again
                if not self._stop.is_set():
                    log.debug("etcd watch on %s ended: %s", self._prefix, error)
            finally:
                with self._changed:
                    self._synced = False
                    self._changed.notify_all()
            attempt += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _watch_once(self, attempt: int) -> bool:
        """Hold one watch until it ends; True if it was made."""
        transport = self._transport
        clients = transport.clients()
        client = clients[(transport.current + attempt) % len(clients)]
        deadline = time.monotonic() + transport.timeout
        headers = {"Grpc-Metadata-hasleader": "true"}
        auth = transport.headers(client, deadline)
        if auth:
            headers.update(auth)
        body = {
            "create_request": {
                "key": b64(self._prefix),
                "range_end": range_end(self._prefix),
            }
        }
        made = False
        with transport.session() as session:
            response = session.post(
                client.get_url("/watch"),
                json=body,
                headers=headers,
                stream=True,
                timeout=(transport.timeout, IDLE),
            )
            self._response = response
            try:
                if self._stop.is_set():
                    return False
                if response.status_code == 401:
                    transport.forget_token()
                if response.status_code != 200:
                    raise RuntimeError(error_message(response))
                pending = b""
                for chunk in response.iter_content(chunk_size=None):
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip():
                            made = self._handle(json.loads(line)) or made
                    if self._stop.is_set():
                        break
            finally:
                self._response = None
                response.close()
        return made

    def _handle(self, doc: dict[str, Any]) -> bool:
        """Take one message of the stream; True when it says the watch was made."""
        result = doc.get("result")
        if not isinstance(result, dict):
            raise RuntimeError(f"watch error: {doc.get('error', doc)}")
        if result.get("canceled"):
            raise RuntimeError(f"watch cancelled: {result.get('cancel_reason', '')}")
        header = result.get("header", {})
        if result.get("created"):
            with self._changed:
                self._generation += 1
                self._revision = max(self._revision, int(header.get("revision", 0)))
                self._synced = True
                self.watches_made += 1
                self._changed.notify_all()
            return True
        events = result.get("events", [])
        if events:
            newest = max(int(event.get("kv", {}).get("mod_revision", 0)) for event in events)
            newest = max(newest, int(header.get("revision", 0)))
            with self._changed:
                if newest > self._revision:
                    self._revision = newest
                self._changed.notify_all()
        return False
