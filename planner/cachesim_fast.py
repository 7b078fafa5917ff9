"""Vectorised replay of the expert cache for configurations without prefetch.

:func:`planner.cachesim.simulate_cache` is the reference: an event loop per step, layer and
expert. Without prefetch its time model has a property this module uses: every copy a layer
issues ends before the layer's last kernel and every CPU expert before the layer ends, so at each
router the copy engine and the host CPU are idle. Layers are then independent given which experts
hit, and a layer's time is a closed form of its hits, its copied misses (in expert-id order) and
its CPU experts::

    copies start at t_r and follow each other: the i-th copied miss is ready at pre + i·c
    t = max(pre + Σ_hits K + Σ_copied K,  max_i (pre + i·c + Σ_{copied j >= i} K_j))
    t = max(t, pre + Σ_cpu K_cpu)                 (when some miss ran on the CPU)
    layer = t + (1 − ov) · min(n_copied · c, pre + Σ_GPU K)

The cache state still depends on every earlier step, so the replay walks the steps once, each
step vectorised over layers and experts (no Python loop per layer or per expert):

- LRU keeps per (layer, expert) a stamp; the reference touches a step's hits in id order and then
  inserts its copied misses in id order, so stamps are ``s·2E + e`` (hits) and ``s·2E + E + e``
  (inserts). Inserting keys larger than all cached ones and evicting the smallest each time
  leaves the ``cap`` largest of the union: the state after the step is that top-``cap``.
- LFU is the same with the key (frequency, stamp) (LRU breaks frequency ties, as the reference's
  OrderedDict does); the frequencies are fixed while a step inserts, so top-``cap`` holds too.
- CPU execution: "all" runs every miss on the CPU (nothing is inserted); "fastest" decides miss
  by miss, in id order, whether the CPU (queue ``Σ K_cpu`` so far) finishes before a copy (queue
  ``n_copied · c``): the rule of ``_Engines.serve_misses``, vectorised over layers.

:func:`replay` picks this path when it applies (no prefetch) and the reference otherwise; the
tests check both give the same counts and times (within float rounding).
"""

from __future__ import annotations

import numpy as np

from planner.cachesim import CacheConfig, CacheSimResult, OffloadTiming, simulate_cache
from planner.errors import InputError

#: Steps whose per-(step, layer, expert) decisions are kept at once before their times are computed.
CHUNK_STEPS = 2048


def fast_supported(cfg: CacheConfig) -> bool:
    """Whether :func:`replay_fast` replays ``cfg`` (no prefetch)."""
    return cfg.prefetch is None or cfg.prefetch.max_count <= 0


def replay(
    counts_SLE: np.ndarray, cfg: CacheConfig, timing: OffloadTiming, *, record_from: int = 0, batch: float = 1.0,
    accesses: list | None = None,
) -> CacheSimResult:
    """:func:`replay_fast` when it applies, else the reference :func:`planner.cachesim.simulate_cache`."""
    if fast_supported(cfg):
        return replay_fast(counts_SLE, cfg, timing, record_from=record_from, batch=batch)
    return simulate_cache(counts_SLE, cfg, timing, record_from=record_from, batch=batch, accesses=accesses)


def replay_fast(
    counts_SLE: np.ndarray, cfg: CacheConfig, timing: OffloadTiming, *, record_from: int = 0, batch: float = 1.0
) -> CacheSimResult:
    """The reference simulator's figures for ``cfg`` without prefetch (module docstring)."""
    S, L, E = counts_SLE.shape
    if not fast_supported(cfg):
        raise InputError("replay_fast replays caches without prefetch (use planner.cachesim.simulate_cache)")
    if cfg.resident_LE.shape != (L, E) or cfg.dynamic_L.shape != (L,):
        raise InputError(f"cache config shapes {cfg.resident_LE.shape} / {cfg.dynamic_L.shape} do not match [L={L}, E={E}]")
    if not 0 <= record_from < S:
        raise InputError(f"record_from must be in [0, {S}) (got {record_from})")
    if cfg.cpu != "off" and timing.cpu_ms_M is None:
        raise InputError("cpu execution of missed experts needs the timing's cpu_ms_M")
    st = _State(cfg, timing, L, E)
    R = S - record_from
    out = {k: np.zeros((R, L), np.int32) for k in ("need", "hit", "demand", "cpu")}
    lay = np.zeros((R, L))
    comp = np.zeros((R, L))
    for a in range(0, S, CHUNK_STEPS):
        b = min(S, a + CHUNK_STEPS)
        cnt = counts_SLE[a:b]
        hit, copied, on_cpu = st.run(cnt)
        lo = max(record_from, a)
        if lo >= b:
            continue
        sl = slice(lo - a, b - a)
        r = slice(lo - record_from, b - record_from)
        need = cnt[sl] > 0
        out["need"][r] = need.sum(axis=2)
        out["hit"][r] = hit[sl].sum(axis=2)
        out["demand"][r] = copied[sl].sum(axis=2)
        out["cpu"][r] = on_cpu[sl].sum(axis=2)
        lay[r], comp[r] = layer_times(cnt[sl], hit[sl], copied[sl], on_cpu[sl], timing)
    step = lay.sum(axis=1) + timing.other_ms
    zero = np.zeros((R, L), np.int32)
    return CacheSimResult(
        need_SL=out["need"], hit_SL=out["hit"], demand_SL=out["demand"], cpu_SL=out["cpu"], prefetch_SL=zero,
        prefetch_used_SL=zero.copy(), layer_ms_SL=lay, compute_ms_SL=comp, stall_ms_SL=np.maximum(lay - comp, 0.0),
        step_ms_S=step, batch=float(batch), expert_bytes=timing.expert_bytes,
    )


