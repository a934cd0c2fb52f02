"""Notifications against real receivers: a threaded HTTP server and an aiosmtpd SMTP server.

Everything listens on 127.0.0.1 on ports the kernel picks; nothing waits on a
tuned sleep: deliveries are awaited, and bounds are generous upper limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from hakit.config import Config, load_config
from hakit.demo.cluster import DemoCluster, DemoSettings, free_ports, wait_for
from hakit.errors import ConfigError
from hakit.notify import LogNotifier, MultiNotifier, Notification, notifier_from_config
from hakit.notify.email import EmailNotifier
from hakit.notify.webhook import WebhookNotifier

NOTE = Notification(
    cluster="prod",
    node="node1",
    kind="failed-start",
    reason="app on node1 exited (exited with code 1) while starting; 3 failed starts in a row",
    time=1_700_000_000.25,
    manual_intervention=True,
    epoch=4,
)
FAST_BACKOFF = 0.01  # the real default (0.5 s) only makes these tests slower

# --- a real HTTP receiver ----------------------------------------------------------


@dataclass
class Receiver:
    """A threaded HTTP server: answers POSTs with ``statuses`` in turn (the last one repeats)."""

    statuses: list[int]
    hang: bool = False  # accept and read the request, never answer
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook?token=secret"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@contextmanager
def http_receiver(*statuses: int, hang: bool = False) -> Iterator[Receiver]:
    receiver = Receiver(list(statuses) or [200], hang=hang)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            if receiver.hang:
                receiver.release.wait(30)
                return
            index = min(len(receiver.requests), len(receiver.statuses)) - 1
            status = receiver.statuses[index]
            text = b"" if status < 300 else f"status {status}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    receiver.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        server.shutdown()
        server.server_close()


@contextmanager
def refused_port() -> Iterator[int]:
    """A port that refuses connections for as long as the block runs (bound, not listening)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def webhook(url: str, **options: Any) -> WebhookNotifier:
    options.setdefault("backoff", FAST_BACKOFF)
    return WebhookNotifier(url, cluster="prod", **options)


# --- a real SMTP server ---------------------------------------------------------------


@dataclass
class Mailbox:
    port: int = 0
    envelopes: list[Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def messages(self) -> list[Message]:
        return [message_from_bytes(e.original_content or b"") for e in self.envelopes]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        self.arrived.set()
        return "250 Message accepted for delivery"


@asynccontextmanager
async def smtp_server(**smtp_options: Any) -> AsyncIterator[Mailbox]:
    """aiosmtpd served by this test's event loop (the notifier's smtplib runs in a thread)."""
    mailbox = Mailbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(mailbox, hostname="mail.test", **smtp_options), "127.0.0.1", 0
    )
    mailbox.port = int(server.sockets[0].getsockname()[1])
    try:
        yield mailbox
    finally:
        server.close()
        await server.wait_closed()


def mailer(port: int, **options: Any) -> EmailNotifier:
    options.setdefault("timeout", 5.0)
    return EmailNotifier(
        "127.0.0.1",
        port,
        cluster="prod",
        sender="hakit <hakit@example.com>",
        recipients=("ops@example.com", "Oncall <oncall@example.com>"),
        **options,
    )


# --- webhook -----------------------------------------------------------------------------


def test_webhook_posts_every_field_with_configured_headers() -> None:
    with http_receiver(200) as receiver:
        notifier = webhook(receiver.url, headers={"Authorization": "Bearer t0ken"})
        assert asyncio.run(notifier.send(NOTE)) is True
    [(headers, _)] = receiver.requests
    assert headers["authorization"] == "Bearer t0ken"
    assert headers["content-type"] == "application/json"
    assert receiver.bodies() == [
        {
            "cluster": "prod",
            "node": "node1",
            "kind": "failed-start",
            "reason": NOTE.reason,
            "time": "2023-11-14T22:13:20.250Z",
            "manual_intervention": True,
            "epoch": 4,
        }
    ]


