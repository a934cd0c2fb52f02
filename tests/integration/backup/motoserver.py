"""moto's standalone S3 (and IAM) server for tests: a subprocess on 127.0.0.1, a free port.

Started with ``python -m moto.server``, stopped by its PID. ``enforce_iam`` turns
access control on for every request after it (moto's ``/moto-api/reset-auth``),
so a test can first create users and buckets freely, then act as a user whose
policy allows only some actions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from hakit.demo.cluster import free_ports
from tests.support.procnet import listens_on
from tests.support.waiting import wait_until

REGION = "us-east-1"
ROOT_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass
class MotoServer:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str = "s3", **keys: str) -> Any:
        return boto3.session.Session(**(keys or ROOT_KEYS)).client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def enforce_iam(self) -> None:
        """From now on every request is authenticated and authorized against IAM."""
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
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start_moto(timeout: float = 60.0) -> MotoServer:
    (port,) = free_ports(1)
    log = Path(tempfile.mkstemp(prefix="hakit-moto-", suffix=".log")[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server = MotoServer(port, process, log)
    try:
        wait_until(
            lambda: (
                process.poll() is not None
                or (listens_on(process.pid, port) and _answers(server.endpoint))
            ),
            timeout,
            "moto's server to answer",
            interval=0.1,
        )
        if process.poll() is not None:
            raise RuntimeError(f"moto's server exited: {log.read_text()[-2000:]}")
    except BaseException:
        server.stop()
        raise
    return server
