"""A multi-GB streamed upload through the router, with the router's memory watched.

The router runs in its own process (its resident memory sampled with psutil
throughout); the client generates the body on the fly (no file: 2 GiB of
numbered 1 MiB blocks) and hashes what it sends; the backend is a plain socket
server that counts and hashes what it receives. The digests must match and the
router's peak RSS must stay within a constant bound of its size before the
upload, whatever the upload's size.

On a machine too slow to move 2 GiB within the budget (measured by a short
warm-up upload), the test uploads 1 GiB instead; the memory bound is the same.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.router_harness import BLOCK, ROUTER_PROCESS, PeakRss, SocketServer, make_config

GiB = 1 << 30
BUDGET = 20.0  # seconds the full-size upload may take, judged from the warm-up's rate
RSS_GROWTH_AT_MOST = 32 * 1024 * 1024  # measured ~8 MiB for 2 GiB: a copy would be 64x this
WARM_UP = 64 * len(BLOCK)
STATUS_RUNNING = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
    b'{"state": "RUNNING"}'
)


def numbered_block(index: int) -> bytes:
    """1 MiB: the block's number, then a fixed pattern (a lost or repeated block shows)."""
    return struct.pack("<Q", index) + BLOCK[8:]


class CountingBackend(SocketServer):
    """Answers each request with the length and SHA-256 of its body (keep-alive).

    ``GET /status`` answers RUNNING, as the app contract says.
    """

    def __init__(self) -> None:
        super().__init__(threaded=True)

    def handle(self, conn: socket.socket) -> None:
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        pending = b""
        with conn:
            conn.settimeout(60)
            for _ in range(1000):  # bounded: one request per turn
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                head, _, pending = pending.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if head.startswith(b"GET /status "):  # the router's health checks
                    conn.sendall(STATUS_RUNNING)
                    continue
                digest, received = hashlib.sha256(), 0
                first, pending = pending[:length], pending[length:]
                digest.update(first)
                received += len(first)
                while received < length:
                    size = conn.recv_into(view, min(len(buffer), length - received))
                    if not size:
                        return
                    digest.update(view[:size])
                    received += size
                body = json.dumps({"length": received, "sha256": digest.hexdigest()}).encode()
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )


@pytest.fixture
def router_process(tmp_path: Path) -> Iterator[tuple[int, psutil.Process]]:
    backend = CountingBackend()
    cfg = make_config(tmp_path, {"n1": backend.port})
    proc = subprocess.Popen(
        [sys.executable, "-c", ROUTER_PROCESS, cfg.model_dump_json()],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the router prints its port once listening
        assert line.strip().isdigit(), f"router process did not start (exit {proc.poll()})"
        yield int(line), psutil.Process(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        backend.stop()


def upload(port: int, size: int) -> tuple[dict[str, Any], str, float]:
    """POST ``size`` bytes of numbered blocks; (backend's answer, our digest, seconds)."""
    digest = hashlib.sha256()
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            b"POST /upload HTTP/1.1\r\nHost: app\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size
        )
        for index in range(size // len(BLOCK)):
            block = numbered_block(index)
            sock.sendall(block)
            digest.update(block)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    elapsed = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    return json.loads(body), digest.hexdigest(), elapsed


def test_multi_gb_upload_streams_in_constant_memory(router_process) -> None:
    port, process = router_process
    answer, digest, elapsed = upload(port, WARM_UP)
    assert (answer["length"], answer["sha256"]) == (WARM_UP, digest)
    rate = WARM_UP / max(elapsed, 1e-6)
    size = 2 * GiB if 2 * GiB / rate <= BUDGET else GiB
    baseline = process.memory_info().rss
    with PeakRss(process) as rss:
        answer, digest, elapsed = upload(port, size)
    assert (answer["length"], answer["sha256"]) == (size, digest)
    growth = rss.peak - baseline
    print(
        f"\n{size >> 20} MiB through the router in {elapsed:.1f} s "
        f"({size / elapsed / 2**20:.0f} MiB/s); router RSS {baseline >> 20} MiB, "
        f"peak growth {growth / 2**20:.1f} MiB"
    )
    assert growth < RSS_GROWTH_AT_MOST, f"router RSS grew by {growth >> 20} MiB"
