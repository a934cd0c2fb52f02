"""hakit.toml's schema: one frozen pydantic model per section, and ``Config``.

Field names here are the TOML keys. Checks within one section live in the
models (so a section built in Python is coherent too); checks across sections
(node count per mode, unique names/routes/ports, router address) live in
hakit.config.check, run by the loader (hakit.config.loader), so tests may build
small configs in Python freely. The value types the fields use (durations,
sizes, commands, the enums) are in hakit.config.values.

Example (see examples/ for complete files)::

    [cluster]
    name = "demo"
    mode = "cold-standby"
    storage = "shared"
    state_dir = "/var/lib/hakit"

    [app]
    start = ["python", "-m", "hakit.demo", "--port", "{port}"]
    home = "/srv/app/home"
    database_url = "sqlite:////srv/app/app.db"

    [[nodes]]
    name = "node1"
    host = "127.0.0.1"
    port = 8101
    route = "n1"
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import json
import re
from email.utils import parseaddr
from pathlib import Path
from types import UnionType
from typing import Annotated, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hakit.config.problems import describe_value, error_at_key
from hakit.config.values import (
    FENCE_PLACEHOLDERS,
    PLACEHOLDERS,
    AccessLogFormat,
    Argv,
    Balance,
    ByteCount,
    Command,
    Duration,
    Mode,
    PositiveDuration,
    Size,
    Sticky,
    StickyDown,
    Storage,
    TcpCheck,
    format_duration,
    mask_password,
    parse_listen,
    placeholder_problem,
    sqlite_path,
)
from hakit.coord.registry import names as backend_names
from hakit.coord.sqlite import SqliteSection, store_path
from hakit.coord.zookeeper import ZooKeeperSection
from hakit.history.kinds import NOTIFY_EVENTS as _NOTIFY_SELECTABLE

_NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_ROUTE = r"^[A-Za-z0-9_-]*$"
_COOKIE_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an RFC 6265 token
PATTERN_HINTS = {
    _NODE_NAME: "a name starting with a letter or digit, then letters, digits, '_', '.' or '-'",
    _ROUTE: "letters, digits, '_' or '-' only (the route goes into cookies)",
    _COOKIE_NAME: "a cookie name: letters, digits and !#$%&'*+-.^_`|~ only",
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: object, info: ValidationInfo) -> object:
        """Integers and booleans as TOML writes them: pydantic would take port = "8080",
        8080.0 or true for an integer and "yes" for a boolean; a config file means what
        it says, so those are mistakes."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if get_origin(annotation) in (Union, UnionType):  # int | None
            annotation = next(iter(set(get_args(annotation)) - {type(None)}), None)
        if value is None:
            return value
        if annotation is bool and not isinstance(value, bool):
            raise ValueError(f"got {describe_value(value)}; expected true or false")
        if annotation is int and type(value) is not int:
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                hint = f" (write {value.strip()} without quotes)"
            raise ValueError(f"got {describe_value(value)}; expected an integer{hint}")
        return value


# --- sections ---------------------------------------------------------------


class ClusterConfig(_Section):
    name: str = Field(default="hakit", min_length=1)
    mode: Mode = Mode.COLD_STANDBY
    storage: Storage = Storage.SHARED
    # Coordination database, per-node app logs and pid files live here.
    # Relative paths are resolved against the config file's directory.
    state_dir: Path = Path("hakit-state")


