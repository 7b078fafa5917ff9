"""SGLang expert-load statistics (``logical_count``) as a counts-only trace.

SGLang writes and reads ``logical_count`` (docs/facts.md §4):

- ``--init-expert-location FILE`` (``.json`` or ``.pt``) holding exactly one key,
  ``logical_count`` [num_layers, num_logical] or [N, num_layers, num_logical];
- the expert-distribution recorder dumps ``logical_count`` [buffer_steps, num_layers, num_logical]
  (``.pt``, beside ``rank`` and ``average_utilization_rate_over_window``; other keys are
  ignored with a warning).

A 2-D array is read as one step. The layer axis of SGLang counts *all* hidden layers
(``num_hidden_layers``), dense ones included, whereas the planner's traces hold MoE layers only.
Dense layers are handled so:

- with a model: a count with ``model.num_layers`` rows keeps the rows of the MoE layers
  (``model.moe_layer_indices``: leading ``first_k_dense`` layers and any interleaved dense
  layers are dropped); a count with ``model.num_moe_layers`` rows is taken as is; any other
  number is an error naming both;
- without a model: rows that are zero in every step are dropped as dense layers (every token
  passes every MoE layer, so an MoE layer of a non-empty record is never all zero), with a
  warning saying how many.

Counts must be whole, non-negative numbers (floats with integral values are accepted).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import InputError
from planner.specs.base import one_line, parse_text, read_text, require_file
from planner.specs.model import ModelSpec
from planner.traces.trace import CountsTrace

log = logging.getLogger(__name__)

KEY = "logical_count"
#: Largest count accepted: 2**53, where float64 (JSON numbers, float tensors) stops counting by ones.
_MAX_COUNT = 2**53
#: Other keys of a recorder dump (``rank``, utilisation), read past without a warning.
_RECORDER_KEYS = frozenset({"rank", "average_utilization_rate_over_window"})


def _read_json(path: Path) -> Any:
    return parse_text(read_text(path), path.name)


def _read_pt(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{path.name}: reading .pt files needs torch (pip install 'moe-planner[torch]'), "
            "or save the counts as .json"
        ) from None
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error line says enough
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise InputError(f"{path.name}: not a readable torch file ({e.__class__.__name__})") from None
    if isinstance(obj, dict):
        return {k: (_tensor_to_numpy(v, k, path.name) if isinstance(v, torch.Tensor) else v) for k, v in obj.items()}
    return obj


def _tensor_to_numpy(t: Any, key: Any, name: str) -> np.ndarray:
    """A tensor as a numpy array: sparse tensors made dense, floats (bf16, fp8, …) as float64."""
    try:
        t = t.detach().cpu()
        if t.layout != t.new_empty(0).layout or t.is_sparse:
            t = t.to_dense()
        if t.is_floating_point():
            t = t.double()
        return t.numpy()
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for tensors numpy cannot hold
        raise InputError(
            f"{name}: {one_line(str(key), 40)}: cannot read this tensor as numbers "
            f"(dtype {t.dtype}, layout {t.layout}; {e.__class__.__name__})"
        ) from None


def _to_counts(raw: Any, source: str) -> np.ndarray:
    """``logical_count`` as int64 [S, L, E] (a 2-D input becomes one step)."""
    try:
        arr = np.asarray(raw)
    except (ValueError, TypeError, OverflowError, RecursionError):
        arr = None
    if arr is None or arr.dtype == object:
        raise InputError(f"{source}: {KEY} must be a rectangular array of numbers (rows of unequal length?)")
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InputError(
            f"{source}: {KEY} must have shape [layers, experts] or [steps, layers, experts], got {arr.shape}"
        )
    if arr.dtype.kind not in "iuf":  # bool, complex, strings, timedelta … are not counts
        raise InputError(f"{source}: {KEY} must hold numbers, got dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError(f"{source}: {KEY} must be finite (found NaN or inf)")
        frac = arr != np.round(arr)
        if frac.any():
            raise InputError(
                f"{source}: {KEY} must hold whole token counts (found {float(arr[frac][0]):g})"
            )
    if arr.size and (arr < 0).any():
        raise InputError(f"{source}: {KEY} must be >= 0 (found {arr.min():g})")
    # float64 holds integers exactly up to 2**53; counts beyond cannot come from real tokens
    if arr.size and arr.max() > _MAX_COUNT:
        raise InputError(f"{source}: {KEY} values must be <= 2**53 (found {arr.max():g})")
    return arr.astype(np.int64)


def _moe_rows(counts: np.ndarray, model: ModelSpec | None, source: str) -> tuple[np.ndarray, int]:
    """Keep the MoE-layer rows of counts [S, L_all, E] (module docstring); also how many
    all-zero rows were dropped as dense layers without a model."""
    L = counts.shape[1]
    if model is not None:
        if L == model.num_moe_layers:
            return counts, 0
        if L == model.num_layers:
            return counts[:, model.moe_layer_indices], 0
        raise InputError(
            f"{source}: {KEY} has {L} layers but model {model.name} has {model.num_layers} layers "
            f"({model.num_moe_layers} MoE layers)"
        )
    zero = ~counts.any(axis=(0, 2))
    if zero.all() or not zero.any():
        return counts, 0
    return counts[:, ~zero], int(zero.sum())


def load_logical_count(path: str | Path, model: ModelSpec | None = None) -> CountsTrace:
    """Read SGLang ``logical_count`` from ``.json`` or ``.pt`` as a :class:`CountsTrace` of MoE
    layers only (dense layers handled as the module docstring says).

    Warnings (ignored keys, dropped rows) are logged only for a file that loads: a rejected file
    gives its one error line and nothing else.
    """
    p = Path(path)
    name = p.name
    require_file(p)
    data = _read_pt(p) if p.suffix.lower() == ".pt" else _read_json(p)
    if not isinstance(data, dict):
        raise InputError(f"{name}: expected a mapping with the key '{KEY}', got {type(data).__name__}")
    if KEY not in data:
        if "physical_to_logical_map" in data:
            raise InputError(
                f"{name}: holds physical_to_logical_map (a placement), not {KEY} statistics"
            )
        found = ", ".join(one_line(str(k), 40) for k in list(data)[:10]) + (", ..." if len(data) > 10 else "")
        raise InputError(f"{name}: missing key '{KEY}' (found: {found or 'none'})")
    extra = sorted(one_line(str(k), 40) for k in data if k != KEY and k not in _RECORDER_KEYS)
    counts = _to_counts(data[KEY], name)
    L_all = counts.shape[1]
    counts, dropped = _moe_rows(counts, model, name)
    if model is not None and counts.shape[2] != model.num_experts:
        raise InputError(
            f"{name}: {KEY} has {counts.shape[2]} experts per layer but model {model.name} has {model.num_experts}"
        )
    trace = CountsTrace(counts, model=None if model is None else model.name, source=name)
    if extra:
        log.warning("%s: ignoring keys other than '%s': %s", name, KEY, ", ".join(extra[:10]))
    if dropped:
        log.warning(
            "%s: dropped %d all-zero layer rows of %d as dense layers (give --model to use its layer list)",
            name,
            dropped,
            L_all,
        )
    return trace
