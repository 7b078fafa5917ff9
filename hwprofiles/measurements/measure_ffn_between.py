"""Measure bf16 expert-FFN times at token counts BETWEEN the powers of two (needs a CUDA GPU).

Why: the shipped tables (``../shared/data/*/expert_ffn_bf16.json``) hold M = 1, 2, 4, ..., 16384
only, so an interpolation scored on them is scored on the points it was fitted to. These figures
(M = 3, 6, 12, ..., 12288 and a few odd counts) are held out of every profile: the cost-model
benchmark (``benchmarks/cost_model.py``) scores its interpolation against them.

Method: that of the shared file's ``what`` field: for each figure the minimum over R runs, each
run the median of CUDA-event-timed repeats (``triton.testing.do_bench``, warmup 20 ms, rep
80 ms, which flushes the L2 with a 256 MB memset before every repeat); weights rotated among
copies totalling >= 256 MB (at least 2) so that L2 does not hold them; runs of one shape are
interleaved over all M (run 1 for every M, then run 2, ...). FFN = ``x[M,d] @ W13[d,2f]``,
``SiLU(gate)·up``, ``a[M,f] @ W2[f,d]``, all bf16 (fp32 accumulation), eager torch. Inputs random
normal, weights scaled by 1/sqrt(fan_in). The powers of two are measured again in the same
session, so that drift against the shipped tables can be read off.

Usage (on the GPU machine): ``python3 hwprofiles/measurements/measure_ffn_between.py OUT.json
[--budget-s 290]``. Phases run in priority order and the file is rewritten after every shape, so
a run cut short still leaves everything measured so far.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SEED_SHAPES = [  # the seven shapes of the shipped tables (hwprofiles/h100-sxm.json)
    ("mixtral-8x7b", 4096, 14336),
    ("deepseek-v3", 7168, 2048),
    ("qwen3-30b-a3b", 2048, 768),
    ("qwen3-235b-a22b", 4096, 1536),
    ("olmoe-1b-7b", 2048, 1024),
    ("deepseek-v2-lite", 2048, 1408),
    ("gpt-oss-120b", 2880, 2880),
]
OTHER_SHAPES = [  # further preset FFN shapes (routed, shared and dense), not in the shipped tables
    ("deepseek-v2", 5120, 1536),
    ("deepseek-v2-lite:shared", 2048, 2816),
    ("qwen1.5-moe-a2.7b:shared", 2048, 5632),
    ("deepseek-v2:shared", 5120, 3072),
    ("dbrx", 6144, 10752),
    ("mixtral-8x22b", 6144, 16384),
    ("deepseek-v2-lite:dense", 2048, 10944),
    ("deepseek-v2:dense", 5120, 12288),
    ("deepseek-v3:dense", 7168, 18432),
]
MID = [3, 6, 12, 24, 48, 96, 192, 384, 768, 1536, 3072, 6144, 12288]
POW2 = [2**i for i in range(15)]
ODD = [5, 20, 100, 300, 700, 1000, 2500, 5000, 10000]
L2_ROTATE_BYTES = 256 << 20


def _ffn_fn(x: torch.Tensor, w13: list[torch.Tensor], w2: list[torch.Tensor], f: int):
    """The FFN on ``x``, each call with the next copy of the weights (L2 never holds them)."""
    state = [0]

    def fn() -> torch.Tensor:
        i = state[0] = (state[0] + 1) % len(w13)
        h = x @ w13[i]
        a = F.silu(h[:, :f]) * h[:, f:]
        return a @ w2[i]

    return fn


def ffn_bench(d: int, f: int, ms: list[int], runs: int, deadline: float) -> dict[int, list[float]]:
    """Run-interleaved timings {M: [median ms of each run]} of one shape."""
    expert_bytes = 3 * d * f * 2
    copies = max(2, math.ceil(L2_ROTATE_BYTES / expert_bytes))
    g = torch.Generator(device="cuda").manual_seed(d * 100003 + f)
    w13 = [torch.randn(d, 2 * f, device="cuda", dtype=torch.bfloat16, generator=g) / math.sqrt(d) for _ in range(copies)]
    w2 = [torch.randn(f, d, device="cuda", dtype=torch.bfloat16, generator=g) / math.sqrt(f) for _ in range(copies)]
    xs = {m: torch.randn(m, d, device="cuda", dtype=torch.bfloat16, generator=g) for m in ms}
    out: dict[int, list[float]] = {m: [] for m in ms}
    for _ in range(runs):
        for m in ms:
            if time.time() > deadline:
                break
            fn = _ffn_fn(xs[m], w13, w2, f)
            out[m].append(float(do_bench(fn, warmup=20, rep=80, return_mode="median")))
    return {m: v for m, v in out.items() if v}


def check(d: int, f: int) -> float:
    """‖bf16 FFN − float64 reference‖ / ‖reference‖ at M = 8 (fresh random inputs)."""
    x = torch.randn(8, d, device="cuda", dtype=torch.bfloat16)
    w13 = torch.randn(d, 2 * f, device="cuda", dtype=torch.bfloat16) / math.sqrt(d)
    w2 = torch.randn(f, d, device="cuda", dtype=torch.bfloat16) / math.sqrt(f)
    h = x @ w13
    y = (F.silu(h[:, :f]) * h[:, f:]) @ w2
    x64, w13_64, w2_64 = x.double(), w13.double(), w2.double()
    h64 = x64 @ w13_64
    ref = (F.silu(h64[:, :f]) * h64[:, f:]) @ w2_64
    assert torch.isfinite(y).all()
    return float((y.double() - ref).norm() / ref.norm())


def provenance(argv: list[str]) -> dict:
    p = torch.cuda.get_device_properties(0)
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        smi = ""
    import triton

    return {
        "device": torch.cuda.get_device_name(0),
        "nvidia_smi_output": smi,
        "driver_version": smi.split(",")[-1].strip() if smi else None,
        "sms": p.multi_processor_count,
        "mem_gib": p.total_memory / 2**30,
        "l2_mb": getattr(p, "L2_cache_size", 0) / 2**20,
        "torch": torch.__version__,
        "cuda_version_torch": torch.version.cuda,
        "triton": triton.__version__,
        "python": sys.version.split()[0],
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command_line": " ".join(["python3", *argv]),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--budget-s", type=float, default=290.0)
    args = ap.parse_args(argv[1:])
    t0 = time.time()
    deadline = t0 + args.budget_s
    torch.backends.cuda.matmul.allow_tf32 = False
    doc = {
        "what": __doc__.split("\n\n")[0],
        "method": __doc__.split("\n\n")[2].replace("\n", " "),
        "provenance": provenance(argv),
        "ops": {"ffn_ms": "x[M,d] @ W13[d,2f], SiLU(gate)*up, a[M,f] @ W2[f,d], bf16, eager (min over runs of the median)"},
        "checks": [],
        "rows": [],
        "completed_through": None,
    }
    phases = [
        ("mid", SEED_SHAPES, MID, 4),
        ("pow2-recheck", SEED_SHAPES, POW2, 3),
        ("mid-other-shapes", OTHER_SHAPES, MID, 3),
        ("odd", SEED_SHAPES, ODD, 3),
    ]
    complete = True
    for phase, shapes, ms, runs in phases:
        for model, d, f in shapes:
            if time.time() > deadline:
                complete = False
                break
            if phase in ("mid", "mid-other-shapes"):
                doc["checks"].append({"d": d, "f": f, "M": 8, "rel_err_vs_float64": check(d, f)})
            ts = time.time()
            res = ffn_bench(d, f, ms, runs, deadline)
            torch.cuda.empty_cache()
            for m, v in res.items():
                doc["rows"].append({
                    "phase": phase, "model": model, "d": d, "f": f, "M": m, "dtype": "bf16",
                    "ffn_ms": min(v), "runs_ms": v, "runs": len(v),
                })
            print(f"{phase:18} {model:26} d={d:5} f={f:5}: {len(res)} M, {time.time() - ts:5.1f} s", flush=True)
            doc["completed_through"] = f"{phase}:{model}"
            doc["elapsed_s"] = time.time() - t0
            with open(args.out, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
    if complete and time.time() <= deadline:
        doc["completed_through"] = "done"
    doc["elapsed_s"] = time.time() - t0
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
    print(f"wrote {args.out}: {len(doc['rows'])} rows in {doc['elapsed_s']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
