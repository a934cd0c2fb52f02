"""The cluster identity as this process trusts it, and the read-check-retry loop.

``Guard.read`` reads the identity key, the epoch counter and what the caller
asks for in one transaction (one revision) and accepts it only if the identity
is the one this process remembers (or lists it in its lineage) with a last epoch
no lower than the highest it saw; otherwise ``StoreReplacedError``. Absent, the
identity is made (``create``) or ``NoClusterState`` raised. ``Guard.trusted`` is
the compare every write transaction carries: the identity key is still the one
read. ``Guard.run`` repeats a step that lost a race (``Retry``) until the
timeout and turns an etcd refusal into a ``CoordinationError``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hakit.coord.etcd.layout import KV, Layout, dumps, get, put, same_create, unchanged
from hakit.coord.etcd.transport import Refused, Transport
from hakit.coord.memory import Memory, read_memory, write_memory
from hakit.errors import CoordinationError, NoClusterState, StoreReplacedError

T = TypeVar("T")


class Retry(Exception):
    """A transaction lost a race: read again."""


class Guard:
    """The identity and highest epoch this process trusts (``memory_path``: kept on disk)."""

    def __init__(
        self,
        transport: Transport,
        layout: Layout,
        *,
        clock: Callable[[], float],
        memory_path: Path | None,
        create: bool,
        config: str,
    ) -> None:
        self._transport = transport
        self._layout = layout
        self._clock = clock
        self._memory_path = memory_path
        self._create = create
        self._config = config
        self._lock = threading.Lock()  # guards the memory
        self._memory_loaded = False
        self.identity: str | None = None
        self.identity_rev = 0  # create_revision of the identity key this process trusts
        self._lineage: tuple[str, ...] = ()
        self.seen_epoch = 0
        self._saved: Memory | None = None

    def _load_memory(self) -> None:
        if self._memory_loaded:
            return
        if self._memory_path is not None:
            memory = read_memory(self._memory_path)
            if memory is not None:
                self.identity = memory.identity
                self._lineage = memory.lineage
                self.seen_epoch = max(self.seen_epoch, memory.epoch)
                self._saved = memory
        self._memory_loaded = True

    def _refused(self, found: str) -> StoreReplacedError:
        assert self.identity is not None
        return StoreReplacedError(
            self._transport.where,
            found,
            self.identity,
            self.seen_epoch,
            config=self._config,
            consequence=(
                "the app on this node is fenced"
                if self._memory_path is not None
                else "this process neither reads nor writes it"
            ),
        )

    def _check(self, found: KV | None, epoch: KV | None, deadline: float) -> None:
        """Accept the store read (``found``: its identity key) or raise StoreReplacedError."""
        with self._lock:
            self._load_memory()
        last = int(epoch.value or b"0") if epoch is not None else 0
        if found is None:
            if self.identity is not None:
                raise self._refused("no identity: the keys are gone or were never made")
            if not self._create:
                raise NoClusterState(self._transport.where)
            self._make_identity(deadline)
            return
        doc = found.json()
        identity = str(doc.get("identity", ""))
        lineage = tuple(str(x) for x in doc.get("lineage", []))
        with self._lock:
            if self.identity is not None:
                same = identity == self.identity or self.identity in lineage
                if not same or last < self.seen_epoch:
                    raise self._refused(f"identity {identity}, last epoch {last}")
            self.identity, self._lineage, self.identity_rev = (
                identity,
                lineage,
                found.create_revision,
            )
            self._note_epoch(last)

    def _make_identity(self, deadline: float) -> None:
        identity = str(uuid.uuid4())
        doc = {"identity": identity, "lineage": [], "created_at": self._clock()}
        key = self._layout.identity
        self._transport.txn(
            [unchanged(key, None)],
            [put(key, dumps(doc))],  # an epoch counter left behind is kept: epochs go on
            None,
            deadline,
            "create the cluster identity",
        )
        raise Retry  # read it back (ours, or the one a concurrent creator made)

    def _note_epoch(self, epoch: int) -> None:
        """Remember the highest epoch seen (with the lock held)."""
        if epoch > self.seen_epoch:
            self.seen_epoch = epoch
        if self._memory_path is None or self.identity is None:
            return
        wanted = Memory(self.identity, self.seen_epoch, self._lineage)
        if wanted != self._saved:
            self._saved = write_memory(self._memory_path, wanted)
            self.seen_epoch = max(self.seen_epoch, self._saved.epoch)

    def saw(self, epoch: int) -> None:
        with self._lock:
            self._note_epoch(epoch)

    def trusted(self) -> dict[str, Any]:
        """A compare: the identity key is the one this process trusts."""
        return same_create(self._layout.identity, self.identity_rev)

    def read(self, deadline: float, doing: str, *requests_: dict[str, Any]) -> list[list[KV]]:
        """One consistent read of the identity, the epoch counter and ``requests_``;
        the identity checked. Answers the epoch counter's range, then those of ``requests_``."""
        requests = [get(self._layout.identity), get(self._layout.epoch), *requests_]
        for last_try in (False, True):
            _, revision, ranges = self._transport.txn([], requests, None, deadline, doing)
            identity = ranges[0][0] if ranges[0] else None
            epoch = ranges[1][0] if ranges[1] else None
            try:
                self._check(identity, epoch, deadline)
            except StoreReplacedError:
                # Threads share this guard: another one may have learned a newer state (the
                # identity it just made, a higher epoch) after this read was answered. A read
                # older than what this process has seen is read once more; only a refusal
                # by a read at least that new stands (a store put back in time keeps its
                # older revisions: refused on the second read).
                if not last_try and 0 < revision < self._transport.newest_revision:
                    continue
                raise
            return [ranges[1], *ranges[2:]]
        raise AssertionError("unreachable: the last try returns or raises")

    def run(self, doing: str, step: Callable[[float], T]) -> T:
        """Run ``step(deadline)`` again until it does not lose a race; within the timeout."""
        timeout = self._transport.timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                return step(deadline)
            except Retry:
                if time.monotonic() >= deadline:
                    raise CoordinationError(
                        f"coordination store {self._transport.where}: could not {doing} within "
                        f"{timeout:g} s: other writers kept changing the same keys"
                    ) from None
            except Refused as error:
                raise CoordinationError(
                    f"coordination store {self._transport.where}: could not {doing}: "
                    f"etcd answered {error}"
                ) from None
