"""What each URL of the sample app does, and which phase it may run in."""

from __future__ import annotations

import enum
import html
import os
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from hakit.contract import http_status_for
from hakit.demo.database import RecordRow
from hakit.demo.integrity import integrity_report
from hakit.demo.node import DemoNode
from hakit.demo.sessions import COOKIE_NAME
from hakit.demo.state import LockHeld, Phase
from hakit.demo.web import (
    FORM,
    JSON,
    HttpError,
    Request,
    Response,
    error_response,
    json_response,
)

CRASH_EXIT_CODE = 3
OOM_EXIT_CODE = 137  # what a shell reports for a SIGKILL by the kernel's OOM killer
OOM_MESSAGE = "java.lang.OutOfMemoryError: Java heap space"
LOCK_WAIT_SECONDS = 30.0  # how long acquiring the lock waits for writes in progress
MAX_FAULT_SECONDS = 3600.0


class Kind(enum.Enum):
    MONITOR = "monitor"  # /status: answers in every phase
    FAULT = "fault"  # only with --enable-faults, in every phase (a crash while starting is a case)
    APP = "app"  # the application proper: only once started


Endpoint = Callable[[DemoNode, Request], Response]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    kind: Kind
    endpoint: Endpoint


# --- monitoring ---------------------------------------------------------------


def status(node: DemoNode, request: Request) -> Response:
    state = node.current_state()
    return json_response(
        http_status_for(state), {"state": state.value}, [("Cache-Control", "no-store")]
    )


def index(node: DemoNode, request: Request) -> Response:
    state = node.current_state()
    page = (
        "<!doctype html><title>hakit demo app</title>"
        f"<h1>hakit demo app</h1><p>Served by node <b>{html.escape(node.name)}</b>, "
        f"state <b>{state.value}</b>.</p><p>Try <code>/status</code>, <code>/records</code>, "
        "<code>/integrity</code>, <code>POST /login</code>, <code>/whoami</code>.</p>\n"
    )
    return Response(200, page.encode(), "text/html; charset=utf-8")


# --- setup and sessions ------------------------------------------------------


def setup(node: DemoNode, request: Request) -> Response:
    with node.maintenance.write():
        node.database.mark_configured()
    node.log("setup done: the app is configured")
    return json_response(200, {"configured": True, "state": node.current_state().value})


def login(node: DemoNode, request: Request) -> Response:
    user = str(request.fields().get("user") or "").strip()
    if not user:
        raise HttpError(400, 'login needs a user: send {"user": "alice"} or user=alice')
    cookie = node.sessions.create(user)
    return json_response(
        200,
        {"user": user, "node": node.name},
        [("Set-Cookie", f"{COOKIE_NAME}={cookie}; Path=/; HttpOnly")],
    )


def logout(node: DemoNode, request: Request) -> Response:
    cookie = request.cookie(COOKIE_NAME)
    if cookie:
        node.sessions.end(cookie)
    return json_response(
        200, {"logged_out": True}, [("Set-Cookie", f"{COOKIE_NAME}=; Path=/; Max-Age=0")]
    )


def whoami(node: DemoNode, request: Request) -> Response:
    cookie = request.cookie(COOKIE_NAME)
    user = node.sessions.user_for(cookie) if cookie else None
    if user is None:
        return error_response(401, "not logged in (no session, or one this node does not know)")
    return json_response(200, {"user": user, "node": node.name})


# --- records -------------------------------------------------------------------


def create_record(node: DemoNode, request: Request) -> Response:
    with node.maintenance.write():
        record_id = uuid.uuid4().hex
        if request.content_type in (JSON, FORM):
            fields = request.fields()
            title = str(fields.get("title") or "untitled")
            chunks = iter([str(fields.get("attachment") or "").encode()])
        else:  # the raw body is the attachment, streamed to disk
            title = request.query.get("title") or "untitled"
            chunks = request.body.chunks()
        # The fixed order: the file first (durable), then the row that points at it.
        stored = node.attachments.write(record_id, chunks)
        row = RecordRow(
            id=record_id,
            title=title,
            attachment=stored.relative_path,
            sha256=stored.sha256,
            size=stored.size,
            created=datetime.now(UTC).isoformat(timespec="microseconds"),
        )
        try:
            node.database.insert_record(row, node.options.epoch, node.name)
        except Exception:
            # A clean failure leaves no orphan behind; a crash right here would,
            # and /integrity reports it.
            node.attachments.remove(stored.relative_path)
            raise
    return json_response(201, row.as_json(), [("Location", f"/records/{record_id}")])


