"""hakit.toml's values: durations, sizes, addresses, commands, placeholders, the enums.

Each reader raises ``ValueError`` with a sentence saying what was expected; the
sections (hakit.config.schema) use them as pydantic validators.
"""

from __future__ import annotations

import difflib
import enum
import json
import math
import re
import string
from collections.abc import Mapping
from typing import Annotated, Final, NewType

from pydantic import AfterValidator, BeforeValidator

from hakit.config.problems import describe_value, toml_type

# --- value types ------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_DURATION_EXPECTED = 'expected a number of seconds or a string such as "15s", "2m" or "500ms"'


# The longest duration any setting takes: a week (no timeout, window or lease needs
# more). Beyond it a value is a mistake (1e300, "99999999h"), and the bound keeps every
# timer within what event loops can schedule.
MAX_DURATION = 7 * 24 * 3600.0


def parse_duration(value: object) -> float:
    """'15s', '2m', '500ms', '1.5h' or a bare number of seconds -> seconds (0 to a week)."""
    if isinstance(value, bool):
        raise ValueError(f"got a boolean; {_DURATION_EXPECTED}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite duration; {_DURATION_EXPECTED}")
        if value < 0:
            raise ValueError(f"{value} is negative; expected a duration of 0 or more")
        seconds: float = value  # an int may be too large for a float: compared first
        shown = _clipped(str(value))
    elif isinstance(value, str):
        shown = _clipped(json.dumps(value))
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{shown} is not a duration; {_DURATION_EXPECTED}")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]  # inf if huge
    else:
        raise ValueError(f"got {toml_type(value)}; {_DURATION_EXPECTED}")
    if seconds > MAX_DURATION:
        longest = format_duration(MAX_DURATION)
        raise ValueError(
            f"{shown} is longer than {longest} (a week), the longest duration hakit takes; "
            f'expected at most "{longest}"'
        )
    return float(seconds)


def _clipped(text: str, limit: int = 40) -> str:
    """A value as shown in a message: long ones cut, with "..." (the line names the key)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_duration(seconds: float) -> str:
    """Seconds -> the shortest readable form: 0.5 -> '500ms', 30 -> '30s', 600 -> '10m'."""
    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _require_positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError(f"must be more than 0s, got {format_duration(seconds)}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Intervals and timeouts where 0 would mean a busy loop or instant failure.
PositiveDuration = Annotated[
    float, BeforeValidator(parse_duration), AfterValidator(_require_positive)
]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|kB|KB|MB|GB)?\s*$")
_UNIT_BYTES = {
    None: 1,
    "B": 1,
    "KiB": 1 << 10,
    "MiB": 1 << 20,
    "GiB": 1 << 30,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}
_SIZE_EXPECTED = 'expected a number of bytes or a string such as "1MiB", "512KiB" or "2MB"'


def parse_size(value: object) -> int:
    """'1MiB', '512KiB', '2MB', '100B' or a bare number of bytes -> bytes."""
    if isinstance(value, bool):
        raise ValueError(f"got a boolean; {_SIZE_EXPECTED}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} is negative; expected a size of 0 or more")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNIT_BYTES[match.group(2)])
        raise ValueError(f"{json.dumps(value)} is not a size; {_SIZE_EXPECTED}")
    raise ValueError(f"got {toml_type(value)}; {_SIZE_EXPECTED}")


# A number of bytes. Its own type (an int at run time) so that the sections' rule for
# plain integers (no strings) leaves it to parse_size, which reads "1MiB" too.
ByteCount = NewType("ByteCount", int)
Size = Annotated[ByteCount, BeforeValidator(parse_size)]


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080' or '[::1]:8080' -> (host, port)."""
    expected = 'expected host:port such as "127.0.0.1:8080", "0.0.0.0:8080" or "[::1]:8080"'
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{json.dumps(value)} is not host:port; {expected}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{json.dumps(value)}: an IPv6 host needs brackets; {expected}")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{json.dumps(port_text)} is not a port; {expected} (port 1-65535)")
    return host, int(port_text)


def _check_command(value: object) -> object:
    """An app command: argv list (no shell) or one string (``/bin/sh -c``)."""
    expected = (
        'expected a list of strings such as ["./bin/start", "--port", "{port}"] or one shell string'
    )
    if value is None:
        return value
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"the command is empty; {expected}")
        return value
    if isinstance(value, list | tuple):
        if not value:
            raise ValueError(f"the command is an empty list; {expected}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {index} is {describe_value(item)}; {expected}")
        if not value[0].strip():
            raise ValueError(f"the program (item 0) is empty; {expected}")
        return tuple(value)
    raise ValueError(f"got {describe_value(value)}; {expected}")


