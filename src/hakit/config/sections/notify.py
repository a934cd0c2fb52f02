"""``[notify]``: where alerts go besides the log (a webhook and/or e-mail)."""

from __future__ import annotations

import difflib
import json
import re
from email.utils import parseaddr
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from hakit.config.problems import error_at_key
from hakit.config.sections.base import _COOKIE_NAME, _Section
from hakit.config.values import PositiveDuration
from hakit.history.kinds import NOTIFY_EVENTS as _NOTIFY_SELECTABLE

# Alert kinds [notify] events may select: the policy's Alert kinds, plus two that
# group them (hakit.history.kinds.NotifyGroup), in the order they are listed; the
# defaults are the ones hakit.history.kinds.NOTIFY_EVENTS marks selected.
NOTIFY_EVENTS = tuple(str(name) for name in _NOTIFY_SELECTABLE)
DEFAULT_NOTIFY_EVENTS = tuple(str(name) for name, on in _NOTIFY_SELECTABLE.items() if on)
_HEADER_NAME = _COOKIE_NAME  # both are RFC 7230 tokens


def _check_mail_address(value: str) -> str:
    address = parseaddr(value)[1]
    if "@" not in address or any(c in value for c in "\r\n") or " " in address:
        raise ValueError(
            f"{json.dumps(value)} is not an e-mail address; expected e.g. "
            '"ops@example.com" or "Ops <ops@example.com>"'
        )
    return value


def _check_mail_list(value: object) -> object:
    if isinstance(value, str):
        raise ValueError(f"got a string; expected a list such as {json.dumps([value])}")
    return value


MailAddress = Annotated[str, AfterValidator(_check_mail_address)]


class NotifyConfig(_Section):
    """Where alerts go besides the log: a webhook (JSON POST) and/or e-mail (SMTP)."""

    webhook_url: str | None = None
    webhook_timeout: PositiveDuration = 5.0  # one attempt's deadline
    webhook_retries: int = Field(default=3, ge=0)  # after connection errors and 5xx
    webhook_headers: dict[str, str] = Field(default_factory=dict)  # e.g. an auth token
    smtp_host: str | None = Field(default=None, min_length=1)
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_timeout: PositiveDuration = 10.0  # one SMTP conversation's socket deadline
    mail_from: MailAddress | None = None
    mail_to: Annotated[tuple[MailAddress, ...], BeforeValidator(_check_mail_list)] = ()
    events: tuple[str, ...] = DEFAULT_NOTIFY_EVENTS  # which alerts the webhook and e-mail get

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parts = urlsplit(value)
            except ValueError:
                parts = urlsplit("")
            if parts.scheme not in ("http", "https") or not parts.hostname or " " in value:
                raise ValueError(
                    f"{json.dumps(value)} is not an HTTP URL; expected e.g. "
                    '"https://hooks.example.com/hakit"'
                )
        return value

    @field_validator("webhook_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not re.match(_HEADER_NAME, name):
                raise ValueError(
                    f"{json.dumps(name)} is not a header name; expected letters, digits "
                    'and -, e.g. { Authorization = "Bearer ..." }'
                )
            if "\r" in text or "\n" in text:
                raise ValueError(f"the value of {name} contains a line break; expected one line")
        return value

    @field_validator("events")
    @classmethod
    def _known_events(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if name not in NOTIFY_EVENTS:
                close = difflib.get_close_matches(name, NOTIFY_EVENTS, n=1)
                hint = f"did you mean {json.dumps(close[0])}? " if close else ""
                raise ValueError(
                    f"{json.dumps(name)} is not an alert kind; {hint}expected some of: "
                    + ", ".join(NOTIFY_EVENTS)
                )
        return value

    @model_validator(mode="after")
    def _coherent(self) -> NotifyConfig:
        if self.mail_to and self.smtp_host is None:
            raise error_at_key(
                "mail_to",
                "e-mail needs an SMTP server, but smtp_host is not set; expected "
                'smtp_host = "mail.example.com" too (or no mail_to)',
            )
        if self.smtp_host is not None and not self.mail_to:
            raise error_at_key(
                "smtp_host",
                'e-mail has no recipients; expected mail_to = ["ops@example.com"] too',
            )
        if self.smtp_host is not None and self.mail_from is None:
            raise error_at_key(
                "mail_from",
                'required with smtp_host; expected the sender, e.g. mail_from = "hakit@example.com"',
            )
        if (self.smtp_user is None) != (self.smtp_password is None):
            given = "smtp_user" if self.smtp_user is not None else "smtp_password"
            raise error_at_key(
                given, "smtp_user and smtp_password go together; expected both or neither"
            )
        if self.webhook_headers and self.webhook_url is None:
            raise error_at_key(
                "webhook_headers", "only applies to webhook_url, which is not set; expected both"
            )
        return self
