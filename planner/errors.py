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
    """Base of the project's own errors.

    ``field``: the keyword or schema field the message starts with; ``mentions``: further fields
    the message names in backquotes (a hint such as "pass `restart`"). Front ends spell them
    their own way: the CLI as flags (:meth:`for_flags`), the Python API as written."""

    exit_code = 1

    def __init__(self, message: str, *, field: str | None = None, mentions: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.mentions = tuple(mentions)

    def for_flags(self, flags: dict[str, str] | None = None) -> str:
        """The message with its fields spelled as command-line flags: the leading ``field`` and
        each backquoted ``mentions`` entry; ``flags`` maps a field to its flag, fields it lacks
        become ``--field-name``."""
        msg = str(self)

        def flag(name: str) -> str:
            return (flags or {}).get(name, "--" + name.replace("_", "-"))

        if self.field and msg.startswith(self.field):
            msg = flag(self.field) + msg[len(self.field):]
        for name in self.mentions:
            msg = msg.replace(f"`{name}`", flag(name))
        return msg


class InputError(PlannerError, ValueError):
    """Bad user input: one line naming the source, the field and the rule (exit 2)."""

    exit_code = 2


class InfeasibleError(PlannerError):
    """Valid inputs with no feasible plan: names the binding constraint with numbers (exit 1)."""

    exit_code = 1
