"""Write-only mode against moto's server with IAM enforced: a credential allowed only
s3:PutObject backs up, twice, and passes Jira's health check; one that may read is warned;
one that may not write fails. A reading credential lists, verifies and restores.

moto only: rclone serve s3 has no IAM policies (any key may do anything) and no versioning;
what write-only mode does on a store without conditional writes (refused, nothing
overwritten) is test_s3_backup.py's, on both servers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from hakit.cli import app
from tests.integration.backup.conftest import Site, env, make_site
from tests.integration.snapshot.conftest import rows_of, tree_of
from tests.support.s3servers import S3Server

# AWS authorizes ListObjectsV2 as s3:ListBucket; moto checks the operation's own name.
LIST = ["s3:ListBucket", "s3:ListObjectsV2", "s3:ListObjectVersions"]


def user(moto: S3Server, name: str, actions: list[str], bucket: str) -> dict[str, str]:
    """An IAM user allowed ``actions`` on the bucket and its objects; its keys as env."""
    iam: Any = moto.client("iam")
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": actions,
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-s3", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return env(key["AccessKeyId"], key["SecretAccessKey"])


def run(site: Site, keys: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, ["backup", *args, "-c", str(site.config)], env=keys)


def test_write_only_mode_with_iam(tmp_path: Path, own_moto: S3Server) -> None:
    site = make_site(tmp_path, own_moto, versioning=True)
    site.configure(write_only=True)
    writer = user(own_moto, "writer", ["s3:PutObject"], site.bucket)
    reader = user(own_moto, "reader", ["s3:PutObject", "s3:GetObject", *LIST], site.bucket)
    no_write = user(own_moto, "nowrite", ["s3:GetObject", *LIST], site.bucket)
    own_moto.enforce_iam()

    result = run(site, writer, "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    result = run(site, writer, "check", "--node", "node1", "--strict")
    assert result.exit_code == 0, result.output
    assert "OK: backups can be written; the credential can neither read nor delete" in (
        result.output.replace("\n", " ")
    )
    assert "WARNING" not in result.output

    # The second backup needs no listing or reading: the record and the manifest's copy.
    (site.home / "attachments" / "a003").write_bytes(os.urandom(900))
    result = run(site, writer, "create", "--node", "node1")
    assert result.exit_code == 0, result.output
    assert "3 objects uploaded" in result.output  # one pack, its directory's tree, the manifest

    # A credential allowed to read: the same check warns.
    result = run(site, reader, "check")
    assert result.exit_code == 0, result.output
    assert "WARNING: the backup credential can read backups: to increase security, use " in (
        result.output.replace("\n", " ")
    )
    # ...and lists, verifies and restores what the writer stored.
    result = run(site, reader, "list")
    assert result.exit_code == 0 and result.output.count("node1") == 2, result.output
    result = run(site, reader, "verify")
    assert result.exit_code == 0 and ": ok," in result.output, result.output
    into = tmp_path / "restored"
    result = run(site, reader, "restore", "--into", str(into))
    assert result.exit_code == 0, result.output
    assert tree_of(into / "home") == tree_of(site.home)
    assert rows_of(into / "database" / "app.db") == rows_of(site.database)
    # The writer cannot read them, nor list them to rebuild its record.
    result = run(site, writer, "list")
    assert result.exit_code == 1 and "cannot read the bucket" in result.output
    result = run(site, writer, "create", "--rebuild-index")
    assert result.exit_code == 1 and "could not list" in result.output
    # A credential that may list rebuilds it: everything is known, only the manifest is new.
    result = run(site, reader, "create", "--rebuild-index")
    assert result.exit_code == 0, result.output
    assert "record rebuilt: " in result.output
    assert "1 objects uploaded" in result.output and "0 already there" in result.output

    # A credential that may not write: the check is an error, and so is a backup.
    result = run(site, no_write, "check")
    assert result.exit_code == 1
    assert "ERROR: cannot write backups (access denied)" in result.output.replace("\n", " ")
    (site.home / "attachments" / "a004").write_bytes(os.urandom(900))
    result = run(site, no_write, "create")
    assert result.exit_code == 1 and "no generation written" in result.output

    # Nothing was ever overwritten or deleted (versioning on): one version per key, no
    # delete marker; the writer's health-check object stays for the lifecycle rule.
    admin = user_client(own_moto, reader)
    versions = admin.list_object_versions(Bucket=site.bucket)
    keys = [version["Key"] for version in versions["Versions"]]
    assert len(keys) == len(set(keys))
    assert any(key.startswith("backups/Healthcheck/node1-") for key in keys)


def user_client(moto: S3Server, keys: dict[str, str]) -> Any:
    return moto.client(
        aws_access_key_id=keys["TEST_BACKUP_KEY_ID"],
        aws_secret_access_key=keys["TEST_BACKUP_SECRET"],
    )
