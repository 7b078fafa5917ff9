"""How much group-level rank locality the synthetic traces hold, and what the placement solver
makes of locality when a trace has it (the analysis behind the placement table's unmet traffic
target).

1. For DeepSeek-V3-shaped routing (256 experts in 8 groups, top-8 within 4 groups, 64 ranks on
   8 nodes) it measures, per layer, the share of inter-node copies (a token's chosen groups not
   on its own node) when groups sit on nodes in order and under the best group↔node bijection
   for that layer (all 8! assignments) — for the generator's default (input mixes redrawn every
   step) and for persistent node-level mixes (``sticky_ranks``, ``rank_groups=8``, ``rank_mix=1``).
   The bijection is scored on the same tokens it is chosen on: an upper bound on what a static
   placement can save.
2. A constructed trace where each token starts on the node that hosts (under a hidden
   permutation) one of the groups it uses at layer 0: EPLB against the solver, held-out steps,
   DeepSeek-V3 with 4 MoE layers on 8 × 8 H100, 64 redundant experts.

    python benchmarks/locality.py        # ~1 minute on 2 cores
"""

from __future__ import annotations

import itertools

import numpy as np

import planner
from planner.api import _simulate, baseline_placement, prepare, solve, summarize
from planner.traces import Trace

PERMS = np.array(list(itertools.permutations(range(8))))  # [40320, 8]


def group_locality(tr: Trace, layer: int) -> tuple[float, float]:
    g = tr.topk_ids[layer] // 32
    chosen = np.zeros((g.shape[0], 8), dtype=bool)
    np.put_along_axis(chosen, g, True, axis=1)
    node = tr.source_rank // 8
    C = np.stack([chosen[node == v].sum(axis=0) for v in range(8)]).astype(float)  # [node, group]
    total = chosen.sum()
    in_order = (total - np.trace(C)) / total
    best = C[np.arange(8)[None, :], PERMS].sum(axis=1).max()  # node v hosts group perm[v]
    return float(in_order), float((total - best) / total)


def part1() -> None:
    print("## 1. Group-level locality (share of a token's chosen groups not on its own node)\n")
    print("| trace | layer | groups in order | best bijection |")
    print("|---|---:|---:|---:|")
    base = dict(num_layers=4, num_experts=256, top_k=8, n_group=8, topk_group=4, num_tokens=4 * 16384,
                tokens_per_step=16384, num_ranks=64, weights=False, seed=0, model_name="deepseek-v3-like")
    for label, extra in (("default (mixes redrawn every step)", {}),
                         ("persistent node-level mixes, rank_mix 1", dict(sticky_ranks=True, rank_groups=8, rank_mix=1.0))):
        tr = planner.synth_trace(**base, **extra)
        for layer in range(tr.num_layers):
            a, b = group_locality(tr, layer)
            print(f"| {label} | {layer} | {a:.3f} | {b:.3f} |")


def part2() -> None:
    print("\n## 2. Constructed locality: tokens start on the node of one of their layer-0 groups\n")
    m = planner.load_model("deepseek-v3").model_copy(update={"num_layers": 7})  # 3 dense + 4 MoE layers
    tr = planner.synth_trace(m, num_tokens=16384 * 8, tokens_per_step=16384, num_ranks=64, weights=False, seed=0)
    rng = np.random.default_rng(0)
    hidden = rng.permutation(8)  # which node hosts which group's tokens: unknown to the planner
    src = hidden[tr.topk_ids[0, :, 0] // 32] * 8 + rng.integers(0, 8, tr.num_tokens)
    tr = Trace(tr.topk_ids, 256, step=tr.step, source_rank=src, source="constructed")
    pr = prepare(m, "h100-sxm", nodes=8, gpus_per_node=8, mode="prefill", trace=tr, redundant_experts=64,
                 train_fraction=0.5, time_limit=60, ep=64, tp=1, pp=1, etp=1)
    eplb_p2l = baseline_placement("eplb", pr.plan_counts_LE.astype(float), m, pr.cluster, pr.parallel, 64)
    e = summarize(_simulate(eplb_p2l, pr.eval_trace, m, pr.hardware, pr.cluster, pr.parallel, pr.dispatch,
                            "same-rank"), pr.evaluated_on, 0.0)
    s = solve(pr, relay="same-rank").predicted
    print("| method | MoE layer ms | inter-node GB/step |")
    print("|---|---:|---:|")
    print(f"| EPLB | {e.moe_layer_ms:.4f} | {e.inter_node_bytes_per_step / 1e9:.3f} |")
    print(f"| placement solver | {s.moe_layer_ms:.4f} | {s.inter_node_bytes_per_step / 1e9:.3f} |")
    print(f"\nsolver vs EPLB: MoE time {s.moe_layer_ms / e.moe_layer_ms - 1:+.1%}, "
          f"inter-node bytes {s.inter_node_bytes_per_step / e.inter_node_bytes_per_step - 1:+.1%}")


if __name__ == "__main__":
    part1()
    part2()
