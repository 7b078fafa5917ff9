"""Compute cost of routed experts: one expert's FFN time, and one GPU's time for its local experts.

Legend: M = tokens routed to one expert, h = hidden size, f = expert FFN width,
G = GPUs, E = local experts per GPU. Shapes are name suffixes: ``tokens_GE`` is [G, E].

One expert's FFN is three kernels (as measured, FACTS.md §2):
``x[M,h] @ W13[h,2f]`` (gate and up fused), ``SiLU(gate)·up``, ``a[M,f] @ W2[f,h]``.

1. Measured table (preferred; FACTS.md §6: "interpolate measured tables rather than trusting a
   roofline"). When the profile holds a table for exactly (h, f, dtype):

   - the table's times are made non-decreasing in M by a running maximum (small-M figures jitter
     by tens of percent; more tokens never cost less);
   - between measured points, log-log linear interpolation: log t is linear in log M;
   - below the first point, the first point's time (weight-bound floor);
   - beyond the last point, linear in M from the last point's time per token
     (t = t_last · M / M_last: the FLOP-bound regime);
   - M = 0 costs 0 (the expert is not run).

2. Roofline fallback (no table for the shape), with tile and wave quantization::

       flops_q = Σ_gemm min over tile shapes (bm, bn) of Q(bm, bn)
                 tiles = ⌈M/bm⌉·⌈N/bn⌉
                 Q = ⌈tiles/SMs⌉·SMs·bm·bn·K·2   if tiles >= SMs   (wave quantization)
                 Q = tiles·bm·bn·K·2             otherwise          (tile quantization only)
       bytes   = 3·h·f·B_w + M·(2h + 6f)·2
       t       = max(flops_q / (peak · efficiency), bytes / hbm_bandwidth) + overhead

   with the GEMMs (N, K) = (2f, h) and (h, f), tile shapes 64×128, 128×128, 128×256, 256×128 (the
   library picks the shape that wastes least: cuBLAS/CUTLASS heuristics), B_w the weight dtype's
   bytes (:data:`planner.specs.model.DTYPE_BYTES`) and activations in 2-byte bf16: x read once,
   the gate/up output written and read, the activation written and read, the output written.
   A grid smaller than one wave is assumed to fill the machine by split-K / stream-K, hence no
   wave penalty there. ``overhead`` is a fixed cost per expert (three kernel launches and
   their tails); it is what keeps a small expert at ~0.021 ms from 1 to 512 tokens where its
   weights alone would take 0.003 ms (FACTS.md §2).

   ``efficiency`` and ``overhead`` are fitted to the profile's own measured tables (a grid search
   minimising the mean |log(predicted / measured)| over every table point; see
   :func:`roofline_fit`). On the shipped profiles (2026-11-23 tables, 7 shapes × 15 token counts,
   105 points), as |predicted / measured − 1|:

   - h100-sxm: efficiency 0.64 of the 989 TFLOP/s datasheet peak (≈ 633 TFLOP/s for the whole
     FFN, against 697 measured for one large GEMM), overhead 0.020 ms; mean 6.3%, 90th
     percentile 12.5%, worst 17.5% (at 256 tokens, where the GEMMs leave the weight-bound
     regime). Fitted on six shapes and scored on the seventh (an honest "unmeasured shape"
     test): mean 6.8%, worst 17.5%;
   - h200-sxm: efficiency 0.64, overhead 0.0195 ms; mean 6.5%, 90th percentile 11.7%, worst 34%
     (Mixtral at 128 tokens, a measured point 43% above its neighbours). The H100 fallback values
     on the H200 tables: mean 6.7%, worst 34%.

   A profile without tables uses :data:`FALLBACK_EFFICIENCY` and :data:`FALLBACK_OVERHEAD_MS`,
   the H100 fit, as documented generic defaults (not device figures).

Without ``overhead``, the best pure roofline (efficiency 0.54) predicts small experts at small M
7-9× too fast (predicted/measured down to 0.14 on H100, 0.11 on H200), which is why it is part
of the model (FACTS.md §5: pure rooflines are not enough).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from planner.errors import InputError
from planner.specs.hardware import ExpertFfnTable, HardwareProfile
from planner.specs.model import DTYPE_BYTES

#: Fraction of the datasheet dense peak a profile without tables is assumed to reach (H100 fit).
FALLBACK_EFFICIENCY = 0.64
#: Fixed cost per expert FFN (three kernels) for a profile without tables, ms (H100 fit).
FALLBACK_OVERHEAD_MS = 0.020
#: Bytes per activation element in the roofline (activations in bf16).
ACTIVATION_BYTES = 2.0
#: GEMM tile shapes (bm, bn) the roofline may pick from.
TILE_SHAPES: tuple[tuple[int, int], ...] = ((64, 128), (128, 128), (128, 256), (256, 128))

# Which peak_tflops entry a weight dtype computes at, in order of preference.
_PEAK_KEYS: dict[str, tuple[str, ...]] = {
    "bf16": ("bf16",),
    "fp16": ("fp16", "bf16"),
    "fp32": ("fp32", "tf32"),
    "fp8": ("fp8",),
    "mxfp4": ("fp4", "bf16"),  # native fp4 where the chip has it, else dequantised to bf16
    "int4": ("bf16",),  # weight-only quantisation: bf16 math
}

# Grid of the efficiency/overhead fit.
_EFF_GRID = np.round(np.arange(0.30, 1.0001, 0.01), 2)
_OVERHEAD_GRID_MS = np.round(np.arange(0.0, 0.0501, 0.0005), 4)


def dtype_bytes(dtype: str) -> float:
    """Bytes per weight element of ``dtype`` (scales included; :data:`DTYPE_BYTES`)."""
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise InputError(f"dtype: unknown dtype {dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


def peak_tflops(hw: HardwareProfile, dtype: str) -> float:
    """Dense peak TFLOP/s that ``dtype`` weights compute at on ``hw``."""
    dtype_bytes(dtype)
    for key in _PEAK_KEYS.get(dtype, (dtype,)):
        if key in hw.peak_tflops:
            return hw.peak_tflops[key]  # type: ignore[index]
    raise InputError(
        f"hardware {hw.name}: peak_tflops has no entry for {dtype} "
        f"(looked for {', '.join(_PEAK_KEYS.get(dtype, (dtype,)))}; has {', '.join(hw.peak_tflops)})"
    )


def _tokens(tokens: ArrayLike) -> np.ndarray:
    m = np.asarray(tokens, dtype=np.float64)
    if m.size and not np.all(np.isfinite(m)):
        raise InputError("tokens: token counts must be finite numbers")
    if m.size and m.min() < 0:
        raise InputError(f"tokens: token counts must be >= 0 (got {m.min():g})")
    return m


# ---- 1. measured tables ----------------------------------------------------------------------


def table_ffn_ms(table: ExpertFfnTable, tokens: ArrayLike) -> np.ndarray:
    """Interpolated time (ms) of one expert FFN from a measured ``table``, same shape as ``tokens``."""
    m = _tokens(tokens)
    t_pts = np.asarray(table.tokens, dtype=np.float64)
    y_pts = np.maximum.accumulate(np.asarray(table.ffn_ms, dtype=np.float64))
    out = np.zeros_like(m)
    pos = m > 0
    mp = m[pos]
    inside = np.exp(np.interp(np.log(np.clip(mp, t_pts[0], t_pts[-1])), np.log(t_pts), np.log(y_pts)))
    beyond = y_pts[-1] * mp / t_pts[-1]
    out[pos] = np.where(mp > t_pts[-1], beyond, inside)
    return out


# ---- 2. roofline -----------------------------------------------------------------------------


def _gemm_flops_q(m: np.ndarray, n: int, k: int, sms: int) -> np.ndarray:
    """Tile- and wave-quantized FLOPs of m×k @ k×n, the least wasteful tile shape per entry."""
    best = np.full(m.shape, np.inf)
    for bm, bn in TILE_SHAPES:
        tiles = np.ceil(m / bm) * math.ceil(n / bn)
        per_tile = 2.0 * bm * bn * k
        q = np.where(tiles >= sms, np.ceil(tiles / sms) * sms * per_tile, tiles * per_tile)
        best = np.minimum(best, q)
    return best


def _roofline_parts(
    hw: HardwareProfile, hidden: int, ffn: int, dtype: str, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(compute ms at efficiency 1, memory ms) of one expert FFN for each entry of ``m`` (> 0)."""
    flops = _gemm_flops_q(m, 2 * ffn, hidden, hw.num_sms) + _gemm_flops_q(m, hidden, ffn, hw.num_sms)
    compute_ms = flops / (peak_tflops(hw, dtype) * 1e12) * 1e3
    nbytes = 3.0 * hidden * ffn * dtype_bytes(dtype) + m * (2 * hidden + 6 * ffn) * ACTIVATION_BYTES
    memory_ms = nbytes / (hw.hbm_bandwidth_gbps * 1e9) * 1e3
    return compute_ms, memory_ms


