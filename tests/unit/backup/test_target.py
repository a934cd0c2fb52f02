"""``[backup]``, where backups go, the config check of filestore-config.xml, and the health
check's verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.backup.healthcheck import WRITE_ONLY_ADVICE, Outcome, Status, Step, classify
from hakit.backup.target import KeySource, LocalTarget, S3Target, resolve_target
from hakit.config import load_config
from hakit.config.loader import filestore_problems
from hakit.errors import ConfigError

CONFIG = """
[cluster]
state_dir = "state"
mode = "restart-only"
[app]
start = "true"
home = "home"
[[nodes]]
name = "node1"
port = 18101
"""

XML = """<?xml version="1.1" ?>
<filestore-config>
  <filestores>
    <s3-filestore id="backupBucket">
      <config>
        <bucket-name>jira-bucket</bucket-name>
        <region>us-east-1</region>
        <endpoint-override>http://127.0.0.1:9000</endpoint-override>
      </config>
    </s3-filestore>
  </filestores>
  <associations>
    <association target="backups" file-store="backupBucket"/>
  </associations>
</filestore-config>
"""


def write(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "home").mkdir(exist_ok=True)
    path = tmp_path / "hakit.toml"
    path.write_text(CONFIG + extra)
    return path


def test_no_filestore_config_means_a_directory_in_the_home(tmp_path: Path) -> None:
    target = resolve_target(load_config(write(tmp_path)))
    assert target == LocalTarget(
        tmp_path / "home" / "export" / "hakit-backups", tmp_path / "home" / "filestore-config.xml"
    )
    target = resolve_target(load_config(write(tmp_path, '[backup]\ndirectory = "b"\n')))
    assert isinstance(target, LocalTarget) and target.directory == tmp_path / "b"


def test_the_app_homes_filestore_config_is_read(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "filestore-config.xml").write_text(XML)
    target = resolve_target(load_config(write(tmp_path)))
    assert isinstance(target, S3Target)
    assert (target.filestore.bucket, target.filestore.endpoint) == (
        "jira-bucket",
        "http://127.0.0.1:9000",
    )
    assert target.prefix == "backups/hakit" and not target.write_only
    assert target.state.parent == tmp_path / "state" / "backup"
    assert "s3://jira-bucket/backups/hakit/" in target.describe()


def test_backup_keys_are_resolved_and_checked(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "fs.xml").write_text(XML)
    cfg = load_config(
        write(
            tmp_path,
            '[backup]\nfilestore_config = "etc/fs.xml"\nwrite_only = true\n'
            'access_key_env = "K"\nsecret_key_env = "S"\nprefix = "/b/x/"\n',
        )
    )
    target = resolve_target(cfg)
    assert isinstance(target, S3Target) and target.write_only
    assert target.filestore_config == tmp_path / "etc" / "fs.xml"
    assert (target.access_key_env, target.secret_key_env, target.prefix) == ("K", "S", "b/x")
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, '[backup]\naccess_key_env = "K"\n'))
    assert raised.value.problems == [
        f"{tmp_path / 'hakit.toml'}:12: backup.access_key_env: access_key_env and secret_key_env "
        "go together; expected both (the names of the environment variables holding the keys) "
        "or neither (the AWS chain)"
    ]
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, '[backup]\nwrite_only = "yes"\n'))
    assert raised.value.problems == [
        f'{tmp_path / "hakit.toml"}:12: backup.write_only: got the string "yes"; expected true '
        "or false"
    ]


def test_the_encryption_key_source_is_resolved_and_checked(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, '[backup]\nencryption_key_file = "keys/backup.key"\n'))
    target = resolve_target(cfg)
    assert isinstance(target, LocalTarget)
    assert target.encryption == KeySource(tmp_path / "keys" / "backup.key", None)
    assert target.describe().endswith(", encrypted")
    cfg = load_config(write(tmp_path, '[backup]\nencryption_key_env = "BACKUP_KEY"\n'))
    assert resolve_target(cfg).encryption == KeySource(None, "BACKUP_KEY")
    with pytest.raises(ConfigError) as raised:
        load_config(
            write(tmp_path, '[backup]\nencryption_key_file = "k"\nencryption_key_env = "K"\n')
        )
    assert raised.value.problems == [
        f"{tmp_path / 'hakit.toml'}:13: backup.encryption_key_env: encryption_key_file and "
        "encryption_key_env both name the key; expected one"
    ]


def test_config_check_reports_filestore_config_mistakes_with_their_lines(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    xml = tmp_path / "home" / "filestore-config.xml"
    xml.write_text(XML.replace("<region>us-east-1</region>", "<region/>"))
    config = load_config(write(tmp_path))  # an agent still starts: backups are not its job
    assert filestore_problems(config) == [
        f'{xml}:7: <s3-filestore id="backupBucket">: <region> is empty; write the region'
    ]


def test_health_check_verdicts() -> None:
    allowed, denied = Step(Outcome.ALLOWED), Step(Outcome.DENIED, "access denied")
    write_only = classify(allowed, denied, denied)
    assert write_only.status is Status.OK
    for read, delete in ((allowed, denied), (denied, allowed), (allowed, allowed)):
        report = classify(allowed, read, delete)
        assert report.status is Status.WARNING
        assert all(WRITE_ONLY_ADVICE in message for message in report.messages)
    assert len(classify(allowed, allowed, allowed).messages) == 2
    for write in (denied, Step(Outcome.FAILED, "could not connect")):
        report = classify(write, None, None)
        assert report.status is Status.ERROR
        assert report.messages[0].startswith("cannot write backups")
    unknown = classify(allowed, Step(Outcome.FAILED, "timeout"), denied)
    assert unknown.status is Status.WARNING and "could not tell" in unknown.messages[0]
