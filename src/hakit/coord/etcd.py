"""The etcd v3 coordination backend: one etcd cluster shared by the agents of several hosts.

It speaks to etcd's JSON gateway (gRPC-gateway, ``/v3/`` since etcd 3.4) through
etcd3gw: synchronous like the Coordinator interface, plain HTTP(S), no gRPC
stack. Everything of a cluster lives under ``<prefix>/<cluster>/`` (``P``):

- ``P/identity``: the cluster identity (a uuid4 made once, with the store) and
  its lineage; a process remembers it (and the highest epoch it saw) and raises
  StoreReplacedError when it changes, vanishes or the last epoch went back;
- ``P/epoch``: the epoch counter, the highest epoch ever handed out;
- ``P/leader``: the lease as stored (holder, epoch, revision, the etcd lease id,
  ``expires_at`` by the writer's clock for display). It stays after the lease
  expired (so ``current_lease`` answers an expired lease, and ``renew_epoch``
  can revive it under the same epoch); ``release`` deletes it;
- ``P/leader/alive``: attached to the etcd lease (TTL: the lease ttl rounded up to
  whole seconds, never shorter): its existence is the server's judgement that
  the lease is valid. etcd deletes it when the holder stops renewing;
- ``P/nodes/<node>``: node records, each attached to a record lease refreshed at
  each publish (``record_ttl``): a dead agent's record vanishes; its age is the
  lease's granted TTL minus the TTL left, both the server's;
- ``P/events/<id, 20 digits>`` and ``P/event_id``: the event history, ids from a
  counter incremented in the same transaction as the event is stored, the
  oldest beyond ``max_events`` deleted in that transaction;
- ``P/state/<key>``: the cluster state; a value with a ttl is attached to an
  etcd lease of that TTL (the server forgets it).

Lease steps (acquire, renew, renew_epoch, take_over, release) each read, then
write in ONE transaction that compares the ``mod_revision`` (or absence) of every
key the decision was made on, the identity key included; a transaction that
lost a race is retried from a fresh read. A grant of a new holder increments
``P/epoch`` in that same transaction, so an epoch is never handed out twice.
Renewing an alive lease refreshes the same etcd lease (keepalive) and bumps
``revision`` in ``P/leader``; ``renew_epoch`` of an expired lease grants a new
etcd lease under the same epoch only if ``P/leader`` and ``P/epoch`` are
unchanged and ``P/leader/alive`` is still absent.

Times. Nothing here compares a stored time with this host's clock to decide.
``Lease.remaining`` of an alive lease is the TTL left by the server (whole
seconds, rounded down by etcd: a reader may see a lease expire up to a second
early, never late); of an expired lease, ``min(0, expires_at - now)`` (how long
ago is a display estimate; that it expired is the server's judgement). etcd
revokes expired leases on a 500 ms tick: a lease lasts at most ~0.5 s longer
than its TTL. ``NodeRecord.age`` has the same one-second resolution (rounded up).

Every call raises CoordinationError within ``timeout`` seconds (each HTTP
request gets what is left of it; endpoints are tried in turn).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from etcd3gw.client import Etcd3Client
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hakit.coord.base import Event, Lease, NodeRecord
from hakit.coord.memory import Memory, make_private_dir, memory_file, read_memory, write_memory
from hakit.errors import CoordinationError, NoClusterState, StoreReplacedError

log = logging.getLogger("hakit.coord")
API_PATH = "/v3/"  # etcd 3.4 and later serve the gateway here (3.3: /v3beta/)
DEFAULT_MAX_EVENTS = 10_000
_EVENT_DIGITS = 20
T = TypeVar("T")


class EtcdSection(BaseModel):
    """``[coordination.etcd]``: where the etcd cluster is and how to reach it.

    ``endpoints``: client URLs (``http://host:port`` or ``https://...``), tried in
    turn; ``prefix``: under which ``<prefix>/<cluster.name>/`` holds this cluster;
    ``username``/``password``: etcd's own authentication (both or neither);
    ``ca_cert``, ``cert``, ``key``: absolute paths of PEM files for TLS (``cert``
    and ``key`` together); ``timeout``: seconds any one call may take before it
    fails; ``record_ttl``: seconds a node record outlives its agent's last
    publish; ``max_events``: how many events the history keeps.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoints: list[str] = Field(default_factory=lambda: ["http://127.0.0.1:2379"], min_length=1)
    prefix: str = "/hakit"
    username: str | None = None
    password: str | None = None
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    timeout: float = Field(default=2.0, gt=0)
    record_ttl: float = Field(default=600.0, gt=0)
    max_events: int = Field(default=DEFAULT_MAX_EVENTS, ge=1)

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = None
            if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
                raise ValueError(
                    f"{json.dumps(url)} is not an etcd client URL; expected "
                    '"http://host:port" or "https://host:port"'
                )
            if parts.path not in ("", "/"):
                raise ValueError(f"{json.dumps(url)} has a path; expected only scheme://host:port")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/") or value.endswith("/") or "//" in value:
            raise ValueError(
                f'{json.dumps(value)} is not a key prefix; expected "/name" (e.g. "/hakit"), '
                "starting with '/' and not ending with one"
            )
        return value

    @field_validator("ca_cert", "cert", "key")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_absolute():
            raise ValueError(f"{json.dumps(str(value))} is relative; expected an absolute path")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> EtcdSection:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together; expected both or neither")
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together; expected both or neither")
        return self


def open_etcd(
    section: EtcdSection,
    *,
    state_dir: Path,
    config: str | None,
    create: bool,
    node: str | None,
    cluster: str = "hakit",
) -> EtcdCoordinator:
    """The opener hakit.coord.registry names (see hakit.coord.factory.open_coordinator)."""
    memory = None
    if node is not None:
        make_private_dir(state_dir)
        memory = memory_file(state_dir, node)
    return EtcdCoordinator(
        section, cluster=cluster, memory_path=memory, create=create, config=config
    )


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: str) -> str:
    data = bytearray(prefix.encode())
    data[-1] += 1
    return _b64(bytes(data))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class KV:
    """One key as etcd answered it (the gateway leaves zero fields out)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> KV:
        return cls(
            _unb64(raw["key"]).decode(),
            _unb64(raw.get("value", "")),
            int(raw.get("create_revision", 0)),
            int(raw.get("mod_revision", 0)),
            int(raw.get("lease", 0)),
        )

    def json(self) -> dict[str, Any]:
        value = json.loads(self.value)
        return value if isinstance(value, dict) else {}


def _put(key: str, value: str, lease: int = 0) -> dict[str, Any]:
    request: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        request["lease"] = lease
    return {"request_put": request}


def _delete(key: str, range_end: str | None = None) -> dict[str, Any]:
    request = {"key": _b64(key)}
    if range_end is not None:
        request["range_end"] = range_end
    return {"request_delete_range": request}


def _get(key: str, **extra: Any) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key), **extra}}


def _unchanged(key: str, kv: KV | None) -> dict[str, Any]:
    """A compare: ``key`` is as read (same mod_revision), or still absent."""
    if kv is None:
        return {"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
    return {
        "key": _b64(key),
        "result": "EQUAL",
        "target": "MOD",
        "mod_revision": kv.mod_revision,
    }


class _Retry(Exception):
    """A transaction lost a race: read again."""


class EtcdCoordinator:
    """The ``Coordinator`` protocol on an etcd v3 cluster (see the module docstring).

    ``clock``: this process's wall clock, only for the displayed ``expires_at``
    and ``NodeRecord`` display fields, never for a decision. ``memory_path``,
    ``create`` and ``config`` as for hakit.coord.sqlite.SqliteCoordinator.
    """

    def __init__(
        self,
        section: EtcdSection,
        *,
        cluster: str,
        clock: Callable[[], float] = time.time,
        memory_path: Path | None = None,
        create: bool = True,
        config: str | None = None,
    ) -> None:
        if not cluster or "/" in cluster:
            raise ValueError(f"a cluster name without '/' is needed, got {cluster!r}")
        self.section = section
        self.cluster = cluster
        self.prefix = f"{section.prefix}/{cluster}/"
        self._clock = clock
        self._timeout = section.timeout
        self._memory_path = Path(memory_path) if memory_path is not None else None
        self._create = create
        self._config = config or "CONFIG"
        self._lock = threading.Lock()  # guards the memory and the clients
        self._clients: list[Etcd3Client] = []
        self._current = 0  # the endpoint that answered last
        self._pid = os.getpid()
        self._token: str | None = None
        self._memory_loaded = False
        self._identity: str | None = None
        self._identity_rev = 0  # create_revision of the identity key this process trusts
        self._lineage: tuple[str, ...] = ()
        self._seen_epoch = 0
        self._saved: Memory | None = None
        self._record_leases: dict[str, int] = {}  # node -> the record lease this object keeps

    # --- keys -----------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self.prefix + name

    @property
    def where(self) -> str:
        return f"etcd {','.join(self.section.endpoints)} under {self.prefix}"

    # --- transport ------------------------------------------------------------

    def _make_clients(self) -> list[Etcd3Client]:
        clients = []
        session = requests.Session()
        if self.section.ca_cert is not None:
            session.verify = str(self.section.ca_cert)
        if self.section.cert is not None and self.section.key is not None:
            session.cert = (str(self.section.cert), str(self.section.key))
        for url in self.section.endpoints:
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None  # the section checked
            clients.append(
                Etcd3Client(
                    host=parts.hostname,
                    port=parts.port,
                    protocol=parts.scheme,
                    timeout=self._timeout,
                    api_path=API_PATH,
                    session=session,
                )
            )
        return clients

    def _client_list(self) -> list[Etcd3Client]:
        with self._lock:
            if self._pid != os.getpid():  # forked: never share the parent's connections
                self._clients, self._pid, self._token = [], os.getpid(), None
            if not self._clients:
                self._clients = self._make_clients()
            return self._clients

    def _post(self, path: str, body: dict[str, Any], deadline: float, doing: str) -> Any:
        """POST ``body`` to the gateway's ``path``; each endpoint in turn until ``deadline``."""
        clients = self._client_list()
        last: str = "no endpoint answered"
        tried = 0
        while tried < len(clients):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            index = (self._current + tried) % len(clients)
            client = clients[index]
            headers = {"Authorization": self._token} if self._token else None
            try:
                if self.section.username is not None and self._token is None:
                    self._authenticate(client, left)
                    headers = {"Authorization": self._token} if self._token else None
                    left = deadline - time.monotonic()
                answer = client.session.post(
                    client.get_url(path), json=body, timeout=max(left, 0.001), headers=headers
                )
            except requests.RequestException as error:
                last = f"{client.base_url}: {type(error).__name__}: {error}"
                tried += 1
                continue
            if answer.status_code == 401 and self._token is not None:
                self._token = None  # expired token: authenticate again
                continue
            if answer.status_code == 200:
                self._current = index
                return answer.json()
            message = _error_message(answer)
            if answer.status_code in (502, 503, 504) or "no leader" in message:
                last = f"{client.base_url}: {message}"
                tried += 1
                continue
            raise _Refused(message)
        raise CoordinationError(
            f"coordination store {self.where}: could not {doing} within "
            f"{self._timeout:g} s ({last}); check that etcd runs and answers at "
            f"{', '.join(self.section.endpoints)}"
        )

    def _authenticate(self, client: Etcd3Client, left: float) -> None:
        answer = client.session.post(
            client.get_url("/auth/authenticate"),
            json={"name": self.section.username, "password": self.section.password},
            timeout=max(left, 0.001),
        )
        if answer.status_code != 200:
            raise CoordinationError(
                f"coordination store {self.where}: etcd refused user "
                f"{self.section.username!r}: {_error_message(answer)}; check [coordination.etcd] "
                "username and password"
            )
        self._token = str(answer.json()["token"])

    def _txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None,
        deadline: float,
        doing: str,
    ) -> tuple[bool, list[list[KV]]]:
        """One transaction; the range answers of the branch taken."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        answer = self._post("/kv/txn", body, deadline, doing)
        ranges = [
            [KV.parse(raw) for raw in response["response_range"].get("kvs", [])]
            for response in answer.get("responses", [])
            if "response_range" in response
        ]
        return bool(answer.get("succeeded", False)), ranges

    def _grant(self, ttl: float, deadline: float, doing: str) -> tuple[int, int]:
        """A new etcd lease of at least ``ttl`` seconds: (id, granted TTL)."""
        seconds = max(1, math.ceil(ttl))
        answer = self._post("/lease/grant", {"TTL": seconds, "ID": 0}, deadline, doing)
        return int(answer["ID"]), int(answer.get("TTL", seconds))

    def _keepalive(self, lease: int, deadline: float, doing: str) -> int:
        """Refresh ``lease``; its new TTL, or -1 (and 0) if it is gone."""
        answer = self._post("/lease/keepalive", {"ID": lease}, deadline, doing)
        return int(answer.get("result", {}).get("TTL", -1))

    def _ttl_left(self, lease: int, deadline: float, doing: str) -> tuple[int, int]:
        """(TTL left, granted TTL) of ``lease`` by the server; TTL -1: gone."""
        answer = self._post("/kv/lease/timetolive", {"ID": lease}, deadline, doing)
        return int(answer.get("TTL", 0)), int(answer.get("grantedTTL", 0))

    def _revoke(self, lease: int, deadline: float) -> None:
        """Revoke ``lease``, best effort (it expires by itself anyway)."""
        with suppress(CoordinationError, _Refused):
            self._post("/kv/lease/revoke", {"ID": lease}, deadline, "revoke a lease")

    # --- identity -------------------------------------------------------------

    @property
    def identity(self) -> str | None:
        return self._identity

    @property
    def highest_epoch(self) -> int:
        return self._seen_epoch

    def _load_memory(self) -> None:
        if self._memory_loaded:
            return
        if self._memory_path is not None:
            memory = read_memory(self._memory_path)
            if memory is not None:
                self._identity = memory.identity
                self._lineage = memory.lineage
                self._seen_epoch = max(self._seen_epoch, memory.epoch)
                self._saved = memory
        self._memory_loaded = True

    def _refused(self, found: str) -> StoreReplacedError:
        assert self._identity is not None
        return StoreReplacedError(
            self.where,
            found,
            self._identity,
            self._seen_epoch,
            config=self._config,
            consequence=(
                "the app on this node is fenced"
                if self._memory_path is not None
                else "this process neither reads nor writes it"
            ),
        )

    def _check_identity(self, found: KV | None, epoch: KV | None, deadline: float) -> None:
        """Accept the store read (``found``: its identity key) or raise StoreReplacedError."""
        with self._lock:
            self._load_memory()
        last = int(epoch.value or b"0") if epoch is not None else 0
        if found is None:
            if self._identity is not None:
                raise self._refused("no identity: the keys are gone or were never made")
            if not self._create:
                raise NoClusterState(self.where)
            self._make_identity(deadline)
            return
        doc = found.json()
        identity = str(doc.get("identity", ""))
        lineage = tuple(str(x) for x in doc.get("lineage", []))
        with self._lock:
            if self._identity is not None:
                same = identity == self._identity or self._identity in lineage
                if not same or last < self._seen_epoch:
                    raise self._refused(f"identity {identity}, last epoch {last}")
            self._identity, self._lineage, self._identity_rev = (
                identity,
                lineage,
                found.create_revision,
            )
            self._note_epoch(last)

    def _make_identity(self, deadline: float) -> None:
        identity = str(uuid.uuid4())
        doc = {"identity": identity, "lineage": [], "created_at": self._clock()}
        key = self._key("identity")
        self._txn(
            [_unchanged(key, None)],
            [_put(key, _dumps(doc))],  # an epoch counter left behind is kept: epochs go on
            None,
            deadline,
            "create the cluster identity",
        )
        raise _Retry  # read it back (ours, or the one a concurrent creator made)

    def _note_epoch(self, epoch: int) -> None:
        """Remember the highest epoch seen (with the lock held)."""
        if epoch > self._seen_epoch:
            self._seen_epoch = epoch
        if self._memory_path is None or self._identity is None:
            return
        wanted = Memory(self._identity, self._seen_epoch, self._lineage)
        if wanted != self._saved:
            self._saved = write_memory(self._memory_path, wanted)
            self._seen_epoch = max(self._seen_epoch, self._saved.epoch)

    def _saw(self, epoch: int) -> None:
        with self._lock:
            self._note_epoch(epoch)

    def _trusted(self) -> dict[str, Any]:
        """A compare: the identity key is the one this process trusts."""
        return {
            "key": _b64(self._key("identity")),
            "result": "EQUAL",
            "target": "CREATE",
            "create_revision": self._identity_rev,
        }

    # --- reads and the retry loop -------------------------------------------

    def _read(self, deadline: float, doing: str, *requests_: dict[str, Any]) -> list[list[KV]]:
        """One consistent read of the identity, the epoch counter and ``requests_``;
        the identity checked. Answers the ranges of ``requests_``."""
        _, ranges = self._txn(
            [],
            [_get(self._key("identity")), _get(self._key("epoch")), *requests_],
            None,
            deadline,
            doing,
        )
        identity = ranges[0][0] if ranges[0] else None
        epoch = ranges[1][0] if ranges[1] else None
        self._check_identity(identity, epoch, deadline)
        return [ranges[1], *ranges[2:]]

    def _run(self, doing: str, step: Callable[[float], T]) -> T:
        """Run ``step(deadline)`` again until it does not lose a race; within the timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                return step(deadline)
            except _Retry:
                if time.monotonic() >= deadline:
                    raise CoordinationError(
                        f"coordination store {self.where}: could not {doing} within "
                        f"{self._timeout:g} s: other writers kept changing the same keys"
                    ) from None
            except _Refused as error:
                raise CoordinationError(
                    f"coordination store {self.where}: could not {doing}: etcd answered {error}"
                ) from None

    # --- the leader lease -----------------------------------------------------

    def _lease_state(self, deadline: float, doing: str) -> _LeaseState:
        epoch, leader, alive = self._read(
            deadline, doing, _get(self._key("leader")), _get(self._key("leader/alive"))
        )
        return _LeaseState(
            epoch[0] if epoch else None,
            leader[0] if leader else None,
            alive[0] if alive else None,
        )

    def _write_lease(
        self,
        state: _LeaseState,
        lease: Lease,
        etcd_lease: int,
        ttl: float,
        deadline: float,
        doing: str,
        *,
        new_epoch: bool,
    ) -> None:
        """Store ``lease`` in one transaction conditioned on ``state`` as read."""
        doc = {
            "holder": lease.holder,
            "epoch": lease.epoch,
            "revision": lease.revision,
            "expires_at": lease.expires_at,
            "ttl": ttl,
            "lease": etcd_lease,
        }
        success = [
            _put(self._key("leader"), _dumps(doc)),
            _put(self._key("leader/alive"), str(lease.epoch), etcd_lease),
        ]
        if new_epoch:
            success.append(_put(self._key("epoch"), str(lease.epoch)))
        compare = [
            self._trusted(),
            _unchanged(self._key("epoch"), state.epoch),
            _unchanged(self._key("leader"), state.leader),
            _unchanged(self._key("leader/alive"), state.alive),
        ]
        try:
            won, _ = self._txn(compare, success, None, deadline, doing)
        except _Refused as error:
            if "lease not found" in str(error):
                raise _Retry from None  # the etcd lease ran out meanwhile
            raise
        if not won:
            raise _Retry

    def _grant_new_epoch(
        self, state: _LeaseState, node: str, ttl: float, deadline: float, doing: str
    ) -> Lease:
        newest = max(state.last_epoch, state.stored_epoch)
        etcd_lease, _ = self._grant(ttl, deadline, doing)
        now = self._clock()
        lease = Lease(node, newest + 1, now + ttl, ttl, 1)
        try:
            self._write_lease(state, lease, etcd_lease, ttl, deadline, doing, new_epoch=True)
        except BaseException:
            self._revoke(etcd_lease, deadline)
            raise
        if state.leader is not None and state.leader_lease and state.alive is not None:
            self._revoke(
                state.leader_lease, deadline
            )  # take_over: the old one is attached to nothing
        self._saw(lease.epoch)
        return lease

    def _extend(self, state: _LeaseState, ttl: float, deadline: float, doing: str) -> Lease:
        """Extend the stored lease under its epoch (revision + 1): the same etcd lease when
        it is alive and of the same length, else a new one."""
        assert state.leader is not None
        doc = state.leader.json()
        etcd_lease = state.leader_lease
        fresh = False
        if state.valid and math.ceil(float(doc.get("ttl", 0))) == math.ceil(ttl):
            if self._keepalive(etcd_lease, deadline, doing) <= 0:
                raise _Retry  # it ran out just now: read again
        else:
            etcd_lease, _ = self._grant(ttl, deadline, doing)
            fresh = True
        now = self._clock()
        lease = Lease(
            str(doc["holder"]), int(doc["epoch"]), now + ttl, ttl, int(doc.get("revision", 0)) + 1
        )
        try:
            self._write_lease(state, lease, etcd_lease, ttl, deadline, doing, new_epoch=False)
        except BaseException:
            if fresh:
                self._revoke(etcd_lease, deadline)
            raise
        if fresh and state.alive is not None:
            self._revoke(state.leader_lease, deadline)
        self._saw(lease.epoch)
        return lease

    def acquire_or_renew(self, node: str, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        doing = f"take or renew the lease for {node}"

        def step(deadline: float) -> Lease | None:
            state = self._lease_state(deadline, doing)
            if state.valid:
                if state.holder != node:
                    return None
                return self._extend(state, ttl, deadline, doing)
            return self._grant_new_epoch(state, node, ttl, deadline, doing)

        return self._run(doing, step)

    def renew_epoch(self, node: str, epoch: int, ttl: float) -> Lease | None:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        doing = f"renew the lease of {node} under epoch {epoch}"

        def step(deadline: float) -> Lease | None:
            state = self._lease_state(deadline, doing)
            if state.leader is None or state.holder != node or state.stored_epoch != epoch:
                return None
            if state.last_epoch > epoch:
                return None  # a later epoch was handed out (never the case while stored)
            return self._extend(state, ttl, deadline, doing)

        return self._run(doing, step)

    def take_over(self, node: str, ttl: float) -> Lease:
        if ttl <= 0:
            raise ValueError(f"lease ttl must be positive, got {ttl}")
        doing = f"hand the lease to {node}"

        def step(deadline: float) -> Lease:
            state = self._lease_state(deadline, doing)
            return self._grant_new_epoch(state, node, ttl, deadline, doing)

        return self._run(doing, step)

    def release(self, node: str, epoch: int) -> bool:
        doing = f"release the lease of {node}"

        def step(deadline: float) -> bool:
            state = self._lease_state(deadline, doing)
            if state.leader is None or state.holder != node or state.stored_epoch != epoch:
                return False
            won, _ = self._txn(
                [self._trusted(), _unchanged(self._key("leader"), state.leader)],
                [_delete(self._key("leader")), _delete(self._key("leader/alive"))],
                None,
                deadline,
                doing,
            )
            if not won:
                raise _Retry
            if state.leader_lease:
                self._revoke(state.leader_lease, deadline)
            return True

        return self._run(doing, step)

    def current_lease(self) -> Lease | None:
        doing = "read the lease"

        def step(deadline: float) -> Lease | None:
            state = self._lease_state(deadline, doing)
            if state.leader is None:
                return None
            doc = state.leader.json()
            expires_at = float(doc.get("expires_at", 0.0))
            remaining = min(0.0, expires_at - self._clock())
            if state.valid:
                left, _ = self._ttl_left(state.leader_lease, deadline, doing)
                remaining = float(left) if left >= 0 else remaining
            self._saw(state.stored_epoch)
            return Lease(
                str(doc["holder"]),
                int(doc["epoch"]),
                expires_at,
                remaining,
                int(doc.get("revision", 0)),
            )

        return self._run(doing, step)

    def last_epoch(self) -> int:
        def step(deadline: float) -> int:
            (epoch,) = self._read(deadline, "read the last epoch")
            return int(epoch[0].value or b"0") if epoch else 0

        return self._run("read the last epoch", step)

    def data_version(self, *, wait: bool = True) -> Hashable | None:
        """The store's revision of this cluster's keys: changes with any write under
        the prefix (a lease renewal included). ``wait=False``: None (it would block
        on the network)."""
        if not wait:
            return None

        def step(deadline: float) -> Hashable:
            answer = self._post(
                "/kv/range",
                {
                    "key": _b64(self.prefix),
                    "range_end": _range_end(self.prefix),
                    "keys_only": True,
                    "sort_order": "DESCEND",
                    "sort_target": "MOD",
                    "limit": 1,
                },
                deadline,
                "read the data version",
            )
            kvs = answer.get("kvs", [])
            newest = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            # A deletion changes no remaining key: the count tells it.
            return newest, int(answer.get("count", 0))

        return self._run("read the data version", step)

    # --- node records ---------------------------------------------------------

    def publish_node(self, record: NodeRecord) -> None:
        doing = f"publish the record of {record.node}"
        doc = {
            "node": record.node,
            "role": record.role,
            "app_state": record.app_state,
            "epoch": record.epoch,
            "updated_at": record.updated_at,
            "detail": record.detail,
        }
        text = _dumps(doc)

        def step(deadline: float) -> None:
            if self._identity_rev == 0:
                self._read(deadline, doing)
            lease = self._record_leases.get(record.node, 0)
            if not lease or self._keepalive(lease, deadline, doing) <= 0:
                lease, _ = self._grant(self.section.record_ttl, deadline, doing)
                self._record_leases[record.node] = lease
            key = self._key("nodes/" + record.node)
            try:
                won, _ = self._txn(
                    [self._trusted()], [_put(key, text, lease)], None, deadline, doing
                )
            except _Refused as error:
                if "lease not found" in str(error):
                    self._record_leases.pop(record.node, None)
                    raise _Retry from None
                raise
            if not won:
                self._read(deadline, doing)  # raises StoreReplacedError when replaced
                raise _Retry

        self._run(doing, step)

    def nodes(self) -> Sequence[NodeRecord]:
        doing = "read the node records"

        def step(deadline: float) -> list[NodeRecord]:
            start = self._key("nodes/")
            _, found = self._read(
                deadline, doing, _get(start, range_end=_range_end(start), sort_order="ASCEND")
            )
            records = []
            for kv in found:
                age = 0.0
                if kv.lease:
                    left, granted = self._ttl_left(kv.lease, deadline, doing)
                    if left < 0:
                        continue  # it vanished meanwhile
                    age = float(max(0, granted - left))
                doc = kv.json()
                detail = doc.get("detail")
                records.append(
                    NodeRecord(
                        str(doc.get("node", kv.key[len(start) :])),
                        str(doc.get("role", "")),
                        str(doc.get("app_state", "")),
                        int(doc.get("epoch", 0)),
                        float(doc.get("updated_at", 0.0)),
                        detail if isinstance(detail, dict) else {},
                        age,
                    )
                )
            return sorted(records, key=lambda r: r.node)

        return self._run(doing, step)

    # --- event history --------------------------------------------------------

    def _event_key(self, event_id: int) -> str:
        return self._key(f"events/{event_id:0{_EVENT_DIGITS}d}")

    def append_event(self, event: Event) -> Event:
        doing = f"append a {event.kind} event"

        def step(deadline: float) -> Event:
            _, counter = self._read(deadline, doing, _get(self._key("event_id")))
            last = int(counter[0].value or b"0") if counter else 0
            event_id = last + 1
            doc = {
                "time": event.time,
                "node": event.node,
                "kind": event.kind,
                "reason": event.reason,
                "epoch": event.epoch,
                "actor": event.actor,
                "data": event.data,
            }
            success = [
                _put(self._key("event_id"), str(event_id)),
                _put(self._event_key(event_id), _dumps(doc)),
            ]
            oldest_kept = event_id - self.section.max_events + 1
            if oldest_kept > 1:
                # Everything below the oldest kept id (ids never repeat: a key range).
                success.append(_delete(self._key("events/"), _b64(self._event_key(oldest_kept))))
            won, _ = self._txn(
                [
                    self._trusted(),
                    _unchanged(self._key("event_id"), counter[0] if counter else None),
                ],
                success,
                None,
                deadline,
                doing,
            )
            if not won:
                raise _Retry
            return Event(
                event_id,
                event.time,
                event.node,
                event.kind,
                event.reason,
                event.epoch,
                event.actor,
                dict(event.data),
            )

        return self._run(doing, step)

    def _events(self, doing: str, **range_args: Any) -> list[Event]:
        def step(deadline: float) -> list[Event]:
            _, found = self._read(deadline, doing, {"request_range": range_args})
            return [_event(kv) for kv in found]

        return self._run(doing, step)

    def events(self, after_id: int = 0, limit: int = 1000) -> Sequence[Event]:
        if limit <= 0:
            return []
        start = self._event_key(max(after_id, 0) + 1)
        return self._events(
            "read the event history",
            key=_b64(start),
            range_end=_range_end(self._key("events/")),
            limit=limit,
            sort_order="ASCEND",
            sort_target="KEY",
        )

    def recent_events(self, limit: int) -> Sequence[Event]:
        if limit <= 0:
            return []
        start = self._key("events/")
        found = self._events(
            "read the event history",
            key=_b64(start),
            range_end=_range_end(start),
            limit=limit,
            sort_order="DESCEND",
            sort_target="KEY",
        )
        return list(reversed(found))

    # --- cluster state --------------------------------------------------------

    def _state_key(self, key: str) -> str:
        return self._key("state/" + key)

    def set_state(self, key: str, value: dict[str, Any], *, ttl: float | None = None) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError(f"state ttl must be positive, got {ttl}")
        doing = f"store the cluster state {key!r}"
        text = _dumps(value)

        def step(deadline: float) -> None:
            _, old = self._read(deadline, doing, _get(self._state_key(key)))
            lease = self._grant(ttl, deadline, doing)[0] if ttl is not None else 0
            won, _ = self._txn(
                [self._trusted(), _unchanged(self._state_key(key), old[0] if old else None)],
                [_put(self._state_key(key), text, lease)],
                None,
                deadline,
                doing,
            )
            if not won:
                if lease:
                    self._revoke(lease, deadline)
                raise _Retry
            if old and old[0].lease:
                self._revoke(old[0].lease, deadline)  # the replaced value's own lease

        self._run(doing, step)

    def get_state(self, key: str) -> dict[str, Any] | None:
        doing = f"read the cluster state {key!r}"

        def step(deadline: float) -> dict[str, Any] | None:
            _, found = self._read(deadline, doing, _get(self._state_key(key)))
            return found[0].json() if found else None

        return self._run(doing, step)

    def clear_state(self, key: str, if_value: dict[str, Any] | None = None) -> bool:
        doing = f"clear the cluster state {key!r}"

        def step(deadline: float) -> bool:
            _, found = self._read(deadline, doing, _get(self._state_key(key)))
            if not found:
                return False
            if if_value is not None and found[0].json() != if_value:
                return False
            won, _ = self._txn(
                [self._trusted(), _unchanged(self._state_key(key), found[0])],
                [_delete(self._state_key(key))],
                None,
                deadline,
                doing,
            )
            if not won:
                raise _Retry
            if found[0].lease:
                self._revoke(found[0].lease, deadline)
            return True

        return self._run(doing, step)

    def cluster_state(self) -> dict[str, dict[str, Any]]:
        doing = "read the cluster state"
        start = self._key("state/")

        def step(deadline: float) -> dict[str, dict[str, Any]]:
            _, found = self._read(deadline, doing, _get(start, range_end=_range_end(start)))
            return {kv.key[len(start) :]: kv.json() for kv in found}

        return self._run(doing, step)

    # --- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Close this object's HTTP connections; a later call opens new ones. Leases
        are left to run out (a closed agent's lease expires; its record outlives it
        by ``record_ttl``)."""
        with self._lock:
            clients, self._clients = self._clients, []
        if clients:
            clients[0].session.close()

    def __enter__(self) -> EtcdCoordinator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Refused(Exception):
    """etcd answered with an error (not a connection problem)."""


def _error_message(answer: requests.Response) -> str:
    try:
        doc = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code} {answer.text[:200]}"
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("error") or doc)
    return str(doc)


@dataclass(frozen=True, slots=True)
class _LeaseState:
    """The lease keys as one read answered them."""

    epoch: KV | None  # P/epoch
    leader: KV | None  # P/leader
    alive: KV | None  # P/leader/alive

    @property
    def last_epoch(self) -> int:
        return int(self.epoch.value or b"0") if self.epoch is not None else 0

    @property
    def stored(self) -> dict[str, Any]:
        return self.leader.json() if self.leader is not None else {}

    @property
    def holder(self) -> str | None:
        holder = self.stored.get("holder")
        return str(holder) if holder is not None else None

    @property
    def stored_epoch(self) -> int:
        return int(self.stored.get("epoch", 0))

    @property
    def leader_lease(self) -> int:
        return int(self.stored.get("lease", 0))

    @property
    def valid(self) -> bool:
        """The server's judgement: the alive key of the stored grant still exists."""
        return (
            self.leader is not None
            and self.alive is not None
            and self.alive.lease == self.leader_lease
            and self.alive.value == str(self.stored_epoch).encode()
        )


def _event(kv: KV) -> Event:
    doc = kv.json()
    event_id = int(kv.key.rsplit("/", 1)[1])
    data = doc.get("data")
    return Event(
        event_id,
        float(doc.get("time", 0.0)),
        str(doc.get("node", "")),
        str(doc.get("kind", "")),
        str(doc.get("reason", "")),
        int(doc.get("epoch", 0)),
        str(doc.get("actor", "")),
        data if isinstance(data, dict) else {},
    )
