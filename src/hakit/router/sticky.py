"""Sticky sessions: which node a request belongs to, and the cookie rewriting.

Three strategies (``router.sticky``), each an ``ExchangeHooks``
with one more method, ``node_for(request)``: the node the request is pinned
to, or None for a new (or unrecognisable) user. The router decides what to do
with that answer (pool.py); this module only reads and rewrites headers.

- ``lb-cookie``: the router's own cookie, ``ROUTEID=<token>; Path=/; HttpOnly``
  (a session cookie: no Expires). The token is an HMAC of the route under the
  cluster secret, so it reveals nothing and cannot be made up; a forged,
  stale (a route no longer configured, an old secret) or malformed value is
  not in the token table, is ignored, and the response sets a valid one. The
  cookie is stripped from what the app receives (HAProxy's ``insert
  indirect``) and set only when the route changes.
- ``app-cookie-suffix``: the app (Tomcat jvmRoute) writes ``JSESSIONID=<id>.<route>``;
  the route is read after the last ``.``, from the cookie or else from a
  ``;jsessionid=<id>.<route>`` path parameter. Nothing is rewritten: a moved
  user keeps sending the old cookie until the new node's app issues its own.
- ``app-cookie-prefix``: the router turns the app's ``Set-Cookie: JSESSIONID=<id>``
  into ``JSESSIONID=<route>~<id>`` and strips ``<route>~`` from the Cookie
  header on the way in, so the app never sees the prefix (HAProxy ``cookie
  JSESSIONID prefix``).

Tokens are precomputed per configured route: recognising a cookie is one
dict lookup, never an HMAC per request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Final

from hakit.config import Config, NodeConfig, Sticky
from hakit.router.headers import Header, RequestHead
from hakit.router.hooks import ExchangeHooks

TOKEN_BYTES: Final = 12  # 96 bits of HMAC-SHA256: not guessable, 16 base64url characters
PREFIX_SEPARATOR: Final = b"~"


# --- cookie headers (pure) ---------------------------------------------------------------


def cookie_pairs(value: bytes) -> list[tuple[bytes, bytes]]:
    """``a=1; b=2`` -> [(b"a", b"1"), (b"b", b"2")]; a piece without ``=`` has an empty name."""
    pairs = []
    for piece in value.split(b";"):
        piece = piece.strip(b" \t")
        if not piece:
            continue
        name, sep, val = piece.partition(b"=")
        pairs.append((name.strip(b" \t"), val.strip(b" \t")) if sep else (b"", name))
    return pairs


def join_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    return b"; ".join(name + b"=" + val if name else val for name, val in pairs)


_BEFORE_PAIR: Final = b"; \t"  # what may precede a cookie pair in a Cookie header


def _pair_at(value: bytes, needle: bytes, start: int = 0) -> int:
    """Where the pair starting with ``needle`` (``name=``) begins in a Cookie value, or -1.

    A scan with ``bytes.find`` instead of a parse: this runs for every request.
    A match inside another pair (``XNAME=``, ``a=NAME=``) does not count.
    """
    pos = value.find(needle, start)
    while pos > 0 and value[pos - 1] not in _BEFORE_PAIR:
        pos = value.find(needle, pos + 1)
    return pos


def _pair_end(value: bytes, start: int) -> int:
    end = value.find(b";", start)
    return len(value) if end < 0 else end


def find_cookie(headers: Iterable[Header], name: bytes) -> bytes | None:
    """The value of the first cookie ``name`` (case-sensitive, RFC 6265) in any Cookie header."""
    return _find_pair(headers, name + b"=")


def _find_pair(headers: Iterable[Header], needle: bytes) -> bytes | None:
    for key, value in headers:
        # find, not `in`: CPython's `bytes in bytes` first tries the operand as an int and
        # builds a TypeError it then drops (~1,700 instructions a test, measured).
        if value.find(needle) >= 0 and key.lower() == b"cookie":  # cheap test first
            pos = _pair_at(value, needle)
            if pos >= 0:
                start = pos + len(needle)
                return value[start : _pair_end(value, start)].strip(b" \t")
    return None


def _cut_pair(value: bytes, pos: int) -> bytes:
    """``value`` without the pair beginning at ``pos`` and its separator."""
    end = value.find(b";", pos)
    head = value[:pos].rstrip(b" \t")  # empty, or ends with ";"
    if end < 0:
        return head[:-1].rstrip(b" \t") if head else head
    tail = value[end + 1 :].lstrip(b" \t")
    return head + b" " + tail if head else tail


def without_cookie(headers: list[Header], name: bytes) -> None:
    """Remove every cookie ``name`` from the Cookie headers in place (others kept, in order)."""
    needle = name + b"="
    for index in range(len(headers) - 1, -1, -1):
        key, value = headers[index]
        if value.find(needle) < 0 or key.lower() != b"cookie":
            continue
        pos = _pair_at(value, needle)
        if pos < 0:
            continue
        while pos >= 0:
            value = _cut_pair(value, pos)
            pos = _pair_at(value, needle, pos)
        if value:
            headers[index] = (key, value)
        else:
            del headers[index]


# --- lb-cookie (pure) ---------------------------------------------------------------------


def route_token(key: bytes, cluster: str, route: str) -> bytes:
    """The opaque cookie value for ``route``: HMAC-SHA256, truncated, base64url."""
    message = b"hakit-route\x00" + cluster.encode() + b"\x00" + route.encode()
    digest = hmac.new(key, message, hashlib.sha256).digest()[:TOKEN_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=")


def token_table(key: bytes, cluster: str, nodes: Iterable[NodeConfig]) -> dict[bytes, str]:
    """token -> node name for every configured node; anything else is not trusted."""
    return {route_token(key, cluster, node.route_name): node.name for node in nodes}


def route_set_cookie(name: bytes, token: bytes, *, secure: bool) -> bytes:
    """The Set-Cookie value: a session cookie (no Expires) for the whole site."""
    return name + b"=" + token + b"; Path=/; HttpOnly" + (b"; Secure" if secure else b"")


# --- app-cookie-suffix (pure) -------------------------------------------------------------


def suffix_route(session_id: bytes) -> bytes | None:
    """``<id>.<route>`` -> route (after the LAST dot); None without a dot or route."""
    _, dot, route = session_id.rpartition(b".")
    return route if dot and route else None


def path_session_id(target: bytes, param: bytes) -> bytes | None:
    """The ``;<param>=<value>`` path parameter (name case-insensitive) of a request target.

    ``param`` is lower case. Only the path counts (not the query); the value
    ends at the next ``;``, ``/``, ``?`` or ``#``.
    """
    if target.find(b";") < 0:
        return None
    path = target.split(b"?", 1)[0]
    needle = b";" + param + b"="
    start = path.lower().rfind(needle)
    if start < 0:
        return None
    value = path[start + len(needle) :]
    for stop in (b";", b"/", b"#"):
        value = value.split(stop, 1)[0]
    return value or None


# --- app-cookie-prefix (pure) -------------------------------------------------------------


def _unquoted(value: bytes) -> tuple[bytes, bool]:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return value[1:-1], True
    return value, False


def split_prefix(value: bytes) -> tuple[bytes, bytes] | None:
    """``<route>~<id>`` (optionally quoted) -> (route, ``<id>`` with its quotes); else None."""
    inner, quoted = _unquoted(value)
    route, sep, session = inner.partition(PREFIX_SEPARATOR)
    if not sep:
        return None
    return route, (b'"' + session + b'"' if quoted else session)


def strip_prefixes(headers: list[Header], name: bytes) -> None:
    """Remove ``<route>~`` from every cookie ``name`` in the Cookie headers, in place."""
    needle = name + b"="
    for index, (key, value) in enumerate(headers):
        if value.find(needle) < 0 or key.lower() != b"cookie":
            continue
        pos, changed = _pair_at(value, needle), False
        while pos >= 0:
            start = pos + len(needle)
            end = _pair_end(value, start)
            tilde = value.find(PREFIX_SEPARATOR, start, end)
            if tilde >= 0:
                quote = b'"' if value[start : start + 1] == b'"' else b""
                value = value[:start] + quote + value[tilde + 1 :]
                end -= tilde + 1 - start - len(quote)
                changed = True
            pos = _pair_at(value, needle, end)
        if changed:
            headers[index] = (key, value)


def prefix_set_cookie(value: bytes, name: bytes, route: bytes) -> bytes | None:
    """A Set-Cookie value for cookie ``name`` with ``<route>~`` put before its value.

    Attributes are kept as they are. None when the header sets another cookie,
    sets an empty value (a deletion: nothing to route), or is prefixed already.
    """
    pair, sep, attributes = value.partition(b";")
    pair_name, eq, pair_value = pair.partition(b"=")
    if not eq or pair_name.strip(b" \t") != name:
        return None
    pair_value = pair_value.strip(b" \t")
    inner, quoted = _unquoted(pair_value)
    if not inner or inner.find(PREFIX_SEPARATOR) >= 0:
        return None
    inner = route + PREFIX_SEPARATOR + inner
    return name + b"=" + (b'"' + inner + b'"' if quoted else inner) + sep + attributes


# --- the strategies (hooks used by the router) ----------------------------------------------


class StickyStrategy(ExchangeHooks):
    """An ExchangeHooks that also says which node a request is pinned to.

    The cookie a request carries is looked up once (``node_for``, when the
    router chooses) and remembered on the request itself
    (``RequestHead.sticky_memo``) for the hooks of the same exchange.
    """

    def __init__(self, cookie_name: bytes) -> None:
        self._name = cookie_name
        self._needle = cookie_name + b"="

    def node_for(self, request: RequestHead) -> str | None:
        """The configured node name the request is pinned to, or None (a new user)."""
        return None

    def forget(self, request: RequestHead) -> None:
        """The exchange of ``request`` ended (nothing is kept beyond the request now)."""

    def _cookie(self, request: RequestHead) -> bytes | None:
        memo = request.sticky_memo
        if memo is not None and memo[0] is self._name:
            return memo[1]
        value = _find_pair(request.headers, self._needle)
        request.sticky_memo = (self._name, value)
        return value


class LbCookie(StickyStrategy):
    rewrites_requests = True  # request() strips our cookie
    rewrites_responses = True  # response() sets it when the route changes
    appends_to_responses = True  # response() adds Set-Cookie, nothing else

    def __init__(self, cfg: Config, key: bytes) -> None:
        super().__init__(cfg.router.cookie_name.encode())
        self._nodes = token_table(key, cfg.cluster.name, cfg.nodes)
        secure = cfg.router.tls_cert is not None
        self._tokens = {node: token for token, node in self._nodes.items()}
        self._set_cookie = {
            node: route_set_cookie(self._name, token, secure=secure)
            for node, token in self._tokens.items()
        }

    # The memo test of _cookie is repeated inline below: these run for every request.

    def node_for(self, request: RequestHead) -> str | None:
        memo = request.sticky_memo
        if memo is not None and memo[0] is self._name:
            token = memo[1]
        else:  # the first lookup for this request (the router's choice): _cookie, inlined
            needle = self._needle
            for key, value in request.headers:
                if value.find(needle) >= 0 and key.lower() == b"cookie":
                    token = self._cookie(request)
                    break
            else:
                token = None
                request.sticky_memo = (self._name, None)
        return self._nodes.get(token) if token is not None else None

    def request(self, request: RequestHead, backend: NodeConfig, headers: list[Header]) -> None:
        memo = request.sticky_memo
        token = memo[1] if memo is not None and memo[0] is self._name else self._cookie(request)
        if token is not None:
            without_cookie(headers, self._name)  # the app has no use for our cookie

    def leaves_request(self, request: RequestHead) -> bool:
        memo = request.sticky_memo
        token = memo[1] if memo is not None and memo[0] is self._name else self._cookie(request)
        return token is None

    def response(
        self, request: RequestHead, backend: NodeConfig, status: int, headers: list[Header]
    ) -> None:
        memo = request.sticky_memo
        token = memo[1] if memo is not None and memo[0] is self._name else self._cookie(request)
        # Set only when the route changes: no cookie, another node's, or an untrusted one.
        node = backend.name
        if token != self._tokens.get(node):
            headers.append((b"Set-Cookie", self._set_cookie[node]))


class AppCookieSuffix(StickyStrategy):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.router.app_cookie_name.encode())
        self._param = self._name.lower()
        self._nodes = routes(cfg.nodes)

    def node_for(self, request: RequestHead) -> str | None:
        for session in (
            find_cookie(request.headers, self._name),
            path_session_id(request.target, self._param),
        ):
            route = suffix_route(session) if session else None
            if route is not None and (node := self._nodes.get(route)) is not None:
                return node
        return None


class AppCookiePrefix(StickyStrategy):
    rewrites_requests = True  # request() strips the route prefixes
    rewrites_responses = True  # response() prefixes the app's session cookie

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg.router.app_cookie_name.encode())
        self._nodes = routes(cfg.nodes)
        self._routes = {node.name: node.route_name.encode() for node in cfg.nodes}

    def node_for(self, request: RequestHead) -> str | None:
        session = self._cookie(request)
        split = split_prefix(session) if session else None
        return self._nodes.get(split[0]) if split is not None else None

    def request(self, request: RequestHead, backend: NodeConfig, headers: list[Header]) -> None:
        if self._cookie(request) is not None:
            strip_prefixes(headers, self._name)

    def leaves_request(self, request: RequestHead) -> bool:
        return self._cookie(request) is None

    def response(
        self, request: RequestHead, backend: NodeConfig, status: int, headers: list[Header]
    ) -> None:
        route = self._routes[backend.name]
        for index, (key, value) in enumerate(headers):
            if key.lower() == b"set-cookie":
                rewritten = prefix_set_cookie(value, self._name, route)
                if rewritten is not None:
                    headers[index] = (key, rewritten)


def routes(nodes: Iterable[NodeConfig]) -> Mapping[bytes, str]:
    """route (as it appears in cookies) -> node name."""
    return {node.route_name.encode(): node.name for node in nodes}


def strategy_for(cfg: Config, key: bytes | None) -> StickyStrategy | None:
    """The configured strategy; None for ``sticky = "none"``. ``key``: lb-cookie's secret."""
    sticky = cfg.router.sticky
    if sticky is Sticky.LB_COOKIE:
        if key is None:
            raise ValueError("lb-cookie needs the cluster secret")
        return LbCookie(cfg, key)
    if sticky is Sticky.APP_COOKIE_SUFFIX:
        return AppCookieSuffix(cfg)
    if sticky is Sticky.APP_COOKIE_PREFIX:
        return AppCookiePrefix(cfg)
    return None
