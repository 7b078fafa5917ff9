"""Per-expert precision under a GPU memory budget (offload mode): tokens/s and accuracy cost at
equal memory, against all-native and all-int4 plans.

For each model (its shipped trace, DeepSeek-V3 a synthetic one; decode batch 1, planned on the
first 75% of the decode steps, scored on the last 25%, as ``benchmarks/offload.py``) and GPU
memory budget, every row gets the same expert budget (:func:`planner.offload.memory_budget`):

- cache search, all native / all int4: :func:`planner.offload.solve_offload` (pinned + LRU,
  prefetch, CPU execution of misses) with every expert in the model's dtype, or in int4 (the same
  model with ``expert_dtype: int4``);
- static ILP, all native / all int4: :mod:`planner.solve.precision` with one precision allowed
  (static resident sets, CPU execution when it finishes first): the same evaluator as the mixed rows;
- mixed ILP: native and int4 allowed, the accuracy cost capped at 25% and 50% of all-int4's.

Accuracy cost (the user's input; :data:`INT4_COST` by default): int4 = 2.88, the % increase of
Mixtral-8x7B's wikitext perplexity with llama.cpp's Q4_0 (4-bit, blocks of 32) over its 8-bit
reference (ikawrakow/mixtral-8x7b-quantized-gguf model card). It is a perplexity figure of one
model and one method, carried over to the others as an illustration: no per-precision accuracy
figure of MC# (arXiv 2510.10962) or QuantMoE-Bench (arXiv 2406.08155) was found by the searches
behind this benchmark (their abstracts give mixed 2.5-bit figures only), so the planner has no
default cost and the benchmark states its own.

The ILP's solve time (model build + HiGHS, per CPU mode) is measured on every row; the issue's
target is <= 5 s for DeepSeek-V3.

    python benchmarks/precision.py            # 4 models (~15 min on 2 cores)
    python benchmarks/precision.py --quick    # qwen3-30b-a3b only, one budget

Prints a markdown table per model and writes benchmarks/results/precision.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CASES = {  # model: GPU memory budgets (GB)
    "qwen3-30b-a3b": (20.0, 30.0),
    "deepseek-v2-lite": (8.0, 12.0),
    "mixtral-8x7b": (40.0,),
    "deepseek-v3": (80.0,),
}
#: % wikitext perplexity increase of Q4_0 over 8-bit, Mixtral-8x7B (module docstring).
INT4_COST = 2.88
CAPS = (0.25, 0.5)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(HERE.parent))
    import numpy as np

    from planner.io import atomic_write_text
    from planner.offload import offload_timing, prepare_offload, solve_offload
    from planner.resolve import resolve_hardware, resolve_model, resolve_trace
    from planner.solve import precision as pc
    from planner.specs.model import ModelSpec

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--int4-cost", type=float, default=INT4_COST)
    ap.add_argument("--time-limit", type=float, default=60.0, help="cache search time limit per plan (s)")
    ap.add_argument("--models", help="comma-separated subset of the models (merged into the results file)")
    args = ap.parse_args(argv)
    cases = {"qwen3-30b-a3b": (20.0,)} if args.quick else CASES
    if args.models:
        cases = {k: CASES[k] for k in args.models.split(",")}
    hw = resolve_hardware("h100-sxm")
    a4 = args.int4_cost
    path = HERE / "results" / "precision.json"
    out: dict = {"hardware": hw.name, "int4_cost": a4, "caps": list(CAPS), "time_limit": args.time_limit, "models": {}}
    if args.models and path.exists():
        out["models"] = json.loads(path.read_text())["models"]
    for name, budgets in cases.items():
        m = resolve_model(name)
        m4 = ModelSpec.model_validate({**m.model_dump(), "expert_dtype": "int4"})
        tr, label, _ = resolve_trace(None, m, 0, None)
        native = m.expert_dtype
        rows_m = []
        for gb in budgets:
            common = dict(gpu_memory_gb=gb, batch=1, seq_len=4096, seed=0, time_limit=args.time_limit, train_fraction=0.75)
            pr = prepare_offload(m, hw, tr, label, **common)
            P = pr.plan_steps
            rows = []
            for tag, model, cost in ((f"cache search, all {native}", m, 0.0), ("cache search, all int4", m4, a4)):
                t0 = time.perf_counter()
                prm = pr if model is m else prepare_offload(model, hw, tr, label, **common)
                p = solve_offload(prm)
                chosen = [n.split(": ", 1)[1] for n in p.predicted.notes if n.startswith("policy chosen")]
                rows.append({"method": tag, "tokens_per_s": p.cache.predicted.tokens_per_s, "accuracy_cost": cost,
                             "hit_rate": p.cache.predicted.hit_rate, "policy": chosen[0] if chosen else "all-resident",
                             "status": p.solver.status, "solve_s": time.perf_counter() - t0})
            tims = {p: offload_timing(m, hw, 1, 4096, p) for p in (native, "int4")}
            specs = [(f"static ILP, all {native}", pc.PrecisionSpec({native: 0.0}, native)),
                     ("static ILP, all int4", pc.PrecisionSpec({"int4": a4}, "int4"))]
            specs += [(f"mixed ILP, cost <= {int(c * 100)}% of int4's", pc.PrecisionSpec({native: 0.0, "int4": a4}, native, c * a4))
                      for c in CAPS]
            for tag, spec in specs:
                t0 = time.perf_counter()
                tl = [tims[p] for p in spec.names]
                sol = pc.solve_precision(pr.counts_SLE[:P], tl, spec, pr.budget.experts, m.expert_params, batch=1,
                                         time_limit=args.time_limit)
                ans = sol.answer
                sim = pc.replay_precision(pr.counts_SLE, ans.resident_LE, ans.precision_LE, tl, sol.config.cpu, record_from=P)
                prec = np.asarray(spec.names)[ans.precision_LE]
                ilp_s = {}
                stats = pc.expert_stats(pr.counts_SLE[:P], tl)
                for cpu in (False, True):
                    a = pc.solve_ilp(stats, tl, spec, pr.budget.experts, m.expert_params, cpu=cpu)
                    ilp_s["cpu" if cpu else "no cpu"] = round(a.time_s, 3)
                rows.append({
                    "method": tag, "tokens_per_s": sim.tokens_per_s, "accuracy_cost": ans.accuracy_cost, "hit_rate": sim.hit_rate,
                    "policy": sol.chosen, "status": ans.status, "solve_s": time.perf_counter() - t0, "ilp_s": ilp_s,
                    "groups": ans.groups, "variables": ans.variables,
                    "resident": {p: int((ans.resident_LE & (prec == p)).sum()) for p in spec.names},
                    "int4_experts": int((prec == "int4").sum()), "resident_gib": ans.resident_bytes / 2**30,
                })
            base = rows[0]["tokens_per_s"]
            for r in rows:
                r["vs_cache_search_native"] = r["tokens_per_s"] / base
            rows_m.append({"gpu_memory_gb": gb, "expert_budget_gib": pr.budget.experts / 2**30, "slots_native": pr.budget.slots,
                           "trace": label, "decode_steps": int(pr.counts_SLE.shape[0]), "planning_steps": P, "rows": rows})
            print(f"\n### {name}, {gb:g} GB (expert budget {pr.budget.experts / 2**30:.1f} GiB, {pr.budget.slots} {native} slots)")
            print("| method | tokens/s | vs all-native search | accuracy cost | hit rate | chosen | ILP s (no cpu / cpu) |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                ilp = f"{r['ilp_s']['no cpu']:.2f} / {r['ilp_s']['cpu']:.2f}" if "ilp_s" in r else ""
                print(f"| {r['method']} | {r['tokens_per_s']:.1f} | {r['vs_cache_search_native']:.2f}× | "
                      f"{r['accuracy_cost']:.2f} | {r['hit_rate']:.3f} | {r['policy']} ({r['status']}) | {ilp} |")
        out["models"][name] = rows_m
    atomic_write_text(path, json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
