"""Pieces shared by the profiler and the timers: preset shapes, weight rotation, copy timing.

Used by :mod:`.timing` and by :mod:`.profiler` (``moe-planner profile``); only torch, pyyaml and
the standard library are imported.

- **Shapes** (:func:`distinct_shapes`): the distinct (d, f) FFN shapes of a list of model specs
  (routed experts, shared experts fused into one FFN, dense-first layers).
- **Rotation** (:class:`Rotator`, :func:`n_copies`): consecutive calls read different copies
  of the weights, together at least ``rotate_bytes`` (five times the H100's 50 MB L2 by
  default), so the L2 never holds the next call's weights.
- **Copies** (:func:`measure_copies`): host-to-device (pinned and pageable) and device-to-host
  (pinned) copies over sizes, each copy bracketed by CUDA events, median of repeats, minimum
  over runs; :func:`fixed_costs` turns them into a fixed cost per copy. On a CPU-only machine
  the same sizes are timed as host-to-host ``copy_`` with ``time.perf_counter`` (there is no
  pinned memory without CUDA: "pinned" and "pageable" are the same host memory).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

# ----------------------------------------------------------------------------------------------
# Model shapes
# ----------------------------------------------------------------------------------------------

MODELS_DIR = Path(__file__).resolve().parents[1] / "planner" / "data" / "models"

# Copied from planner/data/models/*.yaml (the fields read here), for an install without the folder.
FALLBACK_MODELS: list[dict[str, Any]] = [
    {"name": "dbrx", "hidden_size": 6144, "num_experts": 16, "expert_intermediate_size": 10752},
    {"name": "deepseek-v2-lite", "hidden_size": 2048, "num_experts": 64,
     "expert_intermediate_size": 1408, "num_shared_experts": 2, "first_k_dense": 1,
     "dense_intermediate_size": 10944},
    {"name": "deepseek-v2", "hidden_size": 5120, "num_experts": 160,
     "expert_intermediate_size": 1536, "num_shared_experts": 2, "first_k_dense": 1,
     "dense_intermediate_size": 12288},
    {"name": "deepseek-v3", "hidden_size": 7168, "num_experts": 256,
     "expert_intermediate_size": 2048, "num_shared_experts": 1, "first_k_dense": 3,
     "dense_intermediate_size": 18432},
    {"name": "gpt-oss-120b", "hidden_size": 2880, "num_experts": 128,
     "expert_intermediate_size": 2880},
    {"name": "gpt-oss-20b", "hidden_size": 2880, "num_experts": 32,
     "expert_intermediate_size": 2880},
    {"name": "kimi-k2", "hidden_size": 7168, "num_experts": 384,
     "expert_intermediate_size": 2048, "num_shared_experts": 1, "first_k_dense": 1,
     "dense_intermediate_size": 18432},
    {"name": "mixtral-8x22b", "hidden_size": 6144, "num_experts": 8,
     "expert_intermediate_size": 16384},
    {"name": "mixtral-8x7b", "hidden_size": 4096, "num_experts": 8,
     "expert_intermediate_size": 14336},
    {"name": "olmoe-1b-7b", "hidden_size": 2048, "num_experts": 64,
     "expert_intermediate_size": 1024},
    {"name": "qwen1.5-moe-a2.7b", "hidden_size": 2048, "num_experts": 60,
     "expert_intermediate_size": 1408, "num_shared_experts": 1,
     "shared_expert_intermediate_size": 5632},
    {"name": "qwen3-235b-a22b", "hidden_size": 4096, "num_experts": 128,
     "expert_intermediate_size": 1536},
    {"name": "qwen3-30b-a3b", "hidden_size": 2048, "num_experts": 128,
     "expert_intermediate_size": 768},
]

# Preferred label of a shape shared by several presets: the one the shipped H100 and H200 tables
# (bf16 expert-FFN timings of 2026-11-23) use, so rows can be matched by name too.
PREFERRED_LABEL = ["mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b", "qwen3-235b-a22b",
                   "olmoe-1b-7b", "deepseek-v2-lite", "gpt-oss-120b", "qwen1.5-moe-a2.7b"]


def load_models() -> tuple[list[dict[str, Any]], str]:
    """Model specs (dicts with the yaml fields) and where they came from."""
    files = sorted(MODELS_DIR.glob("*.yaml"))
    if not files:
        return FALLBACK_MODELS, f"fallback list in kernels/measure_common.py ({MODELS_DIR} empty)"
    specs = [yaml.safe_load(p.read_text()) for p in files]
    return specs, "planner/data/models/*.yaml"


def distinct_shapes(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct (d, f) FFN shapes: routed experts, shared experts (fused), dense-first layers.

    A preset's shared experts run as one FFN of width ``shared_expert_intermediate_size`` when
    given (Qwen2-MoE), else ``num_shared_experts * expert_intermediate_size`` (DeepSeek fuses its
    shared experts into one MLP that wide). Each shape records the presets and roles using it
    (``uses``: ``"name:role"``), the largest routed-expert count and top-k among them (for the
    grouped-GEMM and permute sections) and a ``model`` label; sorted by d·f.
    """
    shapes: dict[tuple[int, int], dict[str, Any]] = {}

    def add(d: int, f: int, who: str, role: str, num_experts: int, top_k: int) -> None:
        s = shapes.setdefault((d, f), {"d": d, "f": f, "uses": [], "max_routed_experts": 0, "top_k": 0})
        s["uses"].append(f"{who}:{role}")
        if role == "routed":
            s["max_routed_experts"] = max(s["max_routed_experts"], num_experts)
            s["top_k"] = max(s["top_k"], top_k)

    for m in specs:
        d, name = int(m["hidden_size"]), m["name"]
        add(d, int(m["expert_intermediate_size"]), name, "routed", int(m["num_experts"]), int(m.get("top_k") or 0))
        n_shared = int(m.get("num_shared_experts") or 0)
        if n_shared:
            fs = m.get("shared_expert_intermediate_size") or n_shared * m["expert_intermediate_size"]
            add(d, int(fs), name, "shared", 0, 0)
        if int(m.get("first_k_dense") or 0) and m.get("dense_intermediate_size"):
            add(d, int(m["dense_intermediate_size"]), name, "dense", 0, 0)

    out = []
    for s in shapes.values():
        names = [u.split(":")[0] for u in s["uses"]]
        routed = [u.split(":")[0] for u in s["uses"] if u.endswith(":routed")]
        label = next((p for p in PREFERRED_LABEL if p in routed), None)
        s["model"] = label or (routed[0] if routed else names[0])
        if not routed:
            s["model"] = s["uses"][0]  # e.g. "deepseek-v3:dense"
        out.append(s)
    out.sort(key=lambda s: (s["d"] * s["f"], s["d"]))
    return out


