"""Real local receivers for the agents' notifications, shared by the end-to-end tests.

- ``webhook_receiver()``: a threaded HTTP server on 127.0.0.1 keeping every JSON
  body POSTed to it, in arrival order;
- ``smtp_receiver()``: an aiosmtpd SMTP server on 127.0.0.1, served by an event loop
  in its own thread (the agents are other processes: they connect over TCP);
- ``notify_section()``: the ``[notify]`` table pointing a cluster's agents at them.

Both listen on ports the kernel picks and stop (joined, bounded) when the block ends.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

# Every alert kind, so a test sees all the agents send.
ALL_EVENTS = ("restart", "database", "failover", "fence", "manual-intervention", "failed-start")


@dataclass
class Webhook:
    """Every JSON body POSTed to it, in arrival order."""

    url: str = ""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def alerts(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for body in self.bodies if body.get("kind") == kind]

    def manual(self) -> list[dict[str, Any]]:
        """The alerts after which hakit stops acting on its own."""
        with self.lock:
            return [body for body in self.bodies if body.get("manual_intervention")]


@contextmanager
def webhook_receiver() -> Iterator[Webhook]:
    hook = Webhook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.lock:
                hook.bodies.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest's output to the cluster's own history

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@dataclass
class Mailbox:
    """Every message the SMTP server accepted, in arrival order."""

    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def messages(self) -> list[Message]:
        with self.lock:
            return [message_from_bytes(e.original_content or b"") for e in self.envelopes]

    def recipients(self) -> list[list[str]]:
        with self.lock:
            return [list(e.rcpt_tos) for e in self.envelopes]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@contextmanager
def smtp_receiver() -> Iterator[Mailbox]:
    mailbox = Mailbox()
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    servers: list[asyncio.Server] = []

    async def serve() -> None:
        server = await loop.create_server(
            lambda: SMTP(mailbox, hostname="mail.test"), "127.0.0.1", 0
        )
        mailbox.port = int(server.sockets[0].getsockname()[1])
        servers.append(server)
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(serve())
        loop.run_forever()

    thread = threading.Thread(target=run, name="smtp")
    thread.start()
    if not ready.wait(10):
        raise TimeoutError("the SMTP receiver did not start within 10 s")
    try:
        yield mailbox
    finally:

        async def close() -> None:
            for server in servers:
                server.close()
                await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def notify_section(
    webhook: Webhook | None = None,
    mailbox: Mailbox | None = None,
    events: tuple[str, ...] = ALL_EVENTS,
) -> str:
    """The ``[notify]`` table sending ``events`` to the given receivers (no retries)."""
    lines = ["", "[notify]"]
    if webhook is not None:
        lines += [f'webhook_url = "{webhook.url}"', "webhook_retries = 0"]
    if mailbox is not None:
        lines += [
            'smtp_host = "127.0.0.1"',
            f"smtp_port = {mailbox.port}",
            'mail_from = "hakit <hakit@example.com>"',
            'mail_to = ["ops@example.com"]',
            'smtp_timeout = "5s"',
        ]
    lines.append("events = [" + ", ".join(json.dumps(event) for event in events) + "]")
    return "\n".join(lines) + "\n"