def test_webhook_alert_leaves_out_an_unknown_epoch() -> None:
    with http_receiver(204) as receiver:
        asyncio.run(webhook(receiver.url).alert("crash", "node2", "app on node2 exited"))
    [body] = receiver.bodies()
    assert "epoch" not in body
    assert (body["kind"], body["node"], body["manual_intervention"]) == ("crash", "node2", False)
    assert abs(time.time() - _parse_iso(body["time"])) < 60


def test_webhook_retries_after_503_then_delivers(caplog: pytest.LogCaptureFixture) -> None:
    with http_receiver(503, 200) as receiver:
        assert asyncio.run(webhook(receiver.url, retries=3).send(NOTE)) is True
    assert len(receiver.requests) == 2
    assert receiver.bodies()[0] == receiver.bodies()[1]
    assert "attempt 1 of 4 failed: HTTP 503" in caplog.text
    assert "token=secret" not in caplog.text  # the URL's query may hold a token


def test_webhook_does_not_retry_a_client_error(caplog: pytest.LogCaptureFixture) -> None:
    with http_receiver(400) as receiver:
        assert asyncio.run(webhook(receiver.url, retries=3).send(NOTE)) is False
    assert len(receiver.requests) == 1
    assert "attempt 1 of 4 failed: HTTP 400 (status 400); giving up" in caplog.text


def test_webhook_gives_up_after_its_retries_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with http_receiver(500) as receiver:
        assert asyncio.run(webhook(receiver.url, retries=2).send(NOTE)) is False
    assert len(receiver.requests) == 3
    assert "attempt 3 of 3 failed: HTTP 500 (status 500); giving up" in caplog.text


def test_webhook_retries_a_refused_connection_then_gives_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with refused_port() as port:
        notifier = webhook(f"http://127.0.0.1:{port}/hook", retries=2)
        asyncio.run(notifier.alert("crash", "node1", "app on node1 exited"))  # must not raise
    assert caplog.text.count("failed: ConnectError") == 3
    assert "attempt 3 of 3" in caplog.text and "giving up" in caplog.text


def test_webhook_against_a_receiver_that_never_answers_is_bounded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with http_receiver(hang=True) as receiver:
        notifier = webhook(receiver.url, timeout=0.3, retries=1)
        started = time.monotonic()
        assert asyncio.run(notifier.send(NOTE)) is False
        elapsed = time.monotonic() - started
    assert len(receiver.requests) == 2  # both attempts reached it
    assert 0.6 <= elapsed < notifier.budget
    assert "no answer within 0.3s" in caplog.text


# --- e-mail --------------------------------------------------------------------------------


def test_email_is_delivered_with_subject_recipients_and_what_to_do() -> None:
    async def scenario() -> Mailbox:
        async with smtp_server() as mailbox:
            assert await mailer(mailbox.port).send(NOTE) is True
            return mailbox

    mailbox = asyncio.run(scenario())
    [envelope] = mailbox.envelopes
    assert envelope.mail_from == "hakit@example.com"
    assert envelope.rcpt_tos == ["ops@example.com", "oncall@example.com"]
    [mail] = mailbox.messages()
    assert mail["Subject"] == "[hakit prod] failed-start on node1"
    assert mail["To"] == "ops@example.com, Oncall <oncall@example.com>"
    assert mail["From"] == "hakit <hakit@example.com>"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert NOTE.reason in text
    assert "2023-11-14 22:13:20 UTC" in text and "epoch 4" in text
    assert "MANUAL INTERVENTION REQUIRED" in text
    assert "Restart the hakit agent of node1" in text


def test_email_without_manual_intervention_says_hakit_handles_it() -> None:
    async def scenario() -> Mailbox:
        async with smtp_server() as mailbox:
            await mailer(mailbox.port).alert("database", "node2", "database unreachable")
            return mailbox

    [mail] = asyncio.run(scenario()).messages()
    assert mail["Subject"] == "[hakit prod] database on node2"
    text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "database unreachable" in text and "MANUAL" not in text
    assert "a standby would fail the same way" in text


