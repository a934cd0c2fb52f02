"""The app's database, engine by engine: the agent's check and the fencing of an old
node's sessions.

``app.database_url`` names the engine by its scheme:

- ``sqlite:///PATH`` (or a plain path): checked by ``hakit.health.probe`` (a read-only
  connection reads the file); no sessions to fence, the file lives on the home's storage.
- ``postgresql://`` (``postgres://``): psycopg. The agent sets ``PGAPPNAME=hakit-<node>``
  in the app's environment, so libpq-based apps name their sessions after the node;
  fencing terminates the sessions with that ``application_name``
  (:func:`terminate_postgres_sessions`).
- ``mysql://`` and ``mariadb://`` (MySQL, MariaDB; :func:`mysql_problem`,
  :func:`kill_mysql_sessions`): PyMySQL. MySQL has no ``application_name``, and nothing
  like ``PGAPPNAME`` that every client library reads, so the old node's sessions are
  those that come **from the old node's address** (``nodes.host``) **as database_url's
  user** (the app's). That needs nothing from the app nor the server: a JDBC URL
  shared by both nodes (Jira's ``dbconfig.xml``) stays as it is, and it works with
  ``performance_schema`` off (MariaDB's default), where the ``program_name``
  connection attribute cannot be read. Hostnames in the process list (the server
  resolves client names unless ``skip_name_resolve``) and in ``nodes.host`` are
  compared by the addresses they resolve to. When the server sees this node at one of
  the old node's addresses (both behind one proxy, NAT, or on one host), the sessions
  cannot be told apart: nothing is killed and the fencing says why.

``""`` (``database_url`` left out) means no database: no check, no session fencing.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


class Engine(enum.StrEnum):
    SQLITE = "SQLite"
    POSTGRESQL = "PostgreSQL"
    MYSQL = "MySQL"
    MARIADB = "MariaDB"  # the same protocol and code as MySQL; named as the URL says


SCHEMES = {
    "sqlite": Engine.SQLITE,
    "postgresql": Engine.POSTGRESQL,
    "postgres": Engine.POSTGRESQL,
    "mysql": Engine.MYSQL,
    "mariadb": Engine.MARIADB,
}
MYSQL_PORT = 3306
ER_NO_SUCH_THREAD = 1094  # KILL of a session that ended meanwhile


def engine_of(url: str) -> Engine | None:
    """The engine ``url`` names by its scheme; None for no URL or an unknown scheme
    (a plain path is SQLite)."""
    if not url:
        return None
    if "://" not in url and not url.lower().startswith("sqlite:"):
        return Engine.SQLITE
    return SCHEMES.get(url.partition(":")[0].lower())


def fences_sessions(url: str) -> bool:
    """Whether the old node's sessions on this database can be fenced on promotion."""
    return engine_of(url) in (Engine.POSTGRESQL, Engine.MYSQL, Engine.MARIADB)


def application_name(node: str) -> str:
    """The PostgreSQL ``application_name`` of ``node``'s app sessions."""
    return f"hakit-{node}"


def sessions_of(url: str, node: str, host: str) -> str:
    """How ``node``'s sessions are recognised, for messages."""
    if engine_of(url) is Engine.POSTGRESQL:
        return f"application_name {application_name(node)}"
    user = unquote(urlsplit(url).username or "")
    return f"user {user or '(none)'} from {host or 'an unknown host'}"


async def terminate_sessions(
    url: str, node: str, host: str, timeout: float, me: str = ""
) -> tuple[int, str | None]:
    """End ``node``'s sessions (its address is ``host``); (how many, None) or (how many,
    what went wrong). Never raises."""
    engine = engine_of(url)
    work: Callable[[], tuple[int, str | None]]
    if engine is Engine.POSTGRESQL:
        work = functools.partial(terminate_postgres_sessions, url, node, timeout, me)
    elif engine in (Engine.MYSQL, Engine.MARIADB):
        work = functools.partial(kill_mysql_sessions, url, host, timeout, me)
    else:
        return 0, f"sessions cannot be fenced on {engine or 'this database'}"
    try:
        async with asyncio.timeout(timeout + 1):
            return await asyncio.to_thread(work)
    except TimeoutError:
        return 0, f"the database did not answer within {timeout:g} s"
    except Exception as error:  # psycopg.Error, pymysql.Error, OSError: reported, never raised
        return 0, f"{type(error).__name__}: {_message(error).strip() or 'no detail'}"


def _message(error: BaseException) -> str:
    # PyMySQL's errors are (code, message); psycopg's are one message.
    args = error.args
    return str(args[1]) if len(args) == 2 and isinstance(args[0], int) else str(error)


def _first_line(error: BaseException) -> str:
    lines = _message(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# --- PostgreSQL ------------------------------------------------------------------------


def terminate_postgres_sessions(url: str, node: str, timeout: float, me: str) -> tuple[int, None]:
    import psycopg  # imported here: only PostgreSQL users pay for it

    with psycopg.connect(
        url,
        connect_timeout=max(2, int(timeout + 0.999)),
        autocommit=True,
        application_name=f"hakit-fence-{me}",
    ) as connection:
        connection.execute(f"SET statement_timeout = {max(1, int(timeout * 1000))}")
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name(node),),
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated), None


