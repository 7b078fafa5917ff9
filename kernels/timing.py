"""Timing helpers for the MoE layer: CUDA-event and CPU timers, weight rotation, one EP rank's bench.

Kernels under ~0.05 ms jitter by tens of percent between runs on shared virtualized GPUs
(docs/facts.md §2), so a figure is the minimum over a few runs of a median over repeats:

- **CUDA** (:func:`bench`): one untimed call, then ``runs`` runs; each run makes ``warmup``
  untimed calls and ``reps`` timed ones. Before every timed call the L2 is flushed (a 256 MB
  memset, as ``triton.testing.do_bench`` does) and, with ``lead`` (the default), a spin kernel
  (``torch.cuda._sleep``) is queued between the flush and the start event, long enough
  (1.5 × the measured host time to issue one call + 50 µs, counted at 1.98 GHz, the H100's top
  clock, so it lasts at least that long) that the host has queued the whole call before the GPU
  reaches it: the events then time GPU work alone, as a CUDA-graph-captured layer would run,
  without the gaps a slow Python host leaves between kernels. ``lead=False`` times eagerly (host
  gaps count). A run's figure is the median of its ``reps`` event pairs; the result is the
  minimum over runs (all run medians are kept).
- **CPU**: ``time.perf_counter`` around each call, same warm-up / median / minimum structure; no
  cache flush.
- **Weights rotated** (:class:`Rotator`, from :mod:`.measure_common`): consecutive calls read different copies of the
  weights, at least 2 copies and together at least ``rotate_bytes`` (256 MB by default, five
  times the H100's 50 MB L2), so the L2 never holds the next call's weights.

:class:`RankBench` times :func:`kernels.moe_layer.run_local_experts` for one EP rank: L local
expert slots of shape (D, F) on random bf16 weights, given the rows each slot receives.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .measure_common import Rotator, n_copies
from .moe_layer import resolve_backend, run_local_experts

__all__ = ["BenchResult", "RankBench", "Rotator", "bench", "device_name", "method", "n_copies"]

#: Bytes of the buffer zeroed before each timed CUDA call to flush the L2 (do_bench's size).
FLUSH_BYTES = 256 * 2**20
#: Clock used to turn a lead time into spin cycles (H100 top SM clock; higher is safer).
SPIN_HZ = 1.98e9
#: Longest spin lead, cycles (~25 ms), so a pathological host time cannot stall the GPU long.
MAX_LEAD_CYCLES = 50_000_000

_FLUSH: dict[str, torch.Tensor] = {}


@dataclass(frozen=True)
class BenchResult:
    """One timed figure: ``ms`` is the minimum over runs of the per-run median."""

    ms: float
    run_medians_ms: list[float]
    reps: int
    warmup: int
    host_ms: float | None = None
    lead_cycles: int = 0


def _flush_buffer(device: torch.device) -> torch.Tensor:
    key = str(device)
    if key not in _FLUSH:
        _FLUSH[key] = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    return _FLUSH[key]


def _host_ms(fn: Callable[[], Any], sync: Callable[[], None], n: int = 3) -> float:
    ts = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    sync()
    return statistics.median(ts)


def bench(
    fn: Callable[[], Any],
    device: str | torch.device,
    *,
    warmup: int = 3,
    reps: int = 10,
    runs: int = 3,
    lead: bool = True,
) -> BenchResult:
    """Time ``fn`` on ``device`` (see the module docstring). ``reps``, ``runs`` >= 1."""
    assert reps >= 1 and runs >= 1 and warmup >= 0, (reps, runs, warmup)
    dev = torch.device(device)
    if dev.type != "cuda":
        fn()
        medians = []
        for _ in range(runs):
            for _ in range(warmup):
                fn()
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t) * 1e3)
            medians.append(statistics.median(ts))
        return BenchResult(min(medians), medians, reps, warmup)

    def sync() -> None:
        torch.cuda.synchronize(dev)

    flush = _flush_buffer(dev)
    fn()
    host = _host_ms(fn, sync)
    cycles = 0
    if lead and hasattr(torch.cuda, "_sleep"):
        cycles = int(min((1.5 * host * 1e3 + 50.0) * 1e-6 * SPIN_HZ, MAX_LEAD_CYCLES))
    medians = []
    for _ in range(runs):
        for _ in range(warmup):
            fn()
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for i in range(reps):
            flush.zero_()
            if cycles:
                torch.cuda._sleep(cycles)
            starts[i].record()
            fn()
            ends[i].record()
        sync()
        medians.append(statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)))
    return BenchResult(min(medians), medians, reps, warmup, host, cycles)


def method(device: str | torch.device, *, warmup: int, reps: int, runs: int, lead: bool, rotate_bytes: float) -> str:
    """One paragraph saying how :func:`bench` timed on ``device`` (for reports)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return (
            f"CPU wall clock (time.perf_counter) around each call; {warmup} warm-up calls then {reps} timed "
            f"calls per run, the run's median; minimum over {runs} runs. No cache flush."
        )
    lead_txt = (
        "a spin kernel (torch.cuda._sleep) of 1.5 x the host issue time + 50 us is queued before each "
        "start event so that the events time GPU work alone (host gaps hidden, as in a CUDA graph)"
        if lead
        else "eager calls (host gaps between kernels count)"
    )
    return (
        f"CUDA events around each call; {warmup} warm-up calls then {reps} timed calls per run, the run's "
        f"median; minimum over {runs} runs. Before every timed call the L2 is flushed by a "
        f"{FLUSH_BYTES >> 20} MB memset and {lead_txt}. Weights rotated among copies totalling >= "
        f"{rotate_bytes / 2**20:.0f} MB (at least 2) so that the L2 does not hold them."
    )


