"""HTTP/1.1 transport: one thread per connection, keep-alive, one log line per request."""

from __future__ import annotations

import socket
import socketserver
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

from hakit.demo.database import DatabaseUnavailable
from hakit.demo.endpoints import dispatch
from hakit.demo.node import DemoNode
from hakit.demo.state import MaintenanceActive, Phase
from hakit.demo.web import CHUNK, Body, HttpError, Request, Response, error_response, parse_target


class DemoServer(ThreadingHTTPServer):
    daemon_threads = True  # idle keep-alive connections must not keep the process alive
    # socketserver listens with a backlog of 5: a router releasing a burst of held
    # requests after a failover would see connects dropped and retried seconds later.
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], node: DemoNode) -> None:
        self.node = node
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, DemoHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall on DNS;
        # the name is never used here.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (e.g. during a hang) is routine, not a traceback.
        self.node.log(f"connection from {client_address[0]} ended with an error")


def _respond_to_error(node: DemoNode, exc: Exception) -> Response:
    if isinstance(exc, HttpError):
        return error_response(exc.status, str(exc), list(exc.headers))
    if isinstance(exc, DatabaseUnavailable):
        return error_response(500, f"database unavailable: {exc}")
    if isinstance(exc, MaintenanceActive):
        return error_response(503, str(exc), [("Retry-After", "30")])
    node.log("internal error:\n" + traceback.format_exc().rstrip())
    return error_response(500, f"internal error: {exc.__class__.__name__}: {exc}")


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries Content-Length
    server_version = "hakit-demo"
    timeout = 300  # an idle keep-alive connection is closed after this long

    @property
    def node(self) -> DemoNode:
        return cast(DemoServer, self.server).node

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _serve logs one line per request itself, with the duration

    def log_message(self, format: str, *args: Any) -> None:
        self.node.log(format % args)

    def _serve(self) -> None:
        node = self.node
        started = time.monotonic()
        path, query = parse_target(self.path)
        body = Body(self.rfile, self.headers)
        request = Request(self.command, path, query, self.headers, body)
        with node.lifecycle.request():
            node.hang.pass_through()
            try:
                response = dispatch(node, request)
            except Exception as exc:
                response = _respond_to_error(node, exc)
            sent = self._send(response, closing=not body.consumed)
        elapsed_ms = (time.monotonic() - started) * 1000
        note = "" if sent else " (client gone)"
        node.log(f"{self.command} {self.path} {response.status} {elapsed_ms:.1f} ms{note}")
        if response.after_send is not None:
            response.after_send()

    def _send(self, response: Response, closing: bool) -> bool:
        """Write ``response``; False when the client went away meanwhile."""
        node = self.node
        # An unread request body would be parsed as the next request: close instead.
        # While stopping, close too, so clients reconnect to whichever node serves next.
        if closing or node.lifecycle.phase is Phase.STOPPING:
            self.close_connection = True
        length = response.file.stat().st_size if response.file else len(response.body)
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            self.send_header("X-Hakit-Node", node.name)
            for name, value in response.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if response.file is None:
                self.wfile.write(response.body)
            else:
                with open(response.file, "rb") as handle:
                    while chunk := handle.read(CHUNK):
                        self.wfile.write(chunk)
            self.wfile.flush()
        except OSError:  # the client went away (reset, broken pipe, timeout)
            self.close_connection = True
            return False
        return True
