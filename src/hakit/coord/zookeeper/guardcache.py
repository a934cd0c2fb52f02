"""The identity and epoch znodes as last read, kept while watches say they are unchanged.

Every call checks the store's identity and last epoch (hakit.coord.zookeeper.identity):
two reads per call, two fifths of an idle agent's requests. ``GuardCache`` lets a call
skip them, without trusting anything a read would not have said:

- A full read asks for both znodes with a data watch (``get`` with ``watch``: the
  watch is set at the read, atomically), and the answer is kept for that client
  (``put``) only if no watch fired meanwhile.
- A later call on the same client reads the rest, then waits for a barrier on
  kazoo's callback thread (``confirm``): ZooKeeper delivers a watch event on a
  session before any answer that follows the change, kazoo queues the event's
  callback (one thread, first in first out) before it hands that answer over, so
  once the barrier has run, every event that came before the call's answers has
  been counted. If one came (either znode changed, was deleted or created), or the
  connection left CONNECTED (a lost session loses its watches) since the cached
  read, the call reads both znodes again. Otherwise the cached znodes are exactly
  what reading them with the call's other reads would have answered. A call that
  asks nothing else (``last_epoch``, an event's append) reads the epoch znode: with
  no answer to order them, an event still on its way would not be seen.
"""

from __future__ import annotations

import threading

from kazoo.client import KazooClient
from kazoo.protocol.states import Callback, KazooState, WatchedEvent

from hakit.coord.zookeeper.layout import Node


class GuardCache:
    """The identity and epoch znodes of one coordinator (see the module doc)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._client: KazooClient | None = None
        self._nodes: tuple[Node, Node] | None = None
        self._changes = 0  # watch events and connection changes seen
        self._listening: KazooClient | None = None
        self.hits = 0  # calls that skipped the two reads (tests, benchmarks)

    def changes(self) -> int:
        with self._lock:
            return self._changes

    def watcher(self, event: WatchedEvent) -> None:
        """The data watch of both znodes (kazoo's callback thread)."""
        self._changed()

    def _on_state(self, state: KazooState) -> None:
        if state != KazooState.CONNECTED:
            self._changed()

    def _changed(self) -> None:
        with self._lock:
            self._changes += 1
            self._nodes = None

    def get(self, zk: KazooClient) -> tuple[tuple[Node, Node], int] | None:
        """The cached znodes for ``zk`` and the change count they stand at, or None."""
        with self._lock:
            if not zk.connected or self._nodes is None or self._client is not zk:
                return None
            return self._nodes, self._changes

    def put(self, zk: KazooClient, identity: Node, epoch: Node, changes: int) -> None:
        """Keep a full read's znodes, made with watches when the count was ``changes``."""
        if self._listening is not zk:
            zk.add_listener(self._on_state)
            self._listening = zk
        with self._lock:
            if self._changes == changes and zk.connected:
                self._client, self._nodes = zk, (identity, epoch)

    def confirm(self, zk: KazooClient, changes: int, timeout: float) -> bool:
        """After a call's reads were answered: no change since the count ``changes``?
        (Waits for a barrier on kazoo's callback thread; False after ``timeout``.)"""
        passed = threading.Event()
        zk.handler.dispatch_callback(Callback("barrier", passed.set, ()))
        if not passed.wait(timeout):
            return False
        with self._lock:
            if self._changes != changes or self._client is not zk or self._nodes is None:
                return False
            self.hits += 1
            return True

    def drop(self) -> None:
        """Forget the znodes (a write conditioned on them lost a race: read them again)."""
        self._changed()
