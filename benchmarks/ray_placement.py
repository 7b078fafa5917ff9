"""Placement's layers solved on Ray workers (planner.ray_map, planner.solve.layer_map): wall time of
``solve_placement`` on Kimi-K2, 8 × 8 H100, 64 redundant slots (benchmarks/placement.py case (c):
synthetic trace of 12 steps of 16,384 tokens, planned on half) in one process, with 1 Ray worker
and with ``--workers`` (4) Ray workers on a local ``ray.init(num_cpus=workers)``; the three
placements must be equal (the script fails otherwise).

    python benchmarks/ray_placement.py [--workers 4] [--quick] [--time-limit 60] [--repeat 2]

Stages 1b-4 (expert swaps between nodes, replicas and GPUs inside each node; one task per layer)
run on the workers; stage 1's start (EPLB's node sets, MILPs where blocks allow), the candidates'
scoring on the simulator and the bound stay in the driver. The measured
machine's cores bound the speed-up (a 2-core VM gives at most 2×, whatever the worker count).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import planner
from planner.api import placement_inputs, prepare
from planner.ray_map import ray_map
from planner.solve.placement import solve_placement
from planner.specs.model_io import load_model


def problem(quick: bool):
    m = load_model("kimi-k2")
    tr = planner.synth_trace(m, num_tokens=(4 if quick else 12) * 16384, tokens_per_step=16384, num_ranks=64,
                             weights=False, seed=0)
    pr = prepare(m, "h100-sxm", nodes=8, gpus_per_node=8, mode="prefill", trace=tr, ep=64, etp=1,
                 redundant_experts=64, train_fraction=0.5, tp=1, pp=1, tokens_per_step=16384)
    return placement_inputs(pr, "same-rank")


def timed(inp, time_limit, repeat, map_layers=None):
    """The result and the shortest wall time of ``repeat`` solves."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        res = solve_placement(inp, time_limit=time_limit, map_layers=map_layers)
        best = min(best, time.perf_counter() - t0)
    return res, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="4 steps instead of 12")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--repeat", type=int, default=2, help="solves per run; the shortest wall time is shown")
    args = ap.parse_args()
    import ray

    inp = problem(args.quick)
    print(f"Kimi-K2, 8x8 H100, R=64: {inp.num_layers} MoE layers, {inp.ids_LTk.shape[1]} planning tokens, "
          f"{os.cpu_count()} cores")
    one, t_one = timed(inp, args.time_limit, args.repeat)
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = [("one process", one, t_one)]
    for w in sorted({1, args.workers}):
        res, t = timed(inp, args.time_limit, args.repeat, ray_map(w))
        rows.append((f"Ray, {w} worker{'s' if w > 1 else ''}", res, t))
    print("| run | wall s | objective ms | chosen | status | same placement |")
    print("|---|---|---|---|---|---|")
    for name, res, t in rows:
        same = np.array_equal(res.phy2log_LP, one.phy2log_LP) and res.objective == one.objective
        print(f"| {name} | {t:.1f} | {res.objective:.3f} | {res.chosen} | {res.status} | {'yes' if same else 'NO'} |")
        if not same:
            raise SystemExit(f"{name}: the placement differs from the one-process placement")
    ray.shutdown()
    if any(res.status == "time_limit" for _, res, _ in rows):  # a safety stop depends on the clock
        raise SystemExit("the time limit cut a solve short, so the runs did not do the same work: raise --time-limit")


if __name__ == "__main__":
    main()
