"""Git smart HTTP for tests: ``git http-backend`` behind a small threaded CGI server.

Each request runs ``git http-backend`` with the CGI environment (RFC 3875)
built from the HTTP request; the request body is streamed to its stdin
(chunked bodies de-chunked on the way, which http-backend reads to EOF when
CONTENT_LENGTH is absent) and its stdout streamed back as a chunked response,
the CGI ``Status`` header becoming the status line. Nothing is buffered whole,
so multi-MB packs pass through as they would behind Apache's mod_cgi.
``GET /status`` answers RUNNING (the app contract), for routers that check it.

``before_response(path, query)`` runs after http-backend produced its headers
and before the response is sent; returning True makes this the last response
on the connection (``Connection: close``). Tests use it to fail a node over
between two of git's requests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

GIT = shutil.which("git") or "git"
BLOCK = 1 << 16

Hook = Callable[[str, str], bool]


class _GitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: GitHttpServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _status(self) -> None:
        body = b'{"state": "RUNNING"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _environ(self, path: str, query: str, chunked: bool) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "hakit-test-git-bridge",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "REMOTE_USER": "tester",  # an authenticated user: http-backend then allows push
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
        }
        if not chunked and self.headers.get("Content-Length") is not None:
            env["CONTENT_LENGTH"] = self.headers["Content-Length"]
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_PROXY"):
                env[key] = value  # HTTP_CONTENT_ENCODING, HTTP_GIT_PROTOCOL, ...
        return env

    def _cgi(self) -> None:
        url = urlsplit(self.path)
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        if url.path == "/status":  # the router's health checks: the app contract's answer
            self._status()
            return
        with self.server.lock:
            self.server.requests.append((self.command, self.path))
            if chunked:
                self.server.chunked.append(self.path)
        proc = subprocess.Popen(
            [GIT, "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._environ(url.path, url.query, chunked),
        )
        assert proc.stdin is not None and proc.stdout is not None
        feeder = threading.Thread(target=self._feed, args=(proc.stdin, chunked), daemon=True)
        feeder.start()
        try:
            status, headers = _cgi_head(proc.stdout)
            last = self.server.before_response(url.path, url.query)
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Transfer-Encoding", "chunked")
            if last:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            while data := proc.stdout.read1(BLOCK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            feeder.join(30)
            proc.stdout.close()
            if proc.wait(30) != 0:
                self.close_connection = True

    def _feed(self, stdin: IO[bytes], chunked: bool) -> None:
        try:
            if chunked:
                for _ in range(10_000_000):  # bounded: one chunk per turn
                    size = int(self.rfile.readline(100).split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline(1000) not in (b"\r\n", b""):
                            pass
                        break
                    _copy(self.rfile, stdin, size)
                    self.rfile.readline(10)
            else:
                _copy(self.rfile, stdin, int(self.headers.get("Content-Length", "0")))
        except (BrokenPipeError, ValueError):
            pass  # http-backend stopped reading (it answered an error)
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()


def _copy(source: IO[bytes], target: IO[bytes], size: int) -> None:
    while size:
        data = source.read(min(size, BLOCK))
        if not data:
            raise ValueError("request body cut short")
        target.write(data)
        size -= len(data)


def _cgi_head(stdout: IO[bytes]) -> tuple[int, list[tuple[str, str]]]:
    """The CGI response headers: (status from ``Status:``, the other headers)."""
    status, headers = 200, []
    for _ in range(100):
        line = stdout.readline(8192).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        if name.strip().lower() == "status":
            status = int(value.split()[0])
        else:
            headers.append((name.strip(), value.strip()))
    return status, headers


class GitHttpServer(ThreadingHTTPServer):
    """Serves the bare repositories under ``root`` over smart HTTP on its own port."""

    daemon_threads = True

    def __init__(self, name: str, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _GitHandler)
        self.name = name
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.chunked: list[str] = []  # paths of requests whose body came chunked
        self.hook: Hook | None = None
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def before_response(self, path: str, query: str) -> bool:
        hook = self.hook
        return hook(path, query) if hook is not None else False

    def stop_listening(self) -> None:
        """New connections are refused from now on (the node is gone)."""
        if self._stopped:
            return
        self._stopped = True
        self.shutdown()
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        self.server_close()
        self._thread.join(5)

    def stop(self) -> None:
        self.stop_listening()


def git_env(home: Path) -> dict[str, str]:
    """An environment for the git client: no user or system config, no proxy, no prompts."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.lower().endswith("_proxy") and not key.startswith("GIT_")
    }
    env |= {
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Tester",
        "GIT_AUTHOR_EMAIL": "tester@example.invalid",
        "GIT_COMMITTER_NAME": "Tester",
        "GIT_COMMITTER_EMAIL": "tester@example.invalid",
    }
    return env


def git(env: dict[str, str], *args: str | Path, cwd: Path | None = None) -> str:
    """Run git; raise with its output when it fails."""
    done = subprocess.run(
        [GIT, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))} failed:\n{done.stderr}")
    return done.stdout.strip()
