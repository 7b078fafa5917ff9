"""Cache sizing for offloaded decoding: how many experts of each layer stay resident, which ones,
how many dynamic slots and how much prefetch — under a GPU memory budget.

Specified in docs/offload.md ("Cache sizing: the formulation", §1-§5):
:func:`layer_stall_table` prices r resident experts per layer from the planning steps (demand
copies, prefetch that arrives in time, CPU execution of misses); :func:`allocate` divides the
budget over layers exactly by dynamic programming (a multiple-choice knapsack, AdapMoE-style,
docs/facts.md §5); :mod:`planner.solve.cache_lru` prices every split of a layer into r pinned
experts and d LRU slots from stack distances, divided over layers by the same DP.
:func:`solve_cache` replays every candidate (the published caches of :data:`BASELINES`, always;
the pinned + LRU split; static sets with dynamic LRU slots, prefetch threshold and CPU execution)
through the cache simulator (:func:`planner.cachesim_fast.replay`) and keeps, among those no
slower than the best published cache, the fastest within :data:`TIME_TOLERANCE` with the fewest
copies. Why a replay and not the tables alone: they price a typical step of a layer, while the
simulator follows the cache, the copy queue and the CPU step by step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from planner.cachesim import (
    CacheConfig,
    CacheSimResult,
    OffloadTiming,
    PrefetchConfig,
    access_lists,
)
from planner.cachesim_fast import fast_supported, replay
from planner.errors import InfeasibleError, InputError
from planner.progress import stage
from planner.solve.cache_lru import hybrid_stall_tables, miss_stall

#: Dynamic slots per layer tried by :func:`solve_cache`.
DYNAMIC_CHOICES = (0, 2)
#: Prefetch thresholds tried (None: no prefetch).
THRESHOLDS = (None, 0.5, 0.6, 0.7)
#: Prefetch thresholds tried with dynamic slots (d > 0).
THRESHOLDS_DYNAMIC = (None, 0.5)
#: Candidates within this fraction of the fastest planning-step time count as ties, broken by
#: fewer copies (PCIe traffic), then by time.
TIME_TOLERANCE = 0.05
#: CPU execution of missed experts tried (planner.cachesim, Fiddler's rule).
CPU_CHOICES = ("off", "fastest")
#: The published caches always scored; the plan is never slower than the best of them on the
#: planning steps: per-layer even LRU (mixtral-offloading), the global top-k frequency set
#: (KTransformers' GPU set), and the same with every miss run on the CPU (KTransformers).
BASELINES = ("even-lru (mixtral-offloading)", "global-topk (KTransformers)", "global-topk, misses on CPU")
#: Planning steps above this are subsampled (:func:`sample_windows`).
MAX_PLAN_STEPS = 24576
#: Consecutive steps per window of the subsample.
WINDOW_STEPS = 2048
#: Prefetch candidates need the reference (event-loop) replay: tried up to this many steps.
REFERENCE_STEPS = 4096
#: Steps (evenly spaced) the static stall table of step 1 averages over.
TABLE_STEPS = 4096


def frequency_order(counts_SLE: np.ndarray) -> np.ndarray:
    """Experts of each layer by decreasing planning frequency (steps needing them): int [L, E]."""
    freq = (counts_SLE > 0).sum(axis=0)
    return np.argsort(-freq, axis=1, kind="stable")


def layer_stall_table(
    counts_SLE: np.ndarray, timing: OffloadTiming, order_LE: np.ndarray, prob_SLE: np.ndarray | None, threshold: float | None,
    cpu: str = "off",
) -> np.ndarray:
    """``f_l(r)`` of the module docstring for r = 0..E: float [L, E + 1] (ms per step); ``cpu``
    ``"fastest"`` splits the misses between the copy engine and the host CPU."""
    S, L, E = counts_SLE.shape
    c, pre, ov = timing.copy_ms, timing.pre_ms, timing.overlap
    ffn = timing.ffn_ms_M
    k1 = float(ffn[min(1, ffn.size - 1)])
    need_all = counts_SLE > 0
    kall_SLE = ffn[np.minimum(counts_SLE, ffn.size - 1)]
    ksum_SL = kall_SLE.sum(axis=2)
    out = np.zeros((L, E + 1))
    for layer in range(L):
        o = order_LE[layer]
        need = need_all[:, layer, o]  # [S, E] in rank order
        kc = kall_SLE[:, layer, o]
        if prob_SLE is not None and threshold is not None and layer > 0:
            pred = prob_SLE[:, layer, o] >= threshold
        else:
            pred = np.zeros_like(need)

        def suffix(x: np.ndarray) -> np.ndarray:  # Σ over rank >= r, r = 0..E: [S, E + 1]
            z = np.zeros((x.shape[0], E + 1))
            z[:, :E] = np.cumsum(x[:, ::-1], axis=1)[:, ::-1]
            return z

        m = suffix(need & ~pred)
        ph = suffix(need & pred)
        p = suffix(pred)
        kstar = ksum_SL[:, layer][:, None]
        window = pre + (ksum_SL[:, layer - 1] if layer > 0 else np.zeros(S))[:, None]
        started = np.minimum(p, np.ceil(window / c))
        hs = np.where(p > 0, ph * started / np.maximum(p, 1), 0.0)
        q0 = np.maximum(0.0, started * c - window)
        rest = m + ph - hs
        n_cpu = np.zeros_like(rest)
        if cpu == "fastest" and timing.cpu_ms_M is not None:
            t_cpu = float(timing.cpu_ms_M[min(1, timing.cpu_ms_M.size - 1)])
            # balance n·t_cpu = q0 + (rest − n)·c + K(1); the better of the two integers around it
            lo = np.clip(np.floor((q0 + rest * c + k1) / (t_cpu + c)), 0, rest)
            hi = np.minimum(lo + 1, rest)

            f_lo, f_hi = (_split_finish(n, rest, q0, hs, c, k1, t_cpu) for n in (lo, hi))
            n_cpu = np.where(f_hi < f_lo, hi, lo)
        left = rest - n_cpu
        ready = np.where(left > 0, q0 + left * c + k1, np.where(hs > 0, q0 + k1, 0.0))
        if cpu == "fastest" and timing.cpu_ms_M is not None:
            ready = np.maximum(ready, n_cpu * t_cpu)
        stall = np.maximum(0.0, np.where(rest + hs > 0, ready - kstar, 0.0))
        stall += (1.0 - ov) * np.minimum(left * c + q0, pre + kstar)
        out[layer] = stall.mean(axis=0)
        del kc
    return out


def _split_finish(
    n: np.ndarray, rest: np.ndarray, q0: np.ndarray, hs: np.ndarray, c: float, k1: float, t_cpu: float
) -> np.ndarray:
    """Layer finish time (after its router) with n of the ``rest`` misses on the CPU."""
    left = rest - n
    gpu = np.where(left > 0, q0 + left * c + k1, np.where(hs > 0, q0 + k1, 0.0))
    return np.maximum(gpu, n * t_cpu)


def allocate(cost_LR: np.ndarray, budget: int) -> np.ndarray:
    """Exact multiple-choice knapsack (module docstring, step 2): r_L minimising Σ cost_LR[l, r_l]
    with Σ r_l <= budget. ``cost_LR`` [L, E + 1]."""
    L, R1 = cost_LR.shape
    if budget < 0:
        raise InputError(f"budget must be >= 0 slots (got {budget})")
    J = min(budget, L * (R1 - 1))
    dp = np.full(J + 1, np.inf)
    dp[0] = 0.0
    choice = np.zeros((L, J + 1), dtype=np.int64)
    for layer in range(L):
        new = np.full(J + 1, np.inf)
        arg = np.zeros(J + 1, dtype=np.int64)
        for r in range(min(R1 - 1, J) + 1):
            cand = np.full(J + 1, np.inf)
            cand[r:] = dp[: J + 1 - r] + cost_LR[layer, r]
            better = cand < new - 1e-12
            new = np.where(better, cand, new)
            arg = np.where(better, r, arg)
        dp, choice[layer] = new, arg
    best = dp.min()
    j = int(np.flatnonzero(dp <= best + 1e-12)[0])  # fewest slots among the optima
    r_L = np.zeros(L, dtype=np.int64)
    for layer in range(L - 1, -1, -1):
        r_L[layer] = choice[layer, j]
        j -= r_L[layer]
    return r_L


def resident_from_counts(order_LE: np.ndarray, r_L: np.ndarray) -> np.ndarray:
    """bool [L, E]: the r_l most frequent experts of each layer."""
    L, E = order_LE.shape
    res = np.zeros((L, E), dtype=bool)
    for layer in range(L):
        res[layer, order_LE[layer, : r_L[layer]]] = True
    return res


def global_topk(counts_SLE: np.ndarray, slots: int) -> np.ndarray:
    """KTransformers' resident set: the ``slots`` (layer, expert) pairs with the highest planning
    frequency, no per-layer quota: bool [L, E]."""
    S, L, E = counts_SLE.shape
    freq = (counts_SLE > 0).sum(axis=0).ravel()
    keep = np.argsort(-freq, kind="stable")[: max(0, min(slots, L * E))]
    res = np.zeros(L * E, dtype=bool)
    res[keep] = True
    return res.reshape(L, E)


def even_lru(num_layers: int, num_experts: int, slots: int) -> CacheConfig:
    """mixtral-offloading's cache: the slots spread evenly over layers as LRU caches."""
    base, extra = divmod(max(slots, 0), num_layers)
    dyn = np.minimum(np.array([base + (i < extra) for i in range(num_layers)]), num_experts)
    return CacheConfig(np.zeros((num_layers, num_experts), bool), dyn.astype(np.int64), "lru")


