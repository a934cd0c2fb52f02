"""The base of every section model, and the name patterns the sections share."""

from __future__ import annotations

import re
from types import UnionType
from typing import Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from hakit.config.problems import describe_value

_NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_ROUTE = r"^[A-Za-z0-9_-]*$"
_COOKIE_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"  # an RFC 6265 token
PATTERN_HINTS = {
    _NODE_NAME: "a name starting with a letter or digit, then letters, digits, '_', '.' or '-'",
    _ROUTE: "letters, digits, '_' or '-' only (the route goes into cookies)",
    _COOKIE_NAME: "a cookie name: letters, digits and !#$%&'*+-.^_`|~ only",
}


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_coercion(cls, value: object, info: ValidationInfo) -> object:
        """Integers and booleans as TOML writes them: pydantic would take port = "8080",
        8080.0 or true for an integer and "yes" for a boolean; a config file means what
        it says, so those are mistakes."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if get_origin(annotation) in (Union, UnionType):  # int | None
            annotation = next(iter(set(get_args(annotation)) - {type(None)}), None)
        if value is None:
            return value
        if annotation is bool and not isinstance(value, bool):
            raise ValueError(f"got {describe_value(value)}; expected true or false")
        if annotation is int and type(value) is not int:
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
                hint = f" (write {value.strip()} without quotes)"
            raise ValueError(f"got {describe_value(value)}; expected an integer{hint}")
        return value
