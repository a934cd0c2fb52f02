"""The sample app as a real process: every /status state, sessions, records, faults.

Each test starts ``python -m hakit.demo --port 0`` (the kernel picks a free
port, the app logs which) with its log in tmp_path, and kills it by PID at the
end whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.pgserver import start_postgres
from tests.support.waiting import wait_until

T = TypeVar("T")
LISTENING = re.compile(r"listening on http://([0-9.]+):(\d+)")


@dataclass
class DemoApp:
    process: subprocess.Popen[bytes]
    log_path: Path
    home: Path
    database_url: str
    url: str = ""
    client: httpx.Client | None = None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(
        self, method: str, path: str, timeout: float = 5.0, **kwargs: Any
    ) -> httpx.Response:
        if self.client is None:
            # One keep-alive client per app (HTTP/1.1, as a router uses it), no proxy
            # from the environment.
            self.client = httpx.Client(trust_env=False)
        try:
            return self.client.request(method, self.url + path, timeout=timeout, **kwargs)
        finally:
            self.client.cookies.clear()  # tests send the session cookie explicitly

    def status(self, timeout: float = 5.0) -> tuple[int, str]:
        response = self.request("GET", "/status", timeout=timeout)
        return response.status_code, response.json()["state"]

    def wait_state(self, state: str, timeout: float = 10.0) -> None:
        seen: list[Any] = []

        def reached() -> bool:
            try:
                seen.append(self.status(timeout=1.0))
            except httpx.HTTPError as exc:
                seen.append(repr(exc))
            return seen[-1][1] == state if isinstance(seen[-1], tuple) else False

        try:
            wait_until(reached, timeout, f"state {state}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen {seen[-1:]}\n{self.log()}") from None

    def wait_exit(self, timeout: float = 10.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"app still running after {timeout} s\n{self.log()}") from None

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        wait_until(lambda: text in self.log(), timeout, f"log line {text!r}")


StartApp = Callable[..., DemoApp]


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[StartApp]:
    started: list[DemoApp] = []

    def start(
        *args: str,
        home: Path | None = None,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
        use_argv: bool = True,
        wait_listening: bool = True,
    ) -> DemoApp:
        home = home or tmp_path / "home"
        database_url = database_url or f"sqlite:///{tmp_path / 'app.db'}"
        log_path = tmp_path / f"app-{len(started)}.log"
        base = ["--port", "0", "--home", str(home), "--database-url", database_url]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("HAKIT_DEMO_")}
        child_env.update(env or {})
        argv = [sys.executable, "-m", "hakit.demo", *(base if use_argv else []), *args]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log, env=child_env)
        app = DemoApp(process, log_path, home, database_url)
        started.append(app)
        if wait_listening:

            def listening() -> re.Match[str] | None:
                if process.poll() is not None:
                    raise AssertionError(f"app exited with {process.returncode}\n{app.log()}")
                return LISTENING.search(app.log())

            match = wait_until(listening, 15, "the app to listen")
            app.url = f"http://{match[1]}:{match[2]}"
        return app

    try:
        yield start
    finally:
        for app in started:
            if app.process.poll() is None:
                app.process.kill()
                app.process.wait(timeout=10)
            if app.client is not None:
                app.client.close()


# --- /status states -------------------------------------------------------------


def test_starting_during_startup_delay_then_first_run_then_running_after_setup(
    start_app: StartApp,
) -> None:
    app = start_app("--startup-delay", "1")
    assert app.status() == (503, "STARTING")  # the port is open before the app is up
    during_start = app.request("GET", "/records")
    assert during_start.status_code == 503
    assert "starting" in during_start.json()["error"]
    app.wait_state("FIRST_RUN")
    assert app.status() == (200, "FIRST_RUN")
    assert app.request("POST", "/setup").json()["state"] == "RUNNING"
    assert app.status() == (200, "RUNNING")


def test_setup_is_stored_in_the_database_and_survives_a_restart(start_app: StartApp) -> None:
    first = start_app()
    first.wait_state("FIRST_RUN")
    first.request("POST", "/setup").raise_for_status()
    first.process.send_signal(signal.SIGTERM)
    assert first.wait_exit() == 0
    second = start_app()
    second.wait_state("RUNNING")


def test_maintenance_lock_refuses_writes_until_released(start_app: StartApp) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    app.request("POST", "/setup").raise_for_status()
    lock = app.request("POST", "/admin/lock")
    assert lock.status_code == 200
    token = lock.json()["token"]
    assert app.status() == (503, "MAINTENANCE")
    refused = app.request("POST", "/records", json={"title": "t", "attachment": "a"})
    assert refused.status_code == 503
    assert "maintenance" in refused.json()["error"]
    assert app.request("POST", "/setup").status_code == 503
    assert app.request("GET", "/records").status_code == 200  # reads still work
    assert app.request("POST", "/admin/lock").status_code == 409  # one holder at a time
    assert app.request("DELETE", "/admin/lock/not-the-token").status_code == 404
    assert app.status() == (503, "MAINTENANCE")
    released = app.request("DELETE", f"/admin/lock/{token}")
    assert released.json() == {"released": True, "state": "RUNNING"}
    assert app.status() == (200, "RUNNING")
    created = app.request("POST", "/records", json={"title": "t", "attachment": "a"})
    assert created.status_code == 201


def test_maintenance_lock_waits_for_a_write_in_progress(start_app: StartApp) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    upload = socket.create_connection(("127.0.0.1", app.port), timeout=10)
    try:
        upload.sendall(
            b"POST /records?title=slow HTTP/1.1\r\nHost: app\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 10\r\n\r\nhello"
        )
        wait_until(
            lambda: app.request("GET", "/admin/lock").json()["writes_in_progress"] == 1,
            10,
            "the upload to be in progress",
        )
        locked: list[httpx.Response] = []
        locker = threading.Thread(
            target=lambda: locked.append(app.request("POST", "/admin/lock", timeout=20))
        )
        locker.start()
        locker.join(0.5)
        assert not locked, "the lock must wait for the write in progress"
        upload.sendall(b"world")
        reply = upload.recv(65536)
        assert reply.startswith(b"HTTP/1.1 201 "), reply
        locker.join(10)
        assert locked and locked[0].status_code == 200
    finally:
        upload.close()
    integrity = app.request("GET", "/integrity").json()
    assert integrity["ok"] and integrity["rows"] == 1


def test_stopping_on_sigterm_drains_a_slow_request_then_exits_0(start_app: StartApp) -> None:
    app = start_app("--enable-faults")
    app.wait_state("FIRST_RUN")
    slow: list[httpx.Response] = []
    client = threading.Thread(
        target=lambda: slow.append(app.request("GET", "/faults/slow?seconds=2.5", timeout=20))
    )
    client.start()
    try:
        app.wait_log("slow request: answering in")
        app.process.send_signal(signal.SIGTERM)
        app.wait_state("STOPPING", timeout=2)
        assert app.status() == (503, "STOPPING")
        refused = app.request("GET", "/records")
        assert refused.status_code == 503
        assert refused.headers["Connection"] == "close"
    finally:
        client.join(20)
    assert slow and slow[0].status_code == 200  # the in-flight request finished
    assert app.wait_exit() == 0
    assert "drained" in app.log()
    with pytest.raises(httpx.ConnectError):
        app.status()


def test_error_while_the_database_is_lost_then_back(start_app: StartApp) -> None:
    app = start_app("--enable-faults")
    app.wait_state("FIRST_RUN")
    app.request("POST", "/setup").raise_for_status()
    assert app.request("POST", "/faults/lose-database").status_code == 202
    assert app.status() == (500, "ERROR")
    failed = app.request("POST", "/records", json={"title": "t", "attachment": "a"})
    assert failed.status_code == 500
    assert "database" in failed.json()["error"]
    assert app.request("POST", "/faults/restore-database").status_code == 202
    assert app.status() == (200, "RUNNING")
    # The failed write left no orphan attachment behind.
    assert app.request("GET", "/integrity").json()["ok"] is True


def test_error_when_the_sqlite_directory_is_removed(start_app: StartApp, tmp_path: Path) -> None:
    database_dir = tmp_path / "db"
    database_dir.mkdir()
    app = start_app(database_url=f"sqlite:///{database_dir / 'app.db'}")
    app.wait_state("FIRST_RUN")
    shutil.rmtree(database_dir)
    assert app.status() == (500, "ERROR")
    database_dir.mkdir()  # an empty directory is not the database coming back
    assert app.status() == (500, "ERROR")
    assert "is gone" in app.log()


# --- sessions ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ["", "n1"])
def test_login_sets_jsessionid_with_optional_route_and_is_lost_on_restart(
    start_app: StartApp, route: str
) -> None:
    app = start_app("--route", route)
    app.wait_state("FIRST_RUN")
    node = route or str(app.port)
    login = app.request("POST", "/login", data={"user": "alice"})  # a form
    assert login.status_code == 200
    assert login.headers["X-Hakit-Node"] == node
    value = login.cookies["JSESSIONID"]
    assert re.fullmatch(r"[0-9A-F]{32}\.n1" if route else r"[0-9A-F]{32}", value), value
    whoami = app.request("GET", "/whoami", headers={"Cookie": f"JSESSIONID={value}"})
    assert whoami.json() == {"user": "alice", "node": node}
    assert app.request("POST", "/login", json={"user": "bob"}).json()["user"] == "bob"  # JSON
    assert app.request("GET", "/whoami").status_code == 401
    assert app.request("POST", "/login", json={}).status_code == 400

    app.process.send_signal(signal.SIGTERM)
    assert app.wait_exit() == 0
    restarted = start_app("--route", route)
    restarted.wait_state("FIRST_RUN")
    lost = restarted.request("GET", "/whoami", headers={"Cookie": f"JSESSIONID={value}"})
    assert lost.status_code == 401  # sessions live in memory only, as with Tomcat


# --- records and integrity ------------------------------------------------------


def test_records_and_integrity_detect_missing_orphan_and_corrupt_files(start_app: StartApp) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    as_json = app.request("POST", "/records", json={"title": "json", "attachment": "one"})
    as_curl_d = app.request(
        "POST",
        "/records",
        content=b'{"title": "curl", "attachment": "two"}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    raw_bytes = os.urandom(300_000)
    as_raw = app.request(
        "POST",
        "/records?title=raw",
        content=raw_bytes,
        headers={"Content-Type": "application/octet-stream"},
    )
    chunked = app.request(
        "POST",
        "/records?title=chunked",
        content=iter([b"thr", b"ee"]),
        headers={"Content-Type": "text/plain"},
    )
    created = [as_json, as_curl_d, as_raw, chunked]
    assert [r.status_code for r in created] == [201] * 4
    ids = [r.json()["id"] for r in created]
    assert [r.json()["title"] for r in created] == ["json", "curl", "raw", "chunked"]

    listed = app.request("GET", "/records").json()
    assert listed["count"] == 4 and [r["id"] for r in listed["records"]] == ids
    one = app.request("GET", f"/records/{ids[0]}").json()
    assert one["attachment"] == f"attachments/{ids[0]}" and one["size"] == 3
    assert app.request("GET", f"/records/{ids[2]}/attachment").content == raw_bytes
    assert app.request("GET", f"/records/{ids[3]}/attachment").content == b"three"
    assert app.request("GET", "/records/nope").status_code == 404
    assert (app.home / "attachments" / ids[1]).read_bytes() == b"two"
    assert app.request("GET", "/integrity").json() == {
        "ok": True,
        "rows": 4,
        "files": 4,
        "missing_files": [],
        "orphan_files": [],
        "corrupt": [],
        "missing": [],
        "orphans": [],
        "stale_epoch_writes": [],
        "write_epochs": {"0": 4},  # started by hand: no agent, no epoch
    }

    (app.home / "attachments" / ids[0]).unlink()
    (app.home / "attachments" / "stray").write_bytes(b"no row points here")
    (app.home / "attachments" / ids[3]).write_bytes(b"changed")
    report = app.request("GET", "/integrity").json()
    assert (report["ok"], report["rows"], report["files"]) == (False, 4, 4)
    assert (report["missing_files"], report["orphan_files"], report["corrupt"]) == (
        [ids[0]],
        ["attachments/stray"],
        [ids[3]],
    )
    assert [orphan["path"] for orphan in report["orphans"]] == ["attachments/stray"]
    assert [lost["problem"] for lost in report["missing"]] == ["absent", "sha256 differs"]


# --- faults -----------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "exit_code"), [("crash", 3), ("oom", 137)])
def test_crash_and_oom_faults_exit_with_their_codes(
    start_app: StartApp, fault: str, exit_code: int
) -> None:
    app = start_app("--enable-faults")
    app.wait_state("FIRST_RUN")
    assert app.request("POST", f"/faults/{fault}").status_code == 202
    assert app.wait_exit() == exit_code
    oom_line = "java.lang.OutOfMemoryError: Java heap space"
    assert (oom_line in app.log()) is (fault == "oom")


def test_hang_stops_every_answer_then_recovers(start_app: StartApp) -> None:
    app = start_app("--enable-faults")
    app.wait_state("FIRST_RUN")
    hang_started = time.monotonic()
    assert app.request("POST", "/faults/hang?seconds=1.5").status_code == 202
    with pytest.raises(httpx.ReadTimeout):
        app.status(timeout=0.3)
    with pytest.raises(httpx.ReadTimeout):
        app.request("GET", "/records", timeout=0.3)
    app.wait_state("FIRST_RUN", timeout=10)
    assert time.monotonic() - hang_started >= 1.4  # the pause really lasted
    assert app.process.poll() is None


@pytest.mark.parametrize("how", ["option", "environment"])
def test_fail_start_exits_1_during_startup(start_app: StartApp, how: str) -> None:
    if how == "option":
        app = start_app("--fail-start", "--startup-delay", "0.5")
    else:
        app = start_app("--startup-delay", "0.5", env={"HAKIT_DEMO_FAIL_START": "1"})
    assert app.status() == (503, "STARTING")
    assert app.wait_exit() == 1
    assert "startup failed" in app.log()


def test_faults_answer_404_without_enable_faults(start_app: StartApp) -> None:
    app = start_app()
    app.wait_state("FIRST_RUN")
    for path in ("/faults/crash", "/faults/oom", "/faults/hang?seconds=5", "/faults/lose-database"):
        assert app.request("POST", path).status_code == 404, path
    assert app.request("GET", "/faults/slow?seconds=5").status_code == 404
    assert app.status() == (200, "FIRST_RUN")
    assert app.process.poll() is None


# --- options --------------------------------------------------------------------


def test_options_come_from_the_environment(start_app: StartApp, tmp_path: Path) -> None:
    app = start_app(
        use_argv=False,
        env={
            "HAKIT_DEMO_PORT": "0",
            "HAKIT_DEMO_HOME": str(tmp_path / "envhome"),
            "HAKIT_DEMO_DATABASE_URL": f"sqlite:///{tmp_path / 'env.db'}",
            "HAKIT_DEMO_ROUTE": "envnode",
            "HAKIT_DEMO_ENABLE_FAULTS": "1",
        },
    )
    app.wait_state("FIRST_RUN")
    slow = app.request("GET", "/faults/slow?seconds=0.01")
    assert slow.status_code == 200 and slow.headers["X-Hakit-Node"] == "envnode"
    assert (tmp_path / "envhome" / "attachments").is_dir()
    assert (tmp_path / "env.db").is_file()


def test_unsupported_database_url_is_refused_at_start(start_app: StartApp) -> None:
    app = start_app(database_url="mysql://db/app", wait_listening=False)
    assert app.wait_exit() == 2
    assert "sqlite:////absolute/path.db" in app.log()


# --- PostgreSQL ----------------------------------------------------------------


@pytest.fixture
def postgres() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A server of this test's own: the test stops it to take the database away."""
    server = start_postgres()
    try:
        yield server.url, server.process
    finally:
        server.stop()


def test_postgresql_database_states_and_records(
    start_app: StartApp, postgres: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, server = postgres
    app = start_app(database_url=url)
    app.wait_state("FIRST_RUN", timeout=20)
    app.request("POST", "/setup").raise_for_status()
    assert app.status() == (200, "RUNNING")
    created = app.request("POST", "/records", json={"title": "pg", "attachment": "data"})
    assert created.status_code == 201
    assert app.request("GET", f"/records/{created.json()['id']}").json()["title"] == "pg"
    assert app.request("GET", "/integrity").json()["ok"] is True
    server.send_signal(signal.SIGINT)
    server.wait(timeout=15)
    assert app.status() == (500, "ERROR")
