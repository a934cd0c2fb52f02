"""sd_notify (hakit.service.sdnotify) against a real datagram socket, as systemd listens."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakit.service.sdnotify import (
    ServiceNotifier,
    socket_address,
    watchdog_interval,
    without_service_variables,
)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_and_stopping_reach_the_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = ServiceNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.active
    notifier.ready("node n1: started")
    notifier.status("node n1: active")
    notifier.stopping("node n1: stopping")
    assert received(sock) == "READY=1\nSTATUS=node n1: started"
    assert received(sock) == "STATUS=node n1: active"
    assert received(sock) == "STOPPING=1\nSTATUS=node n1: stopping"
    notifier.close()


def test_an_abstract_socket_is_addressed_with_a_nul(tmp_path: Path) -> None:
    name = f"hakit-test-{os.getpid()}-{tmp_path.name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert socket_address({"NOTIFY_SOCKET": "@" + name}) == b"\0" + name.encode()
        ServiceNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready("up")
        assert received(sock) == "READY=1\nSTATUS=up"
    finally:
        sock.close()


def test_pings_come_every_half_watchdog_period(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = ServiceNotifier.from_environment(env)
    assert notifier.interval == 2.0  # half of WatchdogSec=4s, as sd_watchdog_enabled(3) advises
    for now in (100.0, 100.05, 101.9, 102.0, 103.0, 104.1):  # the heartbeat's ticks
        notifier.watchdog(now)
    sock.settimeout(0.2)
    pings = []
    while True:
        try:
            pings.append(received(sock))
        except TimeoutError:
            break
    assert pings == ["WATCHDOG=1"] * 3  # at 100.0, 102.0 and 104.1


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "junk"}, None),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "1000000"}, 0.5),
    ],
)
def test_the_watchdog_is_ours_only_when_systemd_says_so(
    env: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval(env, pid=4242) == expected


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = ServiceNotifier.from_environment({})
    assert not notifier.active and notifier.interval is None
    notifier.ready("up")
    notifier.watchdog(1.0)
    assert not notifier.send("READY=1")


def test_a_missing_socket_loses_the_message_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = ServiceNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="hakit.service"):
        assert not notifier.send("READY=1")
        assert not notifier.send("WATCHDOG=1")
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


def test_the_app_does_not_inherit_what_systemd_meant_for_the_agent() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "PATH": "/bin"}
    assert without_service_variables(env) == {"PATH": "/bin"}
