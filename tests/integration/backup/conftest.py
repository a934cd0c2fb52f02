"""Fixtures of the backup tests: a real moto server over HTTP, a site (home + SQLite database)
with its hakit.toml and filestore-config.xml."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.backup.motoserver import MotoServer, start_moto
from tests.integration.snapshot.conftest import make_database, make_home


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    """One moto server for a module's tests (each test uses its own bucket)."""
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_moto() -> Iterator[MotoServer]:
    """A moto server for one test (access control switched on, or paused)."""
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


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
    moto: MotoServer

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


def make_site(root: Path, moto: MotoServer, versioning: bool = False) -> Site:
    bucket = f"backups-{secrets.token_hex(4)}"
    client: Any = moto.client()
    client.create_bucket(Bucket=bucket)
    if versioning:
        client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    site = Site(root, bucket, moto)
    make_home(site.home)
    make_database(site.database)
    (site.home / "filestore-config.xml").write_text(
        FILESTORE.format(bucket=bucket, endpoint=moto.endpoint)
    )
    site.configure()
    return site


def env(key_id: str = "testing", secret: str = "testing") -> dict[str, str]:
    return {"TEST_BACKUP_KEY_ID": key_id, "TEST_BACKUP_SECRET": secret, "COLUMNS": "200"}
