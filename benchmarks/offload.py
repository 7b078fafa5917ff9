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

**Real routing** (``--real``, or ``--real-only``): DeepSeek-V2-Lite-Chat's recorded routing of the
Puffin prompts (``benchmarks/real_traces.py``; arXiv 2508.17137's data), the planner's
``deepseek-v2-lite`` preset, decode batch 1 (the sequences one after another, tokens in ``pos``
order: :func:`planner.traces.steps.decode_steps`), 12 GB and 20 GB. The file's first 400 prompts
(arrival order) are taken; the plan is made on prompts 1-300 and scored on prompts 301-400
(``train_fraction`` 0.75 of the sequences; the held-out prompts are decoded after the planning
ones, so caches start warm). Rows: the plan, the three baselines the search always scores, two
ablations (the per-layer pinned + LRU split without CPU execution, and even LRU with the plan's
CPU rule) and Belady's bound on misses. Writes benchmarks/results/offload-real.json.

    python benchmarks/offload.py --real-only
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
    ap.add_argument("--real", action="store_true", help="also the real-routing section (DeepSeek-V2-Lite, Puffin)")
    ap.add_argument("--real-only", action="store_true", help="only the real-routing section")
    ap.add_argument("--real-out", type=Path, default=HERE / "results" / "offload-real.json")
    args = ap.parse_args(argv)
    hw = load_hardware(args.hardware)
    if args.real_only:
        return real_section(hw, args.real_out)
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
    return real_section(hw, args.real_out) if args.real else 0


REAL_PROMPTS, REAL_TRAIN = 400, 0.75  # prompts 1-300 planned on, 301-400 held out
REAL_BUDGETS = (12.0, 20.0)


def real_section(hw, out_path: Path) -> int:
    """The real-routing table (module docstring)."""
    sys.path.insert(0, str(HERE.parent))
    sys.path.insert(0, str(HERE))
    import numpy as np
    from real_traces import real_trace_path

    from planner.cachesim import CacheConfig
    from planner.io import atomic_write_text
    from planner.offload import belady_bound, evaluate, plan_config, prepare_offload, solve_offload
    from planner.solve.cache import BASELINES, frequency_order, hybrid_candidates
    from planner.specs.model_io import load_model
    from planner.traces import Trace, load_trace

    path = real_trace_path()
    full = load_trace(path)
    first = np.unique(full.seq_id, return_index=True)
    arrival = first[0][np.argsort(first[1], kind="stable")]
    keep = np.isin(full.seq_id, arrival[:REAL_PROMPTS])
    trace = Trace(full.topk_ids[:, keep], full.num_experts, seq_id=full.seq_id[keep], pos=full.pos[keep],
                  source=path.name)
    model = load_model("deepseek-v2-lite")
    rows, cases = [], []
    for gb in REAL_BUDGETS:
        pr = prepare_offload(model, hw, trace, path.name, gpu_memory_gb=gb, batch=1, seq_len=4096, seed=0,
                             time_limit=60.0, train_fraction=REAL_TRAIN)
        t0 = time.perf_counter()
        plan = solve_offload(pr)
        plan_s = time.perf_counter() - t0
        cfg = plan_config(plan, None)
        res = {"plan": evaluate(pr, cfg).summary()}
        base = {k: evaluate(pr, c) for k, c in zip(BASELINES, _baseline_cfgs(pr), strict=True)}
        res.update({k: v.summary() for k, v in base.items()})
        P = pr.plan_steps
        order = frequency_order(pr.counts_SLE[:P])
        hyb = hybrid_candidates(pr.counts_SLE[:P], pr.timing, order, pr.budget.slots, ["off"])
        res["ablation: pinned + LRU split, no CPU execution"] = evaluate(pr, next(iter(hyb.values()))).summary()
        ev = _baseline_cfgs(pr)[0]
        res["ablation: even LRU + the plan's CPU rule"] = evaluate(
            pr, CacheConfig(ev.resident_LE, ev.dynamic_L, "lru", None, cfg.cpu)).summary()
        held = pr.counts_SLE.shape[0] - P
        bel = belady_bound(pr, pr.budget.slots) / held
        ref = {k: res[k] for k in BASELINES}
        for k, r in res.items():
            row = {"gpu_memory_gb": gb, "slots": pr.budget.slots, "method": k, "loads_per_token": r["transfers_per_step"],
                   "cpu_experts_per_token": r["cpu_per_step"], "stall_ms_per_token": r["stall_ms_per_step"],
                   "tokens_per_s": r["tokens_per_s"], "hit_rate": r["hit_rate"]}
            for bk, br in ref.items():
                row[f"loads_vs[{bk}]"] = r["transfers_per_step"] / br["transfers_per_step"] if br["transfers_per_step"] else None
                row[f"stall_vs[{bk}]"] = r["stall_ms_per_step"] / br["stall_ms_per_step"]
            rows.append(row)
        rows.append({"gpu_memory_gb": gb, "slots": pr.budget.slots, "method": "Belady bound (misses, shared slots, warm)",
                     "loads_per_token": bel})
        cases.append({"gpu_memory_gb": gb, "slots": pr.budget.slots, "planning_s": round(plan_s, 1),
                      "solver_s": plan.solver.time_s, "evaluated_on": pr.evaluated_on,
                      "chosen": plan.predicted.notes[-1], "notes": plan.predicted.notes[-3:]})
        print(f"real {gb:g} GB done ({plan_s:.0f} s)", file=sys.stderr, flush=True)
    print(f"\n{hw.name}, DeepSeek-V2-Lite-Chat real routing ({path.name}), decode batch 1: planned on prompts 1-300,"
          f" scored on prompts 301-400 ({cases[0]['evaluated_on']}); loads = H2D expert copies (demand + prefetch)\n")
    print("| GB (slots) | method | loads/token | CPU experts/token | stall ms/token | tokens/s |"
          " loads vs LRU / top-k | stall vs LRU / top-k / top-k+CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "stall_ms_per_token" not in r:
            print(f"| {r['gpu_memory_gb']:g} ({r['slots']}) | {r['method']} | {r['loads_per_token']:.1f} | | | | | |")
            continue
        lv = " / ".join(_ratio(r[f"loads_vs[{k}]"]) for k in BASELINES[:2])
        sv = " / ".join(_ratio(r[f"stall_vs[{k}]"]) for k in BASELINES)
        print(f"| {r['gpu_memory_gb']:g} ({r['slots']}) | {r['method']} | {r['loads_per_token']:.1f} |"
              f" {r['cpu_experts_per_token']:.1f} | {r['stall_ms_per_token']:.2f} | {r['tokens_per_s']:.1f} | {lv} | {sv} |")
    for c in cases:
        print(f"\n{c['gpu_memory_gb']:g} GB: planning {c['planning_s']} s (policy search {c['solver_s']} s); {c['chosen']}")
    atomic_write_text(out_path, json.dumps({"hardware": hw.name, "trace": path.name, "prompts": REAL_PROMPTS,
                                            "train_fraction": REAL_TRAIN, "rows": rows, "cases": cases}, indent=1) + "\n")
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


def _ratio(x) -> str:
    return "—" if x is None else f"{x:.2f}×"


def _baseline_cfgs(pr):
    from planner.solve.cache import baseline_configs

    L, E = pr.model.num_moe_layers, pr.model.num_experts
    return list(baseline_configs(pr.counts_SLE[: pr.plan_steps], L, E, pr.budget.slots).values())


def _config(plan, pr):
    from planner.offload import plan_config

    return plan_config(plan, pr.probs())


if __name__ == "__main__":
    sys.exit(main())