def layer_times(
    cnt: np.ndarray, hit: np.ndarray, copied: np.ndarray, on_cpu: np.ndarray, timing: OffloadTiming
) -> tuple[np.ndarray, np.ndarray]:
    """Layer time and compute time [C, L] of the module docstring's closed form (masks [C, L, E]).
    Works on the needed experts only, packed in id order into [C, L, k] (k the most per layer)."""
    C, L, E = cnt.shape
    c_i, l_i, e_i = np.nonzero(cnt > 0)
    n_cl = np.bincount(c_i * L + l_i, minlength=C * L)
    k = int(n_cl.max()) if n_cl.size else 0
    first = np.r_[0, np.cumsum(n_cl)[:-1]]
    j_i = np.arange(c_i.size) - first[c_i * L + l_i]

    def pack(x: np.ndarray, fill: float | bool) -> np.ndarray:
        out = np.full((C, L, max(k, 1)), fill, dtype=x.dtype)
        out[c_i, l_i, j_i] = x[c_i, l_i, e_i]
        return out

    ffn = np.asarray(timing.ffn_ms_M, np.float64)
    m = pack(cnt, 0)
    K = np.where(m > 0, ffn[np.minimum(m, ffn.size - 1)], 0.0)
    h, cp, oc = pack(hit, False), pack(copied, False), pack(on_cpu, False)
    pre, c = timing.pre_ms, timing.copy_ms
    k_cp = np.where(cp, K, 0.0)
    n_cp = cp.sum(axis=2)
    idx = np.cumsum(cp, axis=2)  # i of the i-th copied miss (id order)
    tail = np.cumsum(k_cp[:, :, ::-1], axis=2)[:, :, ::-1]  # Σ_{copied j >= i} K_j
    late = np.where(cp, pre + idx * c + tail, -np.inf).max(axis=2)
    kern = np.where(h, K, 0.0).sum(axis=2) + k_cp.sum(axis=2)
    t = np.maximum(pre + kern, late)
    if oc.any():
        cpu = np.asarray(timing.cpu_ms_M, np.float64)
        k_cpu = np.where(oc, cpu[np.minimum(m, cpu.size - 1)], 0.0).sum(axis=2)
        t = np.where(oc.any(axis=2), np.maximum(t, pre + k_cpu), t)
    t = t + (1.0 - timing.overlap) * np.minimum(n_cp * c, pre + kern)
    return t, pre + kern