class CoordinationConfig(_Section):
    """``[coordination]``: the lease timers, which backend (hakit.coord.registry), and
    each backend's own table (``[coordination.sqlite]``, its model in the backend's
    module). A table for a backend that is not selected is ignored."""

    backend: str = "sqlite"  # a name in hakit.coord.registry.BACKENDS
    path: Path | None = None  # the older spelling of [coordination.sqlite] path
    lease_ttl: PositiveDuration = 3.0  # leader lease time to live
    renew_interval: PositiveDuration = 1.0  # must be well below lease_ttl
    sqlite: SqliteSection = SqliteSection()
    zookeeper: ZooKeeperSection = ZooKeeperSection()

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        known = backend_names()
        expected = (
            json.dumps(known[0])
            if len(known) == 1
            else "one of " + ", ".join(json.dumps(name) for name in known)
        )
        if value in known:
            return value
        if value == "etcd":
            raise ValueError(f"etcd is not supported yet (it comes later); expected {expected}")
        raise ValueError(f"{json.dumps(value)} is not a backend; expected {expected}")

    @model_validator(mode="after")
    def _one_sqlite_path(self) -> CoordinationConfig:
        if self.path is not None and self.sqlite.path is not None:
            raise error_at_key(
                "path",
                "given twice, here and in [coordination.sqlite]; expected only "
                "[coordination.sqlite] path",
            )
        return self

    @model_validator(mode="after")
    def _zookeeper_session_outlasts_the_lease(self) -> CoordinationConfig:
        # A ZooKeeper lease ends with its holder's session (hakit.coord.zookeeper).
        if self.backend == "zookeeper" and self.zookeeper.session_timeout < self.lease_ttl:
            raise error_at_key(
                "zookeeper",
                f"session_timeout {format_duration(self.zookeeper.session_timeout)} is shorter "
                f"than lease_ttl {format_duration(self.lease_ttl)}; expected session_timeout >= "
                "lease_ttl (a lease is bound to its holder's ZooKeeper session)",
            )
        return self

    def section(self, backend: str) -> BaseModel:
        """Backend ``backend``'s table, as its opener takes it."""
        if backend == "sqlite" and self.sqlite.path is None and self.path is not None:
            return self.sqlite.model_copy(update={"path": self.path})
        found = getattr(self, backend)
        assert isinstance(found, BaseModel)
        return found

    @model_validator(mode="after")
    def _renewal_fits_in_lease(self) -> CoordinationConfig:
        # The agent renews every renew_interval; if one renewal is lost (a slow
        # disk, a busy machine) the next one must still land before the lease
        # expires, or the active node fences itself for nothing.
        if self.renew_interval * 2 >= self.lease_ttl:
            raise error_at_key(
                "renew_interval",
                f"{format_duration(self.renew_interval)} is too close to lease_ttl "
                f"{format_duration(self.lease_ttl)}; expected renew_interval * 2 < lease_ttl "
                '(e.g. renew_interval = "1s" with lease_ttl = "3s") so that the lease '
                "survives one missed renewal",
            )
        return self


class HealthCheckConfig(_Section):
    """How the agent learns the app's state. Exactly one way is chosen:

    - ``status_url``: speaks the /status contract (hakit.contract);
    - ``url`` with ``expect_status`` and/or ``expect_body`` (regex): any health page;
      a match means RUNNING, anything else ERROR;
    - ``command``: exit 0 means RUNNING; otherwise a contract state name printed on
      stdout is taken as the state, else ERROR.

    ``{host}`` and ``{port}`` are replaced with the node's values.
    """

    status_url: str | None = None
    url: str | None = None
    expect_status: int | None = Field(default=None, ge=100, le=599)
    expect_body: str | None = None
    command: Argv | None = None

    @field_validator("status_url", "url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parts = urlsplit(value)
            except ValueError:
                parts = urlsplit("")
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"{json.dumps(value)} is not an HTTP URL; expected e.g. "
                    '"http://{host}:{port}/status"'
                )
        return value

    @field_validator("expect_body")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(
                    f"{json.dumps(value)} is not a valid regular expression ({error}); "
                    'expected a Python regex such as "RUNNING|OK"'
                ) from None
        return value

    @model_validator(mode="after")
    def _exactly_one_way(self) -> HealthCheckConfig:
        ways = [
            name for name in ("status_url", "url", "command") if getattr(self, name) is not None
        ]
        expected = (
            "expected exactly one of status_url (the /status contract), "
            "url (with expect_status and/or expect_body) or command"
        )
        if not ways:
            raise error_at_key("", f"no health check chosen; {expected}")
        if len(ways) > 1:
            raise error_at_key(ways[1], f"{ways[0]} and {ways[1]} are both set; {expected}")
        if self.url is None:
            for name in ("expect_status", "expect_body"):
                if getattr(self, name) is not None:
                    raise error_at_key(
                        name, f"only applies to url, but {ways[0]} is used; expected it with url"
                    )
        return self


# Without [app.health]: the /status contract (hakit.contract) on the node's port.
DEFAULT_HEALTH_CHECK = HealthCheckConfig(status_url="http://{host}:{port}/status")


