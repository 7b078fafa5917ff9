"""Project exceptions: how a failure reaches the user.

- :class:`InputError` — the user gave something wrong (a file, a flag, a field). The CLI prints
  its message as one line and exits 2. Messages name the source (file or flag), the field and
  the rule, with the value that broke it: ``config.json: intermediate_size must be > 0 (got -5)``.
- :class:`InfeasibleError` — the inputs are valid but no plan satisfies them. The CLI exits 1;
  the message names the binding constraint with numbers and units.

Library code names the *field* (the keyword of :func:`planner.plan`, a schema field), never a
command-line flag: ``InputError("world_size must be >= 1 (got 0)", field="world_size")``. The
CLI, which owns the flags, shows that field as its flag (``--world-size``): see
:func:`planner.cli.main`. ``field`` is optional; messages about files name the file instead.

``assert`` is kept for internal invariants only, never for user data.
"""

from __future__ import annotations


class PlannerError(Exception):
    """Base of the project's own errors."""

    exit_code = 1


class InputError(PlannerError, ValueError):
    """Bad user input: one line naming the source, the field and the rule (exit 2).

    ``field``: the keyword or schema field the message starts with, if any; front ends map it to
    their own spelling (the CLI to its flag)."""

    exit_code = 2

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def for_flags(self, flags: dict[str, str] | None = None) -> str:
        """The message with its leading field spelled as a command-line flag: ``flags`` maps a
        field to its flag; fields it lacks become ``--field-name``."""
        msg = str(self)
        if not self.field or not msg.startswith(self.field):
            return msg
        flag = (flags or {}).get(self.field, "--" + self.field.replace("_", "-"))
        return flag + msg[len(self.field):]


class InfeasibleError(PlannerError):
    """Valid inputs with no feasible plan: names the binding constraint with numbers (exit 1)."""

    exit_code = 1