def _check_argv(value: object) -> object:
    """A command run without a shell: a non-empty list of strings."""
    if isinstance(value, str):
        raise ValueError(
            f"got a string; expected a list of strings such as {json.dumps(value.split())}"
        )
    return _check_command(value)


Command = Annotated[tuple[str, ...] | str, BeforeValidator(_check_command)]
Argv = Annotated[tuple[str, ...], BeforeValidator(_check_argv)]


class Mode(enum.StrEnum):
    RESTART_ONLY = "restart-only"
    COLD_STANDBY = "cold-standby"
    WARM_STANDBY = "warm-standby"
    ACTIVE_ACTIVE = "active-active"


class Storage(enum.StrEnum):
    SHARED = "shared"  # one home + one database used by whichever node is active
    REPLICATED = "replicated"  # each node its own; the active's generations applied on standbys


class Sticky(enum.StrEnum):
    NONE = "none"
    LB_COOKIE = "lb-cookie"
    APP_COOKIE_SUFFIX = "app-cookie-suffix"
    APP_COOKIE_PREFIX = "app-cookie-prefix"


# Each strategy describing itself (``hakit config check``): the cookie it routes by,
# formatted with the router's cookie_name and app_cookie_name; "" for none. One entry
# per Sticky (a unit test checks), so a new strategy cannot be left undescribed.
STICKY_COOKIES: Final[Mapping[Sticky, str]] = {
    Sticky.NONE: "",
    Sticky.LB_COOKIE: "router cookie {cookie_name}",
    Sticky.APP_COOKIE_SUFFIX: "{app_cookie_name}=<id>.<route>",
    Sticky.APP_COOKIE_PREFIX: "{app_cookie_name}=<route>~<id>",
}


class StickyDown(enum.StrEnum):
    """What happens to a sticky user whose node is down or past its drain deadline."""

    MOVE = "move"  # send them to a healthy node and rewrite the cookie (default)
    HOLD = "hold"  # hold the request up to sticky_hold for the node to return, then move
    FAIL = "fail"  # answer 503 (the maintenance page) until the node returns


class Balance(enum.StrEnum):
    """How active-active spreads new (not yet sticky) users."""

    LEAST_OUTSTANDING = "least-outstanding"
    ROUND_ROBIN = "round-robin"


class AccessLogFormat(enum.StrEnum):
    COMMON = "common"
    COMBINED = "combined"
    JSON = "json"


class TcpCheck(enum.StrEnum):
    TCP = "tcp"  # a connect is enough
    SEND_EXPECT = "send-expect"  # send `send`, the answer must match the regex `expect`


STANDBY_MODES = frozenset({Mode.COLD_STANDBY, Mode.WARM_STANDBY})
FENCE_PLACEHOLDERS = ("node", "host")  # what failover.fence_command may substitute
# What app.start, app.stop and app.env values may substitute: the node's name, host,
# port and route, the app's home and database_url (the agent fills them in).
PLACEHOLDERS = ("node", "host", "port", "route", "home", "database_url")


def placeholder_problem(text: str, allowed: tuple[str, ...], meaning: str = "") -> str | None:
    """What is wrong with the ``{name}`` placeholders of ``text`` for ``str.format_map``
    with the ``allowed`` names (None: nothing); ``{{`` and ``}}`` are literal braces.
    ``meaning`` says what the names stand for, in the message."""
    literal = "write {{ and }} for a literal brace"
    shown = _clipped(json.dumps(text), 60)
    try:
        fields = [
            (name, spec, conversion)
            for _, name, spec, conversion in string.Formatter().parse(text)
            if name is not None
        ]
    except ValueError as error:  # a lone { or }
        return f"{shown}: {error}; {literal}"
    names = ", ".join(f"{{{name}}}" for name in allowed[:-1]) + f" and {{{allowed[-1]}}}"
    for name, spec, conversion in fields:
        if name not in allowed:
            close = difflib.get_close_matches(name.lower(), allowed, n=1)
            hint = f"did you mean {{{close[0]}}}? " if close else ""
            return f"{shown} uses {{{name}}}; {hint}expected only {names} ({meaning}{literal})"
        if spec or conversion:
            return (
                f"{shown} gives {{{name}}} a conversion or format spec; expected plain "
                f"{{{name}}} ({literal})"
            )
    return None


def sqlite_path(url: str) -> str | None:
    """The file part of a sqlite:/// URL (absolute paths keep their leading slash)."""
    return url[len("sqlite:///") :] if url.startswith("sqlite:///") else None


_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:/@]*):[^@/]*@")


def mask_password(url: str) -> str:
    """``url`` with its password (if any) shown as ``***``, for messages and summaries."""
    return _URL_PASSWORD.sub(r"\1:***@", url, count=1)
