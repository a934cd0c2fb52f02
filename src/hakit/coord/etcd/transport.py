"""HTTP to etcd's JSON gateway: endpoints in turn, authentication, TLS, deadlines, errors.

One ``Transport`` per coordinator object. Each request gets what is left of the
caller's deadline; an endpoint that does not answer (connection refused, reset,
timed out, HTTP 502/503/504, "no leader") is skipped for the next; the one that
answered last is tried first next time. A connection problem on every endpoint
within the deadline is a ``CoordinationError``; an answer that is an error
(etcd refused the request) is ``Refused``. Connections are per process: a
forked child opens its own. Requests go through hakit.coord.etcd.http (plain
``http.client``, keep-alive: a quarter of ``requests``' CPU per request); the
watch's stream keeps a ``requests`` session of its own (``session``).
"""

from __future__ import annotations

import math
import os
import ssl
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, Protocol

import requests

from hakit.coord.etcd.http import Endpoint, HttpError, tls_context
from hakit.coord.etcd.layout import KV
from hakit.coord.etcd.section import EtcdSection
from hakit.errors import CoordinationError

API_PATH = "/v3/"  # etcd 3.4 and later serve the gateway here (3.3: /v3beta/)


class Refused(Exception):
    """etcd answered with an error (not a connection problem)."""


