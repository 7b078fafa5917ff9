"""Compute cost of routed experts: one expert's FFN time against its token count, and a GPU's.

Legend: M = tokens routed to one expert, h = hidden size, f = expert FFN width, G = GPUs, E =
local experts per GPU. Shapes are name suffixes: ``tokens_GE`` is [G, E]. Times in ms. The
full specification (formulas, fits, accuracy) is docs/cost_model.md §1.

Why a curve per shape: an expert's time is flat (weight-bound) at small M, bends at a knee and
then grows linearly (FLOP-bound); placements trade exactly these regimes, so the curve must be
right between measured points, not only at them. Every prediction is a non-decreasing curve
t(M) on the integer grid M = 0..m_max (:class:`FfnCurve`; M = 0 costs 0, beyond m_max linear),
made one of three ways depending on what the profile holds:

1. **Measured shape** — the profile's table, interpolated against a per-shape soft roofline
   ``b(M) = c0 + sqrt(tw² + (k·M)²)`` fitted to it (:func:`table_curve`): the roofline gives the
   shape between points, the table the level (docs/facts.md §6).
2. **Unmeasured shape** — a device model ``D(M)`` (weight streaming and tile/wave-quantized
   FLOPs, constants fitted on all the profile's tables), corrected by the residuals of the
   nearest measured shapes (what a device-wide model cannot know: kernel choice, split-K).
3. **No tables** — ``D(M)`` alone with :data:`FALLBACK_FIT` (documented generic defaults).

The fits and curves of a profile are kept by its cost object (:class:`ProfileCost`), so
:func:`expert_ffn_ms` is one interpolation and the counts-only evaluator
(:mod:`planner.cost.evaluate`) one gather.

A GPU's expert time (:func:`grouped_experts_ms`; the straggler GPU decides a layer) is the sum
over its local experts run one after another (``kernel="loop"``, the measured kernels), or one
grouped-GEMM launch ``c + Σ_e (D(M_e) − c)`` (``kernel="grouped"``), paying the fixed cost once.
"""

from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from planner.errors import InputError
from planner.specs.hardware import ExpertFfnTable, HardwareProfile
from planner.specs.model import DTYPE_BYTES

#: Bytes per activation element (activations in bf16).
ACTIVATION_BYTES = 2.0
#: GEMM tile shapes (bm, bn) the quantized-FLOP count may pick from.
TILE_SHAPES: tuple[tuple[int, int], ...] = ((64, 128), (128, 128), (128, 256), (256, 128))
#: Fraction of the measured copy bandwidth at which expert GEMMs stream their weights (prior;
#: see the docs/cost_model.md §1, part 2).
STREAM_EFFICIENCY = 0.9
#: Measured shapes whose residuals correct an unmeasured one.
NEIGHBOURS = 3
#: Token grid of curves for shapes without a table when the profile has none (M = 0..16384).
DEFAULT_GRID_TOKENS = 16384

# Which peak_tflops entry a weight dtype computes at, in order of preference.
_PEAK_KEYS: dict[str, tuple[str, ...]] = {
    "bf16": ("bf16",),
    "fp16": ("fp16", "bf16"),
    "fp32": ("fp32", "tf32"),
    "fp8": ("fp8",),
    "mxfp4": ("fp4", "bf16"),  # native fp4 where the chip has it, else dequantised to bf16
    "int4": ("bf16",),  # weight-only quantisation: bf16 math
}

# Grids of the device-model fit (compute efficiency and soft-max exponent).
_ETA_GRID = np.round(np.arange(0.30, 1.2001, 0.01), 2)
_P_GRID = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0])
# Grid of the per-shape fixed cost c0, as fractions of the table's smallest time.
_C0_FRACTIONS = np.linspace(0.0, 0.98, 50)


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


def _check_shape(hidden: int, ffn: int) -> None:
    if hidden <= 0 or ffn <= 0:
        raise InputError(f"expert shape: hidden and ffn must be > 0 (got hidden={hidden}, ffn={ffn})")


