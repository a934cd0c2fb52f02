"""Jira's filestore-config.xml: read, and every mistake reported with its line and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hakit.backup.filestore import (
    DEFAULT_MAX_CONCURRENCY,
    FilestoreConfig,
    parse_filestore_config,
    read_filestore_config,
)

PATH = Path("/home/app/filestore-config.xml")

JIRA_EXAMPLE = b"""<?xml version="1.1" ?>
<filestore-config>
  <filestores>
    <s3-filestore id="backupBucket">
      <config>
        <bucket-name>jira-bucket</bucket-name>
        <region>us-east-1</region>
      </config>
    </s3-filestore>
    <s3-filestore id="avatarBucket">
      <config>
        <bucket-name>avatar-bucket</bucket-name>
        <region>eu-west-1</region>
        <endpoint-override>https://s3.dualstack.eu-west-1.amazonaws.com</endpoint-override>
        <max-concurrency>16</max-concurrency>
      </config>
    </s3-filestore>
  </filestores>
  <associations>
    <association target="backups" file-store="backupBucket" />
    <association target="avatars" file-store="avatarBucket" />
  </associations>
</filestore-config>
"""


def parsed(text: bytes) -> FilestoreConfig:
    result = parse_filestore_config(text, PATH)
    assert result.problems == (), result.problems
    assert result.config is not None
    return result.config


def problems(text: str) -> list[tuple[int, str]]:
    result = parse_filestore_config(text.encode(), PATH)
    assert result.config is None
    return [(problem.line, problem.message) for problem in result.problems]


def test_jiras_example_is_read() -> None:
    config = parsed(JIRA_EXAMPLE)
    backups = config.backups()
    assert backups is not None
    assert (backups.id, backups.bucket, backups.region) == (
        "backupBucket",
        "jira-bucket",
        "us-east-1",
    )
    assert backups.endpoint is None and backups.max_concurrency == DEFAULT_MAX_CONCURRENCY
    avatars = config.filestores["avatarBucket"]
    assert avatars.endpoint == "https://s3.dualstack.eu-west-1.amazonaws.com"
    assert avatars.max_concurrency == 16
    assert config.associations == {"backups": "backupBucket", "avatars": "avatarBucket"}


def test_without_a_backups_association_backups_stay_local() -> None:
    config = parsed(
        JIRA_EXAMPLE.replace(b'<association target="backups" file-store="backupBucket" />', b"")
    )
    assert config.backups() is None
    assert config.associations == {"avatars": "avatarBucket"}


def test_a_target_of_a_later_jira_is_left_alone() -> None:
    config = parsed(JIRA_EXAMPLE.replace(b'target="avatars"', b'target="imports"'))
    assert config.associations == {"backups": "backupBucket"}


def test_not_valid_xml() -> None:
    found = problems("<filestore-config>\n  <filestores>\n  </filestore>\n</filestore-config>\n")
    assert len(found) == 1
    line, message = found[0]
    assert line == 3
    assert message.startswith("the file is not valid XML (mismatched tag")
    assert "fix the XML" in message


def test_empty_file_is_not_valid_xml() -> None:
    assert problems("")[0][0] == 1
    assert "not valid XML (no element found" in problems("")[0][1]


def test_a_doctype_is_refused_so_no_entity_is_expanded() -> None:
    laughs = (
        '<?xml version="1.0"?>\n'
        '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>\n'
        "<filestore-config><filestores>&lol2;</filestores></filestore-config>\n"
    )
    [(line, message)] = problems(laughs)
    assert line == 2 and "document type declaration" in message and "remove it" in message


def test_another_root_element() -> None:
    assert problems("<?xml version='1.0'?>\n\n<config/>\n") == [
        (3, "the root element is <config>; expected <filestore-config>")
    ]


STORE = """<filestore-config>
  <filestores>
    <s3-filestore id="backupBucket">
{config}
    </s3-filestore>
  </filestores>
  <associations>
    <association target="backups" file-store="backupBucket"/>
  </associations>