def list_records(node: DemoNode, request: Request) -> Response:
    rows = node.database.records()
    return json_response(200, {"count": len(rows), "records": [row.as_json() for row in rows]})


def _record_or_404(node: DemoNode, request: Request) -> RecordRow:
    assert request.match is not None
    row = node.database.record(request.match["id"])
    if row is None:
        raise HttpError(404, f"no record {request.match['id']}")
    return row


def get_record(node: DemoNode, request: Request) -> Response:
    return json_response(200, _record_or_404(node, request).as_json())


def get_attachment(node: DemoNode, request: Request) -> Response:
    row = _record_or_404(node, request)
    path = node.attachments.path_of(row.attachment)
    if not path.is_file():
        raise HttpError(404, f"record {row.id} has lost its attachment {row.attachment}")
    return Response(200, content_type="application/octet-stream", file=path)


def integrity(node: DemoNode, request: Request) -> Response:
    # Rows first, then files: a record created in between then shows as a young
    # orphan (litter, ok), never as a row without its file (loss, not ok).
    rows = node.database.records()
    files = node.attachments.inventory()
    writes = node.database.write_log()
    return json_response(200, integrity_report(rows, files, time.time(), writes))


# --- maintenance lock ---------------------------------------------------------


def acquire_lock(node: DemoNode, request: Request) -> Response:
    try:
        token = node.maintenance.acquire(LOCK_WAIT_SECONDS)
    except LockHeld as exc:
        raise HttpError(409, str(exc)) from None
    node.log("maintenance lock acquired: writes refused until it is released")
    return json_response(200, {"token": token, "state": node.current_state().value})


def lock_status(node: DemoNode, request: Request) -> Response:
    lock = node.maintenance
    return json_response(200, {"locked": lock.held, "writes_in_progress": lock.writes_in_progress})


def release_lock(node: DemoNode, request: Request) -> Response:
    assert request.match is not None
    if not node.maintenance.release(request.match["token"]):
        raise HttpError(404, "no maintenance lock is held with that token")
    node.log("maintenance lock released")
    return json_response(200, {"released": True, "state": node.current_state().value})


# --- faults (only with --enable-faults) --------------------------------------


def _fault_seconds(request: Request) -> float:
    raw = request.query.get("seconds", "")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= MAX_FAULT_SECONDS:
        raise HttpError(400, f"seconds={raw!r}: give a number of seconds, 0 < N <= 3600")
    return seconds


def _exit_now(code: int, stderr_line: str | None = None) -> Callable[[], None]:
    def exit_process() -> None:
        if stderr_line:
            print(stderr_line, file=sys.stderr, flush=True)
        os._exit(code)  # no cleanup, no drain: this is a crash

    return exit_process


def fault_crash(node: DemoNode, request: Request) -> Response:
    node.log(f"fault: crash, exiting with code {CRASH_EXIT_CODE}")
    response = json_response(202, {"fault": "crash", "exit_code": CRASH_EXIT_CODE})
    response.after_send = _exit_now(CRASH_EXIT_CODE)
    return response


def fault_oom(node: DemoNode, request: Request) -> Response:
    """Out of memory: ``java.lang.OutOfMemoryError`` on stderr, then exit 137 (what an
    OOM kill looks like), or ``?exit_code=N`` (a JVM with ``-XX:+ExitOnOutOfMemoryError``
    exits 3: only its log tells it ran out of memory)."""
    raw = request.query.get("exit_code", str(OOM_EXIT_CODE))
    if not raw.isdigit() or not 1 <= int(raw) <= 255:
        raise HttpError(400, f"exit_code={raw!r}: give an exit code, 1 <= N <= 255")
    code = int(raw)
    node.log(f"fault: out of memory, exiting with code {code}")
    response = json_response(202, {"fault": "oom", "exit_code": code})
    response.after_send = _exit_now(code, f'Exception in thread "main" {OOM_MESSAGE}')
    return response


