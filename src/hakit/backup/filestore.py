"""Jira's ``filestore-config.xml``: where backups go, read and checked (pure: bytes in).

The file Jira keeps in its local home names S3 buckets (``<s3-filestore>``) and
which of the app's data goes to which (``<association target=... file-store=...>``)::

    <?xml version="1.1" ?>
    <filestore-config>
      <filestores>
        <s3-filestore id="backupBucket">
          <config>
            <bucket-name>jira-bucket</bucket-name>
            <region>us-east-1</region>
            <endpoint-override>https://s3.dualstack.us-east-1.amazonaws.com</endpoint-override>
            <max-concurrency>100</max-concurrency>
          </config>
        </s3-filestore>
      </filestores>
      <associations>
        <association target="backups" file-store="backupBucket"/>
      </associations>
    </filestore-config>

hakit uses the ``backups`` association; ``avatars`` and ``attachments`` are the
app's (recognised, checked, left alone). Every mistake is reported with its line
and the fix. The parser is expat with a document type refused outright: no
entity can be declared, so none can be expanded (no "billion laughs", no
external entity read).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from xml.parsers import expat

FILENAME = "filestore-config.xml"
BACKUPS = "backups"
TARGETS = ("avatars", "attachments", BACKUPS)  # the association targets Jira knows
DEFAULT_MAX_CONCURRENCY = 100
CONFIG_KEYS = ("bucket-name", "region", "endpoint-override", "max-concurrency")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's bucket naming rules


@dataclass(frozen=True, slots=True)
class S3Filestore:
    id: str
    bucket: str
    region: str
    endpoint: str | None = None
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    line: int = 0


@dataclass(frozen=True, slots=True)
class FilestoreConfig:
    path: Path
    filestores: dict[str, S3Filestore] = field(default_factory=dict)
    associations: dict[str, str] = field(default_factory=dict)  # target -> filestore id

    def backups(self) -> S3Filestore | None:
        """The filestore backups go to; None: a local directory."""
        name = self.associations.get(BACKUPS)
        return None if name is None else self.filestores[name]


@dataclass(frozen=True, slots=True)
class XmlProblem:
    line: int
    message: str  # what is wrong; what to write instead


@dataclass(frozen=True, slots=True)
class ParseResult:
    config: FilestoreConfig | None  # None when there are problems
    problems: tuple[XmlProblem, ...] = ()

    def lines(self, path: Path) -> list[str]:
        return [f"{path}:{p.line}: {p.message}" for p in self.problems]


@dataclass(slots=True)
class _Element:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Element] = field(default_factory=list)
    text: str = ""

    def child(self, tag: str) -> _Element | None:
        return next((c for c in self.children if c.tag == tag), None)


class _Refused(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _tree(data: bytes) -> _Element:
    parser = expat.ParserCreate()
    stack: list[_Element] = []
    roots: list[_Element] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        element = _Element(tag, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(element)
        stack.append(element)

    def end(_tag: str) -> None:
        stack.pop()

    def text(chunk: str) -> None:
        if stack:
            stack[-1].text += chunk

    def doctype(*_args: object) -> None:
        raise _Refused(
            parser.CurrentLineNumber,
            "a document type declaration (<!DOCTYPE>) is not allowed: it could declare "
            "entities; remove it (filestore-config.xml needs none)",
        )

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    parser.Parse(data, True)
    return roots[0]


def parse_filestore_config(data: bytes, path: Path) -> ParseResult:
    """The file's filestores and associations, or every problem with its line."""
    try:
        root = _tree(data)
    except _Refused as refused:
        return ParseResult(None, (XmlProblem(refused.line, refused.message),))
    except expat.ExpatError as error:
        return ParseResult(
            None,
            (
                XmlProblem(
                    error.lineno,
                    f"the file is not valid XML ({expat.ErrorString(error.code)}, column "
                    f"{error.offset + 1}); fix the XML (every element closed, attribute "
                    "values in quotes)",
                ),
            ),
        )
    problems: list[XmlProblem] = []
    if root.tag != "filestore-config":
        problems.append(
            XmlProblem(root.line, f"the root element is <{root.tag}>; expected <filestore-config>")
        )
        return ParseResult(None, tuple(problems))
    filestores = _filestores(root, problems)
    associations = _associations(root, filestores, problems)
    if problems:
        return ParseResult(None, tuple(problems))
    return ParseResult(FilestoreConfig(path, filestores, associations))


def _value(config: _Element, key: str, owner: str, problems: list[XmlProblem]) -> str | None:
    element = config.child(key)
    if element is None:
        problems.append(
            XmlProblem(
                config.line,
                f"{owner}: <config> has no <{key}>; add <{key}>...</{key}> inside <config>",
            )
        )
        return None
    value = element.text.strip()
    if not value:
        problems.append(
            XmlProblem(
                element.line, f"{owner}: <{key}> is empty; write the {key.replace('-', ' ')}"
            )
        )
        return None
    return value


