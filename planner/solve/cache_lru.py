"""Hybrid expert caches: r pinned experts plus d LRU slots per layer, sized from stack distances.

Real decode sequences reuse their experts from token to token (a static set cannot), while the
most frequent experts are worth pinning (an LRU would let a burst evict them). This module prices
every split (r, d) of every layer at once and divides the slots over layers exactly.

**Stack distances** (Mattson et al. 1970, "Evaluation techniques for storage hierarchies"): an LRU
cache of d slots hits an access iff fewer than d distinct other keys were accessed since the
key's previous access, so one pass gives the misses of every capacity. With the r most frequent
experts of a layer pinned (rank order of :func:`planner.solve.cache.frequency_order`), only the
experts of rank >= r go through the LRU; the distance of access a with r pinned is::

    D_r(a) = #{e' of rank >= r accessed after a's previous access and before a}

(accesses ordered by step, then expert id; a first access has D = ∞). Per access the indicator
over e' is one row of [E] booleans; its suffix sums over rank give D_r for all r at once.

**Stall per step** (:func:`miss_stall`): at one layer a step with m missed experts stalls
``g(m)`` ms, from the simulator's closed form (:func:`planner.cachesim_fast.layer_times`) on a
typical step (the mean number of experts a layer needs, each with the mean tokens; with CPU
execution "fastest" the misses split between the copy engine and the CPU as the simulator's rule
does). With ``m_s(r, d) = #{a in step s : rank(a) >= r, D_r(a) >= d}`` and the j-th largest
distance of step s written ``D_(j)``::

    Σ_s g(m_s(r, d)) = Σ_j (g(j) − g(j − 1)) · #{s : D_(j),r >= d}

so a histogram of ``D_(j)`` per (r, j) gives the stall of every (r, d). The cost of n slots at a
layer is the best split, ``cost_l(n) = min_{r + d = n} stall_l(r, d)``, and
:func:`planner.solve.cache.allocate` divides the slots over layers exactly.

What the table does not see, and the replay (:mod:`planner.cachesim_fast`) does: the simulator
touches a step's hits before it inserts its misses (not id order), and an expert run on the CPU
is not inserted. The table ranks candidates; the replay scores them.
"""

from __future__ import annotations

import numpy as np

from planner.cachesim import OffloadTiming
from planner.cachesim_fast import layer_times

#: Elements of a [steps, accesses, E + 1] block the table builds at once (memory, not the result).
CHUNK_ELEMENTS = 1 << 22


def miss_stall(counts_SLE: np.ndarray, timing: OffloadTiming, cpu: str = "off") -> np.ndarray:
    """``g(m)`` for m = 0..n (module docstring): float [n + 1], n the most experts a layer needs."""
    need = counts_SLE > 0
    per = need.sum(axis=2)
    n_max = int(per.max()) if per.size else 0
    n_mean = max(1, int(round(float(per.mean())))) if per.size else 1
    tok = max(1, int(round(float(counts_SLE.sum() / max(need.sum(), 1)))))
    n = max(n_max, 1)
    cnt = np.zeros((n + 1, 1, n), np.int64)
    hit = np.zeros((n + 1, 1, n), bool)
    miss = np.zeros((n + 1, 1, n), bool)
    for m in range(n + 1):
        k = max(n_mean, m)
        cnt[m, 0, :k] = tok
        hit[m, 0, : k - m] = True
        miss[m, 0, k - m : k] = True
    copied, on_cpu = miss, np.zeros_like(miss)
    if cpu == "fastest" and timing.cpu_ms_M is not None:
        on_cpu = _fastest_pattern(miss, cnt, timing)
        copied = miss & ~on_cpu
    lay, comp = layer_times(cnt, hit, copied, on_cpu, timing)
    return np.maximum(lay - comp, 0.0)[:, 0]


def _fastest_pattern(miss: np.ndarray, cnt: np.ndarray, timing: OffloadTiming) -> np.ndarray:
    """The simulator's CPU-or-copy rule for each miss in order (engines idle at the router)."""
    cpu, ffn, c = np.asarray(timing.cpu_ms_M), np.asarray(timing.ffn_ms_M), timing.copy_ms
    out = np.zeros_like(miss)
    for i in range(miss.shape[0]):
        q = n_cp = 0.0
        for e in np.flatnonzero(miss[i, 0]):
            m = int(cnt[i, 0, e])
            kc = float(cpu[min(m, cpu.size - 1)])
            if q + kc < n_cp * c + c + float(ffn[min(m, ffn.size - 1)]):
                out[i, 0, e] = True
                q += kc
            else:
                n_cp += 1
    return out