</filestore-config>
"""


def store_problems(config: str) -> list[tuple[int, str]]:
    return problems(STORE.format(config=config))


def test_s3_filestore_without_config() -> None:
    assert store_problems("") == [
        (
            3,
            '<s3-filestore id="backupBucket"> has no <config>; add <config> with '
            "<bucket-name> and <region>",
        )
    ]


def test_config_without_bucket_name() -> None:
    found = store_problems("      <config>\n        <region>us-east-1</region>\n      </config>")
    assert found == [
        (
            4,
            '<s3-filestore id="backupBucket">: <config> has no <bucket-name>; add '
            "<bucket-name>...</bucket-name> inside <config>",
        )
    ]


def test_config_without_region() -> None:
    found = store_problems(
        "      <config>\n        <bucket-name>b-1</bucket-name>\n      </config>"
    )
    assert [line for line, _ in found] == [4]
    assert "<config> has no <region>; add <region>...</region>" in found[0][1]


@pytest.mark.parametrize("key", ["bucket-name", "region"])
def test_an_empty_value(key: str) -> None:
    values = {"bucket-name": "bucket-1", "region": "us-east-1"}
    values[key] = "  "
    config = (
        "      <config>\n"
        + "".join(f"        <{name}>{value}</{name}>\n" for name, value in values.items())
        + "      </config>"
    )
    found = store_problems(config)
    line = 5 if key == "bucket-name" else 6
    assert found == [
        (
            line,
            f'<s3-filestore id="backupBucket">: <{key}> is empty; write the {key.replace("-", " ")}',
        )
    ]


def test_bad_optional_values_and_a_misspelt_key() -> None:
    config = (
        "      <config>\n"
        "        <bucket-name>Bad_Bucket</bucket-name>\n"
        "        <region>us-east-1</region>\n"
        "        <endpoint-override>s3.example.com</endpoint-override>\n"
        "        <max-concurency>10</max-concurency>\n"
        "        <max-concurrency>0</max-concurrency>\n"
        "      </config>"
    )
    found = store_problems(config)
    assert [line for line, _ in found] == [
        8,
        7,
        9,
        4,
    ]  # misspelt key, endpoint, concurrency, bucket
    assert "did you mean <max-concurrency>?" in found[0][1]
    assert "is not a URL; expected e.g. https://" in found[1][1]
    assert "<max-concurrency> '0' is not a number from 1 to 1000" in found[2][1]
    assert "'Bad_Bucket' is not an S3 bucket name" in found[3][1]


def test_an_association_naming_a_missing_filestore() -> None:
    text = JIRA_EXAMPLE.decode().replace('file-store="backupBucket"', 'file-store="backupBuckett"')
    [(line, message)] = problems(text)
    assert line == 20
    assert message == (
        '<association target="backups"> names file-store "backupBuckett", which is not '
        'defined; expected the id of an <s3-filestore> (defined: "backupBucket", "avatarBucket")'
    )


def test_a_misspelt_target_and_a_target_given_twice() -> None:
    text = JIRA_EXAMPLE.decode().replace('target="avatars"', 'target="backup"')
    [(line, message)] = problems(text)
    assert line == 21 and 'did you mean "backups"?' in message
    text = JIRA_EXAMPLE.decode().replace('target="avatars"', 'target="backups"')
    [(line, message)] = problems(text)
    assert line == 21 and "associated twice (first on line 20)" in message


def test_a_filestore_defined_twice_and_one_without_id() -> None:
    text = JIRA_EXAMPLE.decode().replace('id="avatarBucket"', 'id="backupBucket"')
    text = text.replace('file-store="avatarBucket"', 'file-store="backupBucket"')
    found = problems(text)
    assert found[0] == (
        10,
        '<s3-filestore id="backupBucket"> is defined twice (first on line 4); give each '
        "filestore its own id",
    )
    found = problems(JIRA_EXAMPLE.decode().replace(' id="avatarBucket"', ""))
    assert found[0] == (10, '<s3-filestore> has no id; add id="backupBucket"')


def test_every_problem_is_reported_at_once() -> None:
    text = JIRA_EXAMPLE.decode().replace("<region>us-east-1</region>", "<region></region>")
    text = text.replace('file-store="avatarBucket"', 'file-store="nope"')
    assert [line for line, _ in problems(text)] == [7, 21]


def test_reading_a_file(tmp_path: Path) -> None:
    assert read_filestore_config(tmp_path / "filestore-config.xml") is None
    path = tmp_path / "filestore-config.xml"
    path.write_bytes(b"<filestore-config>\n<oops>\n</filestore-config>")
    result = read_filestore_config(path)
    assert result is not None and result.config is None
    assert result.lines(path) == [
        f"{path}:3: the file is not valid XML (mismatched tag, column 3); fix the XML "
        "(every element closed, attribute values in quotes)"
    ]
