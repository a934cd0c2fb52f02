"""The state of one ZooKeeper coordinator: its settings, its kazoo client and session.

``Session`` holds what a ``ZooKeeperCoordinator`` keeps between calls (the
settings, the client, the identity remembered, the call's deadline) and opens the
client: one per process (after a fork, the child opens its own), connecting
within the call's deadline; kazoo reconnects in the background after. ``_left``
is what remains of the call's deadline (``KazooTimeoutError`` past it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE

from hakit.coord.memory import Memory
from hakit.coord.zookeeper.guardcache import GuardCache
from hakit.coord.zookeeper.section import DEFAULT_MAX_EVENTS, DEFAULT_TRIM_EVERY


class Session:
    """The settings and state of one coordinator (see hakit.coord.zookeeper.coordinator)."""

    def __init__(
        self,
        hosts: Sequence[str] | str,
        root: str,
        *,
        session_timeout: float = 10.0,
        timeout: float = 2.0,
        auth: tuple[str, str] | None = None,
        clock: Callable[[], float] | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        trim_every: int = DEFAULT_TRIM_EVERY,
        memory_path: Path | None = None,
        create: bool = True,
        config: str | None = None,
    ) -> None:
        if max_events < 1 or trim_every < 1:
            raise ValueError("max_events and trim_every must be at least 1")
        self.hosts = hosts if isinstance(hosts, str) else ",".join(hosts)
        self.root = root.rstrip("/")
        self.where = f"zookeeper://{self.hosts}{self.root}"
        self._session_timeout = session_timeout
        self._timeout = timeout
        self._auth = auth
        self._clock = clock
        self._max_events = max_events
        self._trim_every = trim_every
        self._memory_path = Path(memory_path) if memory_path is not None else None
        self._create = create
        self._config = config or "CONFIG"
        self._client: KazooClient | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()  # one call at a time; guards the memory below
        self._deadline = 0.0  # of the call in progress
        self._memory_loaded = False
        self._identity: str | None = None
        self._lineage: tuple[str, ...] = ()
        self._seen_epoch = 0
        self._saved: Memory | None = None
        self._pending_epoch = 0
        self._identity_version = 0  # of the identity znode read by the call in progress
        self._records_written: set[str] = set()  # node record znodes this object wrote
        self._guard_cache = GuardCache()  # the identity and epoch znodes, while unchanged

    # --- paths ----------------------------------------------------------------

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    @property
    def _identity_path(self) -> str:
        return self._path("identity")

    # --- session ------------------------------------------------------------------

    def _adopt_process(self) -> None:
        """After a fork: never use the parent's client (its threads are not here)."""
        if self._pid != os.getpid():
            self._client = None
            self._lock = threading.Lock()
            self._pid = os.getpid()

    def _zk(self) -> KazooClient:
        if self._client is not None:
            return self._client
        client = KazooClient(
            hosts=self.hosts,
            timeout=self._session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, max_delay=1.0),
            auth_data=[self._auth] if self._auth else None,
            default_acl=CREATOR_ALL_ACL if self._auth else OPEN_ACL_UNSAFE,
        )
        try:
            client.start(timeout=max(0.1, self._deadline - time.monotonic()))
        except BaseException:
            with suppress(Exception):
                client.stop()
            with suppress(Exception):
                client.close()
            raise
        self._client = client
        return client

    @property
    def session_id(self) -> int | None:
        """The current ZooKeeper session (None: not connected yet)."""
        client = self._client
        return client.client_id[0] if client is not None and client.client_id else None

    def _left(self) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise KazooTimeoutError(f"no answer within {self._timeout:g} s")
        return left

    def close(self) -> None:
        """End this process's session (a lease bound to it ends too); a later call opens one."""
        self._adopt_process()
        with self._lock:
            self._discard_client()

    def _discard_client(self) -> None:
        """Stop and forget the client (with the lock held); the next call opens a new one."""
        client, self._client = self._client, None
        if client is not None:
            with suppress(Exception):
                client.stop()
            with suppress(Exception):
                client.close()
