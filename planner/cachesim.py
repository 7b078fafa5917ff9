"""Trace-driven expert-cache simulator for offloaded decoding (one GPU, experts in host memory).

Legend: S decode steps, L MoE layers, E experts per layer, T tokens, k top-k, b tokens per
step (the decode batch), c = time of one expert's host-to-device copy, K_l(M) = one expert's FFN
at M tokens. Shapes are name suffixes (``counts_SLE`` is [S, L, E]). Times in ms.

Why a replay rather than a formula: whether an expert is on the GPU when the router chooses it
depends on the order of accesses, on what the cache evicted, on which prefetches had started
and on how busy the one copy engine is; only a replay of the trace gets hit rate, stalls and
their interaction right.

**Accesses.** A decode step runs the b tokens of one step through the MoE layers in order; at
layer l it needs the experts ``{e : counts_SLE[s, l, e] > 0}``.

**Where an expert can be** (:class:`CacheConfig`): *resident* (pinned in GPU memory for the whole
run: ``resident_LE``), in the layer's *dynamic* cache of ``dynamic_L[l]`` slots managed by LRU or
LFU (:class:`DynamicCache`), *prefetched* into a staging buffer during the previous layer
(Fate, ExpertFlow: cross-layer affinity, docs/facts.md §5; predictor: :func:`fit_predictor`),
run on the host CPU (Fiddler, KTransformers; :meth:`_Engines.serve_misses`), or in pinned host
memory (then it is copied on demand into a staging buffer; with dynamic slots it then joins the
cache). Dynamic caches are updated access by access (an expert needed by a step is touched
once), so LRU has the stack property and an expert is evicted only after it ran.

**Time**: :func:`simulate_cache` (one copy engine, one compute stream, in order). ``ov`` is the
profile's ``pcie.copy_compute_overlap`` (docs/facts.md §2, 0.89 on H100), so the penalty for
copies under kernels is :func:`planner.cost.transfer.overlapped_ms` applied to the copies and
kernels that share the layer. The copy queue carries from layer to layer (a late prefetch delays
the next demand copy) and from step to step. A step takes ``other`` (dense layers) plus its layer
times; tokens/s = b / step time.

**Belady** (:func:`planner.cache_bounds.belady_misses`): the offline optimum for a given number
of slots, a lower bound on the demand copies of any cache of that many slots.

Without prefetch the same model is replayed vectorised by :mod:`planner.cachesim_fast` (tests
check the two agree); this event loop is the reference and the path for prefetch.

Policies are simulated over the planning steps first (``record_from``), so dynamic caches start
warm on the held-out steps as they would in service; only the recorded steps are counted.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from planner.errors import InputError
from planner.traces import Trace

Policy = Literal["lru", "lfu"]
#: Where a missed expert runs: always copied ("off"), on the CPU when that finishes first
#: ("fastest", Fiddler's rule with queueing), always on the CPU ("all", KTransformers-style).
CpuMode = Literal["off", "fastest", "all"]
#: Calibration bins of the prefetch predictor's score (width 1 / bins on [0, 1]).
CALIB_BINS = 20


# ---- accesses ---------------------------------------------------------------------------------


def decode_steps(trace: Trace, batch: int = 1) -> Trace:
    """The trace regrouped into decode steps of ``batch`` consecutive tokens (trace order)."""
    if batch <= 0:
        raise InputError(f"decode batch must be > 0 tokens (got {batch})")
    step = np.arange(trace.num_tokens, dtype=np.int64) // batch
    return Trace(trace.topk_ids, trace.num_experts, step=step, model=trace.model, source=trace.source)


def step_counts(ids_LTk: np.ndarray, step_T: np.ndarray, num_experts: int) -> np.ndarray:
    """Tokens routed to each expert in each step: int [S, L, E] (steps renumbered 0..S−1; int16
    when every step holds fewer than 2¹⁵ tokens, which halves a long decode trace's memory)."""
    L, T, k = ids_LTk.shape
    _, s_T = np.unique(step_T, return_inverse=True)
    S = int(s_T.max()) + 1 if T else 0
    small = T == 0 or int(np.bincount(s_T).max()) < 2**15
    counts = np.zeros((S, L, num_experts), dtype=np.int16 if small else np.int32)
    flat = (s_T[None, :, None] * L + np.arange(L)[:, None, None]) * num_experts + ids_LTk
    np.add.at(counts.reshape(-1), flat[ids_LTk >= 0], 1)  # -1 (no expert) loads nothing
    return counts


# ---- prefetch predictor -----------------------------------------------------------------------


@dataclass(frozen=True)
class Predictor:
    """Cross-layer transition predictor (module docstring). ``q_LEE[l, e, e']`` = P(e' at l+1 | e
    at l) on the planning tokens; ``calib_B`` maps score bins to the observed frequency."""

    q_LEE: np.ndarray
    calib_B: np.ndarray

    def token_probs(self, ids_LTk: np.ndarray, layer: int) -> np.ndarray:
        """p_t(e') for layer ``layer`` + 1 from each token's layer-``layer`` experts: [T, E]."""
        score = _rows(self.q_LEE[layer])[ids_LTk[layer]].max(axis=1)  # [T, k, E] -> [T, E]
        b = np.minimum((score * CALIB_BINS).astype(np.int64), CALIB_BINS - 1)
        return self.calib_B[b]


def _rows(q_EE: np.ndarray) -> np.ndarray:
    """``q_EE`` with a zero row appended, so that id -1 (no expert) predicts nothing."""
    return np.vstack([q_EE, np.zeros((1, q_EE.shape[1]), dtype=q_EE.dtype)])


def fit_predictor(ids_LTk: np.ndarray, num_experts: int) -> Predictor:
    """Learn the transition table and its calibration from (planning) tokens ``ids_LTk``.

    After layer l's router has chosen, the experts of layer l+1 are predicted from the tokens'
    layer-l experts::

        q_l(e' | e) = #tokens with e at l and e' at l+1 / #tokens with e at l
        score_t(e')  = max over e in X_t (the token's layer-l experts) of q_l(e' | e)
        p_t(e')      = calib(score_t(e'))          (binned on the planning steps, made monotone)
        p(e')        = 1 − Π_t (1 − p_t(e'))       (some token of the step needs e': step_probs)

    The non-resident, non-cached experts with ``p >= threshold`` (at most ``max_count``, highest
    first) are queued right after layer l's demand copies. A host thread issues queued copies
    one at a time, so when layer l+1's router has chosen, queued prefetches that have not started
    are cancelled (not needed) or re-queued as demand copies (needed); started ones complete and
    count as copies. Accuracy = used / started prefetches.
    """
    L, T, k = ids_LTk.shape
    E = num_experts
    if L < 2:
        return Predictor(np.zeros((0, E, E), np.float32), np.zeros(CALIB_BINS))
    rows = np.arange(T)[:, None]
    q = np.zeros((L - 1, E, E), dtype=np.float32)
    hit_B = np.zeros(CALIB_BINS)
    tot_B = np.zeros(CALIB_BINS)
    onehot = [None] * L
    for layer in range(L):
        oh = np.zeros((T, E + 1), dtype=np.float32)  # column E catches -1 (no expert)
        oh[rows, ids_LTk[layer]] = 1.0
        onehot[layer] = oh[:, :E]
    for layer in range(L - 1):
        trans = onehot[layer].T @ onehot[layer + 1]
        n = onehot[layer].sum(axis=0)
        q[layer] = trans / np.maximum(n, 1.0)[:, None]
    for layer in range(L - 1):
        score = _rows(q[layer])[ids_LTk[layer]].max(axis=1)
        b = np.minimum((score * CALIB_BINS).astype(np.int64), CALIB_BINS - 1)
        hit_B += np.bincount(b.ravel(), weights=onehot[layer + 1].ravel(), minlength=CALIB_BINS)
        tot_B += np.bincount(b.ravel(), minlength=CALIB_BINS)
    mid = (np.arange(CALIB_BINS) + 0.5) / CALIB_BINS
    calib = np.where(tot_B > 0, hit_B / np.maximum(tot_B, 1), np.nan)
    have = ~np.isnan(calib)
    calib = np.interp(mid, mid[have], calib[have]) if have.any() else mid
    return Predictor(q, np.maximum.accumulate(calib))


def step_probs(pred: Predictor, ids_LTk: np.ndarray, step_T: np.ndarray, num_experts: int) -> np.ndarray:
    """p(e') that some token of the step needs expert e' at layer l: float32 [S, L, E]
    (layer 0 has no previous layer: 0)."""
    L, T, _ = ids_LTk.shape
    E = num_experts
    _, s_T = np.unique(step_T, return_inverse=True)
    S = int(s_T.max()) + 1
    starts = np.flatnonzero(np.r_[True, s_T[1:] != s_T[:-1]])
    out = np.zeros((S, L, E), dtype=np.float32)
    for layer in range(L - 1):
        p = np.clip(pred.token_probs(ids_LTk, layer), 0.0, 1.0 - 1e-6)
        logq = np.add.reduceat(np.log1p(-p), starts, axis=0)
        out[:, layer + 1] = 1.0 - np.exp(logq)
    return out


# ---- configuration and timing -----------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchConfig:
    """Next-layer prefetch: probabilities ``prob_SLE`` (:func:`step_probs`) over the simulated
    steps, the admission ``threshold`` and at most ``max_count`` copies per layer."""

    prob_SLE: np.ndarray
    threshold: float
    max_count: int


@dataclass(frozen=True)
class CacheConfig:
    """Resident experts ``resident_LE`` (bool [L, E]), dynamic slots ``dynamic_L`` (int [L]) and
    their ``policy``; ``prefetch`` or None."""

    resident_LE: np.ndarray
    dynamic_L: np.ndarray
    policy: Policy = "lru"
    prefetch: PrefetchConfig | None = None
    cpu: CpuMode = "off"

    @property
    def slots(self) -> int:
        """Expert slots held in GPU memory (resident plus dynamic; staging buffers not counted)."""
        return int(self.resident_LE.sum() + self.dynamic_L.sum())


@dataclass(frozen=True)
class OffloadTiming:
    """Cost figures the simulator charges (module docstring). ``ffn_ms_M[M]``: one expert's FFN
    at M tokens (``ffn_ms_M[0] == 0``); ``copy_ms``: one expert's host-to-device copy; ``pre_ms``:
    per MoE layer before its routed experts; ``other_ms``: per step outside the MoE layers."""

    copy_ms: float
    ffn_ms_M: np.ndarray
    pre_ms: float
    other_ms: float
    overlap: float
    expert_bytes: float
    cpu_ms_M: np.ndarray | None = None  #: one expert's FFN on the host CPU at M tokens (None: no CPU path)


@dataclass
class CacheSimResult:
    """Per recorded step and layer (int/float [S, L])."""

    need_SL: np.ndarray  #: experts the step needed at the layer
    hit_SL: np.ndarray  #: of those, resident or cached when the router chose
    demand_SL: np.ndarray  #: demand copies (needed, not on the GPU, not prefetched)
    cpu_SL: np.ndarray  #: missed experts run on the host CPU instead of copied
    prefetch_SL: np.ndarray  #: prefetch copies issued for the layer
    prefetch_used_SL: np.ndarray  #: of those, needed by the step
    layer_ms_SL: np.ndarray
    compute_ms_SL: np.ndarray  #: pre + expert FFNs
    stall_ms_SL: np.ndarray
    step_ms_S: np.ndarray
    batch: float
    expert_bytes: float
    extra: dict = field(default_factory=dict)

    @property
    def transfers_S(self) -> np.ndarray:
        return (self.demand_SL + self.prefetch_SL).sum(axis=1)

    @property
    def transfers(self) -> int:
        return int((self.demand_SL + self.prefetch_SL).sum())

    @property
    def hit_rate(self) -> float:
        """Needed experts found on the GPU (resident, cached or prefetched) / needed."""
        need = self.need_SL.sum()
        return float(1.0 - (self.demand_SL + self.cpu_SL).sum() / need) if need else 1.0

    @property
    def hit_rate_L(self) -> np.ndarray:
        need = self.need_SL.sum(axis=0)
        return 1.0 - (self.demand_SL + self.cpu_SL).sum(axis=0) / np.maximum(need, 1)

    @property
    def prefetch_accuracy(self) -> float | None:
        issued = self.prefetch_SL.sum()
        return float(self.prefetch_used_SL.sum() / issued) if issued else None

    @property
    def stall_ms(self) -> float:
        """Mean stall per step, ms."""
        return float(self.stall_ms_SL.sum(axis=1).mean())

    @property
    def tokens_per_s(self) -> float:
        return float(self.batch * 1e3 / self.step_ms_S.mean())

    def summary(self) -> dict:
        steps = self.need_SL.shape[0]
        return {
            "steps": steps,
            "hit_rate": self.hit_rate,
            "transfers": self.transfers,
            "transfers_per_step": self.transfers / max(steps, 1),
            "bytes_per_step": self.transfers * self.expert_bytes / max(steps, 1),
            "stall_ms_per_step": self.stall_ms,
            "step_ms": float(self.step_ms_S.mean()),
            "tokens_per_s": self.tokens_per_s,
            "prefetch_accuracy": self.prefetch_accuracy,
            "prefetch_per_step": float(self.prefetch_SL.sum() / max(steps, 1)),
            "demand_per_step": float(self.demand_SL.sum() / max(steps, 1)),
            "cpu_per_step": float(self.cpu_SL.sum() / max(steps, 1)),
        }


# ---- the simulator ----------------------------------------------------------------------------


class DynamicCache:
    """One layer's dynamic cache (LRU, or LFU with LRU ties), updated access by access; each key
    may carry a value (the offloaded stack keeps its device buffers here, the simulator None)."""

    __slots__ = ("cap", "lfu", "od", "freq")

    def __init__(self, cap: int, lfu: bool) -> None:
        self.cap, self.lfu = cap, lfu
        self.od: OrderedDict[int, Any] = OrderedDict()
        self.freq: dict[int, int] = {}

    def touch(self, e: int) -> None:
        if self.lfu:
            self.freq[e] = self.freq.get(e, 0) + 1
        if e in self.od:
            self.od.move_to_end(e)

    def insert(self, e: int, value: Any = None) -> None:
        if self.cap <= 0:
            return
        self.od[e] = value
        if len(self.od) > self.cap:
            if self.lfu:  # least frequent; ties: least recent (OrderedDict order)
                victim = min(self.od, key=lambda x: self.freq.get(x, 0))
                del self.od[victim]
            else:
                self.od.popitem(last=False)


def _busy_in(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


def _split_SL(s_idx: np.ndarray, l_idx: np.ndarray, vals: list, S: int, L: int) -> list[list[list]]:
    """Group ``vals`` (ordered by step, layer) into lists per (step, layer)."""
    out: list[list[list]] = [[[] for _ in range(L)] for _ in range(S)]
    for s, layer, v in zip(s_idx.tolist(), l_idx.tolist(), vals, strict=True):
        out[s][layer].append(v)
    return out


def access_lists(counts_SLE: np.ndarray) -> list[list[list[tuple[int, int]]]]:
    """(expert, tokens) pairs needed per step and layer, experts in increasing id."""
    S, L, _ = counts_SLE.shape
    s, layer, e = np.nonzero(counts_SLE)
    return _split_SL(s, layer, list(zip(e.tolist(), counts_SLE[s, layer, e].tolist(), strict=True)), S, L)


def prefetch_lists(prob_SLE: np.ndarray, threshold: float) -> list[list[list[int]]]:
    """Experts with p >= threshold per step and layer, most probable first."""
    S, L, _ = prob_SLE.shape
    s, layer, e = np.nonzero(prob_SLE >= threshold)
    order = np.lexsort((-prob_SLE[s, layer, e], layer, s))
    return _split_SL(s[order], layer[order], e[order].tolist(), S, L)


def simulate_cache(
    counts_SLE: np.ndarray, cfg: CacheConfig, timing: OffloadTiming, *, record_from: int = 0, batch: float = 1.0,
    accesses: list | None = None,
) -> CacheSimResult:
    """Replay ``counts_SLE`` through ``cfg``; count steps ``>= record_from``.

    ``batch``: tokens per step (for tokens/s). ``accesses``: :func:`access_lists` of
    ``counts_SLE`` when the caller has them already. Per layer::

        layer l of a step starts at t0; its attention, router (and shared experts) take ``pre``
        t_r = t0 + pre                                    routing known
        ready(e) = 0 if resident / cached; the end of its prefetch copy if prefetched;
                   else a demand copy queued at max(t_r, copy engine free): ready = that + c
        prefetch copies of layer l+1 are queued after the demand copies, from t_r on
        experts run in order of ready time: t = max(t, ready(e)) + K_l(M_e)
        penalty = (1 − ov) · min(copy busy time inside [t0, t], pre + Σ K)     (imperfect overlap)
        layer time = t − t0 + penalty;  stall = layer time − pre − Σ K
    """
    S, L, E = counts_SLE.shape
    if cfg.resident_LE.shape != (L, E) or cfg.dynamic_L.shape != (L,):
        raise InputError(f"cache config shapes {cfg.resident_LE.shape} / {cfg.dynamic_L.shape} do not match [L={L}, E={E}]")
    if not 0 <= record_from < S:
        raise InputError(f"record_from must be in [0, {S}) (got {record_from})")
    acc = accesses if accesses is not None else access_lists(counts_SLE)
    pre = timing.pre_ms
    if cfg.cpu != "off" and timing.cpu_ms_M is None:
        raise InputError("cpu execution of missed experts needs the timing's cpu_ms_M")
    eng = _Engines(timing, cfg.cpu, cfg.policy == "lfu")
    dyn = [DynamicCache(int(cfg.dynamic_L[i]), eng.lfu) for i in range(L)]
    res = [set(np.flatnonzero(cfg.resident_LE[i]).tolist()) for i in range(L)]
    pf = cfg.prefetch
    pf_lists = prefetch_lists(pf.prob_SLE, pf.threshold) if pf is not None and pf.max_count > 0 else None
    R = S - record_from
    need = np.zeros((R, L), np.int32)
    hit = np.zeros((R, L), np.int32)
    demand = np.zeros((R, L), np.int32)
    n_cpu_SL = np.zeros((R, L), np.int32)
    pfc = np.zeros((R, L), np.int32)
    pfu = np.zeros((R, L), np.int32)
    lay_ms = np.zeros((R, L))
    comp_ms = np.zeros((R, L))
    step_ms = np.zeros(R)
    for s in range(S):
        rec = s - record_from
        t = 0.0
        copies: list[tuple[float, float]] = []
        queued: list[tuple[float, float, int]] = []  # prefetch copies of this layer: (start, end, expert)
        for layer in range(L):
            t0 = t
            t += pre
            tr = t
            d = dyn[layer]
            # prefetches already started are committed; the rest are cancelled or, if needed, re-queued
            started: dict[int, float] = {}
            for a, b, e in queued:
                if a < tr:
                    started[e] = b
                    copies.append((a, b))
                    eng.copy_free = max(eng.copy_free, b)
            ids = acc[s][layer]
            ready, n_hit, n_pfu, missed = _lookup(ids, res[layer], d, started)
            cpu_end, n_cpu = eng.serve_misses(missed, tr, d, copies, ready)
            queued = []
            if pf_lists is not None and layer + 1 < L:
                queued = _queue_prefetch(pf_lists[s][layer + 1], res[layer + 1], dyn[layer + 1].od,
                                         eng.copy_free if eng.copy_free > tr else tr, eng.c, pf.max_count)
            t, kern = eng.run_kernels(ready, t)
            if cpu_end > t:
                t = cpu_end
            busy = _busy_in(copies, t0, t)
            t += (1.0 - eng.ov) * min(busy, pre + kern)
            copies = [iv for iv in copies if iv[1] > t]
            if rec >= 0:
                need[rec, layer] = len(ids)
                hit[rec, layer] = n_hit
                demand[rec, layer] = len(missed) - n_cpu
                n_cpu_SL[rec, layer] = n_cpu
                pfu[rec, layer] = n_pfu
                pfc[rec, layer] = len(started)
                lay_ms[rec, layer] = t - t0
                comp_ms[rec, layer] = pre + kern
        t += timing.other_ms
        eng.copy_free = max(0.0, eng.copy_free - t)
        eng.cpu_free = max(0.0, eng.cpu_free - t)
        if rec >= 0:
            step_ms[rec] = t
    b = float(batch)
    return CacheSimResult(
        need_SL=need, hit_SL=hit, demand_SL=demand, cpu_SL=n_cpu_SL, prefetch_SL=pfc, prefetch_used_SL=pfu,
        layer_ms_SL=lay_ms, compute_ms_SL=comp_ms, stall_ms_SL=np.maximum(lay_ms - comp_ms, 0.0),
        step_ms_S=step_ms, batch=b, expert_bytes=timing.expert_bytes,
    )


def _lookup(
    ids: list[tuple[int, int]], resident: set[int], d: DynamicCache, started: dict[int, float]
) -> tuple[list[tuple[float, int, int]], int, int, list[tuple[int, int]]]:
    """Where each needed (expert, tokens) is when the router has chosen: ``(ready, hits,
    prefetches used, missed)``; ``ready`` holds (ready time, expert, tokens) of those on the GPU
    (0 for resident or cached, the end of its copy for a started prefetch)."""
    ready: list[tuple[float, int, int]] = []
    n_hit = n_pfu = 0
    missed: list[tuple[int, int]] = []
    od = d.od
    for e, m in ids:
        if e in resident:
            ready.append((0.0, e, m))
            n_hit += 1
        elif e in od:
            d.touch(e)
            ready.append((0.0, e, m))
            n_hit += 1
        elif e in started:
            ready.append((started[e], e, m))
            n_pfu += 1
            d.touch(e)
            d.insert(e)
        else:
            missed.append((e, m))
    return ready, n_hit, n_pfu, missed


def _queue_prefetch(
    candidates: list[int], resident: set[int], cached: Any, q: float, c: float, max_count: int
) -> list[tuple[float, float, int]]:
    """Prefetch copies (start, end, expert) of the next layer's likely experts not already on the
    GPU, at most ``max_count``, one after another on the copy engine from ``q``."""
    queued: list[tuple[float, float, int]] = []
    n = 0
    for e in candidates:
        if n >= max_count:
            break
        if e in resident or e in cached:
            continue
        queued.append((q, q + c, e))
        q += c
        n += 1
    return queued


class _Engines:
    """The copy engine and the host CPU: when each is free (relative to the step's start), and
    the cost figures they charge (module docstring, *Time* and *CPU execution*)."""

    def __init__(self, timing: OffloadTiming, cpu_mode: CpuMode, lfu: bool) -> None:
        self.c, self.ov = timing.copy_ms, timing.overlap
        self.ffn = timing.ffn_ms_M.tolist()
        self.top_m = len(self.ffn) - 1
        self.cpu = timing.cpu_ms_M.tolist() if timing.cpu_ms_M is not None else []
        self.cpu_mode, self.lfu = cpu_mode, lfu
        self.copy_free = 0.0  # the copy engine is committed until this time
        self.cpu_free = 0.0  # the host CPU is busy until this time

    def serve_misses(
        self, missed: list[tuple[int, int]], tr: float, d: DynamicCache, copies: list[tuple[float, float]],
        ready: list[tuple[float, int, int]],
    ) -> tuple[float, int]:
        """Copy each missed expert on demand (appending to ``copies`` and ``ready``) or run it on
        the CPU; the time the CPU experts are done and how many ran there.

        The CPU runs one expert at a time (``K_cpu(M)``). ``"fastest"`` picks, expert by expert,
        whichever finishes first with both queues as they are: the CPU when ``max(t_r, cpu free) +
        K_cpu(M) < max(t_r, copy free) + c + K(M)`` (Fiddler's rule ``M·t_cpu < t_transfer``
        extended with the queues); ``"all"`` always runs misses on the CPU (KTransformers). The
        layer ends when both the GPU kernels and the CPU experts are done; an expert run on the
        CPU is not copied and is a miss for the hit rate.
        """
        c, ffn, cpu, top_m = self.c, self.ffn, self.cpu, self.top_m
        cpu_mode, lfu = self.cpu_mode, self.lfu
        copy_free, cpu_free = self.copy_free, self.cpu_free  # locals in the loop, written back once
        cpu_end = 0.0
        n_cpu = 0
        for e, m in missed:
            start = copy_free if copy_free > tr else tr
            if cpu_mode != "off":
                cs = cpu_free if cpu_free > tr else tr
                done = cs + cpu[m if m < top_m else top_m]
                if cpu_mode == "all" or done < start + c + ffn[m if m < top_m else top_m]:
                    cpu_free = cpu_end = max(cpu_end, done)
                    n_cpu += 1
                    if lfu:
                        d.touch(e)
                    continue
            copy_free = start + c
            copies.append((start, copy_free))
            ready.append((copy_free, e, m))
            d.touch(e)
            d.insert(e)
        self.copy_free, self.cpu_free = copy_free, cpu_free
        return cpu_end, n_cpu

    def run_kernels(self, ready: list[tuple[float, int, int]], t: float) -> tuple[float, float]:
        """Run the experts on the GPU in order of ready time from ``t``: the end and the kernel time."""
        ffn, top_m = self.ffn, self.top_m
        ready.sort()
        kern = 0.0
        for r, _e, m in ready:
            k_e = ffn[m if m < top_m else top_m]
            t = (t if t > r else r) + k_e
            kern += k_e
        return t, kern
