"""curl through the router: chunked upload, Expect: 100-continue, HEAD, keep-alive.

curl is the client most admins test with; it is strict about framing (a HEAD
answer with a body, a missing 100, a connection closed early all show in its
exit status or verbose output). The backend is a threaded http.server that
hashes what it receives and answers ``Expect: 100-continue`` itself: with
``100 Continue`` normally, with a final 403 (and no 100) on ``/deny``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.router_harness import ClusterHolder, RouterThread, make_config, read_body

CURL = shutil.which("curl")
pytestmark = pytest.mark.skipif(CURL is None, reason="curl is not installed")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: CurlBackend

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_expect_100(self) -> bool:
        with self.server.lock:
            self.server.expects.append(self.path)
        if self.path == "/deny":  # a final answer instead of 100: the body must not come
            self._send(403, b"no uploads here\n")
            return False
        return super().handle_expect_100()

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> tuple[int, str]:
        sha, length = read_body(self.rfile, self.headers)
        return length, sha

    def do_GET(self) -> None:
        if self.path == "/status":  # the app contract, for the router's checks
            self._send(200, b'{"state": "RUNNING"}')
            return
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))
        self._send(200, json.dumps({"path": self.path}).encode())

    def do_HEAD(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))
        self._send(200, b"0123456789" * 100)  # Content-Length: 1000, no body (HEAD)

    def do_POST(self) -> None:
        length, sha = self._body()
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))
        self._send(200, json.dumps({"length": length, "sha256": sha}).encode())

    do_PUT = do_POST


class CurlBackend(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.expects: list[str] = []  # paths of requests that came with Expect: 100-continue
        self.connections = 0
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[tuple[RouterThread, CurlBackend]]:
    backend = CurlBackend()
    cluster = ClusterHolder()
    cluster.active("n1", 1)
    thread = RouterThread(make_config(tmp_path, {"n1": backend.port}), cluster, None)
    try:
        yield thread, backend
    finally:
        thread.close()
        backend.stop()


def curl(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "60", *args],
        input=data,
        capture_output=True,
        timeout=90,
        env=env,
        check=False,
    )


def test_chunked_upload_from_stdin(router) -> None:
    proxy, backend = router
    body = os.urandom(3 * 1024 * 1024 + 5)
    done = curl(
        "-X",
        "POST",
        "-T",
        "-",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect:",
        f"http://127.0.0.1:{proxy.port}/upload",
        data=body,
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert (answer["length"], answer["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    assert "chunked" in backend.requests[-1][2].get("Transfer-Encoding", "").lower()


def test_expect_100_continue_is_relayed_to_curl(router, tmp_path) -> None:
    proxy, backend = router
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(2 * 1024 * 1024))
    # A long expect100-timeout: without the relayed 100, curl would sit it out (and the
    # verbose log would not show the 100).
    done = curl(
        "-v",
        "--expect100-timeout",
        "50",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{upload}",
        f"http://127.0.0.1:{proxy.port}/upload",
    )
    assert done.returncode == 0, done.stderr
    assert b"< HTTP/1.1 100 Continue" in done.stderr
    answer = json.loads(done.stdout)
    assert answer["sha256"] == hashlib.sha256(upload.read_bytes()).hexdigest()
    assert backend.expects == ["/upload"]


def test_final_answer_without_100_skips_the_body(router, tmp_path) -> None:
    proxy, _backend = router
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(2 * 1024 * 1024))
    done = curl(
        "--expect100-timeout",
        "50",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{upload}",
        "-w",
        "\n%{http_code} %{size_upload}",
        f"http://127.0.0.1:{proxy.port}/deny",
    )
    assert done.returncode == 0, done.stderr
    body, _, stats = done.stdout.rpartition(b"\n")
    assert body == b"no uploads here\n"
    assert stats == b"403 0"  # curl sent none of the 2 MiB
    # The router is fine afterwards (that connection was closed: its framing was unknown).
    again = curl("-w", "\n%{http_code}", f"http://127.0.0.1:{proxy.port}/after")
    assert again.stdout.endswith(b"\n200")


def test_final_answer_without_100_closes_the_connection(router) -> None:
    """The client may or may not send its body now: the connection cannot frame a next request."""
    proxy, _backend = router
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"POST /deny HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):  # ends only if the router closes
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ") and body == b"no uploads here\n"
    assert b"connection: close" in head.lower()


def test_head(router) -> None:
    proxy, backend = router
    done = curl("-I", "-w", "%{http_code} %{size_download}", f"http://127.0.0.1:{proxy.port}/x")
    assert done.returncode == 0, done.stderr  # a body after the HEAD answer would show here
    head = done.stdout.lower()
    assert head.startswith(b"http/1.1 200") and b"content-length: 1000" in head
    assert head.endswith(b"200 0")
    assert backend.requests[-1][:2] == ("HEAD", "/x")


def test_keep_alive_with_several_urls(router) -> None:
    proxy, backend = router
    base = f"http://127.0.0.1:{proxy.port}"
    urls = [f"{base}/one", f"{base}/two", f"{base}/three", f"{base}/four"]
    outputs = [arg for url in urls for arg in ("-o", "/dev/null", url)]
    done = curl("-w", "%{num_connects}\n", *outputs)
    assert done.returncode == 0, done.stderr
    # Only the first transfer opened a connection: the router kept it alive for the rest.
    assert done.stdout.split() == [b"1", b"0", b"0", b"0"]
    assert [path for _, path, _ in backend.requests] == ["/one", "/two", "/three", "/four"]
