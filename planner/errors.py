"""Project exceptions: how a failure reaches the user.

- :class:`InputError` — the user gave something wrong (a file, a flag, a field). The CLI prints
  its message as one line and exits 2. Messages name the source (file or flag), the field and
  the rule, with the value that broke it: ``config.json: intermediate_size must be > 0 (got -5)``.
- :class:`InfeasibleError` — the inputs are valid but no plan satisfies them. The CLI exits 1;
  the message names the binding constraint with numbers and units.

``assert`` is kept for internal invariants only, never for user data.
"""

from __future__ import annotations


class PlannerError(Exception):
    """Base of the project's own errors."""

    exit_code = 1


class InputError(PlannerError, ValueError):
    """Bad user input: one line naming the source, the field and the rule (exit 2)."""

    exit_code = 2


class InfeasibleError(PlannerError):
    """Valid inputs with no feasible plan: names the binding constraint with numbers (exit 1)."""

    exit_code = 1