class AppConfig(_Section):
    # argv list (no shell) or a string (run with /bin/sh -c). The PLACEHOLDERS are
    # substituted in start, stop and the env values.
    start: Command = Field(
        description='the command that starts the app: a list such as ["./bin/start", '
        '"--port", "{port}"] or one shell string'
    )
    stop: Command | None = None  # default: SIGTERM to the process group
    env: dict[str, str] = Field(default_factory=dict)
    home: Path = Field(description="the app's home directory (relative to this file)")
    # Optional: left out (or "", or None from Python) means no database: no database
    # check, no session fencing, and {database_url} substitutes to "". A str, not None, so
    # that every user of it (substitution, messages) keeps working unchanged.
    database_url: str = Field(
        default="",
        description='the app database: "sqlite:///PATH", "postgresql://USER@HOST/DB" or '
        '"mysql://USER:PASSWORD@HOST/DB" (mariadb:// too)',
    )
    startup_timeout: PositiveDuration = 120.0
    stop_timeout: Duration = 30.0
    health: HealthCheckConfig = DEFAULT_HEALTH_CHECK

    @field_validator("start", "stop")
    @classmethod
    def _command_placeholders(cls, value: tuple[str, ...] | str | None) -> object:
        parts = (value,) if isinstance(value, str) else value or ()
        for index, part in enumerate(parts):
            problem = placeholder_problem(part, PLACEHOLDERS)
            if problem is not None:
                raise ValueError(problem if isinstance(value, str) else f"item {index}: {problem}")
        return value

    @field_validator("env")
    @classmethod
    def _env_placeholders(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            problem = placeholder_problem(text, PLACEHOLDERS)
            if problem is not None:
                raise error_at_key(name, problem)
        return value

    @field_validator("database_url", mode="before")
    @classmethod
    def _no_database(cls, value: object) -> object:
        return "" if value is None else value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        expected = (
            'expected "sqlite:///PATH", "postgresql://USER@HOST/DATABASE" or '
            '"mysql://USER:PASSWORD@HOST/DATABASE" (or mariadb://), or no database_url at all'
        )
        if value == "":
            return value  # no database
        shown = json.dumps(mask_password(value))
        scheme = value.partition(":")[0]
        if scheme in ("postgresql", "postgres", "mysql", "mariadb"):
            if not value.startswith(f"{scheme}://"):
                raise ValueError(f"{shown} is not a URL; {expected}")
            if scheme in ("mysql", "mariadb"):  # one host (libpq's URLs may list several)
                try:
                    _ = urlsplit(value).port  # raises for a port that is no number or too big
                except ValueError:
                    raise ValueError(f"{shown} has an invalid port; {expected}") from None
            return value
        if scheme == "sqlite":
            path = sqlite_path(value)
            if path is None:
                raise ValueError(
                    f"{shown} needs three slashes; expected sqlite:///relative/path "
                    "or sqlite:////absolute/path"
                )
            if path in ("", ":memory:"):
                raise ValueError(f"{shown} names no file; {expected} (a file both nodes use)")
            return value
        what = f"scheme {json.dumps(scheme)} is not supported" if scheme != value else "no scheme"
        raise ValueError(f"{shown}: {what}; {expected}")


class HealthConfig(_Section):
    interval: PositiveDuration = 1.0  # between /status probes
    probe_timeout: PositiveDuration = 2.0  # one probe's own deadline
    timeout: PositiveDuration = 30.0  # patience: failures must span at least this long
    fall: int = Field(default=3, ge=1)  # consecutive failures before a node counts as failed
    rise: int = Field(default=2, ge=1)  # consecutive successes before it counts as healthy

    @model_validator(mode="after")
    def _patience_covers_a_probe(self) -> HealthConfig:
        if self.timeout < self.interval:
            raise error_at_key(
                "timeout",
                f"{format_duration(self.timeout)} is shorter than interval "
                f"{format_duration(self.interval)}; expected timeout >= interval "
                "(failures must span at least one probe interval before they count)",
            )
        return self


class OnFailedStart(enum.StrEnum):
    """What an active node does once its app failed to start ``restart_attempts`` times
    in a row (it never reached RUNNING within startup_timeout, or exited while starting)."""

    ALERT = "alert"  # stop trying; alert "manual intervention required"; no failover
    FAILOVER = "failover"  # step down so a standby tries (once: not back and forth)


AUTO_FAILBACK_UNSUPPORTED = (
    "automatic failback is not supported: a failed node stays standby; move it back with "
    "hakit switchover"
)


class FailoverConfig(_Section):
    restart_attempts: int = Field(default=2, ge=0)
    failure_window: PositiveDuration = 600.0  # failures older than this are forgotten
    # Only false is accepted: a failed node coming back never takes the active role on its
    # own (no automatic failback). The key is kept so files saying so explicitly stay valid.
    auto_failback: bool = False
    # After restart_attempts failed starts: "alert" (default: another node would most
    # likely fail the same way, e.g. a bad shared config) or "failover" (node-local causes).
    on_failed_start: OnFailedStart = OnFailedStart.ALERT
    # How long a promotion waits for the fence command of an unreachable old active.
    fence_timeout: PositiveDuration = 10.0
    # STONITH (hakit.fencing.fence): run before a standby promotes over an EXPIRED lease, against
    # its old holder; argv, {node} and {host} of that node substituted; exit 0 = fenced.
    fence_command: Argv | None = None
    # On such a promotion, terminate the old node's PostgreSQL sessions
    # (application_name "hakit-<node>"; the agent sets PGAPPNAME for the app).
    fence_database_sessions: bool = False
    # Worst-case recovery wanted. When set, the loader derives the timers the file
    # leaves out from it (hakit.config.timing); `hakit config check` shows the arithmetic.
    recovery_target: PositiveDuration | None = None

    @field_validator("auto_failback")
    @classmethod
    def _no_auto_failback(cls, value: bool) -> bool:
        if value:
            raise ValueError(f"{AUTO_FAILBACK_UNSUPPORTED} (expected false, or leave it out)")
        return value

    @field_validator("fence_command")
    @classmethod
    def _fence_placeholders(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for part in value or ():
            problem = placeholder_problem(part, FENCE_PLACEHOLDERS, "the node to fence; ")
            if problem is not None:
                raise ValueError(problem)
        return value


class RouterConfig(_Section):
    listen: str = "127.0.0.1:8080"  # host:port
    sticky: Sticky = Sticky.LB_COOKIE
    cookie_name: str = Field(default="ROUTEID", pattern=_COOKIE_NAME)
    app_cookie_name: str = Field(default="JSESSIONID", pattern=_COOKIE_NAME)
    retry_after: Duration = 30.0  # Retry-After on the maintenance page
    # Requests not yet sent to any node wait this long for one during a failover or
    # switchover before the maintenance page (0: no hold, the 503 page at once).
    hold_timeout: Duration = Field(
        default=15.0,
        description="how long requests not yet sent to any node wait for one "
        "during a failover or switchover before the maintenance page (0s: no hold)",
    )
    # A held request's body is read into memory up to this; larger: the 503 page at once.
    hold_body_limit: Size = Field(
        default=ByteCount(1 << 20),
        description="the largest request body the router holds in memory while it waits for "
        'a node during a failover or switchover (e.g. "1MiB"); larger bodies get the 503 page '
        "at once (not processed, please resend)",
    )
    state_poll_interval: PositiveDuration = 0.1  # how often the router reads the coordination store
    # --- stickiness and balancing (the router issue) ---
    # HMAC key for the lb-cookie; None: generated once into <state_dir>/router.secret (0600).
    secret: str | None = Field(default=None, min_length=16)
    sticky_down: StickyDown = StickyDown.MOVE
    sticky_hold: Duration = 10.0  # with sticky_down = "hold"
    drain_timeout: Duration = 300.0  # a draining node keeps its sticky users this long at most
    balance: Balance = Balance.LEAST_OUTSTANDING
    slowstart: Duration = 0.0  # a node coming back ramps its share of new users over this long
    # --- the router's own health checks of each node's /status (shared with the manager) ---
    check_interval: PositiveDuration = 1.0
    # --- limits and timeouts (Apache-like defaults) ---
    max_header_fields: int = Field(default=100, ge=1)
    max_header_bytes: int = Field(default=8190, ge=256)  # one request line or header field
    header_timeout: PositiveDuration = 10.0  # whole request head must arrive within (slowloris)
    body_idle_timeout: PositiveDuration = 30.0  # no request body byte for this long -> 408
    connect_timeout: PositiveDuration = 5.0  # to a backend
    response_timeout: PositiveDuration = 300.0  # backend's response head must start within
    client_idle_timeout: PositiveDuration = 60.0  # keep-alive client connection with no request
    # Peers whose X-Forwarded-For/Forwarded we extend; from anyone else they are overwritten.
    trusted_proxies: tuple[str, ...] = ()  # CIDRs, e.g. ["10.0.0.0/8"]
    # --- TLS termination (both files or neither) ---
    tls_cert: Path | None = None
    tls_key: Path | None = None
    redirect_http: str | None = None  # host:port answering 308 to https://
    # --- observability ---
    access_log: str | None = None  # a file path, "-" for stderr, None: off
    access_log_format: AccessLogFormat = AccessLogFormat.COMBINED
    admin_listen: str | None = None  # host:port serving /metrics and /nodes (Prometheus)

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("redirect_http", "admin_listen")
    @classmethod
    def _optional_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"{json.dumps(network)} is not an IP network; expected a CIDR such as "
                    '"10.0.0.0/8" or an address such as "192.0.2.7"'
                ) from None
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> RouterConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                "tls_cert and tls_key go together; expected both (TLS termination) or neither"
            )
        if self.redirect_http is not None and self.tls_cert is None:
            raise ValueError("redirect_http redirects to HTTPS; expected tls_cert and tls_key too")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        """``listen`` as (host, port); IPv6 brackets removed."""
        return parse_listen(self.listen)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies)


