"""Baseline placements side by side on the shipped traces, scored on held-out steps.

For each shipped trace (model) and cluster shape, every baseline plans on the first 75% of
steps and is scored by the simulator on the remaining steps: predicted MoE time per step,
load imbalance (max/mean GPU tokens) and bytes moved. Also times ``planner.plan`` itself
(the embedded default) and the synthetic generator at a DeepSeek-V3-like size (48 layers × 8,192
tokens × top-8 of 128 experts, best of 3; target ≤ 2 s) — the README's performance table quotes them.

    python benchmarks/baselines.py            # prints a Markdown table
"""

from __future__ import annotations

import time

import planner

CASES = [
    # model, nodes, gpus_per_node, redundant experts
    ("qwen3-30b-a3b", 1, 8, 0),
    ("qwen3-30b-a3b", 2, 8, 16),
    ("deepseek-v2-lite", 1, 8, 0),
    ("deepseek-v2-lite", 2, 8, 16),
    ("mixtral-8x7b", 1, 8, 0),
]


def main() -> None:
    t0 = time.perf_counter()
    planner.plan()
    default_s = time.perf_counter() - t0
    print(f"planner.plan() on the embedded default: {default_s:.2f} s wall")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        planner.synth_trace(num_layers=48, num_experts=128, top_k=8, num_tokens=8192, tokens_per_step=512, seed=0)
        best = min(best, time.perf_counter() - t0)
    print(f"synth_trace, 48 layers × 8,192 tokens × top-8 of 128 experts: {best:.2f} s (best of 3)\n")
    print("| model | GPUs | redundant | baseline | MoE ms/step (held-out) | imbalance | NVLink MB/step | inter-node MB/step |")
    print("|---|---|---|---|---|---|---|---|")
    for model, nodes, gpn, red in CASES:
        for base in ("contiguous", "round-robin", "eplb"):
            if red and base != "eplb":
                continue
            p = planner.plan(model, nodes=nodes, gpus_per_node=gpn, baseline=base, redundant_experts=red)
            pr = p.predicted
            print(
                f"| {model} | {nodes}×{gpn} | {red} | {base} | {pr.moe_time_per_step_ms:.3f} | {pr.imbalance:.3f} "
                f"| {pr.intra_node_bytes_per_step / 1e6:.1f} | {pr.inter_node_bytes_per_step / 1e6:.1f} |"
            )


if __name__ == "__main__":
    main()
