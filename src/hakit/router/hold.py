"""When a request may wait for a node instead of failing (pure decisions, no I/O).

While no node can serve (a failover, a restart, a node that refused the
connection), a request that is safe to send late is held: it waits for the
cluster view to change, up to ``router.hold_timeout``, and is then forwarded.
Users see a slow page instead of an error.

A request may be held when sending it later cannot surprise anyone:

- a safe method (GET, HEAD, OPTIONS, TRACE): repeating or delaying it has no
  effect on the server's state;
- any other method only while its body has not started: no body at all,
  ``Content-Length: 0``, or ``Expect: 100-continue`` with nothing of the body
  read yet (the client waits for a ``100 Continue`` before sending it). A
  client already streaming a body is answered at once rather than being left
  to buffer against a paused connection.

The same rule decides whether a request may be repeated on another node after
the first one failed without answering (see ``may_retry_unanswered``).
"""

from __future__ import annotations

from typing import Final

from hakit.router.headers import Body, RequestHead, header_value

# RFC 9110 9.2.1: methods defined as read-only.
SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


def expects_continue(request: RequestHead) -> bool:
    """The client sent ``Expect: 100-continue`` (it waits before sending its body)."""
    value = header_value(request.headers, b"expect")
    return value is not None and value.strip().lower() == b"100-continue"


def body_not_started(request: RequestHead, body_received: int) -> bool:
    """Nothing of the request body exists yet, and none is coming unasked."""
    if request.body is Body.NONE:
        return True
    if request.body is Body.LENGTH and request.content_length == 0:
        return True
    return body_received == 0 and expects_continue(request)


def can_hold(request: RequestHead, body_received: int) -> bool:
    """``request`` may wait for a node to become available."""
    return request.method in SAFE_METHODS or body_not_started(request, body_received)


def hold_remaining(started: float | None, now: float, hold_timeout: float) -> float:
    """Seconds a request held since ``started`` (None: not yet) may still wait."""
    if hold_timeout <= 0:
        return 0.0
    if started is None:
        return hold_timeout
    return max(0.0, started + hold_timeout - now)


def may_retry_unanswered(request: RequestHead, body_sent: int) -> bool:
    """A backend took the request and failed before any response byte: try another?

    Only a safe request that carried no body: the failed node may have acted on
    it, which for a safe method does not matter; a body would have to be
    replayed, and we do not keep it.
    """
    return request.method in SAFE_METHODS and request.body is Body.NONE and body_sent == 0
