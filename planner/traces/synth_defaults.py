"""Per-model default structure parameters of :func:`planner.traces.synth_trace`.

The values live in ``planner/data/synth_defaults.json`` (written by ``tools/calibrate_synth.py``),
each entry with the statistics it was fitted to and their source. A model takes its own entry
(by preset name), else its family's (``families``: e.g. ``deepseek_v3`` → ``deepseek-v3``), else
``generic``; a trace made from a bare shape (no model) takes ``generic``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib.resources import files
from typing import Any

from planner.errors import InputError

#: Structure parameters the table provides, with their rule: (low, high or None, whether low is open).
PARAMS: dict[str, tuple[float, float | None]] = {
    "skew": (0.0, None),
    "affinity": (0.0, 1.0),
    "coactivation": (0.0, None),
    "domain_spread": (0.0, None),
    "seq_len": (2.0, None),
    "seq_len_spread": (0.0, 3.0),
    "topic": (0.0, None),
    "topic_drift": (0.0, None),
    "topic_geometry": (0.0, 1.0),
    "reuse": (0.0, None),
    "reuse_span": (1.0, None),
    "repick": (0.0, 1.0),
}


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    """The parsed defaults file."""
    return json.loads((files("planner") / "data" / "synth_defaults.json").read_text(encoding="utf-8"))


def entry_for(model_name: str | None, family: str | None) -> str:
    """The table entry a model uses: its own, its family's, or ``generic``."""
    t = table()
    name = (model_name or "").strip().lower()
    if name in t["models"]:
        return name
    fam = t["families"].get((family or "").strip().lower())
    return fam if fam in t["models"] else "generic"


def defaults_for(model_name: str | None, family: str | None) -> dict[str, float]:
    """The structure parameters (:data:`PARAMS`) for a model name and family."""
    t = table()
    key = entry_for(model_name, family)
    values = dict(t["generic"]["values"])
    if key != "generic":
        values.update(t["models"][key]["values"])
    return {p: float(values[p]) for p in PARAMS}


def check(name: str, value: float) -> float:
    """``value`` as a float if it obeys the rule of parameter ``name``; else a one-line InputError."""
    lo, hi = PARAMS[name]
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"synth: {name} must be a number (got {value!r})") from None
    if v != v or v in (float("inf"), float("-inf")) or v < lo or (hi is not None and v > hi):
        rule = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise InputError(f"synth: {name} must be {rule} (got {value})")
    return v