def _nnls2(x1: np.ndarray, x2: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """min over a, b >= 0 of Σ_i (a·x1 + b·x2 − z)², vectorized over leading axes (last = i).

    Returns (a, b, objective). Closed form: the unconstrained solution when feasible, else the
    best of the boundary solutions (a = 0, b = 0, both 0).
    """
    s11 = (x1 * x1).sum(-1)
    s22 = (x2 * x2).sum(-1)
    s12 = (x1 * x2).sum(-1)
    s1z = (x1 * z).sum(-1)
    s2z = (x2 * z).sum(-1)
    szz = (z * z).sum(-1)
    det = s11 * s22 - s12 * s12
    with np.errstate(divide="ignore", invalid="ignore"):
        a_u = np.where(det > 0, (s22 * s1z - s12 * s2z) / det, -1.0)
        b_u = np.where(det > 0, (s11 * s2z - s12 * s1z) / det, -1.0)
        a_only = np.where(s11 > 0, np.maximum(s1z / s11, 0.0), 0.0)
        b_only = np.where(s22 > 0, np.maximum(s2z / s22, 0.0), 0.0)

    def obj(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return szz - 2 * a * s1z - 2 * b * s2z + a * a * s11 + b * b * s22 + 2 * a * b * s12

    cands = [
        (a_u, b_u, np.where((a_u >= 0) & (b_u >= 0), obj(a_u, b_u), np.inf)),
        (a_only, np.zeros_like(a_only), obj(a_only, 0.0)),
        (np.zeros_like(b_only), b_only, obj(0.0, b_only)),
    ]
    best_a, best_b, best_o = cands[0]
    for a, b, o in cands[1:]:
        better = o < best_o
        best_a = np.where(better, a, best_a)
        best_b = np.where(better, b, best_b)
        best_o = np.where(better, o, best_o)
    return best_a, best_b, best_o


# ---- quantized FLOPs and the device model ----------------------------------------------------


def gemm_flops_q(m: np.ndarray, n: int, k: int, sms: int) -> np.ndarray:
    """Tile- and wave-quantized FLOPs of ``m×k @ k×n``, the least wasteful tile shape per entry."""
    m = np.asarray(m, dtype=np.float64)
    best = np.full(m.shape, np.inf)
    for bm, bn in TILE_SHAPES:
        tiles = np.ceil(m / bm) * math.ceil(n / bn)
        per_tile = 2.0 * bm * bn * k
        q = np.where(tiles >= sms, np.ceil(tiles / sms) * sms * per_tile, tiles * per_tile)
        best = np.minimum(best, q)
    return best


@dataclass(frozen=True)
class DeviceFit:
    """Constants of the device model D(M) (docs/cost_model.md §1, part 2) and how well it fits."""

    compute_eff: float  #: η_c, fraction of the dtype's dense datasheet peak reached by the GEMMs
    softmax_p: float  #: p, exponent of the soft maximum of weight streaming and compute
    fixed_ms: float  #: c, fixed cost per expert FFN (launches, tails), ms
    act_coef: float  #: e, multiplier of the SiLU·mul traffic time a(M)
    stream_eff: float  #: η_w, fraction of hbm_bandwidth_gbps at which weights stream (a prior)
    fitted: bool  #: False: no tables, generic fallback values
    n_tables: int  #: tables the fit used
    n_points: int  #: table points the fit used
    mean_rel_error: float  #: mean |D / measured − 1| over those points (in-sample)


#: Device-model constants for a profile without tables: the h100-sxm fit on its 7 bf16 tables
#: (rounded; generic defaults, documented in docs/cost_model.md §1, not device figures).
FALLBACK_FIT = DeviceFit(
    compute_eff=0.73, softmax_p=3.0, fixed_ms=0.020, act_coef=1.1, stream_eff=STREAM_EFFICIENCY,
    fitted=False, n_tables=0, n_points=0, mean_rel_error=math.nan,
)


def _device_parts(
    hw: HardwareProfile, hidden: int, ffn: int, dtype: str, m: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tw [2] ms at η=1, tc [.., 2] ms at η=1, a [..] ms) of the device model for token counts m."""
    bw = hw.hbm_bandwidth_gbps * 1e9
    peak = peak_tflops(hw, dtype) * 1e12
    bw_bytes = dtype_bytes(dtype)
    gemms = ((2 * ffn, hidden), (hidden, ffn))
    tw = np.array([n * k * bw_bytes / bw * 1e3 for n, k in gemms])
    tc = np.stack([gemm_flops_q(m, n, k, hw.num_sms) / peak * 1e3 for n, k in gemms], axis=-1)
    act = 5.0 * ACTIVATION_BYTES * m * ffn / bw * 1e3
    return tw, tc, act


def _device_eval(fit: DeviceFit, tw: np.ndarray, tc: np.ndarray, act: np.ndarray) -> np.ndarray:
    p = fit.softmax_p
    w = tw / fit.stream_eff
    c = tc / fit.compute_eff
    soft = ((w**p + c**p) ** (1.0 / p)).sum(axis=-1)
    return fit.fixed_ms + soft + fit.act_coef * act


def _fit_device(hw: HardwareProfile, tables: list[ExpertFfnTable]) -> DeviceFit:
    """Fit (c, e, η_c, p) of the device model on ``tables`` (docs/cost_model.md §1, part 2)."""
    tw_P, tc_P, act_P, t_P = [], [], [], []
    for t in tables:
        m = np.asarray(t.tokens, dtype=np.float64)
        tw, tc, act = _device_parts(hw, t.d, t.f, t.dtype, m)
        tw_P.append(np.broadcast_to(tw, tc.shape))
        tc_P.append(tc)
        act_P.append(act)
        t_P.append(np.maximum.accumulate(np.asarray(t.ffn_ms, dtype=np.float64)))
    tw_all, tc_all = np.concatenate(tw_P), np.concatenate(tc_P)  # [N, 2]
    act_all, t_all = np.concatenate(act_P), np.concatenate(t_P)  # [N]
    p = _P_GRID[:, None, None, None]
    w = (tw_all / STREAM_EFFICIENCY)[None, None]
    c = tc_all[None, None] / _ETA_GRID[None, :, None, None]
    soft_PEN = ((w**p + c**p) ** (1.0 / p)).sum(-1)  # [P, E, N]
    # relative residual (c + e·a + soft − t)/t: linear in (c, e)
    u = 1.0 / t_all
    z = (t_all - soft_PEN) * u
    x1 = np.broadcast_to(u, z.shape)
    x2 = np.broadcast_to(act_all * u, z.shape)
    c_PE, e_PE, obj_PE = _nnls2(x1, x2, z)
    ip, ie = np.unravel_index(np.argmin(obj_PE), obj_PE.shape)
    fit = DeviceFit(
        compute_eff=float(_ETA_GRID[ie]), softmax_p=float(_P_GRID[ip]), fixed_ms=float(c_PE[ip, ie]),
        act_coef=float(e_PE[ip, ie]), stream_eff=STREAM_EFFICIENCY, fitted=True,
        n_tables=len(tables), n_points=int(t_all.size), mean_rel_error=math.nan,
    )
    pred = _device_eval(fit, tw_all, tc_all, act_all)
    return DeviceFit(**{**fit.__dict__, "mean_rel_error": float(np.abs(pred / t_all - 1).mean())})


# ---- per-shape soft roofline (measured shapes) -----------------------------------------------


@dataclass(frozen=True)
class ShapeFit:
    """b(M) = c0 + sqrt(tw² + (k·M)²) of one measured table (docs/cost_model.md §1, part 1)."""

    c0_ms: float
    tw_ms: float
    k_ms_per_token: float

    def __call__(self, m: np.ndarray) -> np.ndarray:
        return self.c0_ms + np.sqrt(self.tw_ms**2 + (self.k_ms_per_token * m) ** 2)


def fit_shape(tokens: ArrayLike, ffn_ms: ArrayLike) -> ShapeFit:
    """Fit the per-shape soft roofline to a (monotone) table: minimise Σ ((b − t)/t)² (numpy only)."""
    m = np.asarray(tokens, dtype=np.float64)
    t = np.asarray(ffn_ms, dtype=np.float64)
    c0 = _C0_FRACTIONS[:, None] * t.min()  # [C, 1]
    y = (t[None, :] - c0) ** 2  # (t − c0)² = tw² + k²·M²  (linear in tw², k²)
    a, b, _ = _nnls2(np.broadcast_to(1.0 / y, y.shape), m[None, :] ** 2 / y, np.ones_like(y))
    pred = c0 + np.sqrt(a[:, None] + b[:, None] * m[None, :] ** 2)
    score = (np.log(np.maximum(pred, 1e-300) / t) ** 2).sum(-1)
    i = int(np.argmin(score))
    return ShapeFit(float(c0[i, 0]), float(math.sqrt(a[i])), float(math.sqrt(b[i])))


def _residual_at(m_pts: np.ndarray, rho_pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """ρ interpolated linearly in ln M, flat outside [m_pts[0], m_pts[-1]]."""
    if m_pts.size == 1:
        return np.full(m.shape, rho_pts[0])
    return np.interp(np.log(np.maximum(m, 1e-12)), np.log(m_pts), rho_pts)


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson slopes of the monotone piecewise-cubic Hermite interpolant (PCHIP):
    weighted harmonic means of the neighbouring secants inside, 0 where the secants change
    sign, and the shape-preserving three-point formula at the ends (Moler, *Numerical
    Computing with MATLAB*, §3.4)."""
    h = np.diff(x)
    d = np.diff(y) / h
    s = np.zeros_like(y)
    w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
    same = d[:-1] * d[1:] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s[1:-1] = np.where(same, (w1 + w2) / (w1 / d[:-1] + w2 / d[1:]), 0.0)
    for end, (h0, h1, d0, d1) in ((0, (h[0], h[1], d[0], d[1])), (-1, (h[-1], h[-2], d[-1], d[-2]))):
        v = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if np.sign(v) != np.sign(d0):
            v = 0.0
        elif np.sign(d0) != np.sign(d1) and abs(v) > abs(3 * d0):
            v = 3 * d0
        s[end] = v
    return s


def _residual_pchip(m_pts: np.ndarray, rho_pts: np.ndarray, m: np.ndarray) -> np.ndarray:
    """ρ by monotone cubic (PCHIP) interpolation in ln M, flat outside [m_pts[0], m_pts[-1]];
    linear in ln M with fewer than three points."""
    if m_pts.size < 3:
        return _residual_at(m_pts, rho_pts, m)
    x = np.log(m_pts)
    s = _pchip_slopes(x, rho_pts)
    xq = np.clip(np.log(np.maximum(m, 1e-12)), x[0], x[-1])
    i = np.clip(np.searchsorted(x, xq) - 1, 0, x.size - 2)
    h = x[i + 1] - x[i]
    t = (xq - x[i]) / h
    return ((2 * t**3 - 3 * t**2 + 1) * rho_pts[i] + (t**3 - 2 * t**2 + t) * h * s[i]
            + (-2 * t**3 + 3 * t**2) * rho_pts[i + 1] + (t**3 - t**2) * h * s[i + 1])


# ---- curves ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FfnCurve:
    """One expert's FFN time on the integer token grid: ``ms_M[M]`` for M = 0..m_max.

    ``ms_M[0] = 0`` and ``ms_M`` is non-decreasing; beyond ``m_max`` the time grows linearly from
    the last point's time per token.
    """

    ms_M: np.ndarray
    source: str  #: 'table' (measured shape), 'transfer' (unmeasured, residuals of measured shapes) or 'model'

    @property
    def m_max(self) -> int:
        return self.ms_M.size - 1

    def __call__(self, tokens: ArrayLike) -> np.ndarray:
        """Time (ms) for each token count (same shape; fractional counts interpolate the grid)."""
        m = _tokens(tokens)
        m_max = self.m_max
        if np.issubdtype(np.asarray(tokens).dtype, np.integer) and (m.size == 0 or m.max() <= m_max):
            return self.ms_M[np.asarray(tokens, dtype=np.int64)]
        inside = np.interp(np.clip(m, 1.0, m_max), np.arange(m_max + 1, dtype=np.float64), self.ms_M)
        out = np.where(m > m_max, self.ms_M[-1] * m / m_max, inside)
        return np.where(m > 0, out, 0.0)

    def lookup(self, m_max: int) -> np.ndarray:
        """The curve on M = 0..m_max as one array (the linear tail appended past ``self.m_max``):
        ``lookup(n)[counts]`` is the time of integer ``counts`` up to n, one gather."""
        if m_max <= self.m_max:
            return self.ms_M[: m_max + 1]
        tail = self.ms_M[-1] * np.arange(self.m_max + 1, m_max + 1, dtype=np.float64) / self.m_max
        return np.concatenate([self.ms_M, tail])


def _grid_curve(fn, m_max: int, source: str) -> FfnCurve:
    grid = np.arange(1, m_max + 1, dtype=np.float64)
    ms = np.maximum.accumulate(np.asarray(fn(grid), dtype=np.float64))
    return FfnCurve(np.concatenate([[0.0], ms]), source)


def table_curve(table: ExpertFfnTable) -> FfnCurve:
    """The curve of a measured table (docs/cost_model.md §1, part 1)."""
    m_pts = np.asarray(table.tokens, dtype=np.float64)
    t_pts = np.maximum.accumulate(np.asarray(table.ffn_ms, dtype=np.float64))
    if m_pts.size >= 4:
        base = fit_shape(m_pts, t_pts)
    else:  # too few points to fit a knee: plain log-log interpolation (base ≡ 1)
        def base(m):
            return np.ones_like(m)
    rho = np.log(t_pts / base(m_pts))
    m_max = int(m_pts[-1])

    def predict(m: np.ndarray) -> np.ndarray:
        m = np.maximum(m, m_pts[0])  # below the first point: the first point's time
        t = base(m) * np.exp(_residual_pchip(m_pts, rho, m))
        if m_pts.size < 2:
            return t
        # between two measured points the time stays between theirs (monotone by construction)
        i = np.clip(np.searchsorted(m_pts, m, side="right") - 1, 0, m_pts.size - 2)
        return np.clip(t, t_pts[i], t_pts[i + 1])

    return _grid_curve(predict, m_max, "table")


class ProfileCost:
    """The compute cost object of one hardware profile: its device fits (per dtype) and expert
    FFN curves (per shape), each computed on first use and kept by this object
    (``functools.cache`` per instance). Build one per profile and keep it while pricing with
    that profile; :meth:`of` returns the one of a profile object."""

    def __init__(self, hw: HardwareProfile) -> None:
        self.hw = hw
        self.device_fit = functools.cache(self.device_fit)  # type: ignore[method-assign]
        self.curve = functools.cache(self.curve)  # type: ignore[method-assign]

    @staticmethod
    def of(hw: HardwareProfile) -> ProfileCost:
        """The cost object of the profile object ``hw``: made on first use, it lives as long
        as ``hw`` does (profiles are immutable; they are not hashable, so the map is by
        identity, and an entry is dropped when its profile is collected)."""
        entry = _COSTS.get(id(hw))
        if entry is not None and entry[0]() is hw:
            return entry[1]
        cost = ProfileCost(weakref.proxy(hw))  # the map must not keep the profile alive
        key = id(hw)
        _COSTS[key] = (weakref.ref(hw), cost)
        weakref.finalize(hw, _COSTS.pop, key, None)
        return cost

    def tables_for_dtype(self, dtype: str) -> list[ExpertFfnTable]:
        same = [t for t in self.hw.expert_ffn_tables if t.dtype == dtype]
        return same if same else list(self.hw.expert_ffn_tables)

    def device_fit(self, dtype: str) -> DeviceFit:
        """The device model's constants for ``dtype`` (docs/cost_model.md §1, part 2)."""
        tables = self.hw.expert_ffn_tables
        same = [t for t in tables if t.dtype == dtype]
        use = same if len(same) >= 3 else list(tables)
        return _fit_device(self.hw, use) if use else FALLBACK_FIT

    def curve(self, hidden: int, ffn: int, dtype: str) -> FfnCurve:
        """The FFN curve of one expert of shape (hidden, ffn) in ``dtype``."""
        table = self.hw.table_for(hidden, ffn, dtype)
        return table_curve(table) if table is not None else self._model_curve(hidden, ffn, dtype)

    def _model_curve(self, hidden: int, ffn: int, dtype: str) -> FfnCurve:
        hw = self.hw
        fit = self.device_fit(dtype)
        neighbours = self.tables_for_dtype(dtype)
        m_max = max((t.tokens[-1] for t in neighbours), default=DEFAULT_GRID_TOKENS)

        def device(d: int, f: int, dt: str, m: np.ndarray) -> np.ndarray:
            return _device_eval(fit, *_device_parts(hw, d, f, dt, m))

        if not neighbours:
            return _grid_curve(lambda m: device(hidden, ffn, dtype, m), m_max, "model")
        dist = np.array([math.hypot(math.log(t.d / hidden), math.log(t.f / ffn)) for t in neighbours])
        order = np.argsort(dist, kind="stable")[:NEIGHBOURS]
        w = (dist[order] + 1e-3) ** -2.0
        w = w / w.sum()
        resid = []
        for j in order:
            t = neighbours[j]
            m_pts = np.asarray(t.tokens, dtype=np.float64)
            t_pts = np.maximum.accumulate(np.asarray(t.ffn_ms, dtype=np.float64))
            resid.append((m_pts, np.log(t_pts / device(t.d, t.f, t.dtype, m_pts))))

        def predict(m: np.ndarray) -> np.ndarray:
            rho = sum(wj * _residual_at(mp, rp, m) for wj, (mp, rp) in zip(w, resid, strict=True))
            return device(hidden, ffn, dtype, m) * np.exp(rho)

        return _grid_curve(predict, m_max, "transfer")


#: Profile object id → (weak reference to it, its cost object); see :meth:`ProfileCost.of`.
_COSTS: dict[int, tuple[weakref.ref, ProfileCost]] = {}


# ---- public entry points ---------------------------------------------------------------------


def device_fit(hw: HardwareProfile, dtype: str = "bf16") -> DeviceFit:
    """Constants of the device model of ``hw`` for ``dtype`` (fallbacks without tables)."""
    dtype_bytes(dtype)
    return ProfileCost.of(hw).device_fit(dtype)


def device_model_ms(hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens: ArrayLike) -> np.ndarray:
    """D(M): the device model alone (no table, no residual correction), ms, same shape as tokens."""
    _check_shape(hidden, ffn)
    m = _tokens(tokens)
    fit = device_fit(hw, dtype)
    out = _device_eval(fit, *_device_parts(hw, hidden, ffn, dtype, np.maximum(m, 1.0)))
    return np.where(m > 0, out, 0.0)


def ffn_curve(hw: HardwareProfile, hidden: int, ffn: int, dtype: str) -> FfnCurve:
    """The cached :class:`FfnCurve` of one expert of shape (hidden, ffn) in ``dtype`` on ``hw``."""
    _check_shape(hidden, ffn)
    dtype_bytes(dtype)
    peak_tflops(hw, dtype)
    return ProfileCost.of(hw).curve(int(hidden), int(ffn), dtype)


def expert_ffn_ms(hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens: ArrayLike) -> np.ndarray:
    """Time (ms) of ONE expert's FFN at each token count in ``tokens`` (same shape; 0 tokens → 0).

    Interpolates the profile's measured table for exactly (hidden, ffn, dtype) when there is one,
    else the device model corrected by the nearest measured shapes (docs/cost_model.md §1).
    """
    return ffn_curve(hw, hidden, ffn, dtype)(tokens)


KERNELS = ("loop", "grouped")


def grouped_model_ms(hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens: ArrayLike) -> np.ndarray:
    """One expert's share of a grouped GEMM launch: D(M) − c (the device model without its fixed
    cost), 0 for M = 0; a launch costs ``c`` once on top (docs/cost_model.md §1, "grouped")."""
    _check_shape(hidden, ffn)
    m = _tokens(tokens)
    fit = device_fit(hw, dtype)
    out = _device_eval(fit, *_device_parts(hw, hidden, ffn, dtype, np.maximum(m, 1.0))) - fit.fixed_ms
    return np.where(m > 0, out, 0.0)


def grouped_experts_ms(
    hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens_per_expert_GE: ArrayLike, kernel: str = "loop"
) -> np.ndarray:
    """Time (ms) of each GPU's local experts → [G]; an expert with 0 tokens costs nothing.

    ``loop``: Σ_e expert_ffn_ms(tokens[g, e]) — experts run one after another as separate FFNs
    (the measured kernels). ``grouped``: one grouped-GEMM launch per GPU,
    ``c + Σ_e (D(M_e) − c)`` (:func:`grouped_model_ms`; docs/cost_model.md §1).
    """
    tokens_GE = np.asarray(tokens_per_expert_GE)
    if tokens_GE.ndim != 2:
        raise InputError(f"tokens_per_expert_GE must be 2-D [G, E_local] (got shape {tokens_GE.shape})")
    if kernel == "loop":
        return expert_ffn_ms(hw, hidden, ffn, dtype, tokens_GE).sum(axis=1)
    if kernel != "grouped":
        raise InputError(f"kernel must be one of {', '.join(KERNELS)} (got {kernel!r})")
    var = grouped_model_ms(hw, hidden, ffn, dtype, tokens_GE).sum(axis=1)
    return np.where((tokens_GE > 0).any(axis=1), var + device_fit(hw, dtype).fixed_ms, 0.0)
