"""Fixtures of the backup tests: real S3 servers over HTTP (moto's, ``rclone serve s3``:
tests.support.s3servers), a site (home + SQLite database) with its hakit.toml and
filestore-config.xml.

``moto``/``own_moto`` are moto's server alone, for what only it has (IAM policies,
versioning); ``s3``/``own_s3`` run a test once against each server."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.snapshot.conftest import make_database, make_home
from tests.support.s3servers import KINDS, MOTO, S3Server, running


@pytest.fixture(scope="module")
def moto() -> Iterator[S3Server]:
    """One moto server for a module's tests (each test uses its own bucket)."""
    with running(MOTO) as server:
        yield server


@pytest.fixture
def own_moto() -> Iterator[S3Server]:
    """A moto server for one test (access control switched on, or paused)."""
    with running(MOTO) as server:
        yield server


@pytest.fixture(scope="module", params=KINDS)
def s3(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """Each S3 server in turn, one for a module's tests (each test uses its own bucket)."""
    with running(request.param) as server:
        yield server


@pytest.fixture(params=KINDS)
def own_s3(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    """Each S3 server in turn, for one test (paused, say)."""
    with running(request.param) as server:
        yield server


FILESTORE = """<?xml version="1.1" ?>
<filestore-config>
  <filestores>
    <s3-filestore id="backupBucket">
      <config>
        <bucket-name>{bucket}</bucket-name>
        <region>us-east-1</region>
        <endpoint-override>{endpoint}</endpoint-override>
        <max-concurrency>8</max-concurrency>
      </config>
    </s3-filestore>
  </filestores>
  <associations>
    <association target="backups" file-store="backupBucket"/>
  </associations>
</filestore-config>
"""

CONFIG = """
[cluster]
name = "backup"
state_dir = "state"
[app]
start = "true"
home = "home"
database_url = "sqlite:///app.db"
[backup]
access_key_env = "TEST_BACKUP_KEY_ID"
secret_key_env = "TEST_BACKUP_SECRET"
write_only = {write_only}
[[nodes]]
name = "node1"
port = 18101
[[nodes]]
name = "node2"
port = 18102
"""


@dataclass
class Site:
    root: Path
    bucket: str
    server: S3Server

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def database(self) -> Path:
        return self.root / "app.db"

    @property
    def config(self) -> Path:
        return self.root / "hakit.toml"

    def configure(self, write_only: bool = False) -> None:
        self.config.write_text(CONFIG.format(write_only=str(write_only).lower()))


def make_site(root: Path, server: S3Server, versioning: bool = False) -> Site:
    if versioning and not server.versioning:
        raise ValueError(f"{server.kind}'s S3 server has no bucket versioning")
    bucket = f"backups-{secrets.token_hex(4)}"
    client: Any = server.client()
    client.create_bucket(Bucket=bucket)
    if versioning:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    site = Site(root, bucket, server)
    make_home(site.home)
    make_database(site.database)
    (site.home / "filestore-config.xml").write_text(
        FILESTORE.format(bucket=bucket, endpoint=server.endpoint)
    )
    site.configure()
    return site


def env(key_id: str = "testing", secret: str = "testing") -> dict[str, str]:
    return {"TEST_BACKUP_KEY_ID": key_id, "TEST_BACKUP_SECRET": secret, "COLUMNS": "200"}
