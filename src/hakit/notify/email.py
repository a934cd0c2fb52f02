"""E-mail notifications over SMTP (smtplib, run in a thread so the event loop never blocks).

One attempt per alert: once a mail server has accepted a message it queues and
retries on its own; when it cannot be reached, the failure is logged (and the
webhook, if configured, is the second path).
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from hakit.notify.base import Notification, SendsDirectly

log = logging.getLogger("hakit.notify")

# What an operator reading the alert should know or do, per alert kind.
ADVICE = {
    "failover": "The active role moved to another node on its own (the reason says from "
    "which node, and why). The node that failed stays standby when it recovers (no automatic "
    "failback); move the service back with a planned switchover once the cause is fixed.",
    "fence": "A node was fenced so that it cannot write beside the active node: its agent "
    "lost the leader lease and killed its own app, or the fence command powered it off (the "
    "reason says which). Check that node and its path to the coordination store.",
    "database": "hakit neither restarts nor fails over for this: a standby would fail the "
    "same way. Check the database; the app recovers when the database does.",
    "failed-start": "By default a failed start does not cause a failover: another node would "
    "fail to start the same way (failover.on_failed_start). hakit retries up to "
    "restart_attempts times.",
}
RESTART_ADVICE = (
    "hakit restarts the app on the same node; after restart_attempts failures within "
    "failure_window it fails over. Nothing to do unless it keeps happening."
)
MANUAL_ADVICE = """\
MANUAL INTERVENTION REQUIRED: hakit has stopped acting on {node}.

1. Find the cause: the app's log (<state_dir>/logs/app-{node}.log), `hakit why` and
   `hakit events` show what failed and what hakit did.
2. Fix it (configuration, memory, disk, database, ...).
3. Restart the hakit agent of {node}: it starts supervising the app again."""


def subject(note: Notification) -> str:
    return f"[hakit {note.cluster}] {note.kind} on {note.node}"


def body(note: Notification) -> str:
    when = datetime.fromtimestamp(note.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    epoch = f", epoch {note.epoch}" if note.epoch else ""
    advice = MANUAL_ADVICE if note.manual_intervention else ADVICE.get(note.kind, RESTART_ADVICE)
    return (
        f"{note.kind} on {note.node} (cluster {note.cluster}{epoch}) at {when}:\n\n"
        f"{note.reason}\n\n"
        f"{advice.format(node=note.node)}\n"
    )


def message(note: Notification, sender: str, recipients: Sequence[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = subject(note)
    msg["From"] = sender
    msg["To"] = ", ".join(recipients)
    msg["Date"] = formatdate(note.time, localtime=False)
    # make_msgid() would look up this host's FQDN (a DNS query); the sender's domain will do.
    msg["Message-ID"] = make_msgid("hakit", domain=address(sender).rpartition("@")[2])
    if note.manual_intervention:
        msg["X-Priority"] = "1"
    msg.set_content(body(note))
    return msg


def address(text: str) -> str:
    """'Ops <ops@example.com>' -> 'ops@example.com' (the SMTP envelope wants the bare address)."""
    return parseaddr(text)[1]


class EmailNotifier(SendsDirectly):
    """Mails each alert to ``recipients``; a ``Notifier`` and a ``MultiNotifier`` target."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        cluster: str,
        sender: str,
        recipients: Sequence[str],
        starttls: bool = False,
        user: str | None = None,
        password: str | None = None,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.cluster = cluster
        self.sender = sender
        self.recipients = tuple(recipients)
        self.starttls = starttls
        self.user = user
        self.password = password
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.name = f"e-mail via {host}:{port}"

    @property
    def budget(self) -> float:
        # ``timeout`` bounds each socket operation; a conversation has a handful
        # (connect, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA).
        return 3 * self.timeout

    async def send(self, note: Notification) -> bool:
        msg = message(note, self.sender, self.recipients)
        try:
            refused = await asyncio.to_thread(self._send_blocking, msg)
        except (smtplib.SMTPException, OSError) as error:
            log.error(
                "%s: %s on %s not sent: %s", self.name, note.kind, note.node, _describe(error)
            )
            return False
        if refused:
            log.error(
                "%s: %s on %s: refused for %s", self.name, note.kind, note.node, ", ".join(refused)
            )
        return len(refused) < len(self.recipients)

    def _send_blocking(self, msg: EmailMessage) -> dict[str, tuple[int, bytes]]:
        # The short host name, not getfqdn(): a slow DNS must not eat the timeout.
        with smtplib.SMTP(
            self.host, self.port, timeout=self.timeout, local_hostname=socket.gethostname()
        ) as smtp:
            if self.starttls:
                smtp.starttls(context=self.ssl_context or ssl.create_default_context())
            if self.user is not None and self.password is not None:
                smtp.login(self.user, self.password)
            return smtp.send_message(
                msg,
                from_addr=address(self.sender),
                to_addrs=[address(r) for r in self.recipients],
            )


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is an SMTP server listening there?)"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        text = text.decode(errors="replace") if isinstance(text, bytes) else text
        what = (
            "authentication failed: " if isinstance(error, smtplib.SMTPAuthenticationError) else ""
        )
        return f"{what}{error.smtp_code} {text}"
    return f"{type(error).__name__}: {error}"
