"""Config mistakes worded for humans: ``FILE:LINE: KEY: what is wrong; expected ...``.

Pydantic reports errors as (location, type, context); this module turns each
into one sentence that says what is wrong and what is expected, using the
schema itself (field names for "did you mean", field descriptions for missing
keys), and places it on a line of the TOML source (``toml_positions``).

It knows no hakit section: the schema's root model is a parameter, so the
schema module can use it without an import cycle.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

from hakit.config.toml_positions import KeyPath, key_lines, locate

# Error type of ``error_at_key``: a section-level check that blames one key.
_AT_KEY = "hakit_key"

_EXPECTED_TYPE = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "tuple_type": "an array",
    "list_type": "an array",
    "dict_type": 'a table such as { NAME = "value" }',
    "path_type": "a path string",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake: where (a key path) and what (a sentence ending in what is expected)."""

    loc: KeyPath
    message: str


def error_at_key(key: str, reason: str) -> PydanticCustomError:
    """For a model validator: an error about ``key`` of the model ("" for the whole table).

    Pydantic places model-validator errors on the table; the wording below moves
    them to the key, so the line number points at the value to fix.
    """
    template = "{key}: {reason}" if key else "{reason}"
    return PydanticCustomError(_AT_KEY, template, {"key": key, "reason": reason})


def format_key(loc: KeyPath) -> str:
    """("nodes", 1, "port") -> "nodes[1].port"; keys that are not bare are quoted."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text or "(top level)"


def render(path: Path, source: str, problems: Iterable[Problem]) -> list[str]:
    """Problems as ``FILE:LINE: KEY: message`` lines, in file order."""
    lines = key_lines(source)
    located = sorted(((locate(lines, p.loc), p) for p in problems), key=lambda lp: lp[0])
    return [f"{path}:{line}: {format_key(p.loc)}: {p.message}" for line, p in located]


def toml_type(value: object) -> str:
    """The TOML name of a parsed value's type, with its article: "a string"."""
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (list | tuple, "an array"),
        (dict, "a table"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def describe_value(value: object) -> str:
    """A value as the user wrote it, with its TOML type: 'the string "abc"'."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        text = json.dumps(value)
        return "the string " + (text if len(text) <= 60 else text[:56] + '..."')
    if isinstance(value, int | float):
        return f"the {toml_type(value).split()[1]} {value}"
    return toml_type(value)


class Wording:
    """Words the pydantic errors of one schema (``root`` is its top-level model).

    ``pattern_hints`` maps a field's regex to what it means, for pattern mismatches.
    """

    def __init__(self, root: type[BaseModel], pattern_hints: Mapping[str, str]) -> None:
        self.root = root
        self.pattern_hints = pattern_hints

    def problems(self, error: ValidationError, prefix: KeyPath = ()) -> list[Problem]:
        return [self.problem(prefix + tuple(detail["loc"]), detail) for detail in error.errors()]

    def problem(self, loc: KeyPath, detail: Mapping[str, Any]) -> Problem:
        kind: str = detail["type"]
        ctx: Mapping[str, Any] = detail.get("ctx") or {}
        value = detail.get("input")
        if kind == "missing":
            return self.missing(loc)
        if kind == "extra_forbidden":
            return self.unknown_key(loc)
        if kind == _AT_KEY:
            return Problem((*loc, ctx["key"]) if ctx["key"] else loc, ctx["reason"])
        if kind in ("value_error", "assertion_error"):
            return Problem(loc, str(ctx.get("error", detail["msg"])))
        got = f"got {describe_value(value)}"
        if kind in ("model_type", "model_attributes_type"):
            return Problem(loc, f"{got}; expected a table ([{format_key(loc)}])")
        if kind in ("tuple_type", "list_type") and self.model_at(loc) is not None:
            return Problem(loc, f"{got}; expected an array of tables ([[{format_key(loc)}]])")
        if kind in _EXPECTED_TYPE:
            return Problem(loc, f"{got}; expected {_EXPECTED_TYPE[kind]}")
        if kind == "enum":
            choices = ", ".join(re.findall(r"'([^']*)'", ctx.get("expected", "")))
            what = loc[-1] if loc else "value"
            return Problem(
                loc, f"{describe_value(value)} is not a valid {what}; expected one of: {choices}"
            )
        if kind == "greater_than_equal":
            return Problem(loc, f"must be at least {ctx['ge']}, got {value}")
        if kind == "less_than_equal":
            return Problem(loc, f"must be at most {ctx['le']}, got {value}")
        if kind == "string_pattern_mismatch":
            expected = self.pattern_hints.get(ctx["pattern"], f"a match for {ctx['pattern']}")
            return Problem(loc, f"{describe_value(value)} is not allowed; expected {expected}")
        if kind == "string_too_short" and ctx.get("min_length", 1) > 1:
            # The value is not shown: it may be a secret (admin.token, router.secret).
            needed = f"at least {ctx['min_length']} characters"
            described = self.description(loc)
            length = len(value) if isinstance(value, str) else 0
            return Problem(
                loc,
                f"has only {length} character{'' if length == 1 else 's'}; expected {needed}"
                + (f": {described}" if described else ""),
            )
        if kind in ("string_too_short", "too_short"):
            return Problem(loc, "is empty; expected a value")
        message: str = detail["msg"]
        return Problem(loc, message[:1].lower() + message[1:])

    def missing(self, loc: KeyPath) -> Problem:
        description = self.description(loc)
        if description:
            return Problem(loc, f"required key is missing; expected {description}")
        return Problem(loc, "required key is missing")

    def description(self, loc: KeyPath) -> str | None:
        """The schema's description of the key at ``loc`` (what it expects), if any."""
        parent = self.model_at(loc[:-1]) if loc else None
        field = parent.model_fields.get(str(loc[-1])) if parent is not None else None
        return field.description if field is not None else None

    def unknown_key(self, loc: KeyPath) -> Problem:
        key = str(loc[-1])
        parent = self.model_at(loc[:-1])
        known = [n for n, f in parent.model_fields.items() if not f.exclude] if parent else []
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return Problem(loc, f"unknown key; did you mean {close[0]}?")
        # Right key, wrong table: "interval" written under [app] instead of [health].
        elsewhere = [table for table, model in self.tables() if key in model.model_fields]
        if elsewhere:
            return Problem(loc, f"unknown key here; did you mean {key} in {elsewhere[0]}?")
        return Problem(loc, f"unknown key; expected one of: {', '.join(known)}")

    def model_at(self, loc: KeyPath) -> type[BaseModel] | None:
        """The model describing the table at ``loc`` (array indexes are skipped)."""
        model: type[BaseModel] | None = self.root
        for part in loc:
            if isinstance(part, int):
                continue
            field = model.model_fields.get(part) if model is not None else None
            model = _model_in(field.annotation) if field is not None else None
        return model

    def tables(self) -> list[tuple[str, type[BaseModel]]]:
        """Every table of the schema: ("[app.health]", model), "[[nodes]]" for arrays."""
        found: list[tuple[str, type[BaseModel]]] = []

        def walk(model: type[BaseModel], prefix: str) -> None:
            for name, field in model.model_fields.items():
                inner = _model_in(field.annotation)
                if inner is None:
                    continue
                dotted = f"{prefix}.{name}" if prefix else name
                is_array = get_origin(field.annotation) is tuple
                found.append((f"[[{dotted}]]" if is_array else f"[{dotted}]", inner))
                walk(inner, dotted)

        walk(self.root, "")
        return found


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
