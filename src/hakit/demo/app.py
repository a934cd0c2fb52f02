"""The sample app's process: start (STARTING), serve, stop gracefully on SIGTERM (STOPPING).

Like Tomcat with Jira, the port opens first and answers STARTING while the
application starts behind it; SIGTERM turns the app to STOPPING, in-flight
requests finish, then the process exits 0.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from hakit.demo.attachments import Attachments
from hakit.demo.database import DatabaseUnavailable, open_database
from hakit.demo.integrity import age_seconds, orphans_by_age
from hakit.demo.log import LineLog
from hakit.demo.node import DemoNode
from hakit.demo.options import DemoOptions, parse_options
from hakit.demo.server import DemoServer
from hakit.demo.sessions import Sessions
from hakit.demo.state import Phase

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
FAIL_START_MESSAGE = (
    "startup failed: fault injected by --fail-start (HAKIT_DEMO_FAIL_START=1); the app "
    "refuses to start, as it would with a bad configuration. Remove that option to start."
)

FAIL_START_IF_MESSAGE = (
    "startup failed: fault injected by --fail-start-if (HAKIT_DEMO_FAIL_START_IF): {path} "
    "exists; the app refuses to start on this node. Remove that file to start."
)


def wait_for_stop_signal(timeout: float) -> signal.Signals | None:
    """The stop signal received within ``timeout`` seconds, if any."""
    info = signal.sigtimedwait(STOP_SIGNALS, timeout)
    return None if info is None else signal.Signals(info.si_signo)


def _start_database(node: DemoNode) -> None:
    try:
        node.database.initialize()
        node.log(f"database ready: {node.database.describe()}")
    except DatabaseUnavailable as exc:
        # Jira keeps running and shows its error page; /status says ERROR meanwhile
        # and every probe tries again.
        node.log(f"database unreachable at startup: {exc}; reporting ERROR until it is back")


def _remove_orphan(node: DemoNode, path: str, age: float) -> None:
    try:
        node.attachments.remove(path)
    except OSError as exc:
        node.log(f"cannot remove orphan attachment {path}: {exc}")  # tried again next start
        return
    node.log(
        f"removed orphan attachment {path}: no record points at it, last written "
        f"{age:.0f} s ago (a crash between file and row)"
    )


def _remove_stale_orphans(node: DemoNode) -> None:
    """Remove the litter of crashes between a file and its row (see integrity.py)."""
    if not node.database.initialized:
        # Without the rows every file would look like an orphan: remove nothing.
        node.log("orphan attachments not checked: the database is unreachable")
        return
    grace = node.options.orphan_grace_seconds
    try:
        rows = node.database.records()  # before listing the files: see orphans_by_age
    except DatabaseUnavailable as exc:
        node.log(f"orphan attachments not checked: {exc}")
        return
    try:
        mtimes = node.attachments.modified_times()
    except OSError as exc:
        # Litter is no reason to refuse to start; the next start tries again.
        node.log(f"orphan attachments not checked: {exc}")
        return
    now = time.time()
    stale, young = orphans_by_age(rows, mtimes, now, grace)
    for path in stale:
        _remove_orphan(node, path, age_seconds(mtimes[path], now))
    if young:
        node.log(
            f"kept {len(young)} orphan attachments younger than {grace:g} s "
            f"(a write may still be finishing): {', '.join(young)}"
        )


def _stop(node: DemoNode, received: signal.Signals) -> None:
    node.lifecycle.enter(Phase.STOPPING)
    drain = node.options.drain_seconds
    node.log(
        f"{received.name} received: STOPPING, draining {node.lifecycle.in_flight} "
        f"in-flight requests (at most {drain:g} s)"
    )
    left = node.lifecycle.wait_idle(drain)
    if left:
        node.log(f"drain timed out after {drain:g} s: {left} requests abandoned")
    else:
        node.log("drained: no request in flight")


def run(options: DemoOptions, log: LineLog) -> int:
    """Run until stopped; returns the exit code."""
    # Stop signals are taken by the main thread with sigwait instead of a handler.
    # Blocked before any thread starts, so every thread inherits the mask and no
    # request thread is ever interrupted by them.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        database = open_database(options.database_url)
    except ValueError as exc:
        log(f"cannot start: {exc}")
        return 2
    attachments = Attachments(options.home)
    try:
        attachments.prepare()
    except OSError as exc:
        log(f"cannot start: the home directory {options.home} is not usable: {exc}")
        return 1
    node = DemoNode(options, log, database, attachments, Sessions(options.route))
    try:
        server = DemoServer((options.host, options.port), node)
    except OSError as exc:
        log(f"cannot start: cannot listen on {options.host}:{options.port}: {exc}")
        return 1
    node.name = log.node = options.route or str(server.server_port)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
    ).start()
    log(
        f"listening on http://{options.host}:{server.server_port} (pid {os.getpid()}); "
        f"STARTING for {options.startup_delay:g} s"
    )
    try:
        received = wait_for_stop_signal(options.startup_delay)
        if received is None:
            if options.fail_start:
                log(FAIL_START_MESSAGE)
                return 1
            if options.fail_start_if is not None and options.fail_start_if.exists():
                log(FAIL_START_IF_MESSAGE.format(path=options.fail_start_if))
                return 1
            _start_database(node)
            _remove_stale_orphans(node)
            node.lifecycle.enter(Phase.READY)
            log("started")
            node.current_state()  # logs the state it starts in
            received = signal.Signals(signal.sigwait(STOP_SIGNALS))
        _stop(node, received)
    finally:
        server.shutdown()
        server.server_close()
    log("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(sys.argv[1:] if argv is None else argv, os.environ)
    log = LineLog()
    log.node = options.route or str(options.port)
    log(
        f"starting (pid {os.getpid()}): home {options.home}, database {options.database_url}, "
        f"faults {'enabled' if options.enable_faults else 'disabled'}"
    )
    return run(options, log)
