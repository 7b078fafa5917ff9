"""Reading and writing routing traces; the ``.npz`` layouts.

Per-token trace (docs/contracts.md "Routing trace (.npz)"):

==================  ======================  ===============================================
key                 shape                   meaning
==================  ======================  ===============================================
``topk_ids``        int [L, T, k]           logical expert ids per MoE layer and token;
                                            -1 = no expert (fewer than k, or a null expert)
``topk_weights``    float [L, T, k]         optional gate weights (finite, >= 0)
``step``            int [T]                 optional, non-decreasing step of each token
``source_rank``     int [T]                 optional data-parallel rank a token starts on
``seq_id``          int [T]                 optional request (sequence) of each token
``pos``             int [T]                 optional position of each token in its sequence
``num_experts``     int scalar              experts per layer E (ids lie in [-1, E))
``model``           str scalar              optional model name
==================  ======================  ===============================================

Counts-only trace (what ``moe-planner trace convert`` writes from SGLang ``logical_count``):

==================  ======================  ===============================================
``counts``          int [S, L, E]           tokens routed to expert e at MoE layer l, step s
``num_experts``     int scalar              optional; must equal E
``model``           str scalar              optional model name
==================  ======================  ===============================================

A file holds ``topk_ids`` or ``counts``, never both; any other key is an error naming it.
:func:`save_trace` stores ids, counts, steps and ranks in the smallest unsigned integer dtype
that holds them (uint8 for up to 256 experts; int8/int16 when some id is -1) with ``np.savez_compressed``; weights keep their
float dtype (cast to float16 before saving for a compact file).

``num_experts`` missing from a per-token file: taken from the ``model`` passed to
:func:`load_trace` when there is one, otherwise inferred as max id + 1 with a warning (the
true E may be larger if the highest experts were never chosen).

``.json`` and ``.pt`` files are SGLang ``logical_count`` statistics (:mod:`planner.traces.sglang`).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from planner.errors import InputError
from planner.io import atomic_write_bytes
from planner.specs.base import require_file
from planner.specs.model import MAX_EXPERTS, ModelSpec
from planner.traces.npy import read_npz
from planner.traces.sglang import load_logical_count
from planner.traces.stream import max_trace_bytes, npz_ids_bytes, stream_npz
from planner.traces.trace import CountsTrace, Trace, check_against_model

log = logging.getLogger(__name__)

def _smallest_uint(arr: np.ndarray) -> np.ndarray:
    """``arr`` in the smallest dtype that holds it (unsigned when it has no negatives)."""
    if arr.size == 0:
        return arr.astype(np.uint8)
    lo, hi = int(arr.min()), int(arr.max())
    kinds = (np.uint8, np.uint16, np.uint32, np.uint64) if lo >= 0 else (np.int8, np.int16, np.int32, np.int64)
    for dt in kinds:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return arr.astype(dt)
    return arr.astype(np.int64)  # pragma: no cover - values beyond int64 cannot occur


def _id_dtype(num_experts: int) -> type[np.unsignedinteger]:
    """Smallest unsigned dtype holding ids in [0, num_experts)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if num_experts - 1 <= np.iinfo(dt).max:
            return dt
    return np.uint64  # pragma: no cover


def _scalar(arrays: dict[str, np.ndarray], key: str, name: str) -> np.ndarray | None:
    if key not in arrays:
        return None
    v = arrays[key]
    if v.ndim != 0:
        raise InputError(f"{name}: {key} must be a scalar, got an array of shape {v.shape}")
    return v


