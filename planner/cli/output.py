"""Where the command line's output goes: results on stdout, everything else on stderr.

Solvers written in C print on file descriptor 1 whatever Python does: HiGHS writes its banner
("Running HiGHS ...") there when a model is first built, which made ``plan --json`` invalid
JSON. :func:`results_only_stdout` points descriptor 1 at stderr for the whole command and gives
Python's ``sys.stdout`` a private duplicate of the real stdout, so that what the command echoes
(its result) reaches stdout and nothing written underneath does. It works at the descriptor
level and needs nothing from the solver modules.

:func:`error_json` is what ``--json`` prints on stdout when a command fails: one JSON object
with ``error`` (the message as the one-line stderr text words it), ``kind`` (``input``,
``infeasible``, ``usage``, ``aborted``), and ``field`` / ``flag`` when the error names one.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


@contextmanager
def results_only_stdout() -> Iterator[None]:
    """Inside the block, descriptor 1 is stderr and ``sys.stdout`` writes to the real stdout.

    When ``sys.stdout`` is not descriptor 1 (a test's capture, an embedding program) it is left
    alone: what Python prints goes where it went, and descriptor 1 still carries only what C code
    writes, now to stderr. Without a descriptor 1 or 2 nothing is changed."""
    old = sys.stdout
    try:
        old.flush()
    except (AttributeError, OSError, ValueError):
        pass
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        yield
        return
    swapped = _fileno(old) == 1
    if swapped:
        raw = io.FileIO(saved, "w", closefd=False)
        sys.stdout = io.TextIOWrapper(
            io.BufferedWriter(raw), encoding=getattr(old, "encoding", None) or "utf-8",
            errors=getattr(old, "errors", None) or "strict", line_buffering=True,
        )
    try:
        yield
    finally:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        if swapped:
            sys.stdout = old
        os.dup2(saved, 1)
        os.close(saved)


def asks_for_json(argv: list[str]) -> bool:
    """Whether the command line has ``--json`` (before a ``--`` that ends the options)."""
    for a in argv:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def error_json(message: str, kind: str, field: str | None = None) -> str:
    """The JSON object ``--json`` prints on stdout for a failed command (module docstring)."""
    out: dict[str, Any] = {"error": message, "kind": kind}
    if field:
        out["field"] = field
        out["flag"] = "--" + field.replace("_", "-")
    return json.dumps(out)