def _filestores(root: _Element, problems: list[XmlProblem]) -> dict[str, S3Filestore]:
    found: dict[str, S3Filestore] = {}
    section = root.child("filestores")
    for element in section.children if section is not None else []:
        if element.tag != "s3-filestore":
            problems.append(
                XmlProblem(
                    element.line,
                    f'<{element.tag}> is not a filestore; expected <s3-filestore id="...">',
                )
            )
            continue
        ident = element.attrs.get("id", "").strip()
        owner = f'<s3-filestore id="{ident}">'
        if not ident:
            problems.append(
                XmlProblem(element.line, '<s3-filestore> has no id; add id="backupBucket"')
            )
            continue
        if ident in found:
            problems.append(
                XmlProblem(
                    element.line,
                    f"{owner} is defined twice (first on line {found[ident].line}); "
                    "give each filestore its own id",
                )
            )
            continue
        # Known from here on, valid or not: an association naming it is not reported too.
        found[ident] = S3Filestore(ident, "", "", line=element.line)
        config = element.child("config")
        if config is None:
            problems.append(
                XmlProblem(
                    element.line,
                    f"{owner} has no <config>; add <config> with <bucket-name> and <region>",
                )
            )
            continue
        for unknown in config.children:
            close = difflib.get_close_matches(unknown.tag, CONFIG_KEYS, n=1)
            if unknown.tag not in CONFIG_KEYS and close:
                problems.append(
                    XmlProblem(
                        unknown.line, f"{owner}: <{unknown.tag}>: did you mean <{close[0]}>?"
                    )
                )
        bucket = _value(config, "bucket-name", owner, problems)
        region = _value(config, "region", owner, problems)
        endpoint = _endpoint(config, owner, problems)
        concurrency = _concurrency(config, owner, problems)
        if bucket is not None and not _BUCKET.match(bucket):
            problems.append(
                XmlProblem(
                    config.line,
                    f"{owner}: {bucket!r} is not an S3 bucket name; expected 3 to 63 lowercase "
                    "letters, digits, '.' or '-'",
                )
            )
        elif bucket is not None and region is not None:
            found[ident] = S3Filestore(ident, bucket, region, endpoint, concurrency, element.line)
    return found


def _endpoint(config: _Element, owner: str, problems: list[XmlProblem]) -> str | None:
    element = config.child("endpoint-override")
    if element is None:
        return None
    value = element.text.strip()
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        problems.append(
            XmlProblem(
                element.line,
                f"{owner}: <endpoint-override> {value!r} is not a URL; expected e.g. "
                "https://s3.dualstack.us-east-1.amazonaws.com",
            )
        )
        return None
    return value


def _concurrency(config: _Element, owner: str, problems: list[XmlProblem]) -> int:
    element = config.child("max-concurrency")
    if element is None:
        return DEFAULT_MAX_CONCURRENCY
    value = element.text.strip()
    if not value.isdigit() or not 1 <= int(value) <= 1000:
        problems.append(
            XmlProblem(
                element.line,
                f"{owner}: <max-concurrency> {value!r} is not a number from 1 to 1000; "
                f"write e.g. {DEFAULT_MAX_CONCURRENCY} (the default)",
            )
        )
        return DEFAULT_MAX_CONCURRENCY
    return int(value)


def _associations(
    root: _Element, filestores: dict[str, S3Filestore], problems: list[XmlProblem]
) -> dict[str, str]:
    found: dict[str, str] = {}
    lines: dict[str, int] = {}
    section = root.child("associations")
    for element in section.children if section is not None else []:
        if element.tag != "association":
            problems.append(
                XmlProblem(
                    element.line,
                    f'<{element.tag}> is not an association; expected <association target="'
                    'backups" file-store="...">',
                )
            )
            continue
        target = element.attrs.get("target", "").strip()
        store = element.attrs.get("file-store", "").strip()
        if target not in TARGETS:
            close = difflib.get_close_matches(target, TARGETS, n=1)
            if not target or close:
                hint = f'did you mean "{close[0]}"? ' if close else ""
                problems.append(
                    XmlProblem(
                        element.line,
                        f"<association> target {target!r} is not known; {hint}expected one of "
                        + ", ".join(TARGETS),
                    )
                )
            continue  # a target of a later Jira: the app's business
        if target in found:
            problems.append(
                XmlProblem(
                    element.line,
                    f'target "{target}" is associated twice (first on line {lines[target]}); '
                    "keep one <association> per target",
                )
            )
            continue
        if store not in filestores:
            known = ", ".join(f'"{name}"' for name in filestores) or "none is defined"
            problems.append(
                XmlProblem(
                    element.line,
                    f'<association target="{target}"> names file-store "{store}", which is '
                    f"not defined; expected the id of an <s3-filestore> (defined: {known})",
                )
            )
            continue
        found[target] = store
        lines[target] = element.line
    return found


def read_filestore_config(path: Path) -> ParseResult | None:
    """The file at ``path`` parsed; None when there is no such file (backups go to a directory)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        return ParseResult(
            None, (XmlProblem(1, f"cannot read the file ({error.strerror}); make it readable"),)
        )
    return parse_filestore_config(data, path)