@dataclass(frozen=True)
class RooflineFit:
    """Roofline parameters for one profile and how well they reproduce its measured tables."""

    efficiency: float  #: fraction of the dense datasheet peak reached by the GEMMs
    overhead_ms: float  #: fixed cost per expert FFN, ms
    fitted: bool  #: False: no tables, generic fallback values
    n_points: int  #: table points the fit used
    mean_rel_error: float  #: mean |predicted / measured − 1| over those points
    p90_rel_error: float  #: 90th percentile of the same
    max_rel_error: float  #: worst point


def roofline_fit(hw: HardwareProfile) -> RooflineFit:
    """Efficiency and overhead that best reproduce ``hw``'s tables (fallbacks without tables)."""
    key = tuple(
        (t.d, t.f, t.dtype, tuple(t.tokens), tuple(t.ffn_ms), peak_tflops(hw, t.dtype))
        for t in hw.expert_ffn_tables
    )
    return _fit(key, hw.num_sms, hw.hbm_bandwidth_gbps)


@lru_cache(maxsize=64)
def _fit(
    key: tuple[tuple[int, int, str, tuple[int, ...], tuple[float, ...], float], ...],
    num_sms: int,
    hbm_gbps: float,
) -> RooflineFit:
    if not key:
        return RooflineFit(FALLBACK_EFFICIENCY, FALLBACK_OVERHEAD_MS, False, 0, math.nan, math.nan, math.nan)
    comp, mem, meas = [], [], []
    for d, f, _dtype, tokens, ffn_ms, peak in key:
        m = np.asarray(tokens, dtype=np.float64)
        flops = _gemm_flops_q(m, 2 * f, d, num_sms) + _gemm_flops_q(m, d, f, num_sms)
        comp.append(flops / (peak * 1e12) * 1e3)
        nbytes = 3.0 * d * f * DTYPE_BYTES[_dtype] + m * (2 * d + 6 * f) * ACTIVATION_BYTES
        mem.append(nbytes / (hbm_gbps * 1e9) * 1e3)
        meas.append(np.asarray(ffn_ms, dtype=np.float64))
    comp_P, mem_P, meas_P = np.concatenate(comp), np.concatenate(mem), np.concatenate(meas)
    # pred[e, o, p] = max(comp/eff, mem) + overhead
    base_EP = np.maximum(comp_P[None, :] / _EFF_GRID[:, None], mem_P[None, :])
    pred_EOP = base_EP[:, None, :] + _OVERHEAD_GRID_MS[None, :, None]
    score_EO = np.abs(np.log(pred_EOP / meas_P)).mean(axis=2)
    e, o = np.unravel_index(np.argmin(score_EO), score_EO.shape)
    rel = np.abs(pred_EOP[e, o] / meas_P - 1.0)
    return RooflineFit(
        efficiency=float(_EFF_GRID[e]),
        overhead_ms=float(_OVERHEAD_GRID_MS[o]),
        fitted=True,
        n_points=int(meas_P.size),
        mean_rel_error=float(rel.mean()),
        p90_rel_error=float(np.percentile(rel, 90)),
        max_rel_error=float(rel.max()),
    )


