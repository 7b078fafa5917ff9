"""Shared base for every schema, and the one place pydantic errors become one-line messages.

Every schema derives from :class:`Spec`: unknown fields are rejected (``extra="forbid"``) and
each field carries a description (checked by the tests). :func:`parse` validates a mapping
against a schema and turns the first pydantic error into an :class:`~planner.errors.InputError`
that names the source, the field path and the rule.

:func:`read_mapping` reads a JSON or YAML file; :func:`parse_text` is its parser, shared with
the other JSON readers (SGLang statistics). Whatever the bytes, both return data or raise an
:class:`~planner.errors.InputError` of one line: malformed text, YAML that a constructor refuses
(``!!python/object``, ``2024-13-45``, ``!!bool maybe``), nesting deeper than :data:`MAX_DEPTH`
and integers outside 64 bits (:data:`INT_MIN`, :data:`INT_MAX`) are all reported, never raised
as another exception. :func:`show` renders any user value for a message: one line, bounded
length, whatever its size.
"""

from __future__ import annotations

import json
import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from planner.errors import InputError

#: Deepest nesting of lists and mappings accepted in an input file. The deepest real file (a
#: plan) nests 4 levels; the bound keeps every later walk (validation, repr) far from Python's
#: recursion limit, also for YAML whose aliases build deep or cyclic structures from few lines.
MAX_DEPTH = 64
#: Integers in input files must fit in 64 bits (signed): every count, size and id the planner
#: reads does, numpy stores them as int64, and it bounds what a message has to print.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 4
_REPR.maxlevel = 2


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with every line break or other unprintable character replaced, at most ``limit`` long."""
    out = "".join(c if c.isprintable() else " " for c in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 3] + "..."


def show(value: Any, limit: int = 60) -> str:
    """A short one-line ``repr`` of a user value, for error messages (never raises)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of {value.bit_length()} bits"  # no decimal digits: slow or refused
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__, or an int too long to print
        text = f"a {type(value).__name__}"
    return one_line(text, limit)


S = TypeVar("S", bound="Spec")


class Spec(BaseModel):
    """Strict pydantic base: unknown fields are errors, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part if part.bit_length() <= 64 else show(part)}]"
        else:
            out += ("." if out else "") + str(part)
    return one_line(out, 80) if out else "(root)"


def format_validation_error(source: str, err: ValidationError) -> str:
    """First error of ``err`` as ``source: field.path rule (got value)`` on one line."""
    first = err.errors()[0]
    loc = tuple(first.get("loc", ()))
    field = _loc(loc)
    msg = first.get("msg", "is invalid")
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return f"{source}: unknown field '{field}' (not part of this schema)"
    if kind == "missing":
        return f"{source}: {field} is required"
    msg = one_line(msg.removeprefix("Value error, "), 300)
    got = first.get("input")
    got_s = "" if isinstance(got, dict | list) else f" (got {show(got, 77)})"
    if len(got_s) > 80:
        got_s = got_s[:77] + "...)"
    where = f"{field}: " if loc else ""  # a whole-model rule names its fields in its message
    return f"{source}: {where}{msg}{got_s}".replace("\n", " ")


def parse(schema: type[S], data: Any, source: str) -> S:
    """Validate ``data`` against ``schema``; raise :class:`InputError` with one line on failure."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise InputError(format_validation_error(source, err)) from None


