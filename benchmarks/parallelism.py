"""Parallelism search and step-time model against published MoE runs, and the search's speed.

    python benchmarks/parallelism.py [--quick] [--out benchmarks/results/parallelism.json]

Each training row fixes what the publication states (degrees, pipeline split, cluster, batch,
sequence length, precision, dispatcher, recompute) and compares the prediction of
:mod:`planner.cost.step` (through :func:`planner.solve.parallel.search`, so memory and the rules
are checked too) with the published figure, then runs the search on the same cluster, batch,
precision and dispatcher with the degrees free (the search's own choice, predicted). What the
publication does not state is an assumption written in the row; a setting the planner cannot
express is priced with the nearest one it has (``exact`` false, the substitution written in the
row) or, where there is none, shown as not plannable. A recompute the publication's recipe uses
but the planner's memory model refuses is searched instead, and the row says so. The model is not
tuned per row, and no constant is fitted to a published run: its constants are the H100 profile
(hwprofiles/h100-sxm.json) and the documented, sourced factors of planner/cost/step.py and
planner/cost/layers.py. The published runs are the test.

Megatron-Bridge publishes the same configuration again with each NeMo release; the figures of
identical configurations move between releases, and that spread (max / min − 1) is reported: it
bounds how closely any model can match "the published run".

Then the full search for DeepSeek-V3 on 1024 H100 (128 × 8), timed (target: 10 s on 2 cores), also
with Megatron's combined 1F1B priced both ways for every candidate that can run it.
``--quick`` times the 1024-GPU search once instead of three times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from planner.errors import InfeasibleError
from planner.io import atomic_write_text
from planner.solve.parallel import search
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model

HW = "h100-sxm"
TOK = "tokens/s per GPU"
TFL = "TFLOP/s per GPU"


def cluster(nodes: int) -> ClusterSpec:
    return ClusterSpec(hardware=HW, num_nodes=nodes, gpus_per_node=8)


def _row(run: str, model: str, nodes: int, gb: int, fixed: dict, dtype: str, disp: str, metric: str,
         pub: float | None, source: str, assumptions: str, **extra) -> dict:
    """One published H100 training run (``extra``: release, group, exact, legacy, alt, not_plannable,
    published_tflops)."""
    return dict(run=run, model=model, nodes=nodes, gb=gb, fixed=fixed, dtype=dtype, disp=disp, metric=metric,
                published=pub, source=source, assumptions=assumptions, **extra)


# ---- sources --------------------------------------------------------------------------------
MZ = "Megatron-MoE-ModelZoo (github.com/yanring/Megatron-MoE-ModelZoo)"
MC = "Megatron-core MoE README performance table (docs/facts.md §4; figures as quoted in issue 19)"
#: Megatron-Bridge (github.com/NVIDIA-NeMo/Megatron-Bridge) docs/performance-summary-archive.md,
#: the DGX-H100 table of each NeMo container's section (snapshot 067f987df0, 2026-08-22; the
#: current docs/performance-summary.md, 26.08, has no H100 row). Recipes: scripts/performance of
#: the commit that published each table (below), cited per row.
BRIDGE = "github.com/NVIDIA-NeMo/Megatron-Bridge docs/performance-summary-archive.md, NeMo {} container, DGX-H100 table"
RECIPE = {  # the commit that added each release's table; its scripts/performance is the recipe cited
    "25.09": "fa0315ae2", "25.11": "97ad8cc6f", "26.02": "c0b9a0003", "26.02.01": "cfeddcd94",
    "26.04": "74695a06d", "26.04.01": "21d102f5e", "26.06": "63b08b397",
}
NAMES = {"qwen3-30b-a3b": "Qwen3-30B-A3B", "qwen3-235b-a22b": "Qwen3-235B-A22B", "gpt-oss-120b": "GPT-OSS-120B",
         "deepseek-v3": "DeepSeek-V3"}
FORCE = "force-balanced routing (the archive's note), uniform as modelled"
DROP = ("token-drop (apply_moe_token_drop: capacity factor 1.0, padded to capacity, alltoall): every expert runs "
        "exactly its capacity, the work of uniform routing, priced as uniform")
CS = "fp8 = TE current scaling (tensorwise), the recipe's fp8_cs"
P2509 = ("no precision column in 25.09: fp8 current scaling, read from its note on the figures in parentheses "
         "(the 25.11 table writes such pairs 'FP8-CS (FP8-MX)')")
NONE_RC = "the recipe's recompute: none"


def bridge(release: str, model: str, gpus: int, prec: str, gbs: int, mbs: int, tp: int, pp: int, vp: int, ep: int,
           tokens: float, tflops: str, *, dtype: str, disp: str, recipe: str, drop: bool = False,
           recompute: str | None = "none", exact: bool = True, alt: dict | None = None, **extra) -> dict:
    """A Megatron-Bridge DGX-H100 row as published (seq 4096, CP 1, ETP 1, FSDP 0), priced in tokens/s
    per GPU (the table's Model TFLOP/s follows Megatron-Bridge's FLOP count, not the planner's)."""
    vps = f" VP{vp}" if vp > 1 else ""
    run = (f"{NAMES[model]}, {gpus} H100, {prec}, TP{tp} PP{pp}{vps} EP{ep} MBS{mbs} GBS{gbs}"
           f"{', token-drop' if drop else ''} (NeMo {release})")
    fixed = dict(tp=tp, pp=pp, cp=1, vpp=vp, ep=ep, etp=1, micro_batch=mbs)
    if recompute is not None:
        fixed["recompute"] = recompute
    group = f"{model} {gpus} GPUs fp8={dtype == 'fp8'} GBS{gbs} MBS{mbs} TP{tp} PP{pp} VP{vp} EP{ep}"
    head = f"seq 4096; published TFLOP/s {tflops}; recipe: Megatron-Bridge @{RECIPE[release]} {recipe}"
    return _row(run, model, gpus // 8, gbs, fixed, dtype, disp, TOK, tokens, BRIDGE.format(release), head,
                release=release, group=group + (" token-drop" if drop else " dropless"), degrees=group, exact=exact,
                alt=alt, **extra)


Q3 = "scripts/performance/configs/qwen/qwen3_workload_base_configs.py, qwen3_llm_pretrain.py"
OSS = "scripts/performance/configs/gpt_oss/gpt_oss_workload_base_configs.py, gpt_oss_llm_pretrain.py"
OSS_NOTE = (f"alltoall (the GPT-OSS provider's default); recompute_modules layernorm, moe_act (elementwise, not "
            f"priced: recompute none asked); {FORCE}; trained in bf16 (the checkpoint's mxfp4 experts are "
            f"serving's); sliding-window attention priced as full")
Q235_NOTE = (f"alltoall (moe_token_dispatcher_type set to alltoall for H100) with moe_a2a_overlap (combined 1F1B, "
             f"priced: a2a_overlap on); {NONE_RC}; 94 layers over 8 × 4 virtual stages with embedding and loss counted; "
             f"EP32 spans 4 nodes (inter-node all-to-all); {FORCE}")
Q30_EP16 = (f"EP16 PP1, flex dispatcher with the HybridEP backend (NVLink domain 8, so RDMA across the 2 nodes): "
            f"priced with DeepEP, the nearest the planner has; moe_a2a_overlap off; {NONE_RC}; EP16 spans 2 nodes; "
            f"{FORCE}; {CS}")


#: Published H100 training runs. Each is predicted with its degrees fixed and then with the search's
#: own choice on the same cluster, batch, dtype and dispatcher. ``legacy``: the nine rows with a
#: figure of the table before the Megatron-Bridge archive was added (for continuity).
PUBLISHED = [
    _row("Mixtral 8x7B, 64 H100, TP1 EP8 PP4 VPP8 MBS1 GBS256", "mixtral-8x7b", 8, 256,
         dict(tp=1, ep=8, pp=4, vpp=8, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", TFL, 468.0, MC,
         "seq 4096; micro-batch 1 and GBS 256 from Megatron's Mixtral example; recompute searched", legacy=True),
    _row("Mixtral 8x22B, 128 H100, TP2 EP8 PP8 MBS1 GBS256", "mixtral-8x22b", 16, 256,
         dict(tp=2, ep=8, pp=8, vpp=1, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", TFL, 487.7, MC,
         "seq 4096; MBS 1, GBS 256 as the ModelZoo's Mixtral-8x22B config; recompute searched", legacy=True),
    _row("Mixtral 8x22B, 128 H100, TP2 EP8 PP8 MBS1 GBS256 (ModelZoo, dropless)", "mixtral-8x22b", 16, 256,
         dict(tp=2, ep=8, pp=8, vpp=1, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", TFL, 455.0,
         MZ + " best_practice/Mixtral/run_mixtral_8x22B.sh ('around 455TFLOPS for H100')",
         "seq 4096; runtime.conf: TP2 PP8 EP8 VPP1 MBS1 GBS256, alltoall, grouped GEMM; recompute searched",
         legacy=True),
    _row("Mixtral 8x22B, 128 H100, TP2 EP4 ETP2 PP8 MBS1 GBS256", "mixtral-8x22b", 16, 256,
         dict(tp=2, ep=4, pp=8, vpp=1, cp=1, etp=2, micro_batch=1), "bf16", "alltoall", TFL, 458.3, MC,
         "seq 4096; MBS 1, GBS 256 assumed as above; recompute searched", legacy=True),
    _row("Mixtral 8x22B, 128 H100, TP2 EP8 PP8 VPP7 MBS1 GBS256", "mixtral-8x22b", 16, 256,
         dict(tp=2, ep=8, pp=8, vpp=7, cp=1, etp=1, micro_batch=1), "bf16", "alltoall", TFL, 445.0, MC,
         "seq 4096; MBS 1, GBS 256 assumed as above; recompute searched", legacy=True),
    _row("Mixtral 8x22B, 128 H100, TP4 EP2 ETP4 PP8 VPP7 GBS256", "mixtral-8x22b", 16, 256,
         dict(tp=4, ep=2, pp=8, vpp=7, cp=1, etp=4), "bf16", "alltoall", TFL, None,
         "Megatron-core MoE README (docs/facts.md §4; configuration only)",
         "ETP = TP (Megatron's default then); seq 4096; micro-batch and recompute searched; no published throughput"),
    _row("Qwen3-235B-A22B, 256 H100, BF16, TP2 PP8 VPP4 EP32 MBS1 GBS2048, DeepEP", "qwen3-235b-a22b", 32, 2048,
         dict(tp=2, pp=8, cp=1, vpp=4, ep=32, etp=1, micro_batch=1), "bf16", "deepep", TFL, 245.0,
         MZ + " best_practice/Qwen3/readme.md (cross-node EP, 19.7 s/step; 276 with 1F1B A2A overlap)",
         "seq 4096; 94 layers over 8 × 4 virtual stages with embedding and loss counted (the run's "
         "--account-for-embedding/loss-in-pipeline-split); EP32 spans 4 nodes (inter-node all-to-all); recompute "
         "selective (the run recomputes norms and activations); force-balanced routing", legacy=True),
    _row("Qwen3-235B-A22B, 256 H100, BF16, TP2 PP8 VPP4 EP32 MBS1 GBS2048, DeepEP, 1F1B A2A overlap", "qwen3-235b-a22b",
         32, 2048, dict(tp=2, pp=8, cp=1, vpp=4, ep=32, etp=1, micro_batch=1), "bf16", "deepep", TFL, 276.0,
         MZ + " best_practice/Qwen3/readme.md (the row above with 1F1B A2A overlap: 276)",
         "the row above with --overlap-moe-expert-parallel-comm (a2a_overlap on); same assumptions", overlap=True),
    _row("DeepSeek-V3, 1024 H100, TP1 PP16 (first 4, last 1) EP64 MBS1 GBS8192, MTP 1, DeepEP", "deepseek-v3", 128, 8192,
         dict(tp=1, pp=16, cp=1, vpp=1, ep=64, etp=1, micro_batch=1, pp_first=4, pp_last=1), "bf16", "deepep", TFL,
         None, MZ + " runtime_configs/benchmarking/runtime.conf (configuration only: no figure published)",
         "seq 4096; one MTP layer on the last stage; EP64 spans 8 nodes; bf16 (the ModelZoo's H100 guide adds an fp8 "
         "blockwise recipe); plannable as published; the H100 figure is Megatron-Bridge's 25.09 row below"),
    # ---- Megatron-Bridge, NeMo 25.09 (no precision column; see P2509) ----
    bridge("25.09", "deepseek-v3", 1024, "FP8-CS", 8192, 1, 2, 8, 4, 64, 1297, "338 (330 blockwise)",
           dtype="fp8", disp="deepep", recompute=None, exact=False, alt=dict(recompute="full"), overlap=True,
           recipe="scripts/performance/run_script.py, configs/deepseek/deepseek_v3_llm_pretrain.yaml: dropless, flex "
           "dispatcher with DeepEP and force-balanced routing on H100; layout Et|(tt|)*30mL, its 'm' one MTP layer (the "
           "model file's mtp_layers 1; the planner's own PP8 VP4 layout is the same); recompute_modules mla_up_proj, "
           "mlp: not one of none / selective / full, so searched, and full in 'alt'; 1F1B all-to-all overlap "
           f"(overlap_moe_expert_parallel_comm) priced: a2a_overlap on; overlap_grad_reduce off; EP64 spans 8 nodes; {P2509}; {CS}"),
    _row("DeepSeek-V3, 1024 H100, FP8 blockwise, TP2 PP8 VP4 EP64 MBS1 GBS8192 (NeMo 25.09)", "deepseek-v3", 128,
         8192, dict(tp=2, pp=8, cp=1, vpp=4, ep=64, etp=1, micro_batch=1), "fp8", "deepep", TFL, 330.0,
         BRIDGE.format("25.09"), "the figure in parentheses of the row above",
         release="25.09", not_plannable="FP8 blockwise (128×128 weights, 1×128 activations): the planner's fp8 is "
         "tensorwise current scaling (the row above); only TFLOP/s in Megatron-Bridge's FLOP count is published"),
    bridge("25.09", "qwen3-30b-a3b", 16, "FP8-CS", 512, 2, 1, 2, 24, 8, 10494, "241", dtype="fp8", disp="alltoall",
           drop=True, exact=False,
           recipe="scripts/performance/configs/qwen3/qwen3_30b_a3b_llm_pretrain.yaml (h100: vp 24; mbs 2 for fp8_cs, "
           f"1 for bf16 — the table's MBS 2 is the fp8_cs run), run_script.py; {DROP}; {NONE_RC}; {P2509}; {CS}"),
    bridge("25.09", "qwen3-235b-a22b", 256, "FP8-CS", 2048, 1, 2, 8, 4, 32, 1204, "178", dtype="fp8",
           disp="alltoall", drop=True, exact=False,
           recipe=f"scripts/performance/configs/qwen3/qwen3_235b_a22b_llm_pretrain.yaml, run_script.py; {DROP}; "
           f"{NONE_RC}; 94 layers over 8 × 4 virtual stages; EP32 spans 4 nodes; {P2509}; {CS}"),
    # ---- 25.11 (three rows of the table before the archive; the 25.11 section is now in the archive) ----
    bridge("25.11", "gpt-oss-120b", 64, "BF16", 512, 4, 1, 4, 1, 8, 5630, "153", dtype="bf16", disp="alltoall",
           legacy=True, recipe=f"{OSS} (H100: PP4 EP8 GBS 512, MBS 1 — the table says 4, and its GA 2 fits "
           f"neither: 512 / (4 × 16) = 8); the table's MBS 4 priced; {OSS_NOTE}"),
    bridge("25.11", "qwen3-30b-a3b", 16, "FP8-CS", 512, 2, 1, 2, 24, 8, 5275, "121", dtype="fp8", disp="alltoall",
           legacy=True, overlap=True,
           recipe=f"{Q3} (H100 FP8_CS: PP2 VP12 MBS1 GBS512, alltoall with moe_a2a_overlap, priced; the table's "
           f"VP24 MBS2 are the 25.09 recipe's, so probably carried over): the table's priced; {NONE_RC}; {FORCE}; {CS}"),
    bridge("25.11", "qwen3-235b-a22b", 256, "FP8-CS", 2048, 1, 2, 8, 4, 32, 1575, "233", dtype="fp8",
           disp="alltoall", legacy=True, overlap=True,
           recipe=f"{Q3} (H100 FP8_CS: TP2 PP8 VP4 EP32 GBS2048, no flex backend: the Qwen3 provider's alltoall); "
           f"{Q235_NOTE}; {CS}; this row was TFLOP/s 233 with DeepEP assumed before the recipe was read"),
    # ---- 26.02 / 26.02.01 (same degrees; the 26.02.01 figures are the patch container's) ----
    *[bridge(rel, "qwen3-30b-a3b", 16, "FP8", 1024, 1, 1, 2, 12, 8, tok, tfl, dtype="fp8", disp="deepep",
             overlap=True,
             recipe=f"{Q3}: the table's degrees are the H100 recipe of 2026-02-13 (c4cc63bac: PP2 VP12 GBS1024, flex "
             f"with DeepEP, moe_a2a_overlap, priced); from 2026-02-23 (4a6450755) the recipe is EP16 PP1 HybridEP"
             f"{note}; {NONE_RC}; {FORCE}; {CS}")
      for rel, tok, tfl, note in (
          ("26.02", 5113, "118", ""),
          ("26.02.01", 9058, "208", ", and 9,058 is within 2% of the EP16 rows of 26.04-26.06: this table's degrees "
           "are probably carried over from 26.02"))],
    *[bridge(rel, "qwen3-235b-a22b", 256, "FP8", 8192, 1, 2, 8, 4, 32, tok, tfl, dtype="fp8", disp="alltoall",
             overlap=True, recipe=f"{Q3} (H100 FP8_CS V2: V1 with GBS 8192); {Q235_NOTE}; {CS}")
      for rel, tok, tfl in (("26.02", 1633, "242"), ("26.02.01", 1611, "238"), ("26.04", 1686, "250"),
                            ("26.04.01", 1712, "253"))],
    *[bridge(rel, "gpt-oss-120b", 64, "BF16", 1280, 1, 1, 4, 1, 8, tok, tfl, dtype="bf16", disp="alltoall",
             recipe=f"{OSS} (H100 BF16 V2: PP4 EP8 MBS1 GBS1280); {OSS_NOTE}")
      for rel, tok, tfl in (("26.02", 5993, "163"), ("26.02.01", 5984, "163"), ("26.04", 5810, "158"),
                            ("26.04.01", 5824, "158"))],
    # ---- 26.04 / 26.04.01 / 26.06: Qwen3-30B-A3B on EP16 (26.06.01 and 26.08 have no H100 row) ----
    *[bridge(rel, "qwen3-30b-a3b", 16, "FP8", 1024, 1, 1, 1, 1, 16, tok, tfl, dtype="fp8", disp="deepep",
             exact=False, recipe=f"{Q3} (H100 FP8_CS V1); {Q30_EP16}")
      for rel, tok, tfl in (("26.04", 8901, "205"), ("26.04.01", 8960, "206"), ("26.06", 8826, "203"))],
]


def _metric(r, metric: str, gpus: int) -> float:
    return r.best.tflops_per_gpu if metric.startswith("TFLOP") else r.best.tokens_per_s / gpus


def _fixed_search(m, hw, nodes: int, fixed: dict, kw: dict) -> tuple[object, str]:
    """The search with ``fixed``; a recipe's recompute the memory model refuses is searched instead
    (returned: the result and what was given up, or '')."""
    try:
        return search(m, hw, cluster(nodes), fixed=fixed, **kw), ""
    except InfeasibleError as e:
        if "recompute" not in fixed:
            raise
        free = {k: v for k, v in fixed.items() if k != "recompute"}
        r = search(m, hw, cluster(nodes), fixed=free, **kw)
        need = str(e).split(" needs ", 1)[-1].split(" per GPU", 1)[0]
        return r, (f"recompute {fixed['recompute']} refused by the planner's memory model (needs {need}/GPU): "
                   f"searched, {r.best.recompute} chosen")


def rows() -> list[dict]:
    hw = load_hardware(HW)
    out, own_cache = [], {}
    for p in PUBLISHED:
        base = dict(run=p["run"], source=p["source"], metric=p["metric"], published=p["published"],
                    release=p.get("release"), group=p.get("group"), degrees=p.get("degrees"),
                    exact=p.get("exact", True), legacy=p.get("legacy", False))
        if p.get("not_plannable"):
            out.append(dict(base, predicted=None, not_plannable=p["not_plannable"], assumptions=p["assumptions"]))
            continue
        m, nodes, gpus = load_model(p["model"]), p["nodes"], p["nodes"] * 8
        kw = dict(mode="train", seq_len=4096, global_batch=p["gb"], train_dtype=p["dtype"], dispatcher=p["disp"],
                  a2a_overlap="on" if p.get("overlap") else "off")
        r, gave_up = _fixed_search(m, hw, nodes, p["fixed"], kw)
        key = (p["model"], nodes, p["gb"], p["dtype"], p["disp"], kw["a2a_overlap"])
        if key not in own_cache:
            own_cache[key] = search(m, hw, cluster(nodes), **kw)
        own = own_cache[key]
        text = f"{p['assumptions']}; {p['dtype']}, {p['disp']} dispatcher" + (", a2a overlap" if p.get("overlap") else "")
        if gave_up:
            text += f"; {gave_up}"
        row = dict(base, predicted=_metric(r, p["metric"], gpus), config=r.best.label(),
                   memory_gib=r.best.memory.total_gib if r.best.memory else None,
                   search_predicted=_metric(own, p["metric"], gpus), search_config=own.best.label(),
                   notes=r.notes, recompute_searched=bool(gave_up))
        fx = p["fixed"]
        if row["search_predicted"] < row["predicted"] * 0.99 and fx.get("ep", 1) * fx.get("etp", 1) > 8:
            # the published EP spans nodes, which the search keeps in a node unless told: --cross-node
            x = search(m, hw, cluster(nodes), cross_node=True, **kw)
            row.update(search_cross_node_predicted=_metric(x, p["metric"], gpus), search_cross_node_config=x.best.label())
        if p.get("alt"):
            a, _ = _fixed_search(m, hw, nodes, {**p["fixed"], **p["alt"]}, kw)
            fig = _metric(a, p["metric"], gpus)
            row["alt"] = dict(fixed=p["alt"], predicted=fig)
            alt = ", ".join(f"{k} {v}" for k, v in p["alt"].items())
            text += f"; with {alt}: {fig:,.0f} ({100 * (fig / p['published'] - 1):+.1f}%)"
        row["assumptions"] = text
        out.append(row)
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
        ok = row["published"] and row["predicted"] is not None
        row["error_pct"] = 100.0 * (row["predicted"] / row["published"] - 1.0) if ok else None
    return out


def _errors(rows_: list[dict]) -> dict:
    errs = [abs(r["error_pct"]) for r in rows_]
    if not errs:
        return dict(rows=0)
    worst = max(rows_, key=lambda r: abs(r["error_pct"]))
    return dict(rows=len(errs), mae_pct=statistics.mean(errs), worst_pct=worst["error_pct"], worst_run=worst["run"],
                within_10=sum(e <= 10 for e in errs), within_20=sum(e <= 20 for e in errs))


def spreads(res: list[dict], key: str) -> list[dict]:
    """Published figures of rows sharing ``key`` (identical published configuration, or the same
    degrees with token-drop and dropless) across releases: max / min − 1, and the floor it puts under
    any one prediction's worst error over the group, (max − min) / (max + min) (at the prediction
    2 / (1 / min + 1 / max), equally far below the one and above the other)."""
    groups: dict[str, list[dict]] = {}
    for r in res:
        if r.get(key) and r["published"]:
            groups.setdefault(r[key], []).append(r)
    out = []
    for k, rs in groups.items():
        if len(rs) > 1:
            figs = [r["published"] for r in rs]
            out.append(dict(config=k, releases=[r["release"] for r in rs], published=figs,
                            spread_pct=100.0 * (max(figs) / min(figs) - 1.0),
                            floor_pct=100.0 * (max(figs) - min(figs)) / (max(figs) + min(figs)),
                            mixed=len({r["group"] for r in rs}) > 1))
    return out


def summary(res: list[dict]) -> dict:
    """Errors over the published training runs: all rows with a figure, those priced exactly as
    published, the nine legacy rows; the release-to-release spread of the published figures."""
    train = [r for r in res if "search_predicted" in r and r["error_pct"] is not None]
    same = spreads(res, "group")
    models = sorted({r["run"].split(",")[0] for r in train})
    return dict(
        all=_errors(train), exact=_errors([r for r in train if r["exact"]]),
        legacy=_errors([r for r in train if r["legacy"]]),
        per_model={m: _errors([r for r in train if r["run"].split(",")[0] == m]) for m in models},
        recompute_refused=sum(r["recompute_searched"] for r in train),
        search_slower=[dict(run=r["run"], search_vs_published_pct=100.0 * (r["search_predicted"] / r["predicted"] - 1),
                            cross_node_pct=100.0 * (r["search_cross_node_predicted"] / r["predicted"] - 1)
                            if "search_cross_node_predicted" in r else None, cross_node_config=r.get("search_cross_node_config"))
                       for r in train if r["search_predicted"] < r["predicted"] * (1 - 1e-9)],
        not_plannable=[dict(run=r["run"], reason=r["not_plannable"]) for r in res if r.get("not_plannable")],
        search_not_slower=sum(r["search_predicted"] >= r["predicted"] * (1 - 1e-9) for r in train),
        search_within_tie=sum(r["search_predicted"] >= r["predicted"] * (1 - 0.01 - 1e-9) for r in train),
        spread_identical=same, spread_identical_max_pct=max((s["spread_pct"] for s in same), default=None),
        spread_degrees=[s for s in spreads(res, "degrees") if s["mixed"]],
    )


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
    t_ov = time.perf_counter()  # every candidate Megatron can overlap priced both ways
    r_ov = search(ds, hw, cluster(128), mode="train", seq_len=4096, cross_node=True, a2a_overlap="auto")
    t_ov = time.perf_counter() - t_ov
    return dict(
        overlap_s=t_ov, overlap_evaluated=r_ov.evaluated, overlap_best=r_ov.best.label(),
        overlap_tflops=r_ov.best.tflops_per_gpu,
        model="deepseek-v3", gpus=1024, median_s=statistics.median(times), runs=len(times), enumerated=r.enumerated,
        evaluated=r.evaluated, best=r.best.label(), best_tflops=r.best.tflops_per_gpu, rule_counts=r.rule_counts,
        within_node_s=t_in, within_node_best=r_in.best.label(), within_node_tflops=r_in.best.tflops_per_gpu,
    )


def _line(name: str, e: dict) -> str:
    if not e.get("rows"):
        return f"{name}: none"
    return (f"{name}: {e['rows']} rows, MAE {e['mae_pct']:.1f}%, worst {e['worst_pct']:+.1f}% ({e['worst_run']}), "
            f"{e['within_10']} within 10%, {e['within_20']} within 20%")


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
        if r.get("not_plannable"):
            print(f"| {r['run']} | {r['metric']} | {pub} | not plannable | — | — | — | {r['not_plannable']} |")
            continue
        own = (f"{r['search_config']} | {r['search_predicted']:,.0f}" if "search_config" in r else "— | —")
        print(f"| {r['run']} | {r['metric']} | {pub} | {r['predicted']:,.0f} | {err} | {own} | {r['assumptions']} |")
    s = summary(res)
    print()
    print(_line("all published training runs with a figure", s["all"]))
    print(_line("without a substituted setting (dispatcher, token-drop, recompute module list)", s["exact"]))
    print(_line("the 9 rows of the earlier table", s["legacy"]))
    for m, e in s["per_model"].items():
        print(_line(f"  {m}", e))
    print(f"the recipe's recompute refused by the memory model (searched instead) in {s['recompute_refused']} rows")
    print(f"search's choice at least as fast in {s['search_not_slower']} of {s['all']['rows']} "
          f"({s['search_within_tie']} within the 1% tie)")
    for x in s["search_slower"]:
        xn = (f" (its EP spans nodes; with cross_node the search chooses {x['cross_node_config']}: "
              f"{x['cross_node_pct']:+.1f}%)") if x["cross_node_pct"] is not None else ""
        print(f"  slower: {x['run']}: {x['search_vs_published_pct']:+.1f}%{xn}")
    for n in s["not_plannable"]:
        print(f"not plannable: {n['run']}: {n['reason']}")
    print("\nrelease-to-release spread of the published figures (max / min - 1):")
    for sp in s["spread_identical"]:
        print(f"  identical: {sp['config']}: {sp['published']} ({', '.join(sp['releases'])}): {sp['spread_pct']:.1f}% "
              f"(no prediction within {sp['floor_pct']:.1f}% of all)")
    for sp in s["spread_degrees"]:
        print(f"  same degrees (token-drop and dropless together): {sp['config']}: {sp['published']} "
              f"({', '.join(sp['releases'])}): {sp['spread_pct']:.1f}%")
    t = search_timing(1 if args.quick else 3)
    print()
    print("| search | GPUs | candidates | timed | wall time (median) | chosen | predicted TFLOP/s/GPU |")
    print("|---|---:|---:|---:|---:|---|---:|")
    print(f"| DeepSeek-V3 train, EP may span nodes | {t['gpus']} | {t['enumerated']:,} | {t['evaluated']:,} "
          f"| {t['median_s']:.2f} s ({t['runs']} runs) | {t['best']} | {t['best_tflops']:.0f} |")
    print(f"| DeepSeek-V3 train, TP and EP inside a node | {t['gpus']} | | | {t['within_node_s']:.2f} s "
          f"| {t['within_node_best']} | {t['within_node_tflops']:.0f} |")
    print(f"| DeepSeek-V3 train, EP may span nodes, a2a overlap auto | {t['gpus']} | {t['enumerated']:,} "
          f"| {t['overlap_evaluated']:,} | {t['overlap_s']:.2f} s | {t['overlap_best']} | {t['overlap_tflops']:.0f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": res, "summary": s, "search": t}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