def test_email_connection_refused_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with refused_port() as port:
        assert asyncio.run(mailer(port).send(NOTE)) is False
    assert f"e-mail via 127.0.0.1:{port}: failed-start on node1 not sent" in caplog.text
    assert "connection refused" in caplog.text


def test_email_over_starttls_with_login(caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login, data.password))
        # handled=False: aiosmtpd then answers 535 itself on a wrong password.
        return AuthResult(success=data.password == b"s3cret", handled=False)

    async def scenario(password: str) -> tuple[bool, Mailbox]:
        async with smtp_server(
            tls_context=server_context,
            require_starttls=True,
            authenticator=authenticator,
            auth_require_tls=True,
        ) as mailbox:
            notifier = mailer(
                mailbox.port,
                starttls=True,
                user="hakit",
                password=password,
                ssl_context=client_context,
            )
            return await notifier.send(NOTE), mailbox

    delivered, mailbox = asyncio.run(scenario("s3cret"))
    assert delivered and len(mailbox.envelopes) == 1
    delivered, mailbox = asyncio.run(scenario("wrong"))
    assert not delivered and mailbox.envelopes == []
    # smtplib tries each mechanism the server offers (PLAIN, then LOGIN) before giving up.
    assert logins[0] == (b"hakit", b"s3cret")
    assert set(logins[1:]) == {(b"hakit", b"wrong")}
    assert "authentication failed: 535" in caplog.text


# --- fan-out ----------------------------------------------------------------------------------


def test_multi_notifier_logs_everything_and_sends_selected_alerts_to_every_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(receiver: Receiver) -> Mailbox:
        async with smtp_server() as mailbox:
            multi = MultiNotifier(
                "prod",
                [webhook(receiver.url), mailer(mailbox.port)],
                events=["failover", "manual-intervention"],
            )
            await multi.alert("crash", "node1", "app on node1 exited; restart 1 of 2")
            await multi.alert("failover", "node1", "stepping down", epoch=3)
            await multi.alert("oom", "node1", "heap exhausted", manual_intervention=True)
            await multi.aclose()
            return mailbox

    with caplog.at_level(logging.WARNING, "hakit.notify"), http_receiver(200) as receiver:
        mailbox = asyncio.run(scenario(receiver))
    # The log gets every alert; the targets only the selected ones, in order.
    assert "ALERT crash on node1: app on node1 exited; restart 1 of 2" in caplog.text
    assert "ALERT oom on node1 [manual intervention required]: heap exhausted" in caplog.text
    assert [(b["kind"], b.get("epoch")) for b in receiver.bodies()] == [
        ("failover", 3),
        ("oom", None),
    ]
    assert [m["Subject"] for m in mailbox.messages()] == [
        "[hakit prod] failover on node1",
        "[hakit prod] oom on node1",
    ]


