"""The router's own answers say what happened to the request, and nothing it cannot know
(router/pages.py); router.hold_body_limit is read as a size (hakit.config)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from hakit.config import RouterConfig, parse_size
from hakit.router.pages import (
    AS_JSON,
    FORMS,
    HELD_OUT,
    NOT_HELD,
    NOT_PROCESSED,
    REASONS_503,
    RELOADING,
    RESEND,
    TOO_LARGE,
    error_page,
    format_size,
    maintenance_page,
)

LIMIT = 1 << 20


def text(reason: int, form: int) -> str:
    return maintenance_page(7, reason=reason, form=form, body_limit=LIMIT).body.decode()


@pytest.mark.parametrize("reason", REASONS_503)
@pytest.mark.parametrize("form", FORMS)
def test_every_503_says_the_request_was_not_processed(reason: int, form: int) -> None:
    page = maintenance_page(7, reason=reason, form=form, body_limit=LIMIT)
    assert page.status == 503 and (b"Retry-After", b"7") in page.headers
    body = page.body.decode()
    assert "not processed" in body
    assert "safe" not in body.lower()  # "your work is safe": the router cannot know that


def test_reloading_page_is_for_safe_requests_only() -> None:
    reloading, resend = text(NOT_HELD, RELOADING), text(NOT_HELD, RESEND)
    assert 'http-equiv="refresh" content="7"' in reloading  # reloading is resending a GET
    assert "http-equiv" not in resend  # a reload would not resend a form
    assert f"<strong>{NOT_PROCESSED}</strong>" in resend


def test_page_says_why_no_node_took_the_request() -> None:
    assert "did not come back in time" in text(HELD_OUT, RESEND)
    assert "did not come back" not in text(NOT_HELD, RESEND)
    assert "too large to wait for it (more than 1 MiB)" in text(TOO_LARGE, RESEND)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [(NOT_HELD, "unavailable"), (HELD_OUT, "held_out"), (TOO_LARGE, "too_large")],
)
def test_json_503(reason: int, kind: str) -> None:
    page = maintenance_page(30, reason=reason, form=AS_JSON, body_limit=LIMIT)
    assert (b"Content-Type", b"application/json") in page.headers
    document = json.loads(page.body)
    assert document["error"] == "unavailable" and document["reason"] == kind
    assert document["processed"] is False and document["retry_after"] == 30
    assert f"{NOT_PROCESSED} in 30 seconds" in document["message"]


def test_form_follows_accept_when_not_given() -> None:
    assert maintenance_page(7, "application/json").body.startswith(b"{")
    assert maintenance_page(7, "text/html,*/*;q=0.8").body.startswith(b"<!DOCTYPE html>")


def test_502_after_a_node_had_the_request_says_it_may_have_been_saved() -> None:
    message = error_page(502).body.decode()
    assert "may or may not have been saved: check before resending" in message
    document = json.loads(error_page(502, "application/json").body)
    assert document["error"] == "bad_gateway" and document["processed"] is None
    # The same for a 504: the node had it and did not answer in time.
    assert json.loads(error_page(504, "application/json").body)["processed"] is None


def test_502_when_no_node_was_reached_says_it_was_not_processed() -> None:
    assert NOT_PROCESSED in error_page(502, reached=False).body.decode()
    document = json.loads(error_page(502, "application/json", reached=False).body)
    assert document["processed"] is False and NOT_PROCESSED in document["message"]


def test_other_errors_carry_no_processed_field() -> None:
    assert "processed" not in json.loads(error_page(400, "application/json").body)


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (100, "100 bytes"),
        (1536, "1.5 KiB"),
        (65536, "64 KiB"),
        (LIMIT, "1 MiB"),
        (3 << 30, "3 GiB"),
    ],
)
def test_format_size(size: int, shown: str) -> None:
    assert format_size(size) == shown


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (4096, 4096),
        ("100", 100),
        ("100B", 100),
        ("64KiB", 65536),
        ("1 MiB", LIMIT),
        ("1.5MiB", 3 << 19),
        ("1GiB", 1 << 30),
        ("2MB", 2_000_000),
        ("10kB", 10_000),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (-1, "negative"),
        (True, "boolean"),
        (1.5, "got a float"),
        ("1 XB", "is not a size"),
        ("MiB", "is not a size"),
    ],
)
def test_parse_size_rejects(value: object, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_size(value)


def test_hold_body_limit_setting() -> None:
    assert RouterConfig().hold_body_limit == LIMIT  # 1 MiB unless set
    assert RouterConfig(hold_body_limit="256KiB").hold_body_limit == 256 * 1024
    with pytest.raises(ValidationError, match="hold_body_limit"):
        RouterConfig(hold_body_limit="lots")
