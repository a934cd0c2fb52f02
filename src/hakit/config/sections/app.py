"""``[app]`` (and ``[app.health]``, how the app's state is learnt), ``[health]``, ``[failover]``."""

from __future__ import annotations

import enum
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from hakit.config.problems import error_at_key
from hakit.config.sections.base import _Section
from hakit.config.values import (
    FENCE_PLACEHOLDERS,
    PLACEHOLDERS,
    Argv,
    Command,
    Duration,
    PositiveDuration,
    format_duration,
    mask_password,
    placeholder_problem,
    sqlite_path,
)


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
        return cls.supported_database(value)

    @staticmethod
    def supported_database(value: str) -> str:
        """``value`` when it is a database URL hakit knows, else ValueError with the fix."""
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
