"""The per-request seam for rewriting headers: what a sticky strategy overrides.

Split from exchange.py, which calls it: a strategy (sticky.py) needs only this.
"""

from __future__ import annotations

from hakit.config import NodeConfig
from hakit.router.headers import Header, RequestHead


class ExchangeHooks:
    """Per-request seams for rewriting headers (stickiness adds its cookies here).

    Both methods may change ``headers`` in place; the defaults do nothing. The
    exchange calls a method only when its flag says it is overridden: a subclass
    that overrides ``request()`` states ``rewrites_requests = True``, one that
    overrides ``response()`` states ``rewrites_responses = True``. Plain
    declarations, not worked out in ``__init_subclass__``: compiled (mypyc), a
    class-body default is an instance field, which compiled code reads directly,
    so a class attribute set later by such a hook is never seen there. (The flags
    are read for every request: one field read.) tests/unit/router/test_sticky.py
    checks that every strategy's flags match what it overrides.
    """

    rewrites_requests = False  # request() is overridden
    rewrites_responses = False  # response() is overridden

    def request(self, request: RequestHead, backend: NodeConfig, headers: list[Header]) -> None:
        """Called with the headers about to go to ``backend``."""

    def leaves_request(self, request: RequestHead) -> bool:
        """True when ``request()`` would change nothing for this request (then it is not
        called, and the head is encoded without a header list). Override with ``request``."""
        return False

    # True when response() only ever appends to ``headers``: it is then given an empty
    # list, and what it adds follows the response's own headers (no header list built).
    appends_to_responses = False

    def response(
        self, request: RequestHead, backend: NodeConfig, status: int, headers: list[Header]
    ) -> None:
        """Called with the response headers about to go to the client."""