def roofline_ffn_ms(
    hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens: ArrayLike, fit: RooflineFit | None = None
) -> np.ndarray:
    """Roofline time (ms) of one expert FFN for each token count (see the module docstring)."""
    m = _tokens(tokens)
    fit = fit or roofline_fit(hw)
    out = np.zeros_like(m)
    pos = m > 0
    if np.any(pos):
        compute_ms, memory_ms = _roofline_parts(hw, hidden, ffn, dtype, m[pos])
        out[pos] = np.maximum(compute_ms / fit.efficiency, memory_ms) + fit.overhead_ms
    return out


# ---- public entry points ---------------------------------------------------------------------


def expert_ffn_ms(hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens: ArrayLike) -> np.ndarray:
    """Time (ms) of ONE expert's FFN at each token count in ``tokens`` (same shape; 0 tokens → 0).

    Interpolates the profile's measured table for exactly (hidden, ffn, dtype) when there is one,
    else falls back to the fitted roofline.
    """
    if hidden <= 0 or ffn <= 0:
        raise InputError(f"expert shape: hidden and ffn must be > 0 (got hidden={hidden}, ffn={ffn})")
    dtype_bytes(dtype)
    table = hw.table_for(hidden, ffn, dtype)
    if table is not None:
        return table_ffn_ms(table, tokens)
    return roofline_ffn_ms(hw, hidden, ffn, dtype, tokens)


def grouped_experts_ms(
    hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens_per_expert_GE: ArrayLike
) -> np.ndarray:
    """Time (ms) of each GPU's local experts: Σ_e expert_ffn_ms(tokens[g, e]) → [G].

    Experts run one after another (a loop of per-expert kernels, as measured); an expert with 0
    tokens costs nothing.
    """
    tokens_GE = np.asarray(tokens_per_expert_GE)
    if tokens_GE.ndim != 2:
        raise ValueError(f"tokens_per_expert_GE must be 2-D [G, E_local] (got shape {tokens_GE.shape})")
    return expert_ffn_ms(hw, hidden, ffn, dtype, tokens_GE).sum(axis=1)
