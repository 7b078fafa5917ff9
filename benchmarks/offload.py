"""Expert offloading at equal GPU memory: the planner's cache against published caches.

For each model (the shipped synthetic trace, in decode shape: batch 1, 2048 decode tokens, planned
on the first 75% of the steps, scored on the last 25%) and GPU memory budget, every method gets
the same expert slots (what the budget leaves after non-expert weights, KV cache, activations and
staging buffers; :func:`planner.offload.memory_budget`) and is replayed through the same
simulator (:mod:`planner.cachesim`) on the held-out steps:

- even LRU: the slots spread evenly over layers as LRU caches (mixtral-offloading);
- even LFU: the same with LFU;
- global top-k: the most frequent (layer, expert) pairs of the planning steps (KTransformers'
  GPU set), and the same with every miss run on the host CPU (KTransformers runs its CPU experts);
- planner: :func:`planner.offload.solve_offload` (DP over layers + policy search: prefetch,
  dynamic slots, CPU execution of misses when it finishes first);
- ablation: the planner's prefetch and CPU policy on the global top-k resident set (what the DP
  allocation over layers adds);
- Belady: the offline optimum of misses (demand copies) with the same slots shared by all layers
  (warm start); the planner's misses are its demand copies plus the experts it ran on the CPU.

    python benchmarks/offload.py            # 3 models, 2 budgets each (~5 min on 2 cores)
    python benchmarks/offload.py --quick    # 1 budget each, 1024 decode tokens

Prints a markdown table and writes benchmarks/results/offload.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = {  # model: GPU memory budgets (GB)
    "qwen3-30b-a3b": (30.0, 45.0),
    "deepseek-v2-lite": (12.0, 20.0),
    "mixtral-8x7b": (40.0, 60.0),
}


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from planner.cachesim import CacheConfig
    from planner.io import atomic_write_text
    from planner.offload import baselines, evaluate, prepare_offload, solve_offload
    from planner.solve.cache import global_topk
    from planner.specs.hardware import load_hardware
    from planner.specs.model_io import load_model
    from planner.traces import default_trace_path, load_trace

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one budget per model, 1024 decode tokens")
    ap.add_argument("--hardware", default="h100-sxm")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "offload.json")
    args = ap.parse_args(argv)
    hw = load_hardware(args.hardware)
    tokens = 1024 if args.quick else 2048
    rows = []
    summary = []
    t_all = time.perf_counter()
    for name, budgets in CASES.items():
        model = load_model(name)
        trace = load_trace(default_trace_path(name))
        for gb in budgets[:1] if args.quick else budgets:
            pr = prepare_offload(model, hw, trace, f"shipped:{name}.npz", gpu_memory_gb=gb, batch=1, seq_len=4096, seed=0,
                                 time_limit=60.0, train_fraction=0.75, decode_tokens=tokens)
            t0 = time.perf_counter()
            res = {k: evaluate(pr, cfg).summary() for k, cfg in baselines(pr).items()}
            plan = solve_offload(pr)
            solve_s = time.perf_counter() - t0
            cp = plan.cache.predicted
            cfg = _config(plan, pr)
            ours = evaluate(pr, cfg).summary()
            # ablation: the planner's prefetch and CPU policy on KTransformers' resident set (same slots)
            pf_slots = cfg.prefetch.max_count if cfg.prefetch is not None else 0
            abl = CacheConfig(global_topk(pr.counts_SLE[: pr.plan_steps], pr.budget.slots - pf_slots),
                              np.zeros(model.num_moe_layers, np.int64), "lru", cfg.prefetch, cfg.cpu)
            res["ablation: global-topk + planner's prefetch/CPU policy"] = evaluate(pr, abl).summary()
            res["planner"] = ours
            lru, top = res["even-lru (mixtral-offloading)"], res["global-topk (KTransformers)"]
            for k, r in res.items():
                rows.append({"model": name, "gpu_memory_gb": gb, "slots": pr.budget.slots, "method": k, **r})
            summary.append({
                "model": name, "gpu_memory_gb": gb, "slots": pr.budget.slots,
                "copies_vs_even_lru": ours["transfers"] / lru["transfers"] - 1,
                "copies_vs_global_topk": ours["transfers"] / top["transfers"] - 1,
                "stall_vs_even_lru": ours["stall_ms_per_step"] / lru["stall_ms_per_step"] - 1,
                "stall_vs_global_topk": ours["stall_ms_per_step"] / top["stall_ms_per_step"] - 1,
                "stall_vs_topk_cpu": ours["stall_ms_per_step"] / res["global-topk, misses on CPU"]["stall_ms_per_step"] - 1,
                "belady_demand_copies_per_step": cp.belady_transfers_per_step,
                "planner_misses_per_step": ours["demand_per_step"] + ours["cpu_per_step"],
                "topk_misses_per_step": top["demand_per_step"],
                "chosen": plan.predicted.notes[-1], "solve_s": round(solve_s, 1),
            })
            print(f"{name} {gb:g} GB done ({solve_s:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{hw.name}, decode batch 1, held-out 25% of {tokens} decode tokens; copies = demand + prefetch per step\n")
    print("| model | GB | slots | method | copies/step | demand | prefetch (acc.) | on CPU | hit rate | stall ms/step | tok/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = f" ({100 * r['prefetch_accuracy']:.0f}%)" if r["prefetch_accuracy"] is not None else ""
        print(f"| {r['model']} | {r['gpu_memory_gb']:g} | {r['slots']} | {r['method']} | {r['transfers_per_step']:.1f} |"
              f" {r['demand_per_step']:.1f} | {r['prefetch_per_step']:.1f}{acc} | {r['cpu_per_step']:.1f} |"
              f" {100 * r['hit_rate']:.1f}% | {r['stall_ms_per_step']:.2f} | {r['tokens_per_s']:.1f} |")
    print("\n| model | GB | copies vs even LRU | copies vs global top-k | stall vs even LRU | stall vs global top-k |"
          " stall vs top-k + CPU | misses: planner / top-k / Belady | chosen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        print(f"| {s['model']} | {s['gpu_memory_gb']:g} | {100 * s['copies_vs_even_lru']:+.1f}% |"
              f" {100 * s['copies_vs_global_topk']:+.1f}% | {100 * s['stall_vs_even_lru']:+.1f}% |"
              f" {100 * s['stall_vs_global_topk']:+.1f}% | {100 * s['stall_vs_topk_cpu']:+.1f}% |"
              f" {s['planner_misses_per_step']:.1f} / {s['topk_misses_per_step']:.1f} /"
              f" {s['belady_demand_copies_per_step']:.1f} |"
              f" {s['chosen'].split(': ', 1)[-1]} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    atomic_write_text(args.out, json.dumps({"hardware": hw.name, "decode_tokens": tokens, "rows": rows,
                                            "summary": summary}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _config(plan, pr):
    from planner.offload import plan_config

    return plan_config(plan, pr.probs())


if __name__ == "__main__":
    sys.exit(main())
