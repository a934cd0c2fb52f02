"""Sticky sessions: cookie parsing, signing and rewriting (pure), and the cluster secret."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from hakit.config import AppConfig, ClusterConfig, Config, NodeConfig, RouterConfig, Sticky
from hakit.errors import HakitError
from hakit.router.headers import Body, Header, RequestHead
from hakit.router.hooks import ExchangeHooks
from hakit.router.secret import SECRET_FILE, cluster_secret, load_or_create
from hakit.router.sticky import (
    AppCookiePrefix,
    AppCookieSuffix,
    LbCookie,
    StickyStrategy,
    cookie_pairs,
    find_cookie,
    path_session_id,
    prefix_set_cookie,
    route_token,
    split_prefix,
    strategy_for,
    strip_prefixes,
    suffix_route,
    token_table,
    without_cookie,
)

KEY = b"k" * 32


def config(sticky: Sticky = Sticky.LB_COOKIE, tmp: Path | None = None, **router: object) -> Config:
    return Config(
        cluster=ClusterConfig(name="prod", state_dir=tmp or Path("/nonexistent")),
        app=AppConfig(start="true", home="/srv/home", database_url="sqlite:////srv/app.db"),
        router=RouterConfig(sticky=sticky, **router),  # type: ignore[arg-type]
        nodes=(
            NodeConfig(name="node1", port=8101, route="n1"),
            NodeConfig(name="node2", port=8102, route="n2"),
            NodeConfig(name="node3", port=8103),  # route: its name
        ),
    )


def request(*cookies: str, target: bytes = b"/") -> RequestHead:
    headers: list[Header] = [(b"Host", b"app")]
    headers += [(b"Cookie", cookie.encode("latin-1")) for cookie in cookies]
    return RequestHead(b"GET", target, "1.1", tuple(headers), True, Body.NONE, 0, b"", "192.0.2.1")


NODE1, NODE2 = config().nodes[0], config().nodes[1]


# --- cookie headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "pairs"),
    [
        (b"a=1", [(b"a", b"1")]),
        (b"a=1; b=2;c=3", [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")]),
        (b" a = 1 ;; b=x=y ", [(b"a", b"1"), (b"b", b"x=y")]),  # '=' inside a value is kept
        (b"flag; a=", [(b"", b"flag"), (b"a", b"")]),
        (b"", []),
    ],
)
def test_cookie_pairs(value: bytes, pairs: list[tuple[bytes, bytes]]) -> None:
    assert cookie_pairs(value) == pairs


def test_find_cookie_over_several_headers_is_case_sensitive() -> None:
    headers = [(b"cookie", b"routeid=lower; X=1"), (b"Cookie", b"ROUTEID=upper; ROUTEID=second")]
    assert find_cookie(headers, b"ROUTEID") == b"upper"
    assert find_cookie(headers, b"routeid") == b"lower"
    assert find_cookie(headers, b"XROUTEID") is None
    assert find_cookie([(b"X-Cookie", b"ROUTEID=no")], b"ROUTEID") is None  # only Cookie counts
    assert find_cookie([(b"Cookie", b"a=ROUTEID=1;ROUTEID= x ")], b"ROUTEID") == b"x"
    assert find_cookie([(b"Cookie", b"a=ROUTEID=1")], b"ROUTEID") is None  # inside a value


def test_without_cookie_keeps_the_others_in_order() -> None:
    headers: list[Header] = [
        (b"Host", b"app"),
        (b"Cookie", b"a=1; ROUTEID=x; b=2; ROUTEID=y"),
        (b"Cookie", b"ROUTEID=z"),  # nothing left: the header goes
        (b"X-Other", b"ROUTEID=kept"),
    ]
    without_cookie(headers, b"ROUTEID")
    assert headers == [(b"Host", b"app"), (b"Cookie", b"a=1; b=2"), (b"X-Other", b"ROUTEID=kept")]


@pytest.mark.parametrize(
    ("value", "left"),
    [
        (b"ROUTEID=x; b=2", b"b=2"),
        (b"a=1;ROUTEID=x;b=2", b"a=1; b=2"),
        (b"a=1; ROUTEID=x", b"a=1"),
        (b"a=ROUTEID=1; ROUTEID=x", b"a=ROUTEID=1"),  # only the pair named ROUTEID
        (b"ROUTEID=x;ROUTEID=y; c=3", b"c=3"),
        (b"XROUTEID=1", b"XROUTEID=1"),
    ],
)
def test_without_cookie_cases(value: bytes, left: bytes) -> None:
    headers: list[Header] = [(b"Cookie", value)]
    without_cookie(headers, b"ROUTEID")
    assert headers == [(b"Cookie", left)]


# --- lb-cookie ---------------------------------------------------------------------------------


def test_route_token_is_opaque_and_bound_to_key_cluster_and_route() -> None:
    token = route_token(KEY, "prod", "n1")
    assert len(token) == 16 and b"n1" not in token and b"=" not in token
    assert token.replace(b"-", b"").replace(b"_", b"").isalnum()  # base64url
    assert token == route_token(KEY, "prod", "n1")  # deterministic: one dict lookup per request
    others = {
        route_token(KEY, "prod", "n2"),
        route_token(b"j" * 32, "prod", "n1"),
        route_token(KEY, "test", "n1"),
    }
    assert token not in others and len(others) == 3


def test_token_table_maps_every_configured_route() -> None:
    table = token_table(KEY, "prod", config().nodes)
    assert sorted(table.values()) == ["node1", "node2", "node3"]
    assert table[route_token(KEY, "prod", "node3")] == "node3"  # default route: the name


VALID_N1 = route_token(KEY, "prod", "n1").decode()

LB_COOKIES = {
    "valid": ([f"ROUTEID={VALID_N1}"], "node1"),
    "valid among others": ([f"a=1; ROUTEID={VALID_N1}; b=2"], "node1"),
    "in a second Cookie header": (["a=1", f"ROUTEID={VALID_N1}"], "node1"),
    "no cookie": ([], None),
    "forged": (["ROUTEID=AAAAAAAAAAAAAAAA"], None),
    "plain route name": (["ROUTEID=.n1"], None),
    "stale: route no longer configured": (
        [f"ROUTEID={route_token(KEY, 'prod', 'n9').decode()}"],
        None,
    ),
    "stale: another secret": ([f"ROUTEID={route_token(b'j' * 32, 'prod', 'n1').decode()}"], None),
    "stale: another cluster": ([f"ROUTEID={route_token(KEY, 'test', 'n1').decode()}"], None),
    "malformed: empty": (["ROUTEID="], None),
    "malformed: truncated": ([f"ROUTEID={VALID_N1[:-1]}"], None),
    "malformed: padded": ([f"ROUTEID={VALID_N1}=="], None),
    "malformed: quoted": ([f'ROUTEID="{VALID_N1}"'], None),
    "malformed: binary": (["ROUTEID=\xff\x01\x00"], None),
    "other name": ([f"routeid={VALID_N1}"], None),
}


@pytest.mark.parametrize(("cookies", "node"), LB_COOKIES.values(), ids=LB_COOKIES.keys())
def test_lb_cookie_trusts_only_its_own_signature(cookies: list[str], node: str | None) -> None:
    assert LbCookie(config(), KEY).node_for(request(*cookies)) == node


def test_lb_cookie_is_stripped_before_the_app() -> None:
    strategy = LbCookie(config(), KEY)
    incoming = request(f"ROUTEID={VALID_N1}; s=1")
    headers = list(incoming.headers)
    strategy.request(incoming, NODE1, headers)
    assert headers == [(b"Host", b"app"), (b"Cookie", b"s=1")]


def set_cookies(headers: list[Header]) -> list[bytes]:
    return [value for key, value in headers if key == b"Set-Cookie"]


@pytest.mark.parametrize(
    ("cookies", "backend", "expected"),
    [
        ([], NODE1, True),  # a new user
        ([f"ROUTEID={VALID_N1}"], NODE1, False),  # the route did not change: not every response
        ([f"ROUTEID={VALID_N1}"], NODE2, True),  # moved
        (["ROUTEID=forged"], NODE1, True),  # never trusted: rewritten
    ],
)
def test_lb_cookie_is_set_only_when_the_route_changes(
    cookies: list[str], backend: NodeConfig, expected: bool
) -> None:
    headers: list[Header] = [(b"Content-Type", b"text/html"), (b"Set-Cookie", b"app=1")]
    LbCookie(config(), KEY).response(request(*cookies), backend, 200, headers)
    token = route_token(KEY, "prod", backend.route_name)
    ours = [b"ROUTEID=" + token + b"; Path=/; HttpOnly"] if expected else []
    assert set_cookies(headers) == [b"app=1", *ours]


def test_lb_cookie_is_a_session_cookie_and_secure_behind_tls(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    cfg = config(tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "c.pem")
    headers: list[Header] = []
    LbCookie(cfg, KEY).response(request(), NODE2, 200, headers)
    (value,) = set_cookies(headers)
    attributes = value.lower().split(b"; ")[1:]
    assert attributes == [b"path=/", b"httponly", b"secure"]  # no Expires / Max-Age


# --- app-cookie-suffix -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session", "route"),
    [
        (b"5E1F.n1", b"n1"),
        (b"a.b.n2", b"n2"),  # after the LAST dot
        (b"5E1F", None),
        (b"5E1F.", None),
        (b".n1", b"n1"),
    ],
)
def test_suffix_route(session: bytes, route: bytes | None) -> None:
    assert suffix_route(session) == route


@pytest.mark.parametrize(
    ("target", "value"),
    [
        (b"/app;jsessionid=AB.n1", b"AB.n1"),
        (b"/app;JSESSIONID=AB.n1?x=1", b"AB.n1"),  # the name is case-insensitive
        (b"/a;jsessionid=AB.n1/b.jsp", b"AB.n1"),
        (b"/a;jsessionid=AB.n2;other=1", b"AB.n2"),
        (b"/a;x=1;JSessionId=AB.n1#frag", b"AB.n1"),
        (b"/a?q=;jsessionid=AB.n1", None),  # in the query: not a path parameter
        (b"/a;jsessionid=", None),
        (b"/a;jsessionidx=AB.n1", None),
        (b"/plain", None),
    ],
)
def test_path_session_id(target: bytes, value: bytes | None) -> None:
    assert path_session_id(target, b"jsessionid") == value


SUFFIX = {
    "cookie": (["JSESSIONID=5E1F.n2"], b"/", "node2"),
    "route is the node name": (["JSESSIONID=5E1F.node3"], b"/", "node3"),
    "unknown route": (["JSESSIONID=5E1F.n9"], b"/", None),
    "no route": (["JSESSIONID=5E1F"], b"/", None),
    "path parameter": ([], b"/x;jsessionid=5E1F.n1?a=b", "node1"),
    "cookie wins over the path": (["JSESSIONID=5E1F.n2"], b"/x;jsessionid=5E1F.n1", "node2"),
    "path when the cookie has no known route": (
        ["JSESSIONID=5E1F"],
        b"/x;jsessionid=A.n1",
        "node1",
    ),
    "another cookie's suffix": (["OTHER=5E1F.n1"], b"/", None),
}


@pytest.mark.parametrize(("cookies", "target", "node"), SUFFIX.values(), ids=SUFFIX.keys())
def test_app_cookie_suffix_reads_the_route(
    cookies: list[str], target: bytes, node: str | None
) -> None:
    strategy = AppCookieSuffix(config(Sticky.APP_COOKIE_SUFFIX))
    assert strategy.node_for(request(*cookies, target=target)) == node


def test_app_cookie_suffix_rewrites_nothing() -> None:
    strategy = AppCookieSuffix(config(Sticky.APP_COOKIE_SUFFIX))
    headers: list[Header] = [(b"Cookie", b"JSESSIONID=5E1F.n1")]
    strategy.request(request(), NODE2, headers)
    out: list[Header] = [(b"Set-Cookie", b"JSESSIONID=77.n2; Path=/")]
    strategy.response(request("JSESSIONID=5E1F.n1"), NODE2, 200, out)
    assert headers == [(b"Cookie", b"JSESSIONID=5E1F.n1")]
    assert out == [(b"Set-Cookie", b"JSESSIONID=77.n2; Path=/")]


# --- app-cookie-prefix -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "split"),
    [
        (b"n1~5E1F", (b"n1", b"5E1F")),
        (b'"n1~5E1F"', (b"n1", b'"5E1F"')),
        (b"n1~a~b", (b"n1", b"a~b")),  # up to the first separator (HAProxy)
        (b"5E1F", None),
        (b"~5E1F", (b"", b"5E1F")),
    ],
)
def test_split_prefix(value: bytes, split: tuple[bytes, bytes] | None) -> None:
    assert split_prefix(value) == split


@pytest.mark.parametrize(
    ("value", "rewritten"),
    [
        (b"JSESSIONID=5E1F", b"JSESSIONID=n1~5E1F"),
        (
            b"JSESSIONID=5E1F; Path=/app; Secure; HttpOnly; SameSite=Lax",
            b"JSESSIONID=n1~5E1F; Path=/app; Secure; HttpOnly; SameSite=Lax",
        ),
        (b"JSESSIONID = 5E1F ;Path=/", b"JSESSIONID=n1~5E1F;Path=/"),
        (b'JSESSIONID="5E1F"; Path=/', b'JSESSIONID="n1~5E1F"; Path=/'),
        (b"JSESSIONID=; Path=/; Max-Age=0", None),  # a deletion: nothing to route
        (b"JSESSIONID=n2~5E1F; Path=/", None),  # prefixed already
        (b"OTHER=5E1F; Path=/", None),
        (b"jsessionid=5E1F", None),  # cookie names are case-sensitive
        (b"XJSESSIONID=5E1F", None),
        (b"garbage", None),
    ],
)
def test_prefix_set_cookie(value: bytes, rewritten: bytes | None) -> None:
    assert prefix_set_cookie(value, b"JSESSIONID", b"n1") == rewritten


def test_app_cookie_prefix_round_trip() -> None:
    strategy = AppCookiePrefix(config(Sticky.APP_COOKIE_PREFIX))
    out: list[Header] = [
        (b"Set-Cookie", b"theme=dark; Path=/"),
        (b"set-cookie", b"JSESSIONID=5E1F; Path=/; HttpOnly"),
        (b"Content-Type", b"text/html"),
    ]
    strategy.response(request(), NODE2, 200, out)
    assert out == [
        (b"Set-Cookie", b"theme=dark; Path=/"),
        (b"set-cookie", b"JSESSIONID=n2~5E1F; Path=/; HttpOnly"),
        (b"Content-Type", b"text/html"),
    ]
    # The browser sends it back: the route is read, and the app never sees the prefix.
    incoming = request("theme=dark; JSESSIONID=n2~5E1F; last=1", "JSESSIONID=n2~OTHER")
    assert strategy.node_for(incoming) == "node2"
    headers = list(incoming.headers)
    strategy.request(incoming, NODE2, headers)
    assert headers == [
        (b"Host", b"app"),
        (b"Cookie", b"theme=dark; JSESSIONID=5E1F; last=1"),
        (b"Cookie", b"JSESSIONID=OTHER"),
    ]


@pytest.mark.parametrize(
    ("cookie", "node", "app_sees"),
    [
        ("JSESSIONID=n1~5E1F", "node1", b"JSESSIONID=5E1F"),
        ('JSESSIONID="node3~5E1F"', "node3", b'JSESSIONID="5E1F"'),
        ("JSESSIONID=n9~5E1F", None, b"JSESSIONID=5E1F"),  # unknown route: stripped anyway
        ("JSESSIONID=5E1F", None, b"JSESSIONID=5E1F"),  # set before prefixing: left alone
        ("a=n1~x", None, b"a=n1~x"),  # other cookies untouched
        ("JSESSIONID=n1~A;JSESSIONID=n2~B", "node1", b"JSESSIONID=A;JSESSIONID=B"),
        ("a=JSESSIONID=n1~A; JSESSIONID=B", None, b"a=JSESSIONID=n1~A; JSESSIONID=B"),
    ],
)
def test_app_cookie_prefix_inbound(cookie: str, node: str | None, app_sees: bytes) -> None:
    strategy = AppCookiePrefix(config(Sticky.APP_COOKIE_PREFIX))
    incoming = request(cookie)
    assert strategy.node_for(incoming) == node
    headers = list(incoming.headers)
    strip_prefixes(headers, b"JSESSIONID")
    assert headers[1] == (b"Cookie", app_sees)


def test_strategy_for_each_setting() -> None:
    assert strategy_for(config(Sticky.NONE), None) is None
    assert isinstance(strategy_for(config(Sticky.LB_COOKIE), KEY), LbCookie)
    assert isinstance(strategy_for(config(Sticky.APP_COOKIE_SUFFIX), None), AppCookieSuffix)
    assert isinstance(strategy_for(config(Sticky.APP_COOKIE_PREFIX), None), AppCookiePrefix)
    with pytest.raises(ValueError):
        strategy_for(config(Sticky.LB_COOKIE), None)


def _overrides(cls: type, method: str) -> bool:
    """``cls`` or one of its bases below ExchangeHooks defines ``method`` itself."""
    for klass in cls.__mro__:
        if klass is ExchangeHooks:
            return False
        if method in vars(klass):
            return True
    return False


def _strategy_classes(cls: type = StickyStrategy) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_strategy_classes(sub)}
    return found


def test_every_strategy_declares_the_hooks_it_overrides() -> None:
    # The exchange calls request()/response() only when these flags say so: a strategy
    # that overrides one and forgets its flag would silently never rewrite anything.
    strategies = [strategy_for(config(s), KEY) for s in Sticky if s is not Sticky.NONE]
    assert {type(s) for s in strategies} == _strategy_classes()  # none left out
    for strategy in strategies:
        assert strategy is not None
        name = type(strategy).__name__
        assert strategy.rewrites_requests is _overrides(type(strategy), "request"), name
        assert strategy.rewrites_responses is _overrides(type(strategy), "response"), name
    plain = ExchangeHooks()
    assert plain.rewrites_requests is False and plain.rewrites_responses is False


def test_custom_cookie_names() -> None:
    cfg = config(Sticky.APP_COOKIE_SUFFIX, app_cookie_name="SID")
    assert AppCookieSuffix(cfg).node_for(request(target=b"/x;sid=1.n2")) == "node2"
    lb = LbCookie(config(cookie_name="SRV"), KEY)
    assert lb.node_for(request(f"SRV={VALID_N1}")) == "node1"
    assert lb.node_for(request(f"ROUTEID={VALID_N1}")) is None


# --- the cluster secret -------------------------------------------------------------------------


def test_secret_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / SECRET_FILE
    first = load_or_create(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create(path) == first
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temp files left


def test_configured_secret_wins_and_writes_nothing(tmp_path: Path) -> None:
    cfg = config(tmp=tmp_path, secret="s" * 20)
    assert cluster_secret(cfg) == b"s" * 20
    assert list(tmp_path.iterdir()) == []
    generated = cluster_secret(config(tmp=tmp_path))
    assert generated == (tmp_path / SECRET_FILE).read_bytes().strip()


def test_short_secret_file_is_refused_with_advice(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("short\n")
    with pytest.raises(HakitError, match="delete it"):
        load_or_create(tmp_path / SECRET_FILE)


def _race(path: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    start.wait(10)
    out.put(load_or_create(Path(path)))


def test_routers_starting_together_agree_on_one_secret(tmp_path: Path) -> None:
    """Real processes race to create the file; every one reads the same secret."""
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    path = tmp_path / SECRET_FILE
    for attempt in range(5):  # several rounds: each is a fresh race
        if path.exists():
            path.unlink()
        procs = [context.Process(target=_race, args=(str(path), start, out)) for _ in range(6)]
        try:
            for proc in procs:
                proc.start()
            start.set()
            secrets = {out.get(timeout=10) for _ in procs}
        finally:
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            start.clear()
        assert secrets == {path.read_bytes().strip()}, f"round {attempt}"
        assert sorted(os.listdir(tmp_path)) == [SECRET_FILE]
