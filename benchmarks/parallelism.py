"""Parallelism search and step-time model against published MoE runs, and the search's speed.

    python benchmarks/parallelism.py [--quick] [--out benchmarks/results/parallelism.json]

Each training row fixes what the publication states (degrees, pipeline split, cluster, batch,
sequence length, precision, dispatcher) and compares the prediction of :mod:`planner.cost.step`
(through :func:`planner.solve.parallel.search`, so memory and the rules are checked too) with the
published figure, then runs the search on the same cluster, batch and precision with the degrees
free (the search's own choice, predicted). What the publication does not state is an assumption
written in the row. The model is not tuned per row, and no constant is fitted to a published run:
its constants are the H100 profile (hwprofiles/h100-sxm.json) and the documented, sourced factors
of planner/cost/step.py and planner/cost/layers.py. The published runs are the test.

Then the full search for DeepSeek-V3 on 1024 H100 (128 × 8), timed (target: 10 s on 2 cores).
``--quick`` times the 1024-GPU search once instead of three times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from planner.io import atomic_write_text
from planner.solve.parallel import search
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model

HW = "h100-sxm"


def cluster(nodes: int) -> ClusterSpec:
    return ClusterSpec(hardware=HW, num_nodes=nodes, gpus_per_node=8)


#: Published H100 training runs: (run, model, nodes, global batch, the published degrees,
#: train dtype, dispatcher, metric, published figure, source, assumptions). Each is predicted with
#: its degrees fixed and then with the search's own choice on the same cluster, batch and dtype.
MZ = "Megatron-MoE-ModelZoo (github.com/yanring/Megatron-MoE-ModelZoo)"
MB = "Megatron-Bridge performance summary, 25.11, DGX-H100 (docs/performance-summary.md)"
MC = "Megatron-core MoE README performance table (docs/facts.md §4; figures as quoted in issue 19)"
PUBLISHED = [
    ("Mixtral 8x7B, 64 H100, TP1 EP8 PP4 VPP8 MBS1 GBS256", "mixtral-8x7b", 8, 256,
     dict(tp=1, ep=8, pp=4, vpp=8, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", "TFLOP/s per GPU", 468.0, MC,
     "seq 4096; micro-batch 1 and GBS 256 from Megatron's Mixtral example; recompute searched"),
    ("Mixtral 8x22B, 128 H100, TP2 EP8 PP8 MBS1 GBS256", "mixtral-8x22b", 16, 256,
     dict(tp=2, ep=8, pp=8, vpp=1, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", "TFLOP/s per GPU", 487.7, MC,
     "seq 4096; MBS 1, GBS 256 as the ModelZoo's Mixtral-8x22B config; recompute searched"),
    ("Mixtral 8x22B, 128 H100, TP2 EP8 PP8 MBS1 GBS256 (ModelZoo, dropless)", "mixtral-8x22b", 16, 256,
     dict(tp=2, ep=8, pp=8, vpp=1, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", "TFLOP/s per GPU", 455.0,
     MZ + " best_practice/Mixtral/run_mixtral_8x22B.sh ('around 455TFLOPS for H100')",
     "seq 4096; runtime.conf: TP2 PP8 EP8 VPP1 MBS1 GBS256, alltoall, grouped GEMM; recompute searched"),
    ("Mixtral 8x22B, 128 H100, TP2 EP4 ETP2 PP8 MBS1 GBS256", "mixtral-8x22b", 16, 256,
     dict(tp=2, ep=4, pp=8, vpp=1, cp=1, etp=2, micro_batch=1), "bf16", "alltoall", "TFLOP/s per GPU", 458.3, MC,
     "seq 4096; MBS 1, GBS 256 assumed as above; recompute searched"),
    ("Mixtral 8x22B, 128 H100, TP2 EP8 PP8 VPP7 MBS1 GBS256", "mixtral-8x22b", 16, 256,
     dict(tp=2, ep=8, pp=8, vpp=7, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", "TFLOP/s per GPU", 445.0, MC,
     "seq 4096; MBS 1, GBS 256 assumed as above; recompute searched"),
    ("Mixtral 8x22B, 128 H100, TP4 EP2 ETP4 PP8 VPP7 GBS256", "mixtral-8x22b", 16, 256,
     dict(tp=4, ep=2, pp=8, vpp=7, cp=1, etp=4), "bf16", "alltoall", "TFLOP/s per GPU", None,
     "Megatron-core MoE README (docs/facts.md §4; configuration only)",
     "ETP = TP (Megatron's default then); seq 4096; micro-batch and recompute searched; no published throughput"),
    ("GPT-OSS-120B, 64 H100, BF16, TP1 PP4 EP8 MBS4 GBS512", "gpt-oss-120b", 8, 512,
     dict(tp=1, pp=4, cp=1, vpp=1, ep=8, etp=1, micro_batch=4), "bf16", "alltoall", "tokens/s per GPU", 5630.0, MB,
     "seq 4096; trained in bf16 (the checkpoint's mxfp4 experts are serving's); sliding-window attention priced "
     "as full; force-balanced routing (uniform, as modelled); recompute searched"),
    ("Qwen3-30B-A3B, 16 H100, FP8-CS, TP1 PP2 VPP24 EP8 MBS2 GBS512", "qwen3-30b-a3b", 2, 512,
     dict(tp=1, pp=2, cp=1, vpp=24, ep=8, etp=1, micro_batch=2), "fp8", "alltoall", "tokens/s per GPU", 5275.0, MB,
     "seq 4096; fp8 current scaling (TE tensorwise): fp8 GEMM tables, casts; force-balanced routing; recompute searched"),
    ("Qwen3-235B-A22B, 256 H100, BF16, TP2 PP8 VPP4 EP32 MBS1 GBS2048, DeepEP", "qwen3-235b-a22b", 32, 2048,
     dict(tp=2, pp=8, cp=1, vpp=4, ep=32, etp=1, micro_batch=1), "bf16", "deepep", "TFLOP/s per GPU", 245.0,
     MZ + " best_practice/Qwen3/readme.md (cross-node EP, 19.7 s/step; 276 with 1F1B A2A overlap)",
     "seq 4096; 94 layers over 8 × 4 virtual stages with embedding and loss counted (the run's "
     "--account-for-embedding/loss-in-pipeline-split); EP32 spans 4 nodes (inter-node all-to-all); recompute "
     "selective (the run recomputes norms and activations); force-balanced routing"),
    ("Qwen3-235B-A22B, 256 H100, FP8-CS, TP2 PP8 VPP4 EP32 MBS1", "qwen3-235b-a22b", 32, 2048,
     dict(tp=2, pp=8, cp=1, vpp=4, ep=32, etp=1, micro_batch=1), "fp8", "deepep", "TFLOP/s per GPU", 233.0, MB,
     "seq 4096; the table's row omits the global batch: 2048 assumed (the ModelZoo's); DeepEP dispatcher assumed; "
     "uneven layout and cross-node EP as above"),
    ("DeepSeek-V3, 1024 H100, TP1 PP16 (first 4, last 1) EP64 MBS1 GBS8192, MTP 1, DeepEP", "deepseek-v3", 128, 8192,
     dict(tp=1, pp=16, cp=1, vpp=1, ep=64, etp=1, micro_batch=1, pp_first=4, pp_last=1), "bf16", "deepep",
     "TFLOP/s per GPU", None, MZ + " runtime_configs/benchmarking/runtime.conf (configuration only: no H100 figure published)",
     "seq 4096; one MTP layer on the last stage; EP64 spans 8 nodes; bf16 (the ModelZoo's H100 guide adds an fp8 "
     "blockwise recipe); plannable as published, no published throughput to compare"),
]


def _metric(r, metric: str, gpus: int) -> float:
    return r.best.tflops_per_gpu if metric.startswith("TFLOP") else r.best.tokens_per_s / gpus


def rows() -> list[dict]:
    hw = load_hardware(HW)
    out = []
    for run, name, nodes, gb, fixed, dtype, disp, metric, pub, source, assumptions in PUBLISHED:
        m = load_model(name)
        kw = dict(mode="train", seq_len=4096, global_batch=gb, train_dtype=dtype, dispatcher=disp)
        r = search(m, hw, cluster(nodes), fixed=fixed, **kw)
        own = search(m, hw, cluster(nodes), **kw)
        out.append(dict(
            run=run, source=source, metric=metric, published=pub, predicted=_metric(r, metric, nodes * 8),
            config=r.best.label(), memory_gib=r.best.memory.total_gib if r.best.memory else None,
            search_predicted=_metric(own, metric, nodes * 8), search_config=own.best.label(),
            notes=r.notes, assumptions=f"{assumptions}; {dtype}, {disp} dispatcher",
        ))
    # serving: SGLang DeepSeek-V3 on H100 with PD disaggregation and large-scale EP (LMSYS blog
    # 2025-05-05): 9 decode nodes (EP72) 22.3k output tok/s per node; 3 prefill nodes 52.3k input
    # tok/s per node; 2000-token inputs; 32 redundant experts (EPLB, 288 slots)
    ds = load_model("deepseek-v3")
    r = search(ds, hw, cluster(9), mode="decode", seq_len=2000, redundant=32, fixed=dict(ep=72, tp=1))
    out.append(dict(
        run="DeepSeek-V3 decode, 72 H100 (9 nodes), SGLang DP-attention + EP72, 32 redundant experts",
        source="LMSYS blog 2025-05-05 (large-scale EP on 96 H100)", metric="output tok/s per node", published=22300.0,
        predicted=r.best.tokens_per_s / 9, config=r.best.label(),
        assumptions="context 2000 tokens; batch = the largest power of two per GPU that fits (searched); fp8 experts, "
        "bf16 rest; DeepEP dispatch; uniform routing (EPLB-balanced)",
    ))
    r = search(ds, hw, cluster(3), mode="prefill", seq_len=2000, redundant=32, fixed=dict(ep=24, tp=1),
               global_batch=24 * 8)
    out.append(dict(
        run="DeepSeek-V3 prefill, 24 H100 (3 nodes), SGLang DP-attention + EP24, 32 redundant experts",
        source="same", metric="input tok/s per node", published=52300.0, predicted=r.best.tokens_per_s / 3,
        config=r.best.label(), assumptions="2000-token prompts, 8 per GPU per step (16k tokens, SGLang's chunk size order)",
    ))
    for row in out:
        row["error_pct"] = 100.0 * (row["predicted"] / row["published"] - 1.0) if row["published"] else None
    return out


def summary(res: list[dict]) -> dict:
    """Mean absolute error and worst row over the published training runs."""
    train = [r for r in res if "search_predicted" in r and r["error_pct"] is not None]
    errs = [abs(r["error_pct"]) for r in train]
    return dict(rows=len(train), mae_pct=statistics.mean(errs), worst_pct=max(errs),
                within_20=sum(e <= 20 for e in errs), search_not_slower=sum(
                    r["search_predicted"] >= r["predicted"] * (1 - 1e-9) for r in train))


def search_timing(repeats: int) -> dict:
    hw = load_hardware(HW)
    ds = load_model("deepseek-v3")
    times, r = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = search(ds, hw, cluster(128), mode="train", seq_len=4096, cross_node=True)
        times.append(time.perf_counter() - t0)
    assert r is not None
    t_in = time.perf_counter()
    r_in = search(ds, hw, cluster(128), mode="train", seq_len=4096)
    t_in = time.perf_counter() - t_in
    return dict(
        model="deepseek-v3", gpus=1024, median_s=statistics.median(times), runs=len(times), enumerated=r.enumerated,
        evaluated=r.evaluated, best=r.best.label(), best_tflops=r.best.tflops_per_gpu, rule_counts=r.rule_counts,
        within_node_s=t_in, within_node_best=r_in.best.label(), within_node_tflops=r_in.best.tflops_per_gpu,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="time the 1024-GPU search once")
    ap.add_argument("--out", default="benchmarks/results/parallelism.json")
    args = ap.parse_args()
    res = rows()
    print("| run | metric | published | predicted, as published | error | search's choice | predicted | assumptions |")
    print("|---|---|---:|---:|---:|---|---:|---|")
    for r in res:
        pub = f"{r['published']:,.0f}" if r["published"] else "—"
        err = f"{r['error_pct']:+.1f}%" if r["error_pct"] is not None else "—"
        own = (f"{r['search_config']} | {r['search_predicted']:,.0f}" if "search_config" in r else "— | —")
        print(f"| {r['run']} | {r['metric']} | {pub} | {r['predicted']:,.0f} | {err} | {own} | {r['assumptions']} |")
    s = summary(res)
    print(f"\npublished training runs: {s['rows']}, MAE {s['mae_pct']:.1f}%, worst {s['worst_pct']:.1f}%, "
          f"{s['within_20']} within 20%, search's choice at least as fast in {s['search_not_slower']}")
    t = search_timing(1 if args.quick else 3)
    print()
    print("| search | GPUs | candidates | timed | wall time (median) | chosen | predicted TFLOP/s/GPU |")
    print("|---|---:|---:|---:|---:|---|---:|")
    print(f"| DeepSeek-V3 train, EP may span nodes | {t['gpus']} | {t['enumerated']:,} | {t['evaluated']:,} "
          f"| {t['median_s']:.2f} s ({t['runs']} runs) | {t['best']} | {t['best_tflops']:.0f} |")
    print(f"| DeepSeek-V3 train, TP and EP inside a node | {t['gpus']} | | | {t['within_node_s']:.2f} s "
          f"| {t['within_node_best']} | {t['within_node_tflops']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": res, "summary": s, "search": t}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
