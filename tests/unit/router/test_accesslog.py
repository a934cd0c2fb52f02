"""Access log lines (pure formatting) and the writer thread (a real file, rotation)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hakit.config import AccessLogFormat, NodeConfig
from hakit.router.accesslog import AccessLog, LineFormatter, clf_time, escape, iso_time
from hakit.router.headers import Body, Header, RequestHead
from hakit.router.metrics import UPSTREAM_BUCKETS, RouterMetrics

# Apache's combined format, then the router's fields.
COMBINED = re.compile(
    r"^(?P<ip>\S+) - - \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] "
    r'"(?P<line>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-) '
    r'"(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
    r"node=(?P<node>\S+) upstream=(?P<upstream>[\d.]+|-) total=(?P<total>[\d.]+)\n$"
)
COMMON = re.compile(
    r'^(?P<ip>\S+) - - \[(?P<time>[^]]+)\] "(?P<line>[^"]*)" (?P<status>\d{3}) (?P<size>\d+|-) '
    r"node=(?P<node>\S+) upstream=(?P<upstream>[\d.]+|-) total=(?P<total>[\d.]+)\n$"
)


def request(
    method: bytes = b"GET", target: bytes = b"/a?b=1", headers: tuple[Header, ...] = ()
) -> RequestHead:
    return RequestHead(
        method=method,
        target=target,
        version="1.1",
        headers=((b"Host", b"example.test"), *headers),
        keep_alive=True,
        body=Body.NONE,
        content_length=0,
        transfer_encoding=b"",
        client_ip="192.0.2.7",
    )


@dataclass
class Ended:
    """An ended exchange as observers see it (the attributes of exchange.Exchange)."""

    request: RequestHead = field(default_factory=request)
    node: NodeConfig | None = field(default_factory=lambda: NodeConfig(name="n1", port=8081))
    status: int = 200
    sent: int = 1234
    started: float = 100.0
    sent_at: float = 100.001
    head_at: float = 100.004
    held: float = 0.0
    received: int = 0
    attempts: int = 1


WALL = 1763786401.25  # 2025-11-22T04:40:01.250Z


def test_combined_line_is_apache_combined_then_router_fields() -> None:
    ended = Ended(request=request(headers=((b"Referer", b"http://r/"), (b"User-Agent", b"ua/1"))))
    line = LineFormatter(AccessLogFormat.COMBINED)(ended, WALL, 0.0042)
    match = COMBINED.match(line)
    assert match, line
    assert match["ip"] == "192.0.2.7"
    assert match["time"] == clf_time(WALL)
    assert match["line"] == "GET /a?b=1 HTTP/1.1"
    assert (match["status"], match["size"]) == ("200", "1234")
    assert (match["referer"], match["agent"]) == ("http://r/", "ua/1")
    assert match["node"] == "n1"
    assert float(match["upstream"]) == pytest.approx(0.003, abs=1e-6)
    assert float(match["total"]) == pytest.approx(0.0042, abs=1e-6)


def test_common_line_without_backend_or_body() -> None:
    ended = Ended(node=None, status=503, sent=0, sent_at=0.0, head_at=0.0)
    line = LineFormatter(AccessLogFormat.COMMON)(ended, WALL, 0.0001)
    match = COMMON.match(line)
    assert match, line
    assert (match["status"], match["size"], match["node"], match["upstream"]) == (
        "503",
        "-",  # Apache's %b: no body bytes
        "-",
        "-",
    )
    assert "example.test" not in line and '"-"' not in line  # no referer/agent fields


def test_missing_referer_and_agent_are_dashes() -> None:
    match = COMBINED.match(LineFormatter(AccessLogFormat.COMBINED)(Ended(), WALL, 0.001))
    assert match and (match["referer"], match["agent"]) == ("-", "-")


def test_client_gone_before_any_answer_is_499() -> None:
    ended = Ended(status=0, sent=0, head_at=0.0)
    match = COMMON.match(LineFormatter(AccessLogFormat.COMMON)(ended, WALL, 1.0))
    assert match and match["status"] == "499"
    record = json.loads(LineFormatter(AccessLogFormat.JSON)(ended, WALL, 1.0))
    assert record["status"] == 499 and record["upstream_time"] is None


def test_json_line_has_every_field() -> None:
    ended = Ended(
        request=request(b"POST", b"/upload", ((b"User-Agent", b"curl/8"), (b"Referer", b"x"))),
        received=10,
        attempts=3,
        held=1.5,
    )
    line = LineFormatter(AccessLogFormat.JSON)(ended, WALL, 0.25)
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record == {
        "time": "2025-11-22T04:40:01.250Z",
        "client": "192.0.2.7",
        "method": "POST",
        "target": "/upload",
        "protocol": "HTTP/1.1",
        "host": "example.test",
        "status": 200,
        "bytes_sent": 1234,
        "bytes_received": 10,
        "referer": "x",
        "user_agent": "curl/8",
        "node": "n1",
        "upstream_time": 0.003,
        "total_time": 0.25,
        "retries": 2,
        "held_time": 1.5,
    }


def test_quotes_and_control_bytes_cannot_forge_fields() -> None:
    agent = b'evil" "forged\x1b[31m\xff'
    ended = Ended(request=request(target=b'/a"b', headers=((b"User-Agent", agent),)))
    line = LineFormatter(AccessLogFormat.COMBINED)(ended, WALL, 0.001)
    match = COMBINED.match(line)
    assert match, line
    assert match["line"] == "GET /a\\x22b HTTP/1.1"
    assert match["agent"] == "evil\\x22 \\x22forged\\x1b[31m\\xff"
    assert line.isascii()
    record = json.loads(LineFormatter(AccessLogFormat.JSON)(ended, WALL, 0.001))
    assert record["user_agent"].encode("latin-1") == agent  # JSON keeps the exact bytes


def test_escape_and_times() -> None:
    assert escape(b"/plain?a=1") == "/plain?a=1"
    assert escape(b"a\\b") == "a\\x5cb"
    assert iso_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}", clf_time(WALL))
    assert clf_time(WALL) == time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(WALL))


def test_writer_flushes_on_its_timer_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"

    async def scenario() -> None:
        log = AccessLog(str(path), AccessLogFormat.JSON)
        try:
            log(Ended(started=time.monotonic()))
            await wait_for_lines(path, 1)  # the flush timer, not a close, wrote it
            os.rename(path, rotated)  # logrotate without copytruncate
            log(Ended(started=time.monotonic(), status=201))
            await wait_for_lines(path, 1)  # a new file at the configured path
        finally:
            log.close()

    asyncio.run(scenario())
    assert [json.loads(x)["status"] for x in rotated.read_text().splitlines()] == [200]
    assert [json.loads(x)["status"] for x in path.read_text().splitlines()] == [201]


def test_writer_flushes_at_once_when_many_lines_wait(tmp_path: Path) -> None:
    path = tmp_path / "access.log"

    async def scenario() -> None:
        log = AccessLog(str(path), AccessLogFormat.COMMON)
        try:
            for _ in range(1000):
                log(Ended())
            # 1000 lines = 3 full batches handed over already, the rest on close.
            await wait_for_lines(path, 768)
        finally:
            log.close()

    asyncio.run(scenario())
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 1000 and all(COMMON.match(line) for line in lines)


def test_unwritable_access_log_fails_with_advice(tmp_path: Path) -> None:
    from hakit.errors import HakitError

    with pytest.raises(HakitError, match=r"cannot open the access log .*router.access_log"):
        AccessLog(str(tmp_path / "missing" / "access.log"), AccessLogFormat.COMMON)


async def wait_for_lines(path: Path, count: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} did not get {count} lines within {timeout}s")


# --- metrics counting (pure) ---------------------------------------------------------------


def test_metrics_count_by_node_class_and_latency_bucket() -> None:
    metrics = RouterMetrics(["n1"])
    metrics.observe(Ended(status=200, sent=10, received=5))  # 3 ms upstream
    metrics.observe(Ended(status=404, sent=3, attempts=2))
    metrics.observe(Ended(node=None, status=503, head_at=0.0))
    metrics.observe(Ended(status=0, head_at=0.0))  # client left: counted as 4xx (499)
    n1 = metrics.node("n1")
    assert n1.by_class() == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 2, "5xx": 0}
    assert (n1.sent, n1.received, n1.retries) == (1247, 5, 1)
    assert sum(n1.buckets) == 2
    assert n1.buckets[UPSTREAM_BUCKETS.index(0.005)] == 2  # 3 ms: le 0.005, not le 0.0025
    assert metrics.node("-").by_class()["5xx"] == 1