# --- MySQL and MariaDB -----------------------------------------------------------------


def mysql_connect_args(url: str, timeout: float, program: str) -> dict[str, Any]:
    """PyMySQL's ``connect`` arguments for ``mysql://USER:PASSWORD@HOST:PORT/DATABASE``
    (``?unix_socket=PATH`` for a local socket); every wait bounded by ``timeout``."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or MYSQL_PORT,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": unquote(parts.path.lstrip("/")) or None,
        "connect_timeout": timeout,
        "read_timeout": timeout,
        "write_timeout": timeout,
        "autocommit": True,
        "program_name": program,  # shown to DBAs in session_connect_attrs
    }
    if "unix_socket" in query:
        args["unix_socket"] = query["unix_socket"][-1]
    return args


async def mysql_problem(url: str, timeout: float) -> str | None:
    """None if the MySQL/MariaDB server answers ``SELECT 1`` within ``timeout``, else what
    is wrong (one sentence)."""
    name = engine_of(url) or Engine.MYSQL
    try:
        async with asyncio.timeout(timeout):
            await asyncio.to_thread(_mysql_select_1, url, timeout)
    except TimeoutError:
        return f"{name} did not answer within {timeout:g}s"
    except Exception as error:  # pymysql.Error, OSError
        return f"{name} cannot be reached: {_first_line(error)}"
    return None


def _mysql_select_1(url: str, timeout: float) -> None:
    import pymysql  # imported here: only MySQL/MariaDB users pay for it

    connection = pymysql.connect(**mysql_connect_args(url, timeout, "hakit-check"))
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchall()
    finally:
        connection.close()


def client_host(processlist_host: str) -> str:
    """The client part of a process list ``HOST``: ``10.0.0.5:41234`` -> ``10.0.0.5``,
    ``::1:41234`` -> ``::1``, ``localhost`` (a local socket, no port) as it is."""
    host, colon, port = processlist_host.rpartition(":")
    return host if colon and port.isdigit() else processlist_host


def addresses(host: str) -> frozenset[str]:
    """The IP addresses ``host`` stands for: itself when it is one (an IPv4-mapped IPv6
    address as IPv4), else what it resolves to (none when it does not)."""
    host = host.strip().strip("[]")
    if not host:
        return frozenset()
    try:
        return frozenset([_plain(host)])
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return frozenset()
    return frozenset(_plain(str(info[4][0])) for info in infos)


def _plain(address: str) -> str:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def sessions_to_kill(
    rows: Iterable[tuple[int, str]], own_host: str, node_host: str
) -> tuple[list[int], str | None]:
    """(ids of the sessions that come from ``node_host``, None) from the process list
    ``rows`` (id, HOST) of database_url's user; or ([], why not) when this node's own
    session (``own_host``) comes from one of the same addresses: then nothing tells the
    old node's sessions from anyone else's there."""
    wanted = addresses(node_host)
    if not wanted:
        return [], f"{node_host or 'the node'} resolves to no address"
    shared = addresses(client_host(own_host)) & wanted
    if shared:
        return [], (
            f"the database sees this node at {', '.join(sorted(shared))} too, the old node's "
            "address: its sessions cannot be told apart (a proxy or NAT in between, or both "
            "nodes on one host); none killed"
        )
    cache: dict[str, frozenset[str]] = {}
    ids = []
    for session, host in rows:
        client = client_host(host)
        if client not in cache:
            cache[client] = addresses(client)
        if cache[client] & wanted:
            ids.append(int(session))
    return ids, None


def kill_mysql_sessions(url: str, host: str, timeout: float, me: str) -> tuple[int, str | None]:
    """KILL the sessions of database_url's user that come from ``host`` (the old node).

    Its own user only: that is the app's, and an account without the PROCESS or
    CONNECTION ADMIN privilege sees and may kill no other's anyway.
    """
    import pymysql

    connection = pymysql.connect(**mysql_connect_args(url, timeout, f"hakit-fence-{me}"))
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT HOST FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"
            )
            own = cursor.fetchone()
            cursor.execute(
                "SELECT ID, HOST FROM information_schema.PROCESSLIST "
                "WHERE USER = SUBSTRING_INDEX(USER(), '@', 1) AND ID <> CONNECTION_ID()"
            )
            rows = [(int(row[0]), str(row[1] or "")) for row in cursor.fetchall()]
            ids, problem = sessions_to_kill(rows, str(own[0] if own else ""), host)
            killed, failures = 0, []
            for session in ids:
                try:
                    cursor.execute(f"KILL CONNECTION {session:d}")
                except pymysql.err.OperationalError as error:
                    if error.args and error.args[0] == ER_NO_SUCH_THREAD:
                        continue  # it ended meanwhile
                    failures.append(f"session {session}: {_first_line(error)}")
                else:
                    killed += 1
    finally:
        connection.close()
    if failures:
        problem = f"could not kill {len(failures)} of {len(ids)}: {'; '.join(failures)}"
    return killed, problem