def test_multi_notifier_never_blocks_the_caller_and_bounds_a_hung_target(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(receiver: Receiver) -> tuple[float, float, Mailbox]:
        async with smtp_server() as mailbox:
            hung = webhook(receiver.url, timeout=1.0, retries=0)
            multi = MultiNotifier("prod", [hung, mailer(mailbox.port)])
            started = time.monotonic()
            await multi.alert("failover", "node1", "stepping down")
            returned = time.monotonic() - started
            # The e-mail goes out while the webhook is still waiting for its answer.
            await asyncio.wait_for(mailbox.arrived.wait(), 5)
            assert "giving up" not in caplog.text
            await multi.aclose()
            return returned, time.monotonic() - started, mailbox

    with http_receiver(hang=True) as receiver:
        returned, total, mailbox = asyncio.run(scenario(receiver))
    assert returned < 1.0  # alert() only queues: less than the webhook's one attempt
    assert len(mailbox.envelopes) == 1
    assert total < 5  # the hung webhook was given up on within its own budget
    assert "no answer within 1s; giving up" in caplog.text


def test_multi_notifier_close_gives_up_on_what_cannot_be_delivered_in_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(receiver: Receiver) -> float:
        multi = MultiNotifier("prod", [webhook(receiver.url, timeout=30, retries=0)])
        await multi.alert("fence", "node1", "lost the lease")
        await multi.alert("failover", "node2", "stepping down")
        started = time.monotonic()
        await multi.aclose(timeout=0.2)
        return time.monotonic() - started

    with http_receiver(hang=True) as receiver:
        waited = asyncio.run(scenario(receiver))
    assert waited < 5
    assert "gave up on 2 undelivered notification(s) after 0.2s" in caplog.text


# --- wiring from the config -------------------------------------------------------------------


def config_with(tmp_path: Path, notify: str) -> Config:
    path = tmp_path / "hakit.toml"
    path.write_text(
        '[cluster]\nname = "prod"\nmode = "restart-only"\n\n'
        '[app]\nstart = ["true"]\nhome = "home"\ndatabase_url = "sqlite:///app.db"\n\n'
        f"[notify]\n{notify}\n"
        '[[nodes]]\nname = "node1"\nport = 8101\n'
    )
    return load_config(path)


NOTIFY_MISTAKES = [
    (
        'webhook_url = "ftp://hooks.example.com"',
        'FILE:11: notify.webhook_url: "ftp://hooks.example.com" is not an HTTP URL; '
        'expected e.g. "https://hooks.example.com/hakit"',
    ),
    (
        'webhook_url = "https://h.example.com"\nwebhook_timeout = "soon"',
        'FILE:12: notify.webhook_timeout: "soon" is not a duration; expected a number of '
        'seconds or a string such as "15s", "2m" or "500ms"',
    ),
    (
        'webhook_url = "https://h.example.com"\nwebhook_retries = -1',
        "FILE:12: notify.webhook_retries: must be at least 0, got -1",
    ),
    (
        'webhook_url = "https://h.example.com"\nwebhook_headers = { "X Token" = "t" }',
        'FILE:12: notify.webhook_headers: "X Token" is not a header name; expected letters, '
        'digits and -, e.g. { Authorization = "Bearer ..." }',
    ),
    (
        'webhook_headers = { Authorization = "Bearer t" }',
        "FILE:11: notify.webhook_headers: only applies to webhook_url, which is not set; "
        "expected both",
    ),
    (
        'mail_to = ["ops@example.com"]',
        "FILE:11: notify.mail_to: e-mail needs an SMTP server, but smtp_host is not set; "
        'expected smtp_host = "mail.example.com" too (or no mail_to)',
    ),
    (
        'smtp_host = "mail.example.com"\nmail_from = "hakit@example.com"',
        "FILE:11: notify.smtp_host: e-mail has no recipients; expected mail_to = "
        '["ops@example.com"] too',
    ),
    (
        'smtp_host = "mail.example.com"\nmail_to = ["ops@example.com"]',
        "FILE:10: notify.mail_from: required with smtp_host; expected the sender, e.g. "
        'mail_from = "hakit@example.com"',
    ),
    (
        'smtp_host = "m.example.com"\nmail_from = "h@example.com"\nmail_to = "ops@example.com"',
        'FILE:13: notify.mail_to: got a string; expected a list such as ["ops@example.com"]',
    ),
    (
        'smtp_host = "m.example.com"\nmail_from = "h@example.com"\nmail_to = ["ops"]',
        'FILE:13: notify.mail_to[0]: "ops" is not an e-mail address; expected e.g. '
        '"ops@example.com" or "Ops <ops@example.com>"',
    ),
    (
        'smtp_host = "m.example.com"\nmail_from = "h@example.com"\nmail_to = ["o@example.com"]'
        '\nsmtp_user = "hakit"',
        "FILE:14: notify.smtp_user: smtp_user and smtp_password go together; expected both "
        "or neither",
    ),
    (
        "smtp_port = 0",
        "FILE:11: notify.smtp_port: must be at least 1, got 0",
    ),
    (
        'events = ["failover", "manual_intervention"]',
        'FILE:11: notify.events: "manual_intervention" is not an alert kind; did you mean '
        '"manual-intervention"? expected some of: failover, restart, manual-intervention, '
        "fence, database, oom, failed-start, crash, hang, failsafe, snapshot, backup, error",
    ),
    (
        'webhook = "https://h.example.com"',
        "FILE:11: notify.webhook: unknown key; did you mean webhook_url?",
    ),
]


@pytest.mark.parametrize(("notify", "problem"), NOTIFY_MISTAKES)
def test_notify_config_mistakes_name_file_line_and_key(
    tmp_path: Path, notify: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config_with(tmp_path, notify)
    path = str(tmp_path / "hakit.toml")
    assert [line.replace(path, "FILE") for line in caught.value.problems] == [problem]


def test_notifier_from_config_builds_the_configured_targets(tmp_path: Path) -> None:
    assert isinstance(notifier_from_config(config_with(tmp_path, "")), LogNotifier)
    cfg = config_with(
        tmp_path,
        'webhook_url = "https://hooks.example.com/x"\nwebhook_retries = 1\n'
        'webhook_headers = { Authorization = "Bearer t" }\n'
        'smtp_host = "mail.example.com"\nsmtp_port = 587\nsmtp_starttls = true\n'
        'mail_from = "hakit@example.com"\nmail_to = ["ops@example.com"]\n'
        'events = ["failover"]\n',
    )
    notifier = notifier_from_config(cfg)
    assert isinstance(notifier, MultiNotifier)
    hook, mail = notifier.targets
    assert isinstance(hook, WebhookNotifier) and isinstance(mail, EmailNotifier)
    assert hook.headers["Authorization"] == "Bearer t" and len(hook.delays) == 1
    assert (mail.host, mail.port, mail.starttls, mail.recipients) == (
        "mail.example.com",
        587,
        True,
        ("ops@example.com",),
    )
    assert notifier.events == {"failover"} and notifier.cluster == "prod"
    assert cfg.notify.events == ("failover",)


def test_end_to_end_from_config_to_a_real_receiver(tmp_path: Path) -> None:
    async def scenario(url: str) -> None:
        cfg = config_with(tmp_path, f'webhook_url = "{url}"\n')
        notifier = notifier_from_config(cfg)
        await notifier.alert("failover", "node1", "stepping down", epoch=2)
        await notifier.alert("status", "node1", "not selected by the default events")
        assert isinstance(notifier, MultiNotifier)
        await notifier.aclose()

    with http_receiver(200) as receiver:
        asyncio.run(scenario(receiver.url))
    assert [(b["cluster"], b["kind"], b["epoch"]) for b in receiver.bodies()] == [
        ("prod", "failover", 2)
    ]


def _parse_iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- a real agent ---------------------------------------------------------------------------


@pytest.mark.e2e
def test_agent_sends_its_alerts_to_the_configured_webhook(tmp_path: Path) -> None:
    """`hakit agent` builds its notifier from [notify]: a crash of the app reaches the receiver."""
    router_port, node_port = free_ports(2)
    settings = DemoSettings(
        mode="restart-only", nodes=1, router_port=router_port, node_ports=(node_port,)
    )
    with http_receiver(200) as receiver:
        cluster = DemoCluster(tmp_path / "cluster", settings)
        with cluster.config_path.open("a") as config:
            config.write(f'\n[notify]\nwebhook_url = "{receiver.url}"\nevents = ["restart"]\n')
        try:
            cluster.start()
            wait_for(cluster.active_running, 30, "node1 running")
            pid = cluster.app_pid("node1")
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: receiver.requests, 30, "the crash alert at the webhook")
        finally:
            cluster.stop()
            cluster.close()
    [body] = receiver.bodies()
    assert (body["cluster"], body["node"], body["kind"]) == ("demo", "node1", "crash")
    assert body["reason"].startswith("app on node1 exited (killed by SIGKILL); restart 1 of 2")
    assert body["epoch"] == 1 and body["manual_intervention"] is False
