"""Responses the router writes itself: the maintenance page and error answers.

Everything is self-contained (inline CSS, no external assets: while the app is
away nothing else may be reachable either) and never cached, so users see the
app again as soon as it is back.

Every page says what happened to the request, and only what the router knows:

- 503 (``maintenance_page``): no node took the request, so it was **not
  processed** and must be sent again; the page says why (no node now, held
  until the hold ran out, or too large to hold). For a safe request (GET, ...)
  the HTML page reloads itself, which is sending it again; for any other it
  does not (a reload would not resend the form) and asks the user to send it
  again. JSON for API clients: ``"processed": false``.
- 502 / 504 after a node had the request (it died, closed, or did not answer in
  time): it **may or may not have been processed**; check before resending
  (JSON ``"processed": null``). A 502 because no node could be reached at all
  says it was not processed (``reached=False``, JSON ``"processed": false``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

from hakit.router.headers import (
    Header,
)
from hakit.router.responses import (
    encode_head,
)

REASONS: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
}

_MESSAGES: Final = {
    400: "The request could not be understood.",
    408: "The request did not arrive in time.",
    414: "The request URL is too long.",
    431: "The request headers are too large.",
    500: "The router failed to handle the request.",
    502: "The node stopped while handling your request; it may or may not have been saved: "
    "check before resending.",
    503: "The service is unavailable.",
    504: "The application did not answer in time; your request may or may not have been saved: "
    "check before resending.",
    501: "The request uses a feature this server does not implement.",
    505: "Only HTTP/1.0 and HTTP/1.1 are supported here.",
}


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """A complete response the router answers with itself."""

    status: int
    headers: tuple[Header, ...]
    body: bytes

    def encode(self, *, keep_alive: bool, head_only: bool = False) -> bytes:
        """The bytes on the wire; ``head_only`` for an answer to HEAD."""
        connection = b"keep-alive" if keep_alive else b"close"
        headers = [
            *self.headers,
            (b"Content-Length", str(len(self.body)).encode()),
            (b"Cache-Control", b"no-store"),
            (b"Connection", connection),
        ]
        first_line = b"HTTP/1.1 %d %s" % (self.status, REASONS.get(self.status, b"Error"))
        head = encode_head(first_line, headers)
        return head if head_only else head + self.body


def _media_quality(accept: str, wanted: str) -> tuple[float, bool]:
    """(q of the best range matching ``wanted``, whether that range named it exactly)."""
    kind = wanted.split("/")[0]
    best: tuple[int, float] = (-1, 0.0)  # (specificity, q)
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        media = media.lower()
        if media == wanted:
            specificity = 2
        elif media == f"{kind}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1], best[0] == 2


def prefers_json(accept: str | None) -> bool:
    """The Accept header ranks application/json above text/html.

    A tie goes to JSON only when JSON is named and HTML merely matched by a
    wildcard (``application/json, */*`` from API clients); browsers and curl
    (``*/*``) get HTML.
    """
    if not accept:
        return False
    json_q, json_named = _media_quality(accept, "application/json")
    html_q, html_named = _media_quality(accept, "text/html")
    if json_q != html_q:
        return json_q > html_q
    return json_q > 0 and json_named and not html_named


def _seconds(value: float) -> int:
    return max(1, math.ceil(value))


# Why the router answers 503 itself (``maintenance_page``'s ``reason``); in every case no
# node got the request: it was not processed.
NOT_HELD: Final = 0  # no node can serve now, and the request was not held (no hold)
HELD_OUT: Final = 1  # held while no node could serve; its hold ran out first
TOO_LARGE: Final = 2  # its body is over router.hold_body_limit: not held at all
REASONS_503: Final = (NOT_HELD, HELD_OUT, TOO_LARGE)

# How a 503 is shown (``maintenance_page``'s ``form``).
RELOADING: Final = 0  # HTML that reloads itself: a safe request (sending it again is harmless)
RESEND: Final = 1  # HTML asking to send the request again (a form post: a reload would not)
AS_JSON: Final = 2  # for API clients (Accept: application/json)
FORMS: Final = (RELOADING, RESEND, AS_JSON)

NOT_PROCESSED: Final = "Your request was not processed; please send it again"

_PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{refresh_meta}<title>Back in a moment</title>
<style>
  body {{ margin: 0; min-height: 100vh; display: flex; align-items: center;
         justify-content: center; background: #f4f5f7; color: #172b4d;
         font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }}
  main {{ max-width: 32rem; margin: 1.5rem; padding: 2.5rem; background: #fff;
         border-radius: 8px; box-shadow: 0 1px 3px rgba(9, 30, 66, .25); text-align: center; }}
  h1 {{ font-size: 1.5rem; margin: 0 0 1rem; }}
  p {{ line-height: 1.5; margin: .5rem 0; }}
  .note {{ color: #5e6c84; font-size: .875rem; margin-top: 1.5rem; }}
  .spinner {{ width: 2rem; height: 2rem; margin: 0 auto 1.5rem; border-radius: 50%;
             border: 3px solid #dfe1e6; border-top-color: #0052cc;
             animation: spin 1s linear infinite; }}
  @keyframes spin {{ to {{ transform: rotate(360deg); }} }}
</style>
</head>
<body>
<main>
  <div class="spinner" aria-hidden="true"></div>
  <h1>We&rsquo;ll be back in a moment</h1>
  <p>The service is being switched over or maintained right now.{why}</p>
  <p>{what_now}</p>
  <p class="note">HTTP 503 &middot; Service temporarily unavailable</p>
</main>
</body>
</html>
"""