def fault_hang(node: DemoNode, request: Request) -> Response:
    seconds = _fault_seconds(request)
    node.hang.close_for(seconds)
    node.log(f"fault: hang, no request is answered for {seconds:g} s")
    return json_response(202, {"fault": "hang", "seconds": seconds})


def fault_lose_database(node: DemoNode, request: Request) -> Response:
    node.database.simulate_loss(True)
    node.log("fault: database connection lost")
    return json_response(202, {"fault": "lose-database"})


def fault_restore_database(node: DemoNode, request: Request) -> Response:
    node.database.simulate_loss(False)
    node.log("fault: database connection restored")
    return json_response(202, {"fault": "restore-database"})


def fault_slow(node: DemoNode, request: Request) -> Response:
    """A request that takes N seconds: what a drain on SIGTERM has to wait for."""
    seconds = _fault_seconds(request)
    node.log(f"slow request: answering in {seconds:g} s")
    time.sleep(seconds)
    return json_response(200, {"slept": seconds, "node": node.name})


# --- routing ---------------------------------------------------------------------


def _route(method: str, pattern: str, kind: Kind, endpoint: Endpoint) -> Route:
    return Route(method, re.compile(pattern), kind, endpoint)


_ID = r"(?P<id>[A-Za-z0-9_-]{1,64})"
ROUTES: tuple[Route, ...] = (
    _route("GET", r"/status", Kind.MONITOR, status),
    _route("GET", r"/", Kind.APP, index),
    _route("POST", r"/setup", Kind.APP, setup),
    _route("POST", r"/login", Kind.APP, login),
    _route("POST", r"/logout", Kind.APP, logout),
    _route("GET", r"/whoami", Kind.APP, whoami),
    _route("POST", r"/records", Kind.APP, create_record),
    _route("GET", r"/records", Kind.APP, list_records),
    _route("GET", rf"/records/{_ID}", Kind.APP, get_record),
    _route("GET", rf"/records/{_ID}/attachment", Kind.APP, get_attachment),
    _route("GET", r"/integrity", Kind.APP, integrity),
    _route("POST", r"/admin/lock", Kind.APP, acquire_lock),
    _route("GET", r"/admin/lock", Kind.APP, lock_status),
    _route("DELETE", r"/admin/lock/(?P<token>[^/]{1,128})", Kind.APP, release_lock),
    _route("POST", r"/faults/crash", Kind.FAULT, fault_crash),
    _route("POST", r"/faults/oom", Kind.FAULT, fault_oom),
    _route("POST", r"/faults/hang", Kind.FAULT, fault_hang),
    _route("POST", r"/faults/lose-database", Kind.FAULT, fault_lose_database),
    _route("POST", r"/faults/restore-database", Kind.FAULT, fault_restore_database),
    _route("GET", r"/faults/slow", Kind.FAULT, fault_slow),
)

_PHASE_REFUSALS = {
    Phase.STARTING: "the app is starting; try again in a moment",
    Phase.STOPPING: "the app is stopping",
}


NOT_DEPLOYED_PAGE = (
    "<!doctype html><title>HTTP Status 404 - Not Found</title>"
    "<h1>HTTP Status 404 - Not Found</h1><p>The requested resource is not available "
    "(the web application failed to deploy: sample app started with --not-deployed).</p>\n"
)


def dispatch(node: DemoNode, request: Request) -> Response:
    """Find the endpoint for ``request`` and run it, if the phase allows."""
    if node.options.not_deployed and not request.path.startswith("/faults/"):
        # Tomcat without its webapp: the server answers, but not the application.
        return Response(404, NOT_DEPLOYED_PAGE.encode(), "text/html; charset=utf-8")
    allowed: list[str] = []
    for route in ROUTES:
        match = route.pattern.fullmatch(request.path)
        if match is None:
            continue
        if route.kind is Kind.FAULT and not node.options.enable_faults:
            break  # indistinguishable from an unknown URL, as in production
        if route.method != request.method:
            allowed.append(route.method)
            continue
        refusal = _PHASE_REFUSALS.get(node.lifecycle.phase)
        if route.kind is Kind.APP and refusal:
            return error_response(503, refusal, [("Retry-After", "5")])
        request.match = match
        return route.endpoint(node, request)
    if allowed:
        return error_response(
            405, f"{request.path} accepts {', '.join(allowed)}", [("Allow", ", ".join(allowed))]
        )
    return error_response(404, f"no such page: {request.path}")
