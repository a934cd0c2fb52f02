"""docs/architecture.md names only code that exists.

Every `src/hakit/...py` and `tests/...py` path in backticks must be a file, a
`tests/...py::test_name` must define that test, and every `hakit.x.y` dotted name
in backticks must import (a module) or resolve as an attribute of one (a class,
function, constant, method). A rename that forgets the document fails here.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"(?:src/hakit|tests)/[\w/]+\.py")
_TEST = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
_DOTTED = re.compile(r"hakit(?:\.\w+)+")
_NOT_NAMES = {"hakit.toml"}  # the config file's name, not a module


def _spans() -> list[str]:
    return _CODE_SPAN.findall(DOC.read_text(encoding="utf-8"))


def _paths() -> list[str]:
    return sorted({s for s in _spans() if _PATH.fullmatch(s)})


def _tests() -> list[str]:
    return sorted({s for s in _spans() if _TEST.fullmatch(s)})


def _dotted() -> list[str]:
    return sorted({s for s in _spans() if _DOTTED.fullmatch(s) and s not in _NOT_NAMES})


def _resolve(name: str) -> object:
    """The module or attribute ``name`` names: the longest importable prefix, then getattr."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            found: object = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # not a module: try a shorter prefix
            raise  # the module exists but one of its own imports is missing
        for attribute in parts[i:]:
            found = getattr(found, attribute)
        return found
    raise ModuleNotFoundError(name)


def test_the_document_names_code() -> None:
    assert len(_paths()) >= 30
    assert len(_dotted()) >= 80
    assert len(_tests()) >= 20


@pytest.mark.parametrize("path", _paths())
def test_path_exists(path: str) -> None:
    assert (ROOT / path).is_file(), f"docs/architecture.md names {path}, which does not exist"


@pytest.mark.parametrize("reference", _tests())
def test_named_test_exists(reference: str) -> None:
    match = _TEST.fullmatch(reference)
    assert match is not None
    path, name = match.groups()
    source = (ROOT / path).read_text(encoding="utf-8")
    assert re.search(rf"^(?:async )?def {name}\(", source, re.MULTILINE), (
        f"docs/architecture.md names {reference}, which {path} does not define"
    )


@pytest.mark.parametrize("name", _dotted())
def test_dotted_name_resolves(name: str) -> None:
    try:
        found = _resolve(name)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"docs/architecture.md names {name}, which does not resolve: {error}")
    if isinstance(found, ModuleType):
        assert found.__name__ == name