def stack_distances(
    need_SE: np.ndarray, order_E: np.ndarray, lo: int = 0, hi: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One layer's accesses of steps ``lo..hi − 1`` and their distances for every number r of
    pinned experts (earlier steps count as history).

    Returns ``step`` int [N] (from ``lo``), ``rank`` int [N] (the accessed expert's frequency
    rank) and ``D`` int16 [N, E + 1] (``D[a, r]``, module docstring; E for a first access, meaning
    always a miss).
    """
    S, E = need_SE.shape
    hi = S if hi is None else hi
    rank_of = np.empty(E, np.int64)
    rank_of[order_E] = np.arange(E)
    tau = np.where(need_SE[:hi], np.arange(hi)[:, None] * E + np.arange(E)[None, :], -1)
    last_incl = np.maximum.accumulate(tau, axis=0)
    last_before = np.vstack([np.full((1, E), -1), last_incl[:-1]])[lo:]  # [hi − lo, E]
    need = need_SE[lo:hi]
    s_idx, e_idx = np.nonzero(need)  # step, then expert id: the access order
    prev = last_before[s_idx, e_idx]  # previous access of the same expert (-1: none)
    ind = last_before[s_idx] > prev[:, None]
    ind |= need[s_idx] & (np.arange(E)[None, :] < e_idx[:, None])  # earlier in the same step
    ind = ind[:, order_E]  # columns in rank order
    D = np.zeros((s_idx.size, E + 1), np.int16)
    D[:, :E] = np.cumsum(ind[:, ::-1], axis=1, dtype=np.int16)[:, ::-1]
    D[prev < 0] = E
    return s_idx, rank_of[e_idx], D


def hybrid_stall_tables(
    counts_SLE: np.ndarray, order_LE: np.ndarray, g_by_name: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each stall curve ``g`` (by name), per layer and total slots n = 0..E: the best stall
    ``cost`` [L, E + 1] (ms per step, mean over steps), its pinned count ``r`` [L, E + 1] and the
    misses per step [L, E + 1] of that split (module docstring). The distances are computed once."""
    S, L, E = counts_SLE.shape
    out = {k: (np.zeros((L, E + 1)), np.zeros((L, E + 1), np.int64), np.zeros((L, E + 1))) for k in g_by_name}
    n_idx = np.arange(E + 1)
    for layer in range(L):
        need = counts_SLE[:, layer] > 0
        k = int(need.sum(axis=1).max()) if S else 0
        chunk = max(256, CHUNK_ELEMENTS // max(1, k * (E + 1)))
        C = np.zeros((E + 1, k, E + 1), np.int64)
        for lo in range(0, S, chunk):
            hi = min(S, lo + chunk)
            sd, rk, D = stack_distances(need, order_LE[layer], lo, hi)
            C += _tail_counts(hi - lo, E, sd, rk, D, k)
        miss = C.sum(axis=1).astype(np.float64)
        for name, g in g_by_name.items():
            dg = np.diff(g)
            kk = min(C.shape[1], dg.size)
            stall = np.einsum("rjd,j->rd", C[:, :kk].astype(np.float64), dg[:kk])
            tot = np.full((E + 1, E + 1), np.inf)  # [n, r]: n = r + d
            for r in range(E + 1):
                tot[r : E + 1, r] = stall[r, : E + 1 - r]
            r_best = np.argmin(tot, axis=1)
            cost, best_r, misses = out[name]
            cost[layer] = tot[n_idx, r_best] / S
            best_r[layer] = r_best
            misses[layer] = miss[r_best, n_idx - r_best] / S
    return out


def _tail_counts(S: int, E: int, step: np.ndarray, rank: np.ndarray, D: np.ndarray, k: int | None = None) -> np.ndarray:
    """``C[r, j, d]`` = #{steps whose j-th largest distance with r pinned is >= d}: int [E + 1, k, E + 1]
    (k: at least the most accesses of a step)."""
    R = E + 1
    V = np.where(rank[:, None] >= np.arange(R, dtype=np.int16)[None, :], D, np.int16(-1))  # -1: pinned
    n_s = np.bincount(step, minlength=S)
    k = max(int(n_s.max()) if n_s.size else 0, k or 0)
    slot = np.arange(step.size) - np.r_[0, np.cumsum(n_s)[:-1]][step]
    W = np.full((S, k, R), -1, np.int16)
    W[step, slot] = V
    W = -np.sort(-W, axis=1)  # j-th largest distance per step and r
    base = ((np.arange(R, dtype=np.int32)[None, None, :] * k + np.arange(k, dtype=np.int32)[None, :, None]) * (E + 2))
    flat = (base + (W.astype(np.int32) + 1)).ravel()
    h = np.bincount(flat, minlength=R * k * (E + 2)).reshape(R, k, E + 2)
    tail = np.cumsum(h[:, :, ::-1], axis=2)[:, :, ::-1]  # [r, j, v]: #{W + 1 >= v}
    return tail[:, :, 1:]  # d = v − 1 = 0..E: #{W >= d}
