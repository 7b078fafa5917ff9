"""An offloaded stack of real MoE layers: planned experts resident on the device, the rest in
(pinned) host memory, copied on a side stream when needed — replaying a routing trace.

Shape legend as in :mod:`.moe_layer` (T tokens of a step, D hidden, F expert FFN width, K top-k).

What one decode step does, layer by layer (the rules of :mod:`planner.cachesim`, which predicts
it):

1. the step's tokens ``x_TD`` reach layer l; the trace gives their experts (``ids_LTk``) — the
   router's choice is replayed, not recomputed, so that hits and misses are the trace's;
2. each needed expert is *resident* (device weights for the whole run), in the layer's *dynamic*
   LRU/LFU cache (device buffers, ``dynamic_L[l]`` of them), *prefetched* (a copy issued at the
   previous layer), or *missed*: copied on the copy stream into a device buffer (joining the
   dynamic cache when it has slots), or — ``cpu="fastest"``/``"all"`` — run on the host from its
   host weights when the cost model says that finishes first;
3. the experts run in order of arrival, ``y_TD += w · FFN_e(x)``; ``x ← x + y`` feeds layer l+1;
4. predicted next-layer experts (``prefetch_SL``, most probable first) are queued after the
   demand copies.

**Clocks.** ``clock="cuda"`` measures: copies on a side stream (``torch.cuda.Stream``) from pinned
host tensors with ``non_blocking=True``, the compute stream waiting on each copy's event, CUDA
events around each step. Prefetch copies are enqueued at once (a started CUDA copy cannot be
recalled; the simulator's cancellation of not-yet-started prefetches is not reproduced), and the
host reads each layer's routing as an engine would (a synchronisation per layer). An expert run on
the CPU runs on the host thread between GPU launches. For real shapes every host expert is
materialised in pinned memory (Qwen3-30B-A3B: 58 GB): pass fewer layers (``validate --layers``).
``clock="simulated"`` runs the same data path on the CPU and advances a modelled clock with the
simulator's rules and figures (copy time, expert FFN time, CPU time), so that a CPU run checks
the code path against :func:`planner.cachesim.simulate_cache` exactly (tests/kernels).

Budget: device expert buffers alive at any time never exceed resident + dynamic + staging +
prefetch slots; the executor tracks the maximum (``max_live_buffers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from planner.cachesim import DynamicCache

from .moe_layer import ffn


@dataclass(frozen=True)
class StackTiming:
    """Figures the simulated clock charges (ms): one copy, one expert FFN at M tokens
    (``ffn_ms_M[M]``), work before a layer's experts, per step outside the MoE layers,
    copy/compute overlap, CPU expert FFN at M tokens (``cpu_ms_M``, None: no CPU path)."""

    copy_ms: float
    ffn_ms_M: Any
    pre_ms: float
    other_ms: float
    overlap: float
    cpu_ms_M: Any = None


@dataclass
class StackResult:
    """Counts over the recorded steps and the time they took."""

    steps: int = 0
    tokens: int = 0
    need: int = 0
    hits: int = 0
    demand: int = 0
    prefetch: int = 0
    prefetch_used: int = 0
    cpu: int = 0
    elapsed_ms: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    max_live_buffers: int = 0
    clock: str = "simulated"

    @property
    def hit_rate(self) -> float:
        return 1.0 - (self.demand + self.cpu) / self.need if self.need else 1.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens * 1e3 / self.elapsed_ms if self.elapsed_ms > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "clock": self.clock, "steps": self.steps, "tokens": self.tokens, "hit_rate": self.hit_rate,
            "transfers": self.demand + self.prefetch, "demand": self.demand, "prefetch": self.prefetch,
            "prefetch_used": self.prefetch_used, "cpu": self.cpu, "elapsed_ms": self.elapsed_ms,
            "step_ms_mean": float(np.mean(self.step_ms)) if self.step_ms else 0.0,
            "tokens_per_s": self.tokens_per_s, "max_live_buffers": self.max_live_buffers,
        }


def _weights(L: int, E: int, D: int, F: int, seed: int, dtype: torch.dtype, pin: bool) -> list[list[tuple]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(L):
        row = []
        for _ in range(E):
            w13 = (torch.randn(2 * F, D, generator=g) / D**0.5).to(dtype)
            w2 = (torch.randn(D, F, generator=g) / F**0.5).to(dtype)
            if pin:
                w13, w2 = w13.pin_memory(), w2.pin_memory()
            row.append((w13, w2))
        out.append(row)
    return out


def run_offloaded_stack(
    ids_LTk: np.ndarray,
    step_T: np.ndarray,
    resident_LE: np.ndarray,
    dynamic_L: np.ndarray,
    *,
    hidden: int,
    ffn_width: int,
    policy: str = "lru",
    prefetch_SL: list[list[list[int]]] | None = None,
    prefetch_count: int = 0,
    cpu: str = "off",
    timing: StackTiming | None = None,
    clock: str = "simulated",
    record_from: int = 0,
    dtype: torch.dtype | None = None,
    seed: int = 0,
    return_output: bool = False,
) -> tuple[StackResult, torch.Tensor | None]:
    """Replay the trace through the offloaded stack (module docstring). ``prefetch_SL[s][l]``:
    experts to prefetch for layer l of step s, most probable first (None: no prefetch).
    ``timing`` drives the simulated clock and the CPU-or-copy decision (required unless
    ``clock="cuda"`` and ``cpu="off"``). Returns the counts and, with ``return_output``, the
    final hidden states of every token [T, D] (float32)."""
    if clock not in ("simulated", "cuda"):
        raise ValueError(f"clock must be 'simulated' or 'cuda' (got {clock!r})")
    cuda = clock == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("clock='cuda' needs a CUDA device")
    if timing is None and (not cuda or cpu != "off"):
        raise ValueError("the simulated clock and CPU execution need timing figures")
    L, T, K = ids_LTk.shape
    E = resident_LE.shape[1]
    dev = torch.device("cuda" if cuda else "cpu")
    dt = dtype or (torch.bfloat16 if cuda else torch.float32)
    host = _weights(L, E, hidden, ffn_width, seed, dt, pin=cuda)
    res = [{e: (host[i][e][0].to(dev), host[i][e][1].to(dev)) for e in np.flatnonzero(resident_LE[i]).tolist()}
           for i in range(L)]
    caches = [DynamicCache(int(dynamic_L[i]), policy == "lfu") for i in range(L)]
    _, s_T = np.unique(step_T, return_inverse=True)
    S = int(s_T.max()) + 1
    starts = np.searchsorted(s_T, np.arange(S + 1))
    g = torch.Generator().manual_seed(seed + 1)
    x_all = torch.randn(T, hidden, generator=g)
    out_all = torch.empty(T, hidden) if return_output else None
    result = StackResult(clock=clock)
    copy_stream = torch.cuda.Stream() if cuda else None
    ffn_ms = list(timing.ffn_ms_M) if timing is not None else []
    cpu_ms = list(timing.cpu_ms_M) if timing is not None and timing.cpu_ms_M is not None else []
    top_m = len(ffn_ms) - 1
    # simulated clock state (planner.cachesim's timeline)
    copy_free = 0.0
    cpu_free = 0.0
    live_static = sum(len(r) for r in res)
    for s in range(S):
        lo, hi = int(starts[s]), int(starts[s + 1])
        rec = s >= record_from
        x = x_all[lo:hi].to(dev, dt)
        w_tok = torch.full((hi - lo, K), 1.0 / K, dtype=dt, device=dev)
        if cuda:
            torch.cuda.synchronize()
            ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            ev0.record()
        t = 0.0
        copies: list[tuple[float, float]] = []
        queued: list[tuple[float, float, int, Any]] = []  # prefetches of this layer
        for layer in range(L):
            ids = ids_LTk[layer, lo:hi]
            need: dict[int, list[tuple[int, int]]] = {}
            for tok in range(hi - lo):
                for j in range(K):
                    need.setdefault(int(ids[tok, j]), []).append((tok, j))
            t0 = t
            t += timing.pre_ms if timing is not None else 0.0
            tr = t
            cache = caches[layer]
            started: dict[int, tuple[float, Any]] = {}
            for a, b, e, w in queued:
                if cuda or a < tr:
                    started[e] = (b, w)
                    copies.append((a, b))
                    copy_free = max(copy_free, b)
            ready: list[tuple[float, int, Any, bool]] = []  # (ready time, expert, weights, on cpu)
            n_hit = n_pfu = n_dem = n_cpu = 0
            cpu_end = 0.0
            for e in sorted(need):
                m = len(need[e])
                if e in res[layer]:
                    ready.append((0.0, e, res[layer][e], False))
                    n_hit += 1
                elif e in cache.od:
                    cache.touch(e)
                    ready.append((0.0, e, cache.od[e], False))
                    n_hit += 1
                elif e in started:
                    b, w = started[e]
                    ready.append((b, e, w, False))
                    n_pfu += 1
                    cache.touch(e)
                    cache.insert(e, w)
                else:
                    ready.append((-1.0, e, None, False))  # missed: decided below, in expert order
            for i, (r, e, w, _) in enumerate(ready):
                if r >= 0:
                    continue
                m = len(need[e])
                start = max(copy_free, tr)
                if cpu != "off" and timing is not None:
                    cs = max(cpu_free, tr)
                    done = cs + cpu_ms[min(m, top_m)]
                    if cpu == "all" or done < start + timing.copy_ms + ffn_ms[min(m, top_m)]:
                        cpu_free = cpu_end = max(cpu_end, done)
                        ready[i] = (done, e, host[layer][e], True)
                        n_cpu += 1
                        if cache.lfu:
                            cache.touch(e)
                        continue
                w = _copy(host[layer][e], dev, copy_stream)
                copy_free = start + (timing.copy_ms if timing is not None else 0.0)
                copies.append((start, copy_free))
                ready[i] = (copy_free, e, w, False)
                n_dem += 1
                cache.touch(e)
                cache.insert(e, w)
            # prefetch the next layer's predicted experts after the demand copies
            queued = []
            if prefetch_SL is not None and layer + 1 < L:
                q = max(copy_free, tr)
                n = 0
                for e in prefetch_SL[s][layer + 1]:
                    if n >= prefetch_count:
                        break
                    if e in res[layer + 1] or e in caches[layer + 1].od:
                        continue
                    w = _copy(host[layer + 1][e], dev, copy_stream)
                    c = timing.copy_ms if timing is not None else 0.0
                    queued.append((q, q + c, e, w))
                    q += c
                    n += 1
            live = live_static + sum(len(cc.od) for cc in caches) + len(queued) + n_dem + n_pfu
            result.max_live_buffers = max(result.max_live_buffers, live)
            # run the experts in order of arrival
            ready.sort(key=lambda z: (z[0], z[1]))
            y = torch.zeros_like(x, dtype=torch.float32)
            kern = 0.0
            for r, e, w, on_cpu in ready:
                rows = need[e]
                tok = torch.tensor([a for a, _ in rows], device=dev)
                jj = torch.tensor([b for _, b in rows], device=dev)
                xin = x.index_select(0, tok)
                if on_cpu:
                    out = ffn(xin.to("cpu", torch.float32), w[0].float(), w[1].float()).to(dev)
                else:
                    if len(w) == 3:  # copied on the side stream: wait for that copy only
                        torch.cuda.current_stream().wait_event(w[2])
                        w[0].record_stream(torch.cuda.current_stream())
                        w[1].record_stream(torch.cuda.current_stream())
                    out = ffn(xin, w[0], w[1]).float()
                    k_e = ffn_ms[min(len(rows), top_m)] if timing is not None else 0.0
                    t = max(t, r) + k_e
                    kern += k_e
                y.index_add_(0, tok, out * w_tok[tok, jj].float()[:, None])
            if cpu_end > t:
                t = cpu_end
            if timing is not None:
                busy = sum(max(0.0, min(b, t) - max(a, t0)) for a, b in copies)
                t += (1.0 - timing.overlap) * min(busy, timing.pre_ms + kern)
            copies = [iv for iv in copies if iv[1] > t]
            x = (x.float() + y).to(dt)
            if cuda:
                torch.cuda.synchronize()  # the host reads the next layer's routing
            if rec:
                result.need += len(need)
                result.hits += n_hit
                result.demand += n_dem
                result.cpu += n_cpu
                result.prefetch_used += n_pfu
                result.prefetch += len(started)
        if timing is not None:
            t += timing.other_ms
        copy_free = max(0.0, copy_free - t)
        cpu_free = max(0.0, cpu_free - t)
        if cuda:
            ev1.record()
            torch.cuda.synchronize()
            step = float(ev0.elapsed_time(ev1))
        else:
            step = t
        if out_all is not None:
            out_all[lo:hi] = x.float().cpu()
        if rec:
            result.steps += 1
            result.tokens += hi - lo
            result.step_ms.append(step)
            result.elapsed_ms += step
    return result, out_all


def _copy(w: tuple, dev: torch.device, stream: Any) -> tuple:
    """A host expert's weights on ``dev``: on CUDA, copied on ``stream`` with an event recorded
    after the copy (``(w13, w2, event)``); on the CPU, a plain copy (``(w13, w2)``)."""
    if stream is None:
        return (w[0].clone(), w[1].clone())
    with torch.cuda.stream(stream):
        w13, w2 = w[0].to(dev, non_blocking=True), w[1].to(dev, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record(stream)
    return (w13, w2, ev)
