"""A throwaway MariaDB server for tests: mariadb-install-db in a temp dir, loopback, free port.

Like tests/pgserver.py for PostgreSQL. ``--no-defaults``: nothing of the machine's
/etc/mysql applies, and no system service is involved (Debian's ``mariadb-server-core``
installs none). mariadbd refuses to run as root unless told ``--user=root``; as another
user it runs as that user. Root logs in through the server's own socket without a
password (``--auth-root-authentication-method=normal``) to create the test accounts;
the tests connect over TCP on 127.0.0.1 as ``app`` (and ``other``), from any loopback
source address (127.0.0.2 stands for one node, 127.0.0.3 for another).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.demo.cluster import free_port

APP_USER, APP_PASSWORD, APP_DATABASE = "app", "app-secret", "app"
OTHER_USER, OTHER_PASSWORD = "other", "other-secret"  # another account on the same database


def _binary(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )


def _as_root() -> list[str]:
    return ["--user=root"] if os.geteuid() == 0 else []


@dataclass
class MariaDBServer:
    base: Path
    port: int
    process: subprocess.Popen[bytes]

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_path(self) -> Path:
        return self.base / "mariadb.sock"

    @property
    def log(self) -> Path:
        return self.base / "mariadb.log"

    def url(self, scheme: str = "mysql", user: str = APP_USER, password: str = APP_PASSWORD) -> str:
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}/{APP_DATABASE}"

    def connect(
        self,
        source: str = "127.0.0.1",
        user: str = APP_USER,
        password: str = APP_PASSWORD,
    ) -> Any:
        """A session over TCP from the loopback address ``source`` (a stand-in node)."""
        import pymysql

        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=user,
            password=password,
            database=APP_DATABASE,
            bind_address=source,
            connect_timeout=10,
            read_timeout=10,
            autocommit=True,
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the server by its pid and keep its data (SIGTERM: a clean shutdown that
        ends every session)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start(self, timeout: float = 60.0) -> None:
        """Start the server again on the same data directory and port (after ``shutdown``)."""
        if self.process.poll() is None:
            return
        self.process = _launch(self.base, self.port)
        _wait_ready(self, timeout)

    def stop(self) -> None:
        """Shut the server down and delete its data."""
        self.shutdown()
        shutil.rmtree(self.base, ignore_errors=True)


def _launch(base: Path, port: int) -> subprocess.Popen[bytes]:
    mariadbd = _binary("mariadbd")
    assert mariadbd is not None
    return subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            *_as_root(),
            f"--datadir={base / 'data'}",
            f"--socket={base / 'mariadb.sock'}",
            f"--pid-file={base / 'mariadb.pid'}",
            f"--log-error={base / 'mariadb.log'}",
            f"--tmpdir={base}",
            f"--port={port}",
            "--bind-address=127.0.0.1",
            "--max-connections=50",
            "--innodb-buffer-pool-size=32M",
            "--innodb-flush-log-at-trx-commit=0",  # throwaway data: no fsync per commit
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # everything goes to --log-error
        start_new_session=True,
    )


def _root_session(server: MariaDBServer, timeout: float) -> Any:
    import pymysql

    return pymysql.connect(
        unix_socket=str(server.socket_path),
        user="root",
        connect_timeout=timeout,
        autocommit=True,
    )


def _wait_ready(server: MariaDBServer, timeout: float) -> None:
    """Until root can run ``SELECT 1``; raises (with the log) if it exits or is late."""
    import pymysql

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            text = server.log.read_text() if server.log.exists() else "(no log)"
            raise RuntimeError(f"mariadbd exited: {text[-3000:]}")
        try:
            session = _root_session(server, 2)
            try:
                session.cursor().execute("SELECT 1")
            finally:
                session.close()
            return
        except (OSError, pymysql.err.Error):  # not up yet
            time.sleep(0.1)
    raise RuntimeError(f"mariadbd did not accept connections within {timeout} s")


def _create_accounts(server: MariaDBServer) -> None:
    session = _root_session(server, 10)
    try:
        cursor = session.cursor()
        cursor.execute(f"CREATE DATABASE {APP_DATABASE}")
        for user, password in ((APP_USER, APP_PASSWORD), (OTHER_USER, OTHER_PASSWORD)):
            cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'")
            cursor.execute(f"GRANT ALL ON {APP_DATABASE}.* TO '{user}'@'%'")
    finally:
        session.close()


def start_mariadb(timeout: float = 60.0) -> MariaDBServer:
    install_db = _binary("mariadb-install-db")
    if install_db is None or _binary("mariadbd") is None:
        raise RuntimeError("MariaDB is not installed: run `make bootstrap` (as root on Debian)")
    base = Path(tempfile.mkdtemp(prefix="hakit-mariadb-"))
    try:
        subprocess.run(
            [
                install_db,
                "--no-defaults",
                *_as_root(),
                f"--datadir={base / 'data'}",
                # Its own temporary files in its own directory: a bootstrap once failed
                # when one of its temporary tables under the shared /tmp was gone.
                f"--tmpdir={base}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
        )
    except subprocess.CalledProcessError as error:
        shutil.rmtree(base, ignore_errors=True)
        said = (error.stderr or b"").decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"mariadb-install-db failed ({error.returncode}): {said}") from error
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    port = free_port()
    server = MariaDBServer(base, port, _launch(base, port))
    try:
        _wait_ready(server, timeout)
        _create_accounts(server)
    except BaseException:
        server.stop()
        raise
    return server
