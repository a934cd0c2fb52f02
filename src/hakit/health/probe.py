"""Learn the app's state: the /status contract, a health URL, or a status command.

Classification is pure (``classify_*``); ``StatusProber`` only does the I/O
and maps transport failures: connection refused -> DOWN, no answer within the
timeout -> TIMEOUT. Redirects are never followed: a page that redirects to a
maintenance page during a backup must not look healthy.

``check_database`` tells "the app reports ERROR because its database is down"
(alert only) from an app failure (restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hakit import dbfence
from hakit.config import HealthCheckConfig
from hakit.contract import REPORTED_STATES, AppState, http_status_for
from hakit.errors import ConfigError

if TYPE_CHECKING:
    import httpx

# httpx (~8 MiB of imports) is imported by StatusProber when it is made, not with this
# module: the router's checks read plain-HTTP URLs without it (router/statusclient.py).

STATUS_BODY_LIMIT = 64 * 1024  # a /status answer is a few bytes; never read more than this
HEALTH_BODY_LIMIT = 1024 * 1024  # a health page may be a whole HTML page
_STATE_WORD = re.compile(r"\b(" + "|".join(sorted(s.value for s in REPORTED_STATES)) + r")\b")


@dataclass(frozen=True, slots=True)
class Observation:
    state: AppState
    http_status: int | None  # None when nothing answered over HTTP
    detail: str  # one sentence: what was seen
    elapsed: float  # seconds the probe took


# What a probe says when the node's host answered but its app did not. The router's
# path reports (hakit.router.pathreport) tell "host reachable" from "silent" by these, so
# the words are made and recognised here only.
_REFUSED = "connection refused by"
_CLOSED = "closed the connection without a complete answer"


# Added when /status answers 404 or no JSON: the webapp may not be deployed, or the app
# may simply not speak the contract, which is what a file without [app.health] expects;
# a failed start then says how to check such an app instead. (A url or command check
# never gets here: its answers are classified by classify_health_response.)
NO_CONTRACT_HINT = (
    "; or the app does not speak the /status contract, which hakit expects without "
    "[app.health]: for such an app, set [app.health] url/expect_status or command"
)


def refused_detail(url: str) -> str:
    return f"{_REFUSED} {url}"


def closed_detail(url: str, problem: object) -> str:
    return f"{url} {_CLOSED}: {problem}"


def host_answered(observation: Observation) -> bool:
    """The host refused or closed the connection: reachable, but no answer from the app."""
    detail = observation.detail
    return observation.state is AppState.DOWN and (_REFUSED in detail or _CLOSED in detail)


# --- pure classification ----------------------------------------------------


def classify_status_response(
    http_status: int, body: bytes, content_type: str
) -> tuple[AppState, str]:
    """An answer to ``GET /status`` -> (state, detail) per the contract."""
    if http_status == 404:
        return AppState.NOT_DEPLOYED, "HTTP 404: the webapp is not deployed" + NO_CONTRACT_HINT
    if 300 <= http_status < 400:
        return (
            AppState.NOT_DEPLOYED,
            f"HTTP {http_status}: /status redirected instead of answering; it must answer itself",
        )
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        detail = f"HTTP {http_status} without JSON: the webapp is not deployed"
        return AppState.NOT_DEPLOYED, detail + NO_CONTRACT_HINT
    raw = document.get("state") if isinstance(document, dict) else None
    if not isinstance(raw, str):
        return AppState.NOT_DEPLOYED, f'HTTP {http_status}: JSON without a "state" string'
    state = _reported_state(raw)
    if state is None:
        return AppState.NOT_DEPLOYED, f"HTTP {http_status}: unknown state {raw!r}"
    notes = []
    expected = http_status_for(state)
    if http_status != expected:
        notes.append(f"answered HTTP {http_status} where the contract says {expected}")
    if "json" not in content_type.lower():
        notes.append(f"content type {content_type or 'missing'}, expected application/json")
    return state, "; ".join([f"reports {state}", *notes])


def classify_health_response(
    http_status: int, body: bytes, expect_status: int | None, expect_body: str | None
) -> tuple[AppState, str]:
    """An answer from a plain health URL -> RUNNING if it matches, else ERROR.

    Without ``expect_status`` any 2xx matches (so a redirect never does).
    ``expect_body`` is a regular expression searched in the body.
    """
    problems = []
    if expect_status is None:
        if not 200 <= http_status < 300:
            problems.append(f"HTTP {http_status}, expected a 2xx status")
    elif http_status != expect_status:
        problems.append(f"HTTP {http_status}, expected {expect_status}")
    if expect_body is not None and not re.search(expect_body, body.decode("utf-8", "replace")):
        problems.append(f"body does not match {expect_body!r}")
    if problems:
        return AppState.ERROR, "; ".join(problems)
    return AppState.RUNNING, f"HTTP {http_status} as expected"


def classify_command_result(returncode: int, stdout: str) -> tuple[AppState, str]:
    """A status command's result: exit 0 -> RUNNING; else a state name it printed, else ERROR."""
    if returncode == 0:
        return AppState.RUNNING, "status command exited 0"
    found = _STATE_WORD.search(stdout)
    if found is None:
        return AppState.ERROR, f"status command exited {returncode} without naming a state"
    state = AppState(found.group(1))
    if state in (AppState.RUNNING, AppState.FIRST_RUN):
        # "NOT RUNNING" and exit 3 (LSB) must not read as healthy.
        return AppState.ERROR, f"status command exited {returncode} although it printed {state}"
    return state, f"status command exited {returncode} and reports {state}"