class AnswerLike(Protocol):
    """An answer of either HTTP client (hakit.coord.etcd.http.Answer, requests.Response)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def error_message(answer: AnswerLike) -> str:
    try:
        doc = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code} {answer.text[:200]}"
    if isinstance(doc, dict):
        return str(doc.get("message") or doc.get("error") or doc)
    return str(doc)


class Transport:
    """POSTs to the gateway of ``section.endpoints``; ``where`` names the store in errors.

    ``on_revision``: called with the store revision of each committed write transaction
    (the change token counts this object's own writes without waiting for its watch).
    """

    def __init__(
        self,
        section: EtcdSection,
        where: str,
        on_revision: Callable[[int], None] | None = None,
    ) -> None:
        self.section = section
        self.where = where
        self.timeout = section.timeout
        self._on_revision = on_revision
        self._lock = threading.Lock()
        self._clients: list[Endpoint] = []
        self._current = 0  # the endpoint that answered last
        self._pid = os.getpid()
        self._token: str | None = None
        # The newest store revision any answer carried: a read older than it may predate
        # what another thread of this process has seen (identity.Guard.read).
        self.newest_revision = 0
        self._newest_lock = threading.Lock()

    # --- connections ----------------------------------------------------------

    def session(self) -> requests.Session:
        """A new session with this section's TLS settings (the watch keeps its own)."""
        session = requests.Session()
        # Only this section decides: REQUESTS_CA_BUNDLE in the environment would replace
        # ca_cert, and a *_PROXY variable would send the stream where the requests do not go.
        session.trust_env = False
        if self.section.ca_cert is not None:
            session.verify = str(self.section.ca_cert)
        if self.section.cert is not None and self.section.key is not None:
            session.cert = (str(self.section.cert), str(self.section.key))
        return session

    def _make_clients(self) -> list[Endpoint]:
        context: ssl.SSLContext | None = None
        if any(url.startswith("https:") for url in self.section.endpoints):
            section = self.section
            context = tls_context(section.ca_cert, section.cert, section.key)
        return [Endpoint(url, API_PATH, context) for url in self.section.endpoints]

    def clients(self) -> list[Endpoint]:
        with self._lock:
            if self._pid != os.getpid():  # forked: never share the parent's connections
                self._clients, self._pid, self._token = [], os.getpid(), None
            if not self._clients:
                self._clients = self._make_clients()
            return self._clients

    @property
    def current(self) -> int:
        """The index of the endpoint that answered last."""
        return self._current

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    # --- requests -------------------------------------------------------------

    def headers(self, client: Endpoint, deadline: float) -> dict[str, str] | None:
        """The Authorization header (authenticating first when needed), or None."""
        if self.section.username is not None and self._token is None:
            self._authenticate(client, deadline - time.monotonic())
        return {"Authorization": self._token} if self._token else None

    def forget_token(self) -> None:
        self._token = None

    def post(self, path: str, body: dict[str, Any], deadline: float, doing: str) -> Any:
        """POST ``body`` to the gateway's ``path``; each endpoint in turn until ``deadline``."""
        clients = self.clients()
        last: str = "no endpoint answered"
        tried = 0
        while tried < len(clients):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            index = (self._current + tried) % len(clients)
            client = clients[index]
            try:
                headers = self.headers(client, deadline)
                answer = client.post(
                    path,
                    body,
                    self._budget(deadline, len(clients) - tried, first=tried == 0),
                    headers,
                )
            except HttpError as error:
                last = f"{client.base_url}: {type(error).__name__}: {error}"
                tried += 1
                continue
            if answer.status_code == 401 and self._token is not None:
                self._token = None  # expired token: authenticate again
                continue
            if answer.status_code == 200:
                self._current = index
                return answer.json()
            message = error_message(answer)
            if answer.status_code in (502, 503, 504) or "no leader" in message:
                last = f"{client.base_url}: {message}"
                tried += 1
                continue
            raise Refused(message)
        raise CoordinationError(
            f"coordination store {self.where}: could not {doing} within "
            f"{self.timeout:g} s ({last}); check that etcd runs and answers at "
            f"{', '.join(self.section.endpoints)}"
        )

    @staticmethod
    def _budget(deadline: float, untried: int, *, first: bool) -> tuple[float, float]:
        """(connect, read) timeouts for one endpoint of ``untried`` still to try.

        A member cut off by a partition drops packets and never refuses: it must not
        take the whole budget from the members that would answer. So connecting gets a
        fair share of what is left. Reading gets four fifths of it on the endpoint that
        answered last (``first``): a slow but healthy store (a long round trip, a loaded
        host) still answers there, with a fifth left for the others; later endpoints
        share the rest.
        """
        left = max(deadline - time.monotonic(), 0.001)
        share = left / untried
        read = left * 4 / 5 if first and untried > 1 else share
        return share, read

    def _authenticate(self, client: Endpoint, left: float) -> None:
        left = max(left, 0.001)
        answer = client.post(  # HttpError: the caller tries the next endpoint
            "/auth/authenticate",
            {"name": self.section.username, "password": self.section.password},
            (left, left),
        )
        if answer.status_code != 200:
            raise CoordinationError(
                f"coordination store {self.where}: etcd refused user "
                f"{self.section.username!r}: {error_message(answer)}; check [coordination.etcd] "
                "username and password"
            )
        self._token = str(answer.json()["token"])

    def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]] | None,
        deadline: float,
        doing: str,
    ) -> tuple[bool, int, list[list[KV]]]:
        """One transaction: whether it won, the store's revision it saw (0: not answered)
        and the range answers of the branch taken."""
        body = {"compare": compare, "success": success, "failure": failure or []}
        answer = self.post("/kv/txn", body, deadline, doing)
        won = bool(answer.get("succeeded", False))
        branch = success if won else failure or []
        revision = 0
        with suppress(KeyError, TypeError, ValueError):
            revision = int(answer["header"]["revision"])
        with self._newest_lock:
            self.newest_revision = max(self.newest_revision, revision)
        if (
            self._on_revision is not None
            and revision
            and any("request_range" not in op for op in branch)
        ):
            self._on_revision(revision)
        ranges = [
            [KV.parse(raw) for raw in response["response_range"].get("kvs", [])]
            for response in answer.get("responses", [])
            if "response_range" in response
        ]
        return won, revision, ranges

    # --- etcd leases ----------------------------------------------------------

    def grant(self, ttl: float, deadline: float, doing: str) -> tuple[int, int]:
        """A new etcd lease of at least ``ttl`` seconds: (id, granted TTL)."""
        seconds = max(1, math.ceil(ttl))
        answer = self.post("/lease/grant", {"TTL": seconds, "ID": 0}, deadline, doing)
        return int(answer["ID"]), int(answer.get("TTL", seconds))

    def keepalive(self, lease: int, deadline: float, doing: str) -> int:
        """Refresh ``lease``; its new TTL, or -1 (and 0) if it is gone."""
        answer = self.post("/lease/keepalive", {"ID": lease}, deadline, doing)
        return int(answer.get("result", {}).get("TTL", -1))

    def ttl_left(self, lease: int, deadline: float, doing: str) -> tuple[int, int]:
        """(TTL left, granted TTL) of ``lease`` by the server; TTL -1: gone."""
        answer = self.post("/kv/lease/timetolive", {"ID": lease}, deadline, doing)
        return int(answer.get("TTL", 0)), int(answer.get("grantedTTL", 0))

    def revoke(self, lease: int, deadline: float) -> None:
        """Revoke ``lease``, best effort (it expires by itself anyway)."""
        with suppress(CoordinationError, Refused):
            self.post("/kv/lease/revoke", {"ID": lease}, deadline, "revoke a lease")
