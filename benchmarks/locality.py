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
3. What moving single experts or adding replicas on other nodes can save, per layer, in remote
   nodes per token (DeepEP's inter-node copies) on held-out steps, starting from EPLB's node sets
   (and, for contrast, on the same routing without groups: any 8 of the 256 experts):
   (i) the solver's stage 1b (:mod:`planner.solve.nodeswap`: best-improvement swaps of two
   experts between nodes on the exact distinct remote nodes per planning token, node loads kept
   at or below EPLB's largest), run to convergence;
   (ii) each node's 8 spare slots given greedily to replicas of other nodes' experts, counting a
   token's copy as saved when every expert it picks on that node is replicated on its own —
   tokens of other nodes that would draw such replicas are ignored, so (ii) is optimistic.

    python benchmarks/locality.py        # ~2 minutes on 2 cores
"""

from __future__ import annotations

import itertools

import numpy as np

import planner
from planner.api import prepare, solve
from planner.score import baseline_placement, simulate_stage, summarize
from planner.solve import baselines
from planner.solve.nodeswap import copies_of, swap_experts
from planner.solve.xnode import pick_remote
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


def ds_trace(num_layers: int, steps: int, groups: bool = True, **extra) -> Trace:
    """DeepSeek-V3-shaped routing (256 experts, 8 groups, top-8 in 4; without ``groups`` any 8 of
    256), 64 ranks, 16k-token steps."""
    return planner.synth_trace(num_layers=num_layers, num_experts=256, top_k=8, n_group=8 if groups else None,
                               topk_group=4 if groups else None, num_tokens=steps * 16384, tokens_per_step=16384,
                               num_ranks=64, weights=False, seed=0, model_name="deepseek-v3-like", **extra)


def part1() -> None:
    print("## 1. Group-level locality (share of a token's chosen groups not on its own node)\n")
    print("| trace | layer | groups in order | best bijection |")
    print("|---|---:|---:|---:|")
    for label, extra in (("default (mixes redrawn every step)", {}),
                         ("persistent node-level mixes, rank_mix 1", dict(sticky_ranks=True, rank_groups=8, rank_mix=1.0))):
        tr = ds_trace(4, 4, **extra)
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
    e = summarize(simulate_stage(eplb_p2l, pr.eval_trace, m, pr.hardware, pr.cluster, pr.parallel, pr.dispatch,
                            "same-rank"), pr.evaluated_on, 0.0)
    s = solve(pr, relay="same-rank").predicted
    print("| method | MoE layer ms | inter-node GB/step |")
    print("|---|---:|---:|")
    print(f"| EPLB | {e.moe_layer_ms:.4f} | {e.inter_node_bytes_per_step / 1e9:.3f} |")
    print(f"| placement solver | {s.moe_layer_ms:.4f} | {s.inter_node_bytes_per_step / 1e9:.3f} |")
    print(f"\nsolver vs EPLB: MoE time {s.moe_layer_ms / e.moe_layer_ms - 1:+.1%}, "
          f"inter-node bytes {s.inter_node_bytes_per_step / e.inter_node_bytes_per_step - 1:+.1%}")


def remote_nodes(ids: np.ndarray, node_E: np.ndarray, src_node: np.ndarray, rep_NE: np.ndarray | None = None) -> float:
    """Mean distinct remote nodes per token (a replica on the token's node serves it there)."""
    nd = node_E[ids]
    if rep_NE is not None:
        nd = np.where(rep_NE[src_node[:, None], ids], src_node[:, None], nd)
    return copies_of(nd, src_node) / ids.shape[0]


def replica_cover(ids: np.ndarray, src_node: np.ndarray, node_E: np.ndarray, per_node: int) -> np.ndarray:
    """Greedy replicas of other nodes' experts, up to ``per_node`` on each node (the solver's
    :func:`planner.solve.xnode.pick_remote`; optimistic here, see 3.ii)."""
    rep = np.zeros((8, node_E.size), dtype=bool)
    for v in range(8):
        rep[v, pick_remote(ids[src_node == v], node_E, v, per_node, 8)] = True
    return rep


def part3() -> None:
    print("\n## 3. Remote nodes per token from EPLB's node sets (held-out steps)\n")
    print("| trace | layer | EPLB | (i) best swaps | swaps taken | (ii) + 8 replicas per node (optimistic) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, extra in (("default", {}),
                         ("persistent node-level mixes", dict(sticky_ranks=True, rank_groups=8)),
                         ("same, rank_mix 1, domain_spread 2.5",
                          dict(sticky_ranks=True, rank_groups=8, rank_mix=1.0, domain_spread=2.5)),
                         ("no routing groups, default", dict(groups=False)),
                         ("no routing groups, persistent node-level mixes",
                          dict(groups=False, sticky_ranks=True, rank_groups=8))):
        tr = ds_trace(2, 8, **extra)
        plan_half = tr.step_index < tr.num_steps // 2
        src = tr.source_rank // 8
        for layer in range(tr.num_layers):
            ids = tr.topk_ids[layer]
            w = np.bincount(ids[plan_half].ravel(), minlength=256).astype(float)
            p2l = baselines.eplb(w[None], 320, 8 if extra.get("groups", True) else 1, 8, 64)[0]
            node_E = np.zeros(256, dtype=np.int64)
            node_E[p2l[::-1]] = (np.arange(320) // 40)[::-1]
            sub = np.flatnonzero(plan_half)[::4]  # every 4th planning token
            swapped, info = swap_experts(ids[sub], src[sub], node_E, w, 8, max_rounds=200,
                                         max_load=np.bincount(node_E, weights=w, minlength=8).max())
            n = info["swaps"]
            rep = replica_cover(ids[sub], src[sub], node_E, 8)
            held = ~plan_half
            e0 = remote_nodes(ids[held], node_E, src[held])
            print(f"| {label} | {layer} | {e0:.3f} | {remote_nodes(ids[held], swapped, src[held]):.3f} | {n} "
                  f"| {remote_nodes(ids[held], node_E, src[held], rep):.3f} |")


if __name__ == "__main__":
    part1()
    part2()
    part3()
