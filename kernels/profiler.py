"""``moe-planner profile``: measure one device and write a hardware profile the cost model reads.

What is measured, each section on the device given (``cuda`` or ``cpu``):

1. **Collectives** (only with several ranks, under ``torchrun``; NCCL on GPUs, gloo on CPU):
   ``all_to_all_single`` (each rank sends ``bytes / n`` to every peer) and ``all_reduce`` over
   message sizes; a figure is the slowest rank's median. Bus bandwidth as nccl-tests counts it
   (docs/facts.md §3): all-to-all ``bytes·(n−1)/n / t``, all-reduce ``bytes·2(n−1)/n / t``.
2. **Ceilings**: a bf16 ``N³`` matrix product (``2N³ / t``) and a device-to-device copy (bytes
   read plus written over time, the ``hbm_bandwidth_gbps`` convention of
   :mod:`planner.specs.hardware`).
3. **Copies** (:func:`.measure_common.measure_copies`): host-to-device pinned / pageable and
   device-to-host pinned over sizes; a fixed cost per copy from the small sizes.
4. **Expert FFN** for every distinct (d, f) FFN shape of the presets (or of ``--model``): the
   fused gate/up GEMM ``x[M,d] @ W13[2f,d]^T``, the down GEMM ``h[M,f] @ W2[d,f]^T`` and the
   whole FFN (:func:`.moe_layer.ffn`) at each token count M, bf16; and the same in fp8 (e4m3
   through ``torch._scaled_mm``, per-tensor scales, bf16 output) where the device runs it.
5. **Grouped GEMM**: :func:`.moe_layer.experts_ffn` for E experts × M rows each, ``grouped``
   (``torch._grouped_mm``) against ``loop``.
6. **Layer pieces** at T tokens for every routed shape (its largest expert count E and top-k
   K among the presets): router (:func:`.moe_layer.route`), permute and combine.

Timing (:func:`.timing.bench`): warm-up calls, then repeats timed with CUDA events (L2 flushed
and a spin-kernel lead before each, so the events time GPU work alone), the median of each run,
the minimum over runs; weights rotated among copies totalling at least 256 MB (five times the
H100's L2) so the L2 never holds the next call's weights. On CPU the same code runs with
``time.perf_counter``, tiny sizes and no rotation.

What is written: the raw measurement (:func:`measure`, a JSON-ready dict); the profile is built
from it by :func:`.profile_build.build_profile`.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .measure_common import (
    FP8,
    Rotator,
    distinct_shapes,
    ffn_fp8,
    fixed_costs,
    fp8_probe,
    measure_copies,
    n_copies,
    rel_err,
)
from .moe_layer import MoEConfig, combine, experts_ffn, ffn, permute, route
from .timing import FLUSH_BYTES, bench, device_name, method

# Token counts (rows of one expert) and other sizes, per mode.
TOKENS_FULL = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
TOKENS_QUICK = [1, 16, 128, 512, 2048, 8192]
TOKENS_CPU = [1, 4, 16]
COPY_FULL = [4 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1 << 30]
COPY_QUICK = [4 << 10, 256 << 10, 1 << 20, 16 << 20, 256 << 20]
COPY_CPU = [4 << 10, 64 << 10, 1 << 20]
COLL_FULL = [1 << 10, 16 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20]
COLL_QUICK = [16 << 10, 1 << 20, 16 << 20, 128 << 20]
COLL_CPU = [1 << 10, 64 << 10]


@dataclass(frozen=True)
class ProfileOptions:
    """What to measure and how long to try."""

    device: str = "cuda"
    """``cuda`` (this process's GPU) or ``cpu`` (tiny sizes, for tests)."""
    quick: bool = False
    """Fewer token counts, sizes and runs (a few minutes on an H100)."""
    budget_s: float | None = None
    """Soft wall-clock budget: past it, figures take one short run and sections 5-6 are skipped."""
    models: tuple[dict[str, Any], ...] = ()
    """Model specs (dicts with ``hidden_size``, ``num_experts``, ... as the presets' yaml)."""
    tokens: tuple[int, ...] | None = None
    """Token counts for the expert FFN (None: by mode)."""
    runs: int | None = None
    """Runs per figure, the minimum kept (None: 3, quick 2, CPU 2)."""
    reps: int = 10
    """Timed calls per run (their median is the run's figure)."""
    warmup: int = 3
    """Untimed calls before each run."""
    max_shapes: int | None = None
    """Keep only the first N shapes (smallest first); None: all (CPU default: 1)."""
    fp8: bool = True
    """Also measure e4m3 expert-FFN tables (``torch._scaled_mm``) where the device runs them."""

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def mode(self) -> str:
        return "cpu" if not self.cuda else ("quick" if self.quick else "full")


@dataclass
class Progress:
    """A progress bar on stderr: ``[#####.....] 12/40 section``, redrawn in place on a terminal;
    elsewhere (logs) one line when a section starts and one per tenth of the work."""

    total: int
    stream: Any = field(default_factory=lambda: sys.stderr)
    done: int = 0
    t0: float = field(default_factory=time.perf_counter)
    _last: str = ""
    _decile: int = 0

    def step(self, label: str, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        tty = getattr(self.stream, "isatty", lambda: False)()
        width = 30
        fill = int(width * self.done / max(self.total, 1))
        line = (
            f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
            f"{time.perf_counter() - self.t0:6.1f}s {label}"
        )
        if tty:
            self.stream.write("\r" + line[:120].ljust(120))
            if self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            section = label.split(" ")[0]
            decile = 10 * self.done // max(self.total, 1)
            if section != self._last or decile != self._decile:
                self.stream.write(line + "\n")
                self.stream.flush()
            self._last, self._decile = section, decile

    def note(self, msg: str) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        self.stream.write(("\n" if tty else "") + msg + "\n")
        self.stream.flush()


# ---- provenance ------------------------------------------------------------------------------


def provenance(device: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """Device, driver, library versions, date and command line of this run."""
    out: dict[str, Any] = {
        "device": device_name(device),
        "device_kind": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "host": platform.machine(),
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command_line": " ".join(["moe-planner", "profile", *argv]) if argv is not None else None,
        "driver_version": None,
    }
    if device == "cuda":
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        l2 = getattr(p, "L2_cache_size", None)
        out.update(
            sms=p.multi_processor_count,
            compute_capability=f"{p.major}.{p.minor}",
            mem_gib=p.total_memory / 2**30,
            l2_mb=l2 / 2**20 if l2 else None,
        )
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30, check=False,
            ).stdout.strip()
            if smi:
                out["driver_version"] = smi.splitlines()[0].partition(",")[2].strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
        try:
            import triton  # noqa: PLC0415

            out["triton"] = triton.__version__
        except ImportError:
            out["triton"] = None
    else:
        try:
            pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
            out["mem_gib"] = pages * page / 2**30
        except (ValueError, OSError, AttributeError):
            out["mem_gib"] = None
        out["sms"] = torch.get_num_threads()
        out["l2_mb"] = _cpu_l2_mb()
    return out


def _cpu_l2_mb() -> float | None:
    """L2 size of CPU 0 from sysfs (Linux), MB; None when unreadable."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for idx in sorted(os.listdir(base)):
            d = os.path.join(base, idx)
            with open(os.path.join(d, "level")) as fh:
                if fh.read().strip() != "2":
                    continue
            with open(os.path.join(d, "size")) as fh:
                m = re.fullmatch(r"(\d+)([KMG]?)", fh.read().strip())
            if m:
                return int(m.group(1)) * {"": 2**-20, "K": 2**-10, "M": 1.0, "G": 1024.0}[m.group(2)]
    except OSError:
        return None
    return None


# ---- the sections ----------------------------------------------------------------------------


@dataclass
class _Timer:
    """Timing settings with the budget applied: past the budget every figure is one short run."""

    device: str
    warmup: int
    reps: int
    runs: int
    budget_s: float | None
    t0: float = field(default_factory=time.perf_counter)
    cut: bool = False

    def over(self) -> bool:
        if self.budget_s is not None and time.perf_counter() - self.t0 > self.budget_s:
            self.cut = True
        return self.cut

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.over():
            return bench(fn, self.device, warmup=1, reps=max(1, min(self.reps, 3)), runs=1).ms
        return bench(fn, self.device, warmup=self.warmup, reps=self.reps, runs=self.runs).ms


def measure_ceilings(t: _Timer, gemm_n: int, copy_bytes: int, dtype: torch.dtype) -> dict[str, Any]:
    """Peak GEMM (``2N³/t``) and device copy (bytes read + written over t)."""
    dev = t.device
    gen = torch.Generator(device=dev).manual_seed(7)
    src = torch.randint(-(2**31), 2**31 - 1, (copy_bytes // 4,), dtype=torch.int32, device=dev, generator=gen)
    dst = torch.empty_like(src)
    ms = t(lambda: dst.copy_(src))
    ok = bool(torch.equal(dst[:1024], src[:1024]))
    a = torch.randn(gemm_n, gemm_n, device=dev, generator=gen).to(dtype)
    b = torch.randn(gemm_n, gemm_n, device=dev, generator=gen).to(dtype)
    gms = t(lambda: a @ b)
    return {
        "copy_bytes": copy_bytes, "copy_ms": ms, "copy_GBps_rw": 2 * copy_bytes / (ms * 1e-3) / 1e9,
        "copy_data_ok": ok, "gemm_n": gemm_n, "gemm_dtype": str(dtype).removeprefix("torch."),
        "gemm_ms": gms, "gemm_TFLOPs": 2 * gemm_n**3 / (gms * 1e-3) / 1e12,
    }


def measure_ffn(
    shape: dict[str, Any], tokens: Sequence[int], t: _Timer, kind: str, rotate_bytes: float,
    progress: Progress, checks: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """w13 / w2 / whole-FFN times of one (d, f) shape at each token count.

    ``kind`` ``bf16``: :func:`.moe_layer.ffn` on bf16 weights scaled by 1/sqrt(fan_in).
    ``fp8``: e4m3 operands through ``torch._scaled_mm`` with per-tensor scales 1/sqrt(fan_in)
    and a bf16 output (:func:`.measure_common.ffn_fp8`): x is
    pre-quantised (not timed), h is cast to e4m3 inside the timed FFN.
    """
    d, f, dev = shape["d"], shape["f"], t.device
    fp8 = kind == "fp8"
    dtype = FP8 if fp8 else torch.bfloat16
    elt = 1 if fp8 else 2
    per_copy = 3 * d * f * elt
    gen = torch.Generator(device=dev).manual_seed(1234 + d + f)
    copies = []
    for _ in range(n_copies(per_copy, rotate_bytes)):
        w13 = torch.randn(2 * f, d, device=dev, generator=gen)
        w2 = torch.randn(d, f, device=dev, generator=gen)
        if not fp8:  # fp8 keeps unit-variance values and carries 1/sqrt(fan_in) in its scales
            w13, w2 = w13 / math.sqrt(d), w2 / math.sqrt(f)
        copies.append((w13.to(dtype), w2.to(dtype)))
        del w13, w2
    rot = Rotator(copies)
    x_full = torch.randn(max(tokens), d, device=dev, generator=gen).to(dtype)
    h_full = torch.randn(max(tokens), f, device=dev, generator=gen).to(dtype)
    one = torch.ones((), device=dev)
    s13 = torch.full((), 1 / math.sqrt(d), device=dev)
    s2 = torch.full((), 1 / math.sqrt(f), device=dev)

    def run_ffn(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        return ffn_fp8(x, w13, w2, f, one, s13, s2) if fp8 else ffn(x, w13, w2)

    def run_w13(x: torch.Tensor, w13: torch.Tensor) -> torch.Tensor:
        if fp8:
            return torch._scaled_mm(x, w13.t(), scale_a=one, scale_b=s13, out_dtype=torch.bfloat16)
        return x @ w13.t()

    def run_w2(h: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        if fp8:
            return torch._scaled_mm(h, w2.t(), scale_a=one, scale_b=s2, out_dtype=torch.bfloat16)
        return h @ w2.t()

    m_chk = min(8, max(tokens))
    x, (w13, w2) = x_full[:m_chk], copies[0]
    y = run_ffn(x, w13, w2)
    if fp8:  # the same quantisation of h as the kernel, in float64
        g = (x.double().cpu() @ w13.double().cpu().t()) / math.sqrt(d)
        h = (F.silu(g[:, :f]) * g[:, f:]).float().to(FP8).double()
        ref = (h @ w2.double().cpu().t()) / math.sqrt(f)
    else:
        ref = ffn(x.double().cpu(), w13.double().cpu(), w2.double().cpu())
    checks.append({"section": f"expert_ffn_{kind}", "d": d, "f": f, "M": m_chk, "rel_err_vs_float64": rel_err(y, ref)})
    rows = []
    for M in tokens:
        xm, hm = x_full[:M], h_full[:M]
        w13_ms = t(lambda xm=xm: run_w13(xm, rot.next()[0]))
        w2_ms = t(lambda hm=hm: run_w2(hm, rot.next()[1]))
        ffn_ms = t(lambda xm=xm: run_ffn(xm, *rot.next()))
        rows.append({
            "model": shape["model"], "models": shape["uses"], "d": d, "f": f, "M": M, "dtype": kind,
            "w13_ms": w13_ms, "w2_ms": w2_ms, "ffn_ms": ffn_ms,
            "ffn_TFLOPs": 6 * M * d * f / (ffn_ms * 1e-3) / 1e12,
            "ffn_weight_GBps": per_copy / (ffn_ms * 1e-3) / 1e9,
            "cut_by_budget": t.cut,
        })
        progress.step(f"expert_ffn {kind} d={d} f={f} M={M}: {ffn_ms:.4f} ms")
    return rows


def measure_grouped(
    shape: dict[str, Any], Es: Sequence[int], Ms: Sequence[int], t: _Timer, dtype: torch.dtype,
    rotate_bytes: float, progress: Progress, checks: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``experts_ffn`` over E experts × M rows each: grouped (``torch._grouped_mm``) vs loop."""
    d, f, dev = shape["d"], shape["f"], t.device
    elt = torch.finfo(dtype).bits // 8
    rows = []
    for E in Es:
        gen = torch.Generator(device=dev).manual_seed(99 + E + d + f)
        copies = []
        for _ in range(n_copies(E * 3 * d * f * elt, rotate_bytes)):
            w13 = torch.randn(E, 2 * f, d, device=dev, generator=gen) / math.sqrt(d)
            w2 = torch.randn(E, d, f, device=dev, generator=gen) / math.sqrt(f)
            copies.append((w13.to(dtype), w2.to(dtype)))
            del w13, w2
        rot = Rotator(copies)
        for M in Ms:
            x = torch.randn(E * M, d, device=dev, generator=gen).to(dtype)
            counts_l = [M] * E
            counts_t = torch.tensor(counts_l, device=dev)
            row: dict[str, Any] = {"model": shape["model"], "d": d, "f": f, "E": E, "M": M, "tokens": E * M}
            for be, counts in (("grouped", counts_t), ("loop", counts_l)):
                try:
                    if M == Ms[0]:
                        w13, w2 = copies[0]
                        y = experts_ffn(x, counts, w13, w2, be)
                        ref = experts_ffn(x.double().cpu(), counts_l, w13.double().cpu(), w2.double().cpu(), "loop")
                        checks.append({"section": "grouped", "backend": be, "d": d, "f": f, "E": E, "M": M,
                                       "rel_err_vs_float64": rel_err(y, ref)})
                    row[f"{be}_ms"] = t(lambda x=x, counts=counts, be=be, rot=rot: experts_ffn(x, counts, *rot.next(), be))
                except (RuntimeError, NotImplementedError) as exc:
                    row[f"{be}_ms"] = None
                    row[f"{be}_error"] = f"{type(exc).__name__}: {str(exc)[:160]}"
            if row.get("grouped_ms") and row.get("loop_ms"):
                row["grouped_over_loop"] = row["grouped_ms"] / row["loop_ms"]
                row["grouped_TFLOPs"] = 6 * E * M * d * f / (row["grouped_ms"] * 1e-3) / 1e12
            rows.append(row)
            progress.step(f"grouped d={d} f={f} E={E} M={M}")
    return rows


def measure_layer_ops(
    shape: dict[str, Any], Ts: Sequence[int], t: _Timer, dtype: torch.dtype, progress: Progress
) -> list[dict[str, Any]]:
    """Router, permute and combine at T tokens for a routed shape (E experts, top-k K)."""
    d, f, dev = shape["d"], shape["f"], t.device
    E, K = shape["max_routed_experts"], max(1, min(shape.get("top_k") or 2, shape["max_routed_experts"]))
    cfg = MoEConfig(hidden=d, ffn=f, num_experts=E, top_k=K)
    gen = torch.Generator(device=dev).manual_seed(5 + d + E)
    router_ED = (torch.randn(E, d, device=dev, generator=gen) / math.sqrt(d)).to(dtype)
    rows = []
    elt = torch.finfo(dtype).bits // 8
    for T in Ts:
        x = torch.randn(T, d, device=dev, generator=gen).to(dtype)
        ids, wts = route(x, router_ED, cfg)
        x_ND, order, _ = permute(x, ids, E)
        router_ms = t(lambda x=x: route(x, router_ED, cfg))
        permute_ms = t(lambda x=x, ids=ids: permute(x, ids, E))
        combine_ms = t(lambda x_ND=x_ND, order=order, wts=wts, T=T: combine(x_ND, order, wts, T))
        moved = T * K * d * elt  # rows gathered (permute) or scattered (combine) once
        rows.append({
            "model": shape["model"], "d": d, "E": E, "K": K, "T": T, "dtype": str(dtype).removeprefix("torch."),
            "router_ms": router_ms, "permute_ms": permute_ms, "combine_ms": combine_ms,
            "permute_GBps_rw": 2 * moved / (permute_ms * 1e-3) / 1e9,
        })
        progress.step(f"layer_ops d={d} E={E} K={K} T={T}")
    return rows


def measure_collectives(sizes: Sequence[int], device: str, reps: int, progress: Progress | None) -> dict[str, Any]:
    """all_to_all_single and all_reduce over ``sizes`` bytes per rank (torch.distributed must be
    initialised); every rank calls this; the figure is the slowest rank's median."""
    import torch.distributed as dist  # noqa: PLC0415

    n = dist.get_world_size()
    cuda = device == "cuda"
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    rows = []

    def timed(op: Callable[[], Any]) -> float:
        for _ in range(3):
            op()
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        ts = []
        for _ in range(reps):
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                op()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b))
            else:
                t0 = time.perf_counter()
                op()
                ts.append((time.perf_counter() - t0) * 1e3)
        med = torch.tensor([statistics.median(ts)], dtype=torch.float64, device=dev)
        dist.all_reduce(med, op=dist.ReduceOp.MAX)
        return float(med.item())

    for nbytes in sizes:
        per = max(1, nbytes // (4 * n))
        inp = torch.randn(per * n, device=dev)
        out = torch.empty_like(inp)
        a2a = timed(lambda inp=inp, out=out: dist.all_to_all_single(out, inp))
        buf = torch.randn(per * n, device=dev)
        ar = timed(lambda buf=buf: dist.all_reduce(buf))
        b = per * n * 4
        rows.append({
            "bytes": b, "all_to_all_ms": a2a, "all_to_all_busbw_GBps": b * (n - 1) / n / (a2a * 1e-3) / 1e9,
            "all_reduce_ms": ar, "all_reduce_busbw_GBps": b * 2 * (n - 1) / n / (ar * 1e-3) / 1e9,
        })
        if progress is not None:
            progress.step(f"collectives {b} B")
    local = int(os.environ.get("LOCAL_WORLD_SIZE", n))
    return {"world_size": n, "local_world_size": local, "backend": dist.get_backend(), "rows": rows,
            "one_node": local == n}


# ---- the whole run ---------------------------------------------------------------------------


def plan_sizes(opts: ProfileOptions, shapes: list[dict[str, Any]]) -> dict[str, Any]:
    """Token counts, sizes and shape lists for this mode (module docstring)."""
    mode = opts.mode()
    tokens = list(opts.tokens) if opts.tokens else {"full": TOKENS_FULL, "quick": TOKENS_QUICK, "cpu": TOKENS_CPU}[mode]
    max_shapes = opts.max_shapes if opts.max_shapes is not None else (1 if mode == "cpu" and not opts.models else None)
    shapes = shapes[:max_shapes] if max_shapes is not None else shapes
    routed = [s for s in shapes if s["max_routed_experts"]]
    if mode == "cpu":
        return dict(tokens=tokens, shapes=shapes, routed=routed, copy=COPY_CPU, coll=COLL_CPU, gemm_n=256,
                    hbm_bytes=64 << 20, Es=[2, 4], Ms=[4], Ts=[16], runs=opts.runs or 2, rotate=0.0,
                    dtype=torch.bfloat16)
    quick = mode == "quick"
    return dict(
        tokens=tokens, shapes=shapes, routed=routed, copy=COPY_QUICK if quick else COPY_FULL,
        coll=COLL_QUICK if quick else COLL_FULL, gemm_n=4096 if quick else 8192, hbm_bytes=1 << 30,
        Es=[8, 32] if quick else [8, 16, 32, 64], Ms=[16, 256] if quick else [16, 128, 1024],
        Ts=[4096] if quick else [256, 4096, 16384], runs=opts.runs or (2 if quick else 3),
        rotate=float(FLUSH_BYTES), dtype=torch.bfloat16,
    )


def measure(
    opts: ProfileOptions, argv: Sequence[str] | None = None, stream: Any = None, *, collectives: bool = True
) -> dict[str, Any]:
    """Run every section (module docstring) and return the raw measurement (a JSON-ready dict).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) torch.distributed is initialised from the
    environment, every rank runs the collectives, and only rank 0 goes on to the per-device
    sections (the others return ``{"rank": r}``).
    """
    stream = stream if stream is not None else sys.stderr
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = opts.device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if opts.cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    specs = list(opts.models)
    shapes = distinct_shapes(specs)
    sz = plan_sizes(opts, shapes)
    Es_for = {id(s): [e for e in sz["Es"] if e <= s["max_routed_experts"]] for s in sz["routed"]}
    fp8_why = fp8_probe(dev) if opts.fp8 else "not requested (--no-fp8)"
    kinds = ["bf16"] + (["fp8"] if fp8_why is None else [])
    total = (
        (len(sz["coll"]) if world > 1 and collectives else 0) + 2 + 3 * len(sz["copy"])
        + len(kinds) * len(sz["shapes"]) * len(sz["tokens"])
        + sum(len(Es_for[id(s)]) * len(sz["Ms"]) for s in sz["routed"]) + len(sz["routed"]) * len(sz["Ts"])
    )
    prog = Progress(total, stream)
    timer = _Timer(dev, opts.warmup, opts.reps, sz["runs"], opts.budget_s)
    notes: list[str] = []

    coll: dict[str, Any] = {"note": "one process: collectives need several ranks (run under torchrun)"}
    if world > 1 and collectives:
        import torch.distributed as dist  # noqa: PLC0415

        if not dist.is_initialized():
            dist.init_process_group("nccl" if opts.cuda else "gloo")
        coll = measure_collectives(sz["coll"], dev, opts.reps, prog if rank == 0 else None)
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:
            return {"rank": rank}
    elif world > 1:
        coll = {"note": "collectives not requested"}

    prov = provenance(dev, argv)
    result: dict[str, Any] = {
        "what": "Raw measurements of one device taken by moe-planner profile (kernels/profiler.py).",
        "mode": opts.mode(),
        "provenance": prov,
        "method": method(dev, warmup=opts.warmup, reps=opts.reps, runs=sz["runs"], lead=True, rotate_bytes=sz["rotate"])
        + (f" Soft budget {opts.budget_s:g} s: past it each figure is one run of at most 3 calls, and the grouped"
           " and layer sections are skipped." if opts.budget_s else ""),
        "shapes": [{k: s[k] for k in ("model", "d", "f", "uses", "max_routed_experts", "top_k")} for s in sz["shapes"]],
        "tokens": sz["tokens"],
        "collectives": coll,
        "checks": [],
        "notes": notes,
    }
    result["ceilings"] = measure_ceilings(timer, sz["gemm_n"], sz["hbm_bytes"], sz["dtype"])
    prog.step(f"ceilings GEMM {result['ceilings']['gemm_TFLOPs']:.1f} TFLOP/s", 1)
    prog.step(f"ceilings copy {result['ceilings']['copy_GBps_rw']:.1f} GB/s", 1)
    rows, _, ok = measure_copies(sz["copy"], sz["runs"], 40.0 if opts.cuda else 2.0, None, dev)
    result["copies"] = {"rows": rows, "fixed_cost": fixed_costs(rows), "roundtrip_data_ok": ok}
    prog.step(f"copies {len(rows)} sizes", 3 * len(sz["copy"]))
    if not opts.cuda:
        notes.append("CPU profile: 'copies' are host-to-host copies (no pinned memory without CUDA)")

    ffn_rows: list[dict[str, Any]] = []
    for kind in kinds:
        for s in sz["shapes"]:
            ffn_rows += measure_ffn(s, sz["tokens"], timer, kind, sz["rotate"], prog, result["checks"])
            if opts.cuda:
                torch.cuda.empty_cache()
    result["expert_ffn"] = {"rows": ffn_rows, "dtypes": kinds, "fp8_note": fp8_why}
    grouped: list[dict[str, Any]] = []
    layer: list[dict[str, Any]] = []
    for s in sz["routed"]:
        if timer.over():
            notes.append(f"grouped and layer sections skipped for d={s['d']} f={s['f']}: past the time budget")
            prog.step("grouped skipped", len(Es_for[id(s)]) * len(sz["Ms"]) + len(sz["Ts"]))
            continue
        grouped += measure_grouped(s, Es_for[id(s)], sz["Ms"], timer, sz["dtype"], sz["rotate"], prog, result["checks"])
        layer += measure_layer_ops(s, sz["Ts"], timer, sz["dtype"], prog)
        if opts.cuda:
            torch.cuda.empty_cache()
    result["grouped"] = {"available": hasattr(torch, "_grouped_mm"), "rows": grouped}
    result["layer_ops"] = {"rows": layer}
    result["cut_by_budget"] = timer.cut
    result["elapsed_s"] = time.perf_counter() - timer.t0
    if timer.cut:
        notes.append(f"the time budget of {opts.budget_s:g} s was reached: later figures are single short runs")
    return result