class TcpProxyConfig(_Section):
    """A plain TCP failover proxy for a dependency (e.g. several LDAP mirrors)."""

    name: str = Field(pattern=_NODE_NAME)
    listen: str  # host:port
    upstreams: tuple[str, ...] = Field(min_length=1)  # host:port, in order of preference
    check: TcpCheck = TcpCheck.TCP
    send: str = ""  # with check = "send-expect"; "\\r\\n" escapes as in TOML strings
    expect: str = ""  # regex the answer must match
    interval: PositiveDuration = 2.0
    timeout: PositiveDuration = 2.0
    fall: int = Field(default=3, ge=1)
    rise: int = Field(default=2, ge=1)
    failback: bool = False  # return to an earlier upstream when it is healthy again
    connect_timeout: PositiveDuration = 3.0

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for upstream in value:
            parse_listen(upstream)
        return value

    @field_validator("expect")
    @classmethod
    def _expect(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as error:
            raise ValueError(f"{json.dumps(value)} is not a valid regex ({error})") from None
        return value

    @model_validator(mode="after")
    def _send_expect(self) -> TcpProxyConfig:
        # Without a pattern a send-expect check only tests the connect: say so, not pass.
        if self.check is TcpCheck.SEND_EXPECT and not self.expect:
            raise error_at_key(
                "expect",
                'check = "send-expect" needs expect (a regex the answer must match); '
                'expected e.g. expect = "^220 " or check = "tcp"',
            )
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        return parse_listen(self.listen)

    @property
    def upstream_addresses(self) -> tuple[tuple[str, int], ...]:
        return tuple(parse_listen(u) for u in self.upstreams)


# Alert kinds [notify] events may select: the policy's Alert kinds, plus two that
# group them (hakit.history.kinds.NotifyGroup), in the order they are listed; the
# defaults are the ones hakit.history.kinds.NOTIFY_EVENTS marks selected.
NOTIFY_EVENTS = tuple(str(name) for name in _NOTIFY_SELECTABLE)
DEFAULT_NOTIFY_EVENTS = tuple(str(name) for name, on in _NOTIFY_SELECTABLE.items() if on)
_HEADER_NAME = _COOKIE_NAME  # both are RFC 7230 tokens


def _check_mail_address(value: str) -> str:
    address = parseaddr(value)[1]
    if "@" not in address or any(c in value for c in "\r\n") or " " in address:
        raise ValueError(
            f"{json.dumps(value)} is not an e-mail address; expected e.g. "
            '"ops@example.com" or "Ops <ops@example.com>"'
        )
    return value


def _check_mail_list(value: object) -> object:
    if isinstance(value, str):
        raise ValueError(f"got a string; expected a list such as {json.dumps([value])}")
    return value


MailAddress = Annotated[str, AfterValidator(_check_mail_address)]


class NotifyConfig(_Section):
    """Where alerts go besides the log: a webhook (JSON POST) and/or e-mail (SMTP)."""

    webhook_url: str | None = None
    webhook_timeout: PositiveDuration = 5.0  # one attempt's deadline
    webhook_retries: int = Field(default=3, ge=0)  # after connection errors and 5xx
    webhook_headers: dict[str, str] = Field(default_factory=dict)  # e.g. an auth token
    smtp_host: str | None = Field(default=None, min_length=1)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_timeout: PositiveDuration = 10.0  # one SMTP conversation's socket deadline
    mail_from: MailAddress | None = None
    mail_to: Annotated[tuple[MailAddress, ...], BeforeValidator(_check_mail_list)] = ()
    events: tuple[str, ...] = DEFAULT_NOTIFY_EVENTS  # which alerts the webhook and e-mail get

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parts = urlsplit(value)
            except ValueError:
                parts = urlsplit("")
            if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
                raise ValueError(
                    f"{json.dumps(value)} is not an HTTP URL; expected e.g. "
                    '"https://hooks.example.com/hakit"'
                )
        return value

    @field_validator("webhook_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.match(_HEADER_NAME, name):
                raise ValueError(
                    f"{json.dumps(name)} is not a header name; expected letters, digits "
                    'and -, e.g. { Authorization = "Bearer ..." }'
                )
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of {name} contains a line break; expected one line")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in NOTIFY_EVENTS:
                close = difflib.get_close_matches(name, NOTIFY_EVENTS, n=1)
                hint = f"did you mean {json.dumps(close[0])}? " if close else ""
                raise ValueError(
                    f"{json.dumps(name)} is not an alert kind; {hint}expected some of: "
                    + ", ".join(NOTIFY_EVENTS)
                )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> NotifyConfig:
        if self.mail_to and self.smtp_host is None:
            raise error_at_key(
                "mail_to",
                "e-mail needs an SMTP server, but smtp_host is not set; expected "
                'smtp_host = "mail.example.com" too (or no mail_to)',
            )
        if self.smtp_host is not None and not self.mail_to:
            raise error_at_key(
                "smtp_host",
                'e-mail has no recipients; expected mail_to = ["ops@example.com"] too',
            )
        if self.smtp_host is not None and self.mail_from is None:
            raise error_at_key(
                "mail_from",
                'required with smtp_host; expected the sender, e.g. mail_from = "hakit@example.com"',
            )
        if (self.smtp_user is None) != (self.smtp_password is None):
            given = "smtp_user" if self.smtp_user is not None else "smtp_password"
            raise error_at_key(
                given, "smtp_user and smtp_password go together; expected both or neither"
            )
        if self.webhook_headers and self.webhook_url is None:
            raise error_at_key(
                "webhook_headers", "only applies to webhook_url, which is not set; expected both"
            )
        return self


class NodeConfig(_Section):
    name: str = Field(pattern=_NODE_NAME, description='the node\'s name, e.g. "node1"')
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(ge=1, le=65535, description="the TCP port the node's app listens on")
    route: str = Field(default="", pattern=_ROUTE)  # default: the node name
    admin_port: int | None = Field(default=None, ge=1, le=65535)  # the agent's admin API
    # Tags such as "nofailover"; `nofailover = true` says the same. Such a node never
    # becomes active (a reporting replica, a node in another site...).
    tags: tuple[str, ...] = ()
    nofailover: bool = False

    @property
    def route_name(self) -> str:
        return self.route or self.name

    @property
    def no_failover(self) -> bool:
        """This node never takes the leader lease (``nofailover`` flag or tag)."""
        return self.nofailover or "nofailover" in self.tags


MIN_TOKEN_LENGTH = 16  # the admin API's bearer token, in the file or in token_file


class AdminConfig(_Section):
    """The agents' admin API (``nodes.admin_port``): a bearer token guards every endpoint.

    ``token`` in the file, or ``token_file`` naming a file that holds it (first
    line; relative to this file), so the config can be shared without the secret.
    """

    token: str | None = Field(
        default=None,
        min_length=MIN_TOKEN_LENGTH,
        description="a long random secret, such as the output of `openssl rand -hex 32`",
    )
    token_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> AdminConfig:
        if self.token is not None and self.token_file is not None:
            raise error_at_key(
                "token_file", "token and token_file are both set; expected one of them"
            )
        return self


class Config(_Section):
    cluster: ClusterConfig = ClusterConfig()
    coordination: CoordinationConfig = CoordinationConfig()
    app: AppConfig = Field(description="an [app] table with start, home and database_url")
    health: HealthConfig = HealthConfig()
    failover: FailoverConfig = FailoverConfig()
    router: RouterConfig = RouterConfig()
    tcp_proxy: tuple[TcpProxyConfig, ...] = ()
    notify: NotifyConfig = NotifyConfig()
    admin: AdminConfig = AdminConfig()
    nodes: tuple[NodeConfig, ...] = Field(
        description="at least one [[nodes]] table with name and port"
    )
    # The file this was loaded from (set by the loader, not a TOML key).
    source: Path | None = Field(default=None, exclude=True)
    # How the loader derived timers from failover.recovery_target (hakit.config.timing), for
    # display.
    derived: tuple[str, ...] = Field(default=(), exclude=True)

    def node(self, name: str) -> NodeConfig:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node named {name!r} in the config (known: {known})")

    @property
    def coordination_path(self) -> Path:
        section = self.coordination.section("sqlite")
        assert isinstance(section, SqliteSection)
        return store_path(section, self.cluster.state_dir)