def device_name(device: str | torch.device) -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


class RankBench:
    """Times one EP rank's expert FFN (:func:`run_local_experts`) on random weights.

    ``slots`` local expert slots of width ``ffn`` on a model of width ``hidden``; weights in
    ``dtype`` (bf16 by default) rotated among copies totalling >= ``rotate_bytes``; inputs drawn
    once, ``max_rows`` rows (every measured rank takes a prefix).
    """

    def __init__(
        self,
        slots: int,
        hidden: int,
        ffn: int,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.bfloat16,
        max_rows: int = 1,
        rotate_bytes: float | None = None,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.slots, self.hidden, self.ffn = slots, hidden, ffn
        if rotate_bytes is None:
            rotate_bytes = FLUSH_BYTES if self.device.type == "cuda" else 0
        self.rotate_bytes = rotate_bytes
        elt = torch.finfo(dtype).bits // 8
        self.weight_bytes = 3 * slots * hidden * ffn * elt
        gen = torch.Generator(device=self.device).manual_seed(seed)
        copies = []
        for _ in range(n_copies(self.weight_bytes, rotate_bytes)):
            w13 = torch.randn(slots, 2 * ffn, hidden, device=self.device, generator=gen) / math.sqrt(hidden)
            w2 = torch.randn(slots, hidden, ffn, device=self.device, generator=gen) / math.sqrt(ffn)
            copies.append((w13.to(dtype), w2.to(dtype)))
            del w13, w2
        self.rot = Rotator(copies)
        self.x_ND = torch.randn(max(1, max_rows), hidden, device=self.device, generator=gen).to(dtype)

    @property
    def copies(self) -> int:
        return len(self.rot.copies)

    def call(self, counts_L: Sequence[int], backend: str) -> Callable[[], torch.Tensor]:
        """The timed callable for these per-slot row counts (inputs prepared outside it)."""
        counts = [int(c) for c in counts_L]
        assert len(counts) == self.slots, (len(counts), self.slots)
        n = sum(counts)
        if n > self.x_ND.shape[0]:
            gen = torch.Generator(device=self.device).manual_seed(n)
            self.x_ND = torch.randn(n, self.hidden, device=self.device, generator=gen).to(self.dtype)
        x = self.x_ND[:n]
        be = resolve_backend(backend, x)
        arg: Any = torch.tensor(counts, device=self.device) if be == "grouped" else counts

        def fn() -> torch.Tensor:
            w13, w2 = self.rot.next()
            return run_local_experts(x, arg, w13, w2, be)

        return fn

    def check(self, counts_L: Sequence[int], backend: str) -> float:
        """Relative error ‖y − y64‖/‖y64‖ of one call against float64 on the CPU."""
        fn = self.call(counts_L, backend)
        i = self.rot.i
        y = fn()
        w13, w2 = self.rot.copies[i % self.copies]
        n = sum(int(c) for c in counts_L)
        ref = run_local_experts(self.x_ND[:n].double().cpu(), list(counts_L), w13.double().cpu(), w2.double().cpu(), "loop")
        if not torch.isfinite(y).all():
            return float("nan")
        den = torch.linalg.vector_norm(ref)
        return float(torch.linalg.vector_norm(y.double().cpu() - ref) / den) if den > 0 else 0.0

    def measure(
        self, counts_L: Sequence[int], backend: str, *, warmup: int = 3, reps: int = 10, runs: int = 3, lead: bool = True
    ) -> BenchResult:
        """Time the rank at these counts; a rank with no rows runs nothing and costs 0 ms."""
        if sum(int(c) for c in counts_L) == 0:
            return BenchResult(0.0, [0.0], 0, 0)
        return bench(self.call(counts_L, backend), self.device, warmup=warmup, reps=reps, runs=runs, lead=lead)
