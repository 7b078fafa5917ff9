"""Sweep spec: the what-if grid ``moe-planner sweep SPEC.yaml`` plans (docs/contracts.md, "Command line").

A spec has two mappings of ``plan`` options, by their long name with underscores
(``gpus_per_node``, ``redundant_experts``, ``time_limit`` …; also the options that have no
flag, such as ``train_fraction``: every field of :class:`planner.specs.options.PlanOptions`):

- ``base``: options every combination shares (``model: mixtral-8x7b``, ``time_limit: 10``);
- ``grid``: option → non-empty list of values; every combination of one value per option is
  planned (the Cartesian product, in the order the options and values are written).

.. code-block:: yaml

    name: mixtral-scale-out
    base: {model: mixtral-8x7b, time_limit: 5}
    grid:
      nodes: [1, 2, 4]
      redundant_experts: [0, 8]
      baseline: [null, eplb]

Rules checked when the file is read (each a one-line :class:`~planner.errors.InputError` naming
the file, the field and the rule): the option names exist (an unknown one is named with its
close matches), a grid list is non-empty and has no repeated value, an option is not in both
``base`` and ``grid``, at least one grid option, and each value has the option's type (int,
number, one of the option's allowed values, text; ``null`` where the option may be omitted). The rest
(``nodes: 0``, an EP that does not divide) is checked when a combination is planned: such a
combination fails alone and its row records why.

Relative paths (``model``, ``hardware``, ``trace``, ``previous``) are taken relative to the
spec's folder when a file of that name is there (:func:`resolve_paths`).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from planner.errors import InputError
from planner.specs.base import Spec, parse, read_mapping, show
from planner.specs.options import check_name, check_value, option_kinds, yaml_choice

#: Options whose value may name a file next to the spec.
PATH_OPTIONS = ("model", "hardware", "trace", "previous")


def plan_options() -> dict[str, tuple[str, tuple[str, ...] | None, bool]]:
    """Every option a sweep may set: name → (kind, choices or None, may be null), from
    :class:`planner.specs.options.PlanOptions` (the options of ``moe-planner plan``)."""
    return option_kinds()


def format_cell(v: Any) -> str:
    """A value as a results.csv cell (and a plot label): empty for None, ``true``/``false``,
    floats with full precision (``repr``)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


class SweepSpec(Spec):
    """A what-if grid: ``base`` options shared by every combination, ``grid`` options varied."""

    name: str | None = Field(default=None, description="Name of the sweep (shown in plot titles)")
    base: dict[str, Any] = Field(
        default_factory=dict, description="plan options (long names with underscores) shared by every combination"
    )
    grid: dict[str, list[Any]] = Field(
        description="plan option -> non-empty list of values; every combination of one value per option is planned"
    )

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        for opt, value in self.base.items():
            check_name(opt, f"base.{opt}")
            self.base[opt] = value = yaml_choice(opt, value)
            check_value(opt, value, f"base.{opt}")
        if not self.grid:
            raise ValueError("grid: must name at least one option with a list of values")
        for opt, values in self.grid.items():
            check_name(opt, f"grid.{opt}")
            if opt in self.base:
                raise ValueError(f"grid.{opt}: also set in base; an option is either shared (base) or varied (grid)")
            if not values:
                raise ValueError(f"grid.{opt}: the list of values is empty (give at least one value)")
            seen: list[Any] = []
            for i, v in enumerate(values):
                values[i] = v = yaml_choice(opt, v)
                check_value(opt, v, f"grid.{opt}[{i}]")
                if any(v == s and type(v) is type(s) for s in seen):
                    raise ValueError(f"grid.{opt}[{i}]: value {show(v)} is repeated")
                seen.append(v)
        return self

    @property
    def size(self) -> int:
        """Number of combinations."""
        return math.prod(len(v) for v in self.grid.values())

    def combinations(self) -> list[dict[str, Any]]:
        """The grid's combinations (grid options only), in order: the last option varies fastest."""
        keys = list(self.grid)
        return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*self.grid.values())]


def load_sweep_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec (``.yaml``, ``.yml`` or ``.json``); one-line InputError on any flaw."""
    p = Path(path)
    data = read_mapping(p)
    return parse(SweepSpec, data, p.name)


def resolve_paths(options: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``options`` with every relative path option that names a file in ``folder`` made absolute."""
    out = dict(options)
    for opt in PATH_OPTIONS:
        v = out.get(opt)
        if isinstance(v, str) and not Path(v).is_absolute():
            try:
                cand = folder / v
                if cand.exists():
                    out[opt] = str(cand.resolve())
            except (OSError, ValueError):
                pass
    return out


def check_spec_file(path: str | Path) -> SweepSpec:
    """:func:`load_sweep_spec`, with the one-line message guaranteed to name the file."""
    try:
        return load_sweep_spec(path)
    except InputError as e:
        name = Path(path).name
        msg = str(e)
        raise InputError(msg if name in msg else f"{name}: {msg}") from None