# ----------------------------------------------------------------------------------------------
# Weight rotation
# ----------------------------------------------------------------------------------------------


@dataclass
class Rotator:
    """Cycles through copies so that consecutive calls read different memory."""

    copies: list[Any]
    i: int = field(default=0)

    def next(self) -> Any:
        c = self.copies[self.i % len(self.copies)]
        self.i += 1
        return c


def n_copies(bytes_one: float, rotate_bytes: float) -> int:
    """Copies needed so that together they hold at least ``rotate_bytes`` (at least 2 when
    rotating at all, 1 when ``rotate_bytes`` is 0)."""
    if rotate_bytes <= 0:
        return 1
    return max(2, math.ceil(rotate_bytes / max(bytes_one, 1.0)))


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 on the CPU (NaN when ``out`` is not finite)."""
    out64 = out.detach().double().cpu()
    ref64 = ref.detach().double().cpu()
    if not torch.isfinite(out64).all():
        return float("nan")
    den = torch.linalg.vector_norm(ref64)
    return float(torch.linalg.vector_norm(out64 - ref64) / den) if den > 0 else 0.0


# ----------------------------------------------------------------------------------------------
# fp8 (e4m3) expert FFN through torch._scaled_mm
# ----------------------------------------------------------------------------------------------

FP8 = getattr(torch, "float8_e4m3fn", None)


def ffn_fp8(x8_Md, w13_2fd, w2_df, f, one, s13, s2):
    """fp8 FFN: x pre-quantised, h cast to e4m3 with a static per-tensor scale of 1."""
    g_M2f = torch._scaled_mm(x8_Md, w13_2fd.t(), scale_a=one, scale_b=s13, out_dtype=torch.bfloat16)
    h_Mf = (F.silu(g_M2f[:, :f]) * g_M2f[:, f:]).to(FP8)
    return torch._scaled_mm(h_Mf, w2_df.t(), scale_a=one, scale_b=s2, out_dtype=torch.bfloat16)


def fp8_probe(device: str = "cuda") -> str | None:
    """None when ``torch._scaled_mm`` runs an e4m3 product with per-tensor scales, else why not."""
    if FP8 is None or not hasattr(torch, "_scaled_mm"):
        return "torch has no float8_e4m3fn or no _scaled_mm"
    try:
        a = torch.randn(1, 64, device=device).to(FP8)
        b = torch.randn(32, 64, device=device).to(FP8)
        one = torch.ones((), device=device)
        y = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        ref = a.float() @ b.float().t()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        if rel_err(y, ref) > 1e-2:
            return f"torch._scaled_mm gave a wrong answer (rel err {rel_err(y, ref):.3g})"
    except Exception as exc:  # noqa: BLE001
        return f"torch._scaled_mm failed: {type(exc).__name__}: {exc}"[:400]
    return None


# ----------------------------------------------------------------------------------------------
# Host <-> device copies
# ----------------------------------------------------------------------------------------------


def time_copy(dst: torch.Tensor, src: torch.Tensor, reps: int) -> float:
    """Median ms of ``reps`` copies: CUDA events on the current stream around each copy when
    either side is on a GPU, else ``time.perf_counter``."""
    if dst.is_cuda or src.is_cuda:
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for a, b in ev:
            a.record()
            dst.copy_(src, non_blocking=True)
            b.record()
        torch.cuda.synchronize()
        return statistics.median(a.elapsed_time(b) for a, b in ev)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def measure_copies(
    sizes: list[int], runs: int, target_ms: float, log: Any = None, device: str = "cuda"
) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
    """H2D pinned / pageable and D2H pinned at each size: GB/s from min over runs of medians.

    Returns ``(rows, fixed_costs(rows), roundtrip_ok)``; ``log(msg)`` reports progress.
    ``device='cpu'`` times host-to-host copies (module docstring).
    """
    cuda = torch.device(device).type == "cuda"
    big = max(sizes)
    pattern = torch.randint(0, 256, (2**20,), dtype=torch.uint8)
    host_pinned = torch.empty(big, dtype=torch.uint8, pin_memory=cuda)
    host_pageable = torch.empty(big, dtype=torch.uint8)
    for h in (host_pinned, host_pageable):
        flat = h.view(-1)
        n_full = big // 2**20
        if n_full:
            flat[: n_full * 2**20].view(n_full, 2**20).copy_(pattern.expand(n_full, -1))  # non-zero data, cheaply
        if big % 2**20:
            flat[n_full * 2**20 :].copy_(pattern[: big % 2**20])
    host_out = torch.empty(big, dtype=torch.uint8, pin_memory=cuda)
    dev_buf = torch.empty(big, dtype=torch.uint8, device=device)
    dev_buf.copy_(host_pinned)
    if cuda:
        torch.cuda.synchronize()
    kinds = {
        "h2d_pinned": lambda n: (dev_buf[:n], host_pinned[:n]),
        "h2d_pageable": lambda n: (dev_buf[:n], host_pageable[:n]),
        "d2h_pinned": lambda n: (host_out[:n], dev_buf[:n]),
    }
    rows: list[dict[str, Any]] = []
    for kind, pick in kinds.items():
        for n in sizes:
            dst, src = pick(n)
            dst.copy_(src, non_blocking=cuda)  # warm-up
            if cuda:
                torch.cuda.synchronize()
            est = time_copy(dst, src, 3)
            reps = int(min(200, max(5, target_ms / max(est, 1e-3))))
            ts = [time_copy(dst, src, reps) for _ in range(runs)]
            ms = max(min(ts), 1e-6)
            rows.append({"kind": kind, "bytes": n, "ms": ms, "GBps": n / (ms * 1e-3) / 1e9,
                         "runs": runs, "reps_per_run": reps})
        if log is not None:
            log(f"copies {kind}: " + ", ".join(
                f"{r['bytes'] >> 10}K {r['GBps']:.1f} GB/s" for r in rows if r["kind"] == kind))
    # Verify the last D2H brought back what H2D sent.
    k = min(big, 2**20)
    ok = bool(torch.equal(host_out[:k], host_pinned[:k]))
    return rows, fixed_costs(rows), ok


def fixed_costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Fixed cost per copy (µs) for each kind of copy, two ways.

    ``fixed_us_fit_4KB_1MB``: intercept of a least-squares line t = a + bytes * b through the
    points up to 1 MB. ``fixed_us_beyond_peak``: median over the points up to 64 KB of
    t - bytes / peak, where peak is the best GB/s this kind reached at any size.
    """
    fixed = {}
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        pts = [(r["bytes"], r["ms"] * 1e3) for r in mine if r["bytes"] <= 2**20]
        peak = max(r["GBps"] for r in mine)
        if not pts:
            fixed[kind] = {"fixed_us_fit_4KB_1MB": None, "fixed_us_beyond_peak": None, "peak_GBps": peak,
                           "t_4KB_us": None}
            continue
        n = len(pts)
        mx = sum(p[0] for p in pts) / n
        my = sum(p[1] for p in pts) / n
        sxx = sum((p[0] - mx) ** 2 for p in pts)
        b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
        small = [t - nb / (peak * 1e3) for nb, t in pts if nb <= 64 << 10]
        fixed[kind] = {"fixed_us_fit_4KB_1MB": my - b * mx,
                       "fixed_us_beyond_peak": statistics.median(small) if small else None,
                       "peak_GBps": peak,
                       "t_4KB_us": next((t for nb, t in pts if nb == 4 << 10), None)}
    return fixed
