"""The change token: kazoo watches on the znodes a cluster view reads.

Armed by the first ``data_version`` call (the router's; agents, which never ask,
arm none): an ``exists`` watch (it fires on a create, a change of data and a
delete) on ``identity``, ``epoch``, ``leader``, ``alive`` and ``state``, a child
watch on ``nodes`` and an ``exists`` watch on each ``nodes/<node>``. Events are not
watched (the view does not read them).

The token is ``(generation, count)``. ``count`` grows at each watch event, and
again once the watch it re-arms is answered: a change that lands between an event
and its re-armed watch (which no event reports) still moves the token, since a
reader's token taken before that answer differs from the one after. Readers use
the coordinator's own session, and ZooKeeper delivers a watch event before it
answers a read with the new data, so a token taken before a read never stands for
data newer than the read (at worst a needless read later). ``generation`` grows at
each (re)connection, where every watch is armed again: changes made while
disconnected are unknown, so a reconnection is itself a change. While the session
is not connected, or a fresh arming is not answered yet, there is no token
(``token()`` is None): the caller reads the store.

A lease's expiry by time is no write: no event says it. Readers count a cached
lease down on their own clock (hakit.coord.view.ClusterView.at) from what the
server judged at the read, so a skipped read never lengthens a lease. The end of
the holder's session deletes ``alive``: that is an event.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

from kazoo.client import KazooClient
from kazoo.protocol.states import EventType, KazooState, WatchedEvent

log = logging.getLogger("hakit.coord")


class ZkWatch:
    """The change token of one coordinator's cluster znodes (see the module doc)."""

    def __init__(self, paths: Sequence[str], parent: str) -> None:
        self._paths = tuple(paths)  # exists-watched
        self._parent = parent  # child-watched; each child exists-watched
        self._changed = threading.Condition()
        self._client: KazooClient | None = None
        self._generation = 0
        self._count = 0
        self._connected = False
        self._unanswered = 0  # arming calls of this generation not answered yet
        self._children: set[str] = set()
        self._closed = False
        self._pid = os.getpid()
        self.armed = 0  # times every watch was armed (for tests)

    # --- the token ------------------------------------------------------------

    def _now(self) -> Hashable | None:
        """With the condition held."""
        if self._pid != os.getpid():
            return None  # forked: the parent's session and watches are not this process's
        if self._client is None or not self._connected or self._unanswered:
            return None
        return (self._generation, self._count)

    def token(self) -> Hashable | None:
        with self._changed:
            return self._now()

    def wait_change(self, token: Hashable | None, timeout: float) -> Hashable | None:
        """The token once it differs from ``token`` (or the current one after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = self._now()
                left = deadline - time.monotonic()
                if (now is not None and now != token) or left <= 0:
                    return now
                self._changed.wait(left)

    def wait_synced(self, timeout: float) -> Hashable | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                now = self._now()
                left = deadline - time.monotonic()
                if now is not None or left <= 0 or self._client is None:
                    return now
                self._changed.wait(left)

    def _bump(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    # --- arming ------------------------------------------------------------------

    def arm(self, zk: KazooClient) -> None:
        """Watch through ``zk`` (once per client: a new client after a fork or a close is
        armed again)."""
        if self._pid != os.getpid():  # forked: start afresh
            self._changed, self._client, self._pid = threading.Condition(), None, os.getpid()
        with self._changed:
            if self._closed or self._client is zk:
                return
            self._client = zk
            self._connected = zk.connected
        zk.add_listener(self._on_state)
        self._arm_all(zk)

    def forget(self) -> None:
        """The client is gone (closed, or the parent's after a fork): no token."""
        with self._changed:
            client, self._client = self._client, None
            self._changed.notify_all()
        if client is not None:
            client.remove_listener(self._on_state)

    def close(self) -> None:
        with self._changed:
            self._closed = True
        self.forget()

    def _arm_all(self, zk: KazooClient) -> None:
        with self._changed:
            if self._client is not zk:
                return
            self._generation += 1
            self._children = set()
            self._unanswered = len(self._paths) + 1
            generation = self._generation
            self.armed += 1
            self._changed.notify_all()
        for path in self._paths:
            self._exists(zk, path, generation)
        self._list(zk, generation)

    def _answered(self, generation: int, initial: bool) -> None:
        with self._changed:
            if generation != self._generation:
                return
            if initial:
                self._unanswered = max(0, self._unanswered - 1)
            self._count += 1  # the re-armed watch is in place: see the module doc
            self._changed.notify_all()

    def _exists(self, zk: KazooClient, path: str, generation: int, initial: bool = True) -> None:
        try:
            result = zk.exists_async(path, watch=self._on_event)
        except Exception as error:  # closed meanwhile: the state listener re-arms
            log.debug("zookeeper watch on %s not armed: %s", path, error)
            return
        result.rawlink(lambda _: self._answered(generation, initial))

    def _list(self, zk: KazooClient, generation: int, initial: bool = True) -> None:
        try:
            result = zk.get_children_async(self._parent, watch=self._on_children)
        except Exception as error:
            log.debug("zookeeper watch on %s not armed: %s", self._parent, error)
            return

        def listed(answer: Any) -> None:
            try:
                names = answer.get_nowait()
            except Exception:  # gone or disconnected: the next (re)connection re-arms
                names = []
            with self._changed:
                if generation != self._generation or self._client is not zk:
                    return
                new = [name for name in names if name not in self._children]
                self._children = set(names)
            for name in new:
                self._exists(zk, f"{self._parent}/{name}", generation, initial=False)
            self._answered(generation, initial)

        result.rawlink(listed)

    # --- kazoo's callbacks (its callback thread) ---------------------------------

    def _on_event(self, event: WatchedEvent) -> None:
        self._bump()
        zk = self._client
        if zk is None or event.path is None:
            return
        with self._changed:
            generation = self._generation
            child = event.path.rsplit("/", 1)[0] == self._parent
            if child and event.type == EventType.DELETED:
                self._children.discard(event.path.rsplit("/", 1)[1])
                return  # the child watch re-arms it if it comes back
        self._exists(zk, event.path, generation, initial=False)

    def _on_children(self, event: WatchedEvent) -> None:
        self._bump()
        zk = self._client
        if zk is not None:
            with self._changed:
                generation = self._generation
            self._list(zk, generation, initial=False)

    def _on_state(self, state: KazooState) -> None:
        zk = self._client
        with self._changed:
            self._connected = state == KazooState.CONNECTED
            self._changed.notify_all()
        if state == KazooState.CONNECTED and zk is not None:
            # Changes made meanwhile are unknown (and a lost session lost its watches): arm
            # them all again, under a new generation. Not from this listener: kazoo's
            # connection thread calls it, and must not wait on it.
            zk.handler.spawn(self._arm_all, zk)