def load_trace(
    path: str | Path,
    *,
    model: ModelSpec | None = None,
    tokens_per_step: int | None = None,
) -> Trace | CountsTrace:
    """Read a trace: ``.npz`` (layouts in the module docstring), or SGLang ``logical_count``
    in ``.json`` / ``.pt`` (a :class:`CountsTrace`).

    ``model``: fills ``num_experts`` and ``model`` when the file lacks them, drops SGLang's
    dense-layer rows, and the trace is checked against it (:func:`check_against_model`).
    ``tokens_per_step``: step size for a per-token file without a ``step`` array (absent too:
    the whole file is one step).

    A per-token file too large for the trace memory budget (``$MOE_PLANNER_TRACE_MEMORY_GB``,
    default 2 GB) is streamed: :func:`planner.traces.stream.stream_npz` returns a
    :class:`~planner.traces.stream.StreamedTrace` (exact counts of every step, tokens of a
    sample of steps).
    """
    p = Path(path)
    name = p.name
    suffix = p.suffix.lower()
    if suffix in (".json", ".pt"):
        trace: Trace | CountsTrace = load_logical_count(p, model)
        if model is not None:
            check_against_model(trace, model, name)
        return trace
    if suffix != ".npz":
        raise InputError(f"{name}: unknown trace format '{p.suffix}' (expected .npz, or SGLang .json / .pt)")
    require_file(p)
    need = npz_ids_bytes(p)
    if need is not None and need > max_trace_bytes():  # larger than the trace memory budget: stream
        trace = stream_npz(
            p, num_experts=model.num_experts if model is not None else None,
            model=model.name if model is not None else None, tokens_per_step=tokens_per_step,
        )
        if model is not None:
            check_against_model(trace, model, name)
        return trace
    arrays = read_npz(p)

    ne = _scalar(arrays, "num_experts", name)
    if ne is not None and ne.dtype.kind not in "iu":
        raise InputError(f"{name}: num_experts must be an integer, got dtype {ne.dtype}")
    mn = _scalar(arrays, "model", name)
    if mn is not None and mn.dtype.kind != "U":
        raise InputError(f"{name}: model must be a string, got dtype {mn.dtype}")
    model_name = str(mn) if mn is not None else (model.name if model is not None else None)
    num_experts = int(ne) if ne is not None else None

    inferred = False
    if "counts" in arrays:
        trace = CountsTrace(arrays["counts"], num_experts, model=model_name, source=name)
    else:
        ids = arrays["topk_ids"]
        if num_experts is None:
            if model is not None:
                num_experts = model.num_experts
            elif ids.size and ids.dtype.kind in "iu":
                top = int(ids.max())
                if top >= MAX_EXPERTS:
                    raise InputError(
                        f"{name}: topk_ids values must be < {MAX_EXPERTS} (found {top}); "
                        "no num_experts in the file"
                    )
                num_experts = max(top + 1, 1)
                inferred = True
            else:
                num_experts = 1  # the Trace constructor reports the real problem
        trace = Trace(
            ids,
            num_experts,
            topk_weights=arrays.get("topk_weights"),
            step=arrays.get("step"),
            source_rank=arrays.get("source_rank"),
            seq_id=arrays.get("seq_id"),
            pos=arrays.get("pos"),
            model=model_name,
            tokens_per_step=tokens_per_step,
            source=name,
        )
    if model is not None:
        check_against_model(trace, model, name)
    if inferred:  # warned only for a trace that loads: a rejected file gets its one error line
        log.warning(
            "%s: no num_experts in the file; assuming %d (max id + 1) - pass the model to be sure",
            name,
            num_experts,
        )
    return trace


def trace_arrays(trace: Trace | CountsTrace) -> dict[str, np.ndarray]:
    """The arrays :func:`save_trace` writes, in their compact dtypes."""
    out: dict[str, np.ndarray] = {}
    if isinstance(trace, Trace):
        ids = trace.topk_ids  # -1 (no expert) needs a signed dtype
        out["topk_ids"] = _smallest_uint(ids) if trace.has_nulls else ids.astype(_id_dtype(trace.num_experts))
        if trace.topk_weights is not None:
            out["topk_weights"] = trace.topk_weights
        out["step"] = _smallest_uint(trace.step)
        if trace.source_rank is not None:
            out["source_rank"] = _smallest_uint(trace.source_rank)
        for key in ("seq_id", "pos"):
            arr = getattr(trace, key)
            if arr is not None:
                out[key] = _smallest_uint(arr)
    elif isinstance(trace, CountsTrace):
        out["counts"] = _smallest_uint(trace.counts_per_step())
    else:
        raise TypeError(f"save_trace needs a Trace or CountsTrace, got {type(trace).__name__}")
    out["num_experts"] = np.array(trace.num_experts, dtype=np.int64)
    if trace.model is not None:
        out["model"] = np.array(trace.model)
    return out


def save_trace(trace: Trace | CountsTrace, path: str | Path) -> None:
    """Write ``trace`` to ``path`` (``.npz``) atomically: a failed write leaves no partial file.

    Does not check for an existing file; callers that must not overwrite use
    :func:`planner.io.check_writable` first.
    """
    p = Path(path)
    if p.suffix.lower() != ".npz":
        raise InputError(f"{p.name}: traces are written as .npz (got '{p.suffix or 'no suffix'}')")
    buf = io.BytesIO()
    np.savez_compressed(buf, **trace_arrays(trace))
    atomic_write_bytes(p, buf.getvalue())