def format_size(size: int) -> str:
    """Bytes for people: 1048576 -> '1 MiB', 1536 -> '1.5 KiB', 100 -> '100 bytes'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.4g} {unit}"
    return f"{size} bytes"


def _why(reason: int, body_limit: int) -> str:
    """The sentence saying why no node took the request ('' when the first line says it)."""
    if reason == HELD_OUT:
        return " Your request waited for it, but it did not come back in time."
    if reason == TOO_LARGE:
        return f" Your request is too large to wait for it (more than {format_size(body_limit)})."
    return ""


def maintenance_page(
    retry_after: float,
    accept: str | None = None,
    *,
    reason: int = NOT_HELD,
    form: int | None = None,
    body_limit: int = 0,
) -> CannedResponse:
    """HTTP 503 with Retry-After, saying the request was not processed (see the module doc).

    ``reason``: NOT_HELD, HELD_OUT or TOO_LARGE; ``form``: RELOADING, RESEND or AS_JSON
    (None: AS_JSON when ``accept`` prefers JSON, else RELOADING); ``body_limit``:
    router.hold_body_limit, named by the TOO_LARGE page.
    """
    seconds = _seconds(retry_after)
    common: tuple[Header, ...] = ((b"Retry-After", str(seconds).encode()),)
    if form is None:
        form = AS_JSON if prefers_json(accept) else RELOADING
    why = _why(reason, body_limit)
    if form == AS_JSON:
        kind = {NOT_HELD: "unavailable", HELD_OUT: "held_out", TOO_LARGE: "too_large"}
        body = json.dumps(
            {
                "error": "unavailable",
                "reason": kind.get(reason, "unavailable"),
                "processed": False,
                "message": f"The service is being switched over or maintained.{why} "
                f"{NOT_PROCESSED} in {seconds} seconds.",
                "retry_after": seconds,
            }
        ).encode()
        return CannedResponse(503, (*common, (b"Content-Type", b"application/json")), body)
    if form == RESEND:
        refresh_meta = ""
        what_now = (
            f"<strong>{NOT_PROCESSED}</strong> once the service is back, in about "
            f"{seconds} seconds (go back and submit it again)."
        )
    else:
        # Reload sooner than Retry-After for people watching: a switchover is usually quick.
        refresh = min(seconds, 10)
        refresh_meta = f'<meta http-equiv="refresh" content="{refresh}">\n'
        what_now = (
            f"Your request was not processed yet. This page reloads by itself every {refresh} "
            "seconds and takes you back as soon as the service is available again."
        )
    html = _PAGE.format(refresh_meta=refresh_meta, why=why, what_now=what_now).encode()
    return CannedResponse(503, (*common, (b"Content-Type", b"text/html; charset=utf-8")), html)


# 502 when no node could be reached at all (``error_page(..., reached=False)``).
_NOT_REACHED: Final = {
    502: f"The application could not be reached. {NOT_PROCESSED}.",
}


def error_page(status: int, accept: str | None = None, *, reached: bool = True) -> CannedResponse:
    """A short error answer (400, 431, 502, ...) in plain text or JSON.

    ``reached``: for a 502 or 504, whether a node had the request (it may or may not
    have been processed) or none could be reached (it was not).
    """
    message = _MESSAGES.get(status, "The request failed.")
    if not reached:
        message = _NOT_REACHED.get(status, message)
    if prefers_json(accept):
        reason = REASONS.get(status, b"Error").decode().lower().replace(" ", "_")
        document: dict[str, object] = {"error": reason, "message": message}
        if status == 502 or status == 504:
            document["processed"] = None if reached else False
        body = json.dumps(document).encode()
        return CannedResponse(status, ((b"Content-Type", b"application/json"),), body)
    return CannedResponse(
        status, ((b"Content-Type", b"text/plain; charset=utf-8"),), (message + "\n").encode()
    )