def _reported_state(raw: str) -> AppState | None:
    try:
        state = AppState(raw.strip().upper())
    except ValueError:
        return None
    return state if state in REPORTED_STATES else None


def substitute(template: str, host: str, port: int, *, url: bool) -> str:
    """Replace {host} and {port}; an IPv6 host is bracketed inside a URL."""
    shown_host = f"[{host}]" if url and ":" in host and not host.startswith("[") else host
    return template.replace("{host}", shown_host).replace("{port}", str(port))


# --- I/O --------------------------------------------------------------------


class StatusProber:
    """Probes one node's app, the way ``check`` (app.health in the config) says."""

    def __init__(self, check: HealthCheckConfig, host: str, port: int, timeout: float) -> None:
        self._check = check
        self._timeout = timeout
        self._url: str | None = None
        self._argv: list[str] | None = None
        # The config (HealthCheckConfig) has checked that exactly one way is set, the URLs and
        # the regex.
        if check.status_url:
            self._url = substitute(check.status_url, host, port, url=True)
        elif check.url:
            self._url = substitute(check.url, host, port, url=True)
        elif check.command:
            self._argv = [substitute(arg, host, port, url=False) for arg in check.command]
            if shutil.which(self._argv[0]) is None:
                raise ConfigError(
                    [f"app.health.command: {self._argv[0]!r} is not an executable file or on PATH"]
                )
        else:
            raise ConfigError(["app.health: set one of status_url, url or command"])
        import httpx

        # No keep-alive: a restarted app on the same port must get a fresh
        # connection, never a pooled one to the process that died. No proxy
        # from the environment: probes go straight to the node.
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    @property
    def target(self) -> str:
        """What is probed, for messages."""
        return self._url or " ".join(self._argv or [])

    async def probe(self) -> Observation:
        import httpx

        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                if self._argv is not None:
                    state, http_status, detail = await self._run_command(self._argv)
                else:
                    assert self._url is not None
                    state, http_status, detail = await self._get(self._url)
        except (TimeoutError, httpx.TimeoutException):
            state, http_status = AppState.TIMEOUT, None
            detail = f"no answer from {self.target} within {self._timeout:g}s"
        return Observation(state, http_status, detail, time.monotonic() - started)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get(self, url: str) -> tuple[AppState, int | None, str]:
        import httpx

        is_status = self._check.status_url is not None
        limit = STATUS_BODY_LIMIT if is_status else HEALTH_BODY_LIMIT
        try:
            async with self._client.stream("GET", url) as response:
                body = await _read_capped(response, limit)
        except httpx.ConnectError as exc:
            if _caused_by(exc, ConnectionRefusedError):
                return AppState.DOWN, None, refused_detail(url)
            return AppState.DOWN, None, f"cannot connect to {url}: {exc or type(exc).__name__}"
        except httpx.TimeoutException:
            raise  # TIMEOUT, decided in probe()
        except httpx.TransportError as exc:  # reset, closed early, garbled HTTP
            return (
                AppState.DOWN,
                None,
                closed_detail(url, exc or type(exc).__name__),
            )
        if is_status:
            content_type = response.headers.get("content-type", "")
            state, detail = classify_status_response(response.status_code, body, content_type)
        else:
            state, detail = classify_health_response(
                response.status_code, body, self._check.expect_status, self._check.expect_body
            )
        location = response.headers.get("location")
        if response.is_redirect and location:
            detail += f" (redirect to {location})"
        return state, response.status_code, detail

    async def _run_command(self, argv: list[str]) -> tuple[AppState, int | None, str]:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # so a timeout can end it and its children
            )
        except OSError as exc:
            return AppState.ERROR, None, f"cannot run the status command {argv!r}: {exc}"
        try:
            output, _ = await process.communicate()
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        returncode = process.returncode
        assert returncode is not None
        state, detail = classify_command_result(returncode, output.decode("utf-8", "replace"))
        return state, None, detail


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    seen: BaseException | None = exc
    for _ in range(10):  # the chain is short; bound it anyway
        if seen is None:
            return False
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# --- database ---------------------------------------------------------------


