"""When a request may wait for a node instead of failing (pure decisions, no I/O).

While no node can serve (a failover, a switchover, a restart, a node that
refused the connection), a request not yet sent to any node is held: it waits
for the cluster view to change, up to ``router.hold_timeout``, and is then
forwarded. Users see a slow page instead of an error. Any method may be held:
the request has reached no application, so sending it late is sending it once.

What happens to its body (``hold_plan``):

- no body (none at all, or ``Content-Length: 0``): held (HOLD);
- ``Expect: 100-continue``: held like a bodiless request, whatever its size
  (HOLD): the client waits for a ``100 Continue`` before sending the body, and
  if it sends it anyway reading pauses at the usual small buffer until a node
  takes the request (flow control, nothing is lost);
- any other body: read into memory while the request waits, up to
  ``router.hold_body_limit`` (HOLD_BUFFERED), and sent in full once a node is
  chosen. A body over the limit (its ``Content-Length``, or a chunked body as it
  grows past it) is answered at once with the 503 page saying the request was
  not processed (TOO_LARGE): the router will not hold that much, and a client
  left streaming into a paused connection learns nothing.

Once a request was sent to a node, it is repeated elsewhere only when that
cannot surprise anyone (``may_retry_unanswered``): a node that failed without
answering may have acted on it. ``after_failure`` decides what a failed
backend connection leads to: a new connection, the next node, or a 502.
"""

from __future__ import annotations

from typing import Final

from hakit.router.headers import Body, RequestHead, header_value

# RFC 9110 9.2.1: methods defined as read-only.
SAFE_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})

# hold_plan's answers.
HOLD: Final = 0  # wait for a node; no body to read now
HOLD_BUFFERED: Final = 1  # wait for a node, reading the body into memory meanwhile
TOO_LARGE: Final = 2  # the body is over hold_body_limit: answer at once (not processed)


def expects_continue(request: RequestHead) -> bool:
    """The client sent ``Expect: 100-continue`` (it waits before sending its body)."""
    value = header_value(request.headers, b"expect")
    return value is not None and value.strip().lower() == b"100-continue"


def has_body(request: RequestHead) -> bool:
    """The request carries a body (not none, not ``Content-Length: 0``)."""
    body = request.body
    return body is not Body.NONE and not (body is Body.LENGTH and request.content_length == 0)


def drainable(request: RequestHead, body_received: int, drain_limit: int) -> bool:
    """The unread rest of ``request``'s body, answered already, is small enough to read
    and drop (``router.limits.drain_limit``), so its connection can serve the next one."""
    if request.body is Body.NONE:
        return True
    if body_received == 0 and expects_continue(request):
        # The client waits for a 100 Continue that will not come: it may or may not
        # send its body now, so the connection cannot be trusted to frame the next
        # request (RFC 9110 10.1.1). Close after the answer.
        return request.content_length == 0 and request.body is Body.LENGTH
    if request.body is Body.LENGTH:
        return request.content_length - body_received <= drain_limit
    return False


def hold_plan(request: RequestHead, body_received: int, body_limit: int) -> int:
    """How ``request``, not yet sent to any node, waits for one (see the module doc).

    ``body_received``: body bytes read so far (all of them still with the router);
    ``body_limit``: ``router.hold_body_limit``.
    """
    if not has_body(request) or expects_continue(request):
        return HOLD
    if request.body is Body.LENGTH and request.content_length > body_limit:
        return TOO_LARGE
    if body_received > body_limit:  # a chunked body grew past the limit
        return TOO_LARGE
    return HOLD_BUFFERED


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
    it, which for a safe method does not matter. Anything else (a POST, a PUT, a
    request with a body, even one the router had buffered) gets a 502 saying it
    may or may not have been processed: repeating it could do it twice.
    """
    return request.method in SAFE_METHODS and request.body is Body.NONE and body_sent == 0


# Bounded retries of one request: stale pooled connections, then other nodes.
MAX_ATTEMPTS: Final = 4

# after_failure's answers.
RETRY_FRESH: Final = 0  # again on a new connection: the pooled one had gone stale
RETRY_NEXT: Final = 1  # to the next node, or held: the node dropped it unanswered
GIVE_UP: Final = 2  # a 502: it reached the node, which may have acted on it


def after_failure(
    request: RequestHead, body_sent: int, attempts: int, *, pooled: bool, answered: bool
) -> int:
    """What to do when a backend connection failed before the response head.

    ``pooled``: the connection had served an earlier request; ``answered``: the
    backend had begun a response (or a 101 that could not be relayed). A pooled
    connection that fails before any answer was most likely closed by the backend
    meanwhile: a bodiless idempotent request is safe to repeat on a new one. Else
    ``may_retry_unanswered`` decides. Never more than ``MAX_ATTEMPTS`` tries.
    """
    if attempts >= MAX_ATTEMPTS or answered:
        return GIVE_UP
    if pooled and request.body is Body.NONE and request.idempotent:
        return RETRY_FRESH
    if may_retry_unanswered(request, body_sent):
        return RETRY_NEXT
    return GIVE_UP
