"""The router's access log: one line per request, written when its response ends.

Formats (router.access_log_format):

- ``common``: Apache's Common Log Format, then the router's own fields::

    127.0.0.1 - - [22/Nov/2025:04:40:01 +0000] "GET /a HTTP/1.1" 200 1234 node=n1 upstream=0.000412 total=0.000530

- ``combined``: NCSA combined (adds "referer" "user agent" after the size),
  then the same router fields. Both start exactly like Apache's lines, so
  tools that read those formats read these too.
- ``json``: one JSON object per line with every field (see ``json_line``).

``node`` is ``-`` when the router answered itself (maintenance page, 400...);
``upstream`` is the time from sending the request to the node until its
response head arrived (``-``: none); ``total`` from the complete request head
until the response ended. Status 499: the client left before any answer.
Requests refused while their head was read (400, 408, 413, 414, 431, 505, ...)
are logged too, with what was read of them: method and target ``-`` when the
request line itself was unreadable, version ``-`` when it was not reached.

Writes never block the event loop: lines are collected in a list and handed,
every ``FLUSH_INTERVAL`` or ``FLUSH_LINES`` lines, to one writer thread that
appends them to the file. The writer reopens the file when it was moved or
deleted (logrotate without copytruncate works, no signal needed). With the
access log off the router holds no ``AccessLog`` at all: zero cost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import time
from queue import SimpleQueue
from typing import Final, TextIO

from hakit.config import AccessLogFormat
from hakit.errors import HakitError
from hakit.router.metrics import CLIENT_CLOSED, Observed

log = logging.getLogger("hakit.router")

FLUSH_INTERVAL: Final = 0.2  # seconds a line may wait in memory
FLUSH_LINES: Final = 256  # or this many lines, whichever comes first

# One encoder for every line: json.dumps with options builds a new encoder per call.
_json = json.JSONEncoder(separators=(",", ":")).encode
_MONTHS: Final = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
)
# Bytes that would break a quoted log field or a terminal: escaped as \xHH (Apache does).
_UNSAFE: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')


def _escape_byte(match: re.Match[bytes]) -> bytes:
    return b"\\x%02x" % match.group()[0]


def escape(value: bytes) -> str:
    """``value`` as printable ASCII for a quoted log field."""
    if _UNSAFE.search(value) is None:
        return value.decode("ascii")
    return _UNSAFE.sub(_escape_byte, value).decode("ascii")


def clf_time(wall: float) -> str:
    """``22/Nov/2025:04:40:01 +0100`` in local time, as Apache writes ``%t``."""
    tm = time.localtime(wall)
    offset = tm.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


def iso_time(wall: float) -> str:
    """``2025-11-22T04:40:01.123Z`` (UTC, milliseconds)."""
    millis = int(wall * 1000)
    seconds, ms = divmod(millis, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _seconds(value: float) -> str:
    return f"{value:.6f}"


class LineFormatter:
    """Pure formatting of one ended exchange into one log line (with its newline)."""

    def __init__(self, fmt: AccessLogFormat) -> None:
        self.format = fmt
        self._line = {
            AccessLogFormat.COMMON: self.common_line,
            AccessLogFormat.COMBINED: self.combined_line,
            AccessLogFormat.JSON: self.json_line,
        }[fmt]
        self._clf_second = self._iso_second = -1
        self._clf_text = self._iso_text = ""

    def __call__(self, ex: Observed, wall: float, total: float) -> str:
        """``wall``: when the request arrived (epoch seconds); ``total``: its duration."""
        return self._line(ex, wall, total)

    def _clf(self, wall: float) -> str:
        second = int(wall)
        if second != self._clf_second:  # one strftime-like call per second, not per line
            self._clf_second, self._clf_text = second, clf_time(second)
        return self._clf_text

    def _iso(self, wall: float) -> str:
        millis = int(wall * 1000)
        second, ms = divmod(millis, 1000)
        if second != self._iso_second:
            self._iso_second, self._iso_text = second, iso_time(second)[:-5]
        return f"{self._iso_text}.{ms:03d}Z"

    @staticmethod
    def _router_fields(ex: Observed, total: float) -> str:
        node = ex.node.name if ex.node is not None else "-"
        upstream = _seconds(ex.head_at - ex.sent_at) if ex.head_at else "-"
        return f"node={node} upstream={upstream} total={_seconds(total)}"

    def _prefix(self, ex: Observed, wall: float) -> str:
        request = ex.request
        line = escape(b"%s %s HTTP/%s" % (request.method, request.target, request.version.encode()))
        size = str(ex.sent) if ex.sent else "-"
        return (
            f'{request.client_ip} - - [{self._clf(wall)}] "{line}" '
            f"{ex.status or CLIENT_CLOSED} {size}"
        )

    def common_line(self, ex: Observed, wall: float, total: float) -> str:
        return f"{self._prefix(ex, wall)} {self._router_fields(ex, total)}\n"

    def combined_line(self, ex: Observed, wall: float, total: float) -> str:
        referer, agent = _referer_and_agent(ex)
        return (
            f'{self._prefix(ex, wall)} "{escape(referer) if referer is not None else "-"}" '
            f'"{escape(agent) if agent is not None else "-"}" {self._router_fields(ex, total)}\n'
        )

    def json_line(self, ex: Observed, wall: float, total: float) -> str:
        request = ex.request
        referer, agent = _referer_and_agent(ex)
        host = None
        for name, value in request.headers:
            if name.lower() == b"host":
                host = value
                break
        record = {
            "time": self._iso(wall),
            "client": request.client_ip,
            "method": request.method.decode("latin-1"),
            "target": request.target.decode("latin-1"),
            "protocol": f"HTTP/{request.version}",
            "host": _text(host),
            "status": ex.status or CLIENT_CLOSED,
            "bytes_sent": ex.sent,
            "bytes_received": ex.received,
            "referer": _text(referer),
            "user_agent": _text(agent),
            "node": ex.node.name if ex.node is not None else None,
            "upstream_time": round(ex.head_at - ex.sent_at, 6) if ex.head_at else None,
            "total_time": round(total, 6),
            "retries": ex.attempts - 1 if ex.attempts > 1 else 0,
            "held_time": round(ex.held, 6),
        }
        return _json(record) + "\n"


def _text(value: bytes | None) -> str | None:
    # latin-1 maps every byte to one code point: nothing is lost, JSON escapes the rest.
    return value.decode("latin-1") if value is not None else None


def _referer_and_agent(ex: Observed) -> tuple[bytes | None, bytes | None]:
    referer = agent = None
    for name, value in ex.request.headers:
        if len(name) == 7 and name.lower() == b"referer":
            referer = value if referer is None else referer
        elif len(name) == 10 and name.lower() == b"user-agent":
            agent = value if agent is None else agent
    return referer, agent


class _Writer:
    """Appends batches of lines to the log file in its own thread; reopens it when rotated.

    It runs a ``threading.Thread`` rather than being one: compiled (mypyc), a class
    derived from ``Thread`` (whose instances keep a CPython-managed ``__dict__``) gets
    an object layout that does not match its base (segfaults in the unit tests).
    (Not named ``_thread``: mypyc's C field for it, ``__thread``, is a C keyword.)
    """

    def __init__(self, target: str) -> None:
        self._runner = threading.Thread(target=self.run, name="hakit-access-log", daemon=True)
        self.target = target
        self.queue: SimpleQueue[list[str] | None] = SimpleQueue()
        self._file: TextIO | None = None
        self._identity: tuple[int, int] | None = None
        self._failed = False
        if target != "-":
            self._open()  # in the caller: an unwritable path fails the router's start

    def _open(self) -> None:
        file = open(self.target, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        stat = os.fstat(file.fileno())
        if self._file is not None:
            self._file.close()
        self._file, self._identity = file, (stat.st_dev, stat.st_ino)

    def _rotated(self) -> bool:
        try:
            stat = os.stat(self.target)
        except FileNotFoundError:
            return True
        return (stat.st_dev, stat.st_ino) != self._identity

    def start(self) -> None:
        self._runner.start()

    def join(self, timeout: float | None = None) -> None:
        self._runner.join(timeout)

    def run(self) -> None:
        while True:
            batch = self.queue.get()
            if batch is None:
                break
            try:
                self._write("".join(batch))
            except OSError as error:
                if not self._failed:  # say it once, not once per batch
                    log.error("router: cannot write the access log %s: %s", self.target, error)
                self._failed = True
            else:
                self._failed = False
        if self._file is not None:
            self._file.close()

    def _write(self, text: str) -> None:
        if self.target == "-":
            sys.stderr.write(text)
            sys.stderr.flush()
            return
        if self._rotated():
            self._open()
        assert self._file is not None
        self._file.write(text)
        self._file.flush()


class AccessLog:
    """An ``Observer`` writing one line per ended exchange (call from the event loop)."""

    def __init__(self, target: str, fmt: AccessLogFormat) -> None:
        """``target``: a file path (appended to) or ``-`` for stderr."""
        self.target = target
        self._format = LineFormatter(fmt)
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        try:
            self._writer = _Writer(target)
        except OSError as error:
            raise HakitError(
                f"router: cannot open the access log {target} ({error.strerror or error}); "
                "check that its directory exists and is writable, or change "
                "router.access_log in the config"
            ) from error
        self._writer.start()

    def __call__(self, ex: Observed) -> None:
        mono, wall = time.monotonic(), time.time()
        total = mono - ex.started
        self._lines.append(self._format(ex, wall - total, total))
        if len(self._lines) >= FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Hand the collected lines to the writer thread."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            self._writer.queue.put(self._lines)
            self._lines = []

    def close(self, timeout: float = 5.0) -> None:
        """Write everything collected so far, then stop the writer thread."""
        self.flush()
        self._writer.queue.put(None)
        self._writer.join(timeout)