def _check_tree(data: Any, name: str) -> None:
    """Reject nesting deeper than :data:`MAX_DEPTH` and integers outside 64 bits.

    Iterative, and each list or mapping is visited once: YAML aliases can share one node many
    times (a "billion laughs" file) or make a node contain itself. Scalars are checked in
    place, without building their path, so that large count arrays cost little next to parsing.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, tuple[Any, ...]]] = [(data, ())] if isinstance(data, dict | list) else []

    def too_big(v: Any, path: tuple[Any, ...], what: str = "") -> InputError:
        where = _loc(path) if path else "the top level"
        return InputError(f"{name}: {where}: {what}{show(v)} is outside the signed 64-bit range")

    if isinstance(data, int) and not isinstance(data, bool) and not INT_MIN <= data <= INT_MAX:
        raise too_big(data, ())
    while stack:
        v, path = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if len(path) >= MAX_DEPTH:
            raise InputError(f"{name}: nested more than {MAX_DEPTH} levels deep at {_loc(path[:8])}...")
        for key, item in v.items() if isinstance(v, dict) else enumerate(v):
            if type(key) is not str and isinstance(key, int) and not INT_MIN <= key <= INT_MAX:
                raise too_big(key, path, "key ")  # a YAML mapping key such as 0xffff…
            kind = type(item)
            if kind is int:
                if not INT_MIN <= item <= INT_MAX:
                    raise too_big(item, (*path, key))
            elif kind is dict or kind is list:
                stack.append((item, (*path, key)))
            elif isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
                raise too_big(item, (*path, key))
            elif isinstance(item, dict | list):
                stack.append((item, (*path, key)))


def parse_text(text: str, name: str, *, yaml_format: bool = False) -> Any:
    """Parse JSON (or YAML, with ``yaml_format``) text, checked as :func:`_check_tree` says.

    ``name`` names the file in the one-line :class:`InputError` raised for anything malformed.
    """
    try:
        if yaml_format:
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None)
        why = f": {one_line(str(problem), 80)}" if problem else ""
        raise InputError(f"{name}: invalid YAML{where}{why}") from None
    except RecursionError:
        raise InputError(f"{name}: nested too deeply to read (more than {MAX_DEPTH} levels)") from None
    except Exception as e:  # noqa: BLE001 - YAML constructors raise what their types raise
        # ValueError: integers of more than 4300 digits (Python's limit), YAML dates such as
        # 2024-13-45, `!!int abc`; KeyError: `!!bool maybe`; and whatever else a tag's
        # constructor raises for a value it cannot build.
        reason = one_line(str(e) or e.__class__.__name__, 100)
        kind = "YAML" if yaml_format else "JSON"
        raise InputError(f"{name}: invalid {kind} ({reason})") from None
    _check_tree(data, name)
    return data


def path_kind(path: Path) -> str | None:
    """``"file"``, ``"dir"``, another kind (``"other"``), or None when nothing is there.

    Never raises: a name too long for the file system, a NUL byte or a permission problem on
    the way count as nothing there (``Path.is_file`` raises for some of these).
    """
    try:
        if path.is_file():
            return "file"
        if path.is_dir():
            return "dir"
        return "other" if path.exists() else None
    except (OSError, ValueError):
        return None


def require_file(path: str | Path) -> Path:
    """``path`` as a Path when it names a readable regular file; else a one-line InputError."""
    p = Path(path)
    kind = path_kind(p)
    if kind == "dir":
        raise InputError(f"{one_line(str(path), 300)}: is a folder, not a file")
    if kind != "file":
        raise InputError(f"{one_line(str(path), 300)}: no such file")
    return p


def read_text(p: Path) -> str:
    """A file's UTF-8 text; a one-line InputError naming the first bad byte, or the OS error."""
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        bad = e.object[e.start : e.start + 1].hex()
        raise InputError(f"{p.name}: cannot read as UTF-8 text (byte 0x{bad} at offset {e.start})") from None
    except OSError as e:
        raise InputError(f"{p.name}: cannot read ({e.strerror or e.__class__.__name__})") from None


def read_mapping(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file into a dict, with one-line errors for unreadable or malformed files."""
    p = require_file(path)
    name = p.name
    text = read_text(p)
    data = parse_text(text, name, yaml_format=p.suffix.lower() in (".yaml", ".yml"))
    if not isinstance(data, dict):
        raise InputError(f"{name}: expected a mapping of fields at the top level, got {type(data).__name__}")
    return data