@dataclass(frozen=True)
class CacheSolution:
    """The chosen cache and how it was chosen."""

    config: CacheConfig
    threshold: float | None
    prefetch_count: int
    planning: CacheSimResult  #: the chosen config on the (scored) planning steps
    candidates: dict[str, float]  #: mean step ms on the planning steps by candidate name
    transfers: dict[str, int]  #: copies on the planning steps by candidate name
    chosen: str
    time_s: float
    stopped_by_time: bool = False  #: the time limit cut the candidate search short
    sampled_steps: int | None = None  #: planning steps scored when the search subsampled them
    sample_error: float | None = None  #: relative standard error of the chosen step time (subsample)
    skipped: tuple[str, ...] = ()  #: candidate families not tried, with the reason


def solve_cache(
    counts_SLE: np.ndarray,
    prob_SLE: np.ndarray | None,
    timing: OffloadTiming,
    slots: int,
    prefetch_count: int,
    *,
    warmup_steps: int = 0,
    batch: float = 1.0,
    dynamic_choices: tuple[int, ...] = DYNAMIC_CHOICES,
    thresholds: tuple[float | None, ...] = THRESHOLDS,
    cpu_choices: tuple[str, ...] = CPU_CHOICES,
    time_tolerance: float = TIME_TOLERANCE,
    time_limit: float | None = None,
    max_steps: int = MAX_PLAN_STEPS,
) -> CacheSolution:
    """Choose the cache for ``slots`` expert slots (module docstring, step 3). ``counts_SLE`` are
    the planning steps, ``prob_SLE`` the prefetch probabilities on them (None: no prefetch);
    ``prefetch_count`` the prefetch staging buffers (taken from ``slots`` when prefetching). The
    first ``warmup_steps`` warm dynamic caches and are not scored. ``time_tolerance``: candidates
    this close to the fastest tie and the fewest copies wins. ``time_limit`` (s): candidates are
    not started past it (the baselines are always scored), reported as ``stopped_by_time``.
    ``max_steps``: more planning steps than this are subsampled (:func:`sample_windows`)."""
    t0 = time.perf_counter()
    S, L, E = counts_SLE.shape
    if slots < 0:
        raise InfeasibleError(f"the expert budget holds {slots} slots: no room for a cache")
    sampled, windows = None, None
    skipped: list[str] = []
    if S > max_steps:
        idx, windows = sample_windows(S, max_steps)
        counts_SLE, sampled, warmup_steps = counts_SLE[idx], idx.size, min(warmup_steps, WINDOW_STEPS // 4)
        if prob_SLE is not None:
            skipped.append(f"prefetch (the planning steps were subsampled to {idx.size} of {S})")
        prob_SLE = None
        S = counts_SLE.shape[0]
    rec = min(warmup_steps, S - 1)
    acc: list = []

    def run(cfg: CacheConfig, name: str = "") -> CacheSimResult:
        stage(f"offload search: {name}")  # each candidate is a replay of the planning steps
        if not fast_supported(cfg) and not acc:
            acc.append(access_lists(counts_SLE))
        return replay(counts_SLE, cfg, timing, record_from=rec, batch=batch, accesses=acc[0] if acc else None)

    def late() -> bool:
        return time_limit is not None and time.perf_counter() - t0 > time_limit

    results: dict[str, tuple[CacheConfig, CacheSimResult, float | None]] = {}
    for name, cfg in baseline_configs(counts_SLE[rec:], L, E, slots).items():
        results[name] = (cfg, run(cfg, name), None)
    stopped = False
    scored = counts_SLE[rec:]
    order = frequency_order(scored)
    cpus = [c for c in cpu_choices if c == "off" or timing.cpu_ms_M is not None]
    if late():
        stopped = True
    else:
        for name, cfg in hybrid_candidates(scored, timing, order, slots, cpus).items():
            if late():
                stopped = True
                break
            results[name] = (cfg, run(cfg, name), None)
    probs = prob_SLE[rec:] if prob_SLE is not None else None
    if prob_SLE is not None and S > REFERENCE_STEPS:
        skipped.append(f"prefetch ({S} planning steps: more than the {REFERENCE_STEPS} the reference replay takes)")
        prob_SLE = probs = None
    for d in dynamic_choices:
        for thr in thresholds if d == 0 else [t for t in thresholds if t in THRESHOLDS_DYNAMIC]:
            if thr is not None and (prob_SLE is None or prefetch_count <= 0):
                continue
            pf_slots = prefetch_count if thr is not None else 0
            static = slots - d * L - pf_slots
            if static < 0 or d > E:
                continue
            pf = PrefetchConfig(prob_SLE, thr, prefetch_count) if thr is not None else None
            for cpu in cpus:
                if late():
                    stopped = True
                    break
                stride = -(-scored.shape[0] // TABLE_STEPS)  # the table is a mean over steps: a sample will do
                f = layer_stall_table(scored[::stride], timing, order, None if probs is None else probs[::stride], thr, cpu)
                r_L = allocate(f, static)
                dyn = np.minimum(np.full(L, d, np.int64), E - r_L)
                cfg = CacheConfig(resident_from_counts(order, r_L), dyn, "lru", pf, cpu)
                name = f"dp(d={d}, prefetch={'off' if thr is None else f'p>={thr}'}, cpu={cpu})"
                results[name] = (cfg, run(cfg, name), thr)
    chosen = choose(results, time_tolerance)
    cfg, sim, thr = results[chosen]
    err = None
    if windows is not None and windows > 1:
        win = np.arange(rec, S) // (S // windows)
        w = np.bincount(win, weights=sim.step_ms_S) / np.maximum(np.bincount(win), 1)
        err = float(w.std(ddof=1) / np.sqrt(w.size) / max(w.mean(), 1e-12))
    return CacheSolution(
        config=cfg, threshold=thr, prefetch_count=prefetch_count if thr is not None else 0, planning=sim,
        candidates={k: float(v[1].step_ms_S.mean()) for k, v in results.items()},
        transfers={k: v[1].transfers for k, v in results.items()}, chosen=chosen, time_s=time.perf_counter() - t0,
        stopped_by_time=stopped, sampled_steps=sampled, sample_error=err, skipped=tuple(skipped),
    )


def choose(results: dict[str, tuple[CacheConfig, CacheSimResult, float | None]], time_tolerance: float) -> str:
    """The candidate to keep: among those no slower than the best baseline (:data:`BASELINES`,
    always scored), the ones within ``time_tolerance`` of the fastest tie and the fewest copies
    wins (then the faster, then the name)."""
    ms = {k: float(v[1].step_ms_S.mean()) for k, v in results.items()}
    best_base = min(ms[k] for k in BASELINES if k in ms)
    fastest = min(ms.values())
    near = [k for k in ms if ms[k] <= best_base and ms[k] <= fastest * (1 + time_tolerance)]
    return min(near, key=lambda k: (results[k][1].transfers, ms[k], k))


def baseline_configs(counts_SLE: np.ndarray, L: int, E: int, slots: int) -> dict[str, CacheConfig]:
    """The published caches the search always scores (:data:`BASELINES`), at ``slots`` slots."""
    top = global_topk(counts_SLE, slots)
    zero = np.zeros(L, np.int64)
    return dict(zip(BASELINES, (even_lru(L, E, slots), CacheConfig(top, zero, "lru"),
                                CacheConfig(top, zero.copy(), "lru", cpu="all")), strict=True))


def hybrid_candidates(
    counts_SLE: np.ndarray, timing: OffloadTiming, order_LE: np.ndarray, slots: int, cpus: list[str]
) -> dict[str, CacheConfig]:
    """Per layer r pinned + d LRU slots, (r, d) by the exact DP over layers on the stack-distance
    stall table (:mod:`planner.solve.cache_lru`), one candidate per CPU mode."""
    S, L, E = counts_SLE.shape
    gs = {cpu: miss_stall(counts_SLE, timing, cpu) for cpu in cpus}
    tables = hybrid_stall_tables(counts_SLE, order_LE, gs)
    out = {}
    for cpu, (cost, best_r, _) in tables.items():
        n_L = allocate(cost, min(slots, L * E))
        r_L = best_r[np.arange(L), n_L]
        out[f"hybrid(pinned + LRU, cpu={cpu})"] = CacheConfig(resident_from_counts(order_LE, r_L), (n_L - r_L).astype(np.int64),
                                                             "lru", None, cpu)
    return out


def sample_windows(S: int, max_steps: int) -> tuple[np.ndarray, int]:
    """Step positions of evenly spaced windows of :data:`WINDOW_STEPS` consecutive steps, at most
    ``max_steps`` in all (windows keep the cache's locality), and the number of windows."""
    w = min(WINDOW_STEPS, max_steps)
    n = max(1, max_steps // w)
    starts = np.linspace(0, S - w, n).astype(np.int64)
    return (starts[:, None] + np.arange(w)[None, :]).ravel(), n
