"""A throwaway PostgreSQL server for tests: initdb in a temp dir, loopback, free port.

PostgreSQL refuses to run as root, so when we are root the cluster is owned by
and run as the ``postgres`` user that Debian's package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hakit.demo.cluster import free_port


def _bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class PostgresServer:
    datadir: Path
    port: int
    process: subprocess.Popen[bytes]
    owner: tuple[int, int] | None = None  # (uid, gid) the server runs as, when we are root

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def shutdown(self, timeout: float = 20.0) -> None:
        """Stop the server and keep its data (``pg_ctl stop -m fast``: SIGINT to the
        postmaster, which ends every session and shuts down cleanly)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start(self, timeout: float = 30.0) -> None:
        """Start the server again on the same data directory and port (after ``shutdown``)."""
        if self.process.poll() is None:
            return
        self.process = _launch(self.datadir, self.port, self.owner)
        _wait_ready(self, timeout)

    def stop(self) -> None:
        """Shut the server down and delete its data."""
        self.shutdown()
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _as_postgres_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid


def _launch(datadir: Path, port: int, owner: tuple[int, int] | None) -> subprocess.Popen[bytes]:
    bindir = _bindir()
    assert bindir is not None
    base = datadir.parent
    kwargs: dict[str, object] = {"user": owner[0], "group": owner[1]} if owner else {}
    return subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(datadir),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(base),
            "-c",
            "fsync=off",
            "-c",
            "max_connections=50",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(base / "postgres.log", "ab"),
        start_new_session=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _wait_ready(server: PostgresServer, timeout: float) -> None:
    """Until the server answers ``SELECT 1``; raises (naming its log) if it exits or is late."""
    import psycopg

    log = server.datadir.parent / "postgres.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited: {log.read_text()[-2000:]}")
        try:
            with psycopg.connect(server.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except (OSError, psycopg.Error):  # not up yet
            time.sleep(0.1)
    raise RuntimeError(f"postgres did not accept connections within {timeout} s")


def start_postgres(timeout: float = 30.0) -> PostgresServer:
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make bootstrap` (as root on Debian)")
    owner = _as_postgres_user()
    base = Path(tempfile.mkdtemp(prefix="hakit-pg-"))
    datadir = base / "data"
    kwargs: dict[str, object] = {}
    if owner:
        os.chown(base, *owner)
        kwargs = {"user": owner[0], "group": owner[1]}
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust", "--no-sync"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )
    port = free_port()
    server = PostgresServer(datadir, port, _launch(datadir, port, owner), owner)
    try:
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server
