"""Responses the router writes itself: the maintenance page and error answers.

Everything is self-contained (inline CSS, no external assets: while the app is
away nothing else may be reachable either) and never cached, so users see the
app again as soon as it is back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Final

from hakit.router.headers import Header, encode_head

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
    502: "The application did not answer the request. It was not processed; try again shortly.",
    503: "The service is unavailable.",
    504: "The application did not answer in time.",
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


_PAGE: Final = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{refresh}">
<title>Back in a moment</title>
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
  <p>The service is being switched over or maintained right now.</p>
  <p>Your work is safe. This page reloads by itself every {refresh} seconds
     and takes you back as soon as the service is available again.</p>
  <p class="note">HTTP 503 &middot; Service temporarily unavailable</p>
</main>
</body>
</html>
"""


def maintenance_page(retry_after: float, accept: str | None) -> CannedResponse:
    """HTTP 503 with Retry-After: friendly HTML, or JSON for API clients."""
    seconds = _seconds(retry_after)
    common: tuple[Header, ...] = ((b"Retry-After", str(seconds).encode()),)
    if prefers_json(accept):
        body = json.dumps(
            {
                "error": "unavailable",
                "message": "The service is being switched over or maintained; try again later.",
                "retry_after": seconds,
            }
        ).encode()
        return CannedResponse(503, (*common, (b"Content-Type", b"application/json")), body)
    # Reload sooner than Retry-After for people watching: a switchover is usually quick.
    html = _PAGE.format(refresh=min(seconds, 10)).encode()
    return CannedResponse(503, (*common, (b"Content-Type", b"text/html; charset=utf-8")), html)


def error_page(status: int, accept: str | None = None) -> CannedResponse:
    """A short error answer (400, 431, 502, ...) in plain text or JSON."""
    message = _MESSAGES.get(status, "The request failed.")
    if prefers_json(accept):
        reason = REASONS.get(status, b"Error").decode().lower().replace(" ", "_")
        body = json.dumps({"error": reason, "message": message}).encode()
        return CannedResponse(status, ((b"Content-Type", b"application/json"),), body)
    return CannedResponse(
        status, ((b"Content-Type", b"text/plain; charset=utf-8"),), (message + "\n").encode()
    )