async def check_database(url: str, timeout: float) -> bool | None:
    """True if the app's database answers ``SELECT 1`` within ``timeout``; None when there
    is no database to check (``app.database_url`` left out: ``""``)."""
    if not url:
        return None
    return await database_problem(url, timeout) is None


async def database_problem(url: str, timeout: float) -> str | None:
    """None if the database answers within ``timeout``, else what is wrong (one sentence).

    ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or a plain path: the
    file exists and a read-only connection can read it. ``postgresql://``:
    psycopg connects and runs ``SELECT 1``; ``mysql://``, ``mariadb://``: PyMySQL
    does (hakit.dbfence).
    """
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        return await _postgres_problem(url, timeout)
    if scheme in ("mysql", "mariadb"):
        return await dbfence.mysql_problem(url, timeout)
    if scheme in ("sqlite", ""):
        path = sqlite_path(url)
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(_sqlite_problem, path, timeout)
        except TimeoutError:
            return f"SQLite database {path} did not answer within {timeout:g}s"
    raise ConfigError(
        [
            f"app.database_url: {url!r} is neither sqlite:///PATH, postgresql://... nor "
            "mysql://... (mariadb://...); set one of those"
        ]
    )


def sqlite_path(url: str) -> Path:
    """``sqlite:////abs.db`` -> /abs.db, ``sqlite:///rel.db`` -> rel.db, a plain path as is."""
    if url.lower().startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        if not rest.startswith("///"):
            raise ConfigError(
                [f"app.database_url: {url!r}: write sqlite:///relative or sqlite:////absolute"]
            )
        url = rest[3:].split("?", 1)[0]
    return Path(url)


def _sqlite_problem(path: Path, timeout: float) -> str | None:
    if not path.is_file():
        return f"SQLite database {path} does not exist"
    try:
        connection = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=timeout
        )
        try:
            # Reading sqlite_master touches the file header: a non-database file fails here.
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            connection.execute("SELECT 1").fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return f"SQLite database {path} cannot be read: {exc}"
    return None


async def _postgres_problem(url: str, timeout: float) -> str | None:
    import psycopg  # imported here: only PostgreSQL users pay for it

    try:
        async with asyncio.timeout(timeout):
            connection = await psycopg.AsyncConnection.connect(
                url, connect_timeout=max(2, int(timeout + 0.999)), autocommit=True
            )
            try:
                await connection.execute("SELECT 1")
            finally:
                await connection.close()
    except TimeoutError:
        return f"PostgreSQL did not answer within {timeout:g}s"
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL cannot be reached: {first_line}"
    return None