class _State:
    """Dynamic caches of all layers as arrays (module docstring)."""

    def __init__(self, cfg: CacheConfig, timing: OffloadTiming, L: int, E: int) -> None:
        self.res = np.asarray(cfg.resident_LE, bool)
        self.cap = np.asarray(cfg.dynamic_L, np.int64)
        self.any_dyn = bool((self.cap > 0).any())
        self.lfu = cfg.policy == "lfu"
        self.mode = cfg.cpu
        self.cached = np.zeros((L, E), bool)
        self.stamp = np.zeros((L, E), np.float64)
        self.freq = np.zeros((L, E), np.float64)
        self.eids_LE = np.broadcast_to(np.arange(E, dtype=np.float64), (L, E))
        self.E = E
        self.c = timing.copy_ms
        self.ffn = np.asarray(timing.ffn_ms_M, np.float64)
        self.cpu = np.asarray(timing.cpu_ms_M, np.float64) if timing.cpu_ms_M is not None else None
        self.step = 0
        self.patterns: dict[int, np.ndarray] = {}

    def run(self, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hit, copied and CPU masks [C, L, E] of the steps ``cnt`` [C, L, E], updating the caches."""
        C = cnt.shape[0]
        need = cnt > 0
        if not self.any_dyn and self.mode != "fastest":  # static: no state to carry
            hit = need & self.res
            miss = need & ~hit
            if self.mode == "all":
                return hit, np.zeros_like(miss), miss
            return hit, miss, np.zeros_like(miss)
        hit = np.zeros_like(need)
        copied = np.zeros_like(need)
        on_cpu = np.zeros_like(need)
        for i in range(C):
            hit[i], copied[i], on_cpu[i] = self._step(need[i], cnt[i])
        return hit, copied, on_cpu

    def _step(self, need: np.ndarray, cnt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cached = self.cached
        dyn_hit = need & cached
        hit = dyn_hit | (need & self.res)
        miss = need & ~hit
        if self.mode == "off":
            copied, on_cpu = miss, np.zeros_like(miss)
        elif self.mode == "all":
            copied, on_cpu = np.zeros_like(miss), miss
        else:
            on_cpu = self._fastest(miss, cnt)
            copied = miss & ~on_cpu
        if self.any_dyn:
            base = self.step * 2.0 * self.E
            if self.lfu:
                self.freq += dyn_hit
                self.freq += miss  # a missed expert is touched whether copied or run on the CPU
            ins = copied & (self.cap > 0)[:, None]
            st = self.stamp
            st[dyn_hit] = base + self.eids_LE[dyn_hit]
            st[ins] = base + self.E + self.eids_LE[ins]
            cached |= ins
            over = cached.sum(axis=1) > self.cap
            if over.any():
                self._trim(over)
        self.step += 1
        return hit, copied, on_cpu

    def _trim(self, over: np.ndarray) -> None:
        """Keep the ``cap`` largest keys of the overfull layers (a layer overflows only after an
        insert, so its ``cap`` is >= 1)."""
        rows = np.flatnonzero(over)
        cached = self.cached[rows]
        cap = self.cap[rows]
        st = np.where(cached, self.stamp[rows], -np.inf)
        if self.lfu:
            order = np.lexsort((st, np.where(cached, self.freq[rows], -np.inf)), axis=1)
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.broadcast_to(np.arange(self.E), order.shape), axis=1)
            self.cached[rows] = cached & (rank >= self.E - cap[:, None])
        else:  # stamps are distinct: the cap-th largest is the threshold
            thr = np.sort(st, axis=1)[np.arange(rows.size), self.E - cap]
            self.cached[rows] = cached & (st >= thr[:, None])

    def _fastest(self, miss: np.ndarray, cnt: np.ndarray) -> np.ndarray:
        """Fiddler's rule miss by miss in id order (module docstring), all layers at once."""
        cpu, ffn, c = self.cpu, self.ffn, self.c
        L, E = miss.shape
        on_cpu = np.zeros_like(miss)
        if not miss.any():
            return on_cpu
        rank = np.cumsum(miss, axis=1) - 1
        n_miss = miss.sum(axis=1)
        mm = cnt[miss]
        if mm.min() == mm.max():  # every miss has the same tokens (batch 1): a fixed pattern by rank
            pat = self._pattern(int(mm[0]))
            return miss & pat[np.clip(rank, 0, E - 1)]
        cpu_q = np.zeros(L)  # CPU busy time so far
        n_cp = np.zeros(L)  # copies so far
        rows = np.arange(L)
        for j in range(int(n_miss.max())):
            act = n_miss > j
            col = np.argmax(miss & (rank == j), axis=1)
            m = cnt[rows, col]
            kc = cpu[np.minimum(m, cpu.size - 1)]
            go = act & (cpu_q + kc < n_cp * c + c + ffn[np.minimum(m, ffn.size - 1)])
            on_cpu[rows[go], col[go]] = True
            cpu_q = np.where(go, cpu_q + kc, cpu_q)
            n_cp = np.where(act & ~go, n_cp + 1, n_cp)
        return on_cpu

    def _pattern(self, m: int) -> np.ndarray:
        """Whether the j-th miss of a layer goes to the CPU when every miss has ``m`` tokens: bool [E]."""
        if m not in self.patterns:
            kc = float(self.cpu[min(m, self.cpu.size - 1)])
            kg = float(self.ffn[min(m, self.ffn.size - 1)])
            pat = np.zeros(self.E, bool)
            q = n_cp = 0.0
            for j in range(self.E):
                if q + kc < n_cp * self.c + self.c + kg:
                    pat[j], q = True, q + kc
                else:
                    n_cp += 1
            self.patterns[m] = pat
        return self.patterns[m]
