"""Shared base for every schema, and the one place pydantic errors become one-line messages.

Every schema derives from :class:`Spec`: unknown fields are rejected (``extra="forbid"``) and
each field carries a description (checked by the tests). :func:`parse` validates a mapping
against a schema and turns the first pydantic error into an :class:`~planner.errors.InputError`
that names the source, the field path and the rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from planner.errors import InputError

S = TypeVar("S", bound="Spec")


class Spec(BaseModel):
    """Strict pydantic base: unknown fields are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def format_validation_error(source: str, err: ValidationError) -> str:
    """First error of ``err`` as ``source: field.path rule (got value)`` on one line."""
    first = err.errors()[0]
    field = _loc(tuple(first.get("loc", ())))
    msg = first.get("msg", "is invalid")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return f"{source}: unknown field '{field}' (not part of this schema)"
    if kind == "missing":
        return f"{source}: {field} is required"
    msg = msg.removeprefix("Value error, ")
    got = first.get("input")
    got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
    if len(got_s) > 80:
        got_s = got_s[:77] + "...)"
    return f"{source}: {field}: {msg}{got_s}".replace("\n", " ")


def parse(schema: type[S], data: Any, source: str) -> S:
    """Validate ``data`` against ``schema``; raise :class:`InputError` with one line on failure."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(source, err)) from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file into a dict, with one-line errors for unreadable or malformed files."""
    p = Path(path)
    name = p.name
    if not p.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{name}: cannot read as UTF-8 text ({e.__class__.__name__})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{name}: invalid YAML{where}") from None
    if not isinstance(data, dict):
        raise InputError(f"{name}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data
