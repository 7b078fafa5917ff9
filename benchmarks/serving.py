"""Every model preset served on 1, 2 and 8 GPUs of one H100 node: the decode batch the planner
finds, what binds it, and the time to plan.

    python benchmarks/serving.py [--models a,b] [--gpus 1,2,8] [--tpot none,20] [--time-limit 5]
                                 [--out benchmarks/results/serving.json]

Each case is ``planner.plan(model, gpus_per_node=G, mode="decode", tpot_ms=T)`` with the default
workload (prompt 4096 tokens, output the mean length of the shipped trace's sequences or 1024,
bf16 KV cache, batch searched), once without a per-output-token target (memory binds) and once
with ``--tpot-ms 20``, and the placement solver's ``--time-limit``. A case is
*planned* when a decode batch >= 1 fits; *does not fit* when the weights (or one sequence per
data-parallel rank) exceed the memory of G GPUs, with the planner's message. Planning time is the
wall time of the whole ``plan`` call (trace, parallelism search, placement, held-out scoring) on
this machine; the target is 10 s per case.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import planner
from planner.errors import InfeasibleError
from planner.io import atomic_write_text

HW = "h100-sxm"
TARGET_S = 10.0
MODELS_DIR = Path(planner.__file__).parent / "data" / "models"


def case(model: str, gpus: int, time_limit: float, tpot_ms: float | None) -> dict:
    t0 = time.perf_counter()
    try:
        p = planner.plan(model, HW, gpus_per_node=gpus, mode="decode", time_limit=time_limit, tpot_ms=tpot_ms)
    except InfeasibleError as e:
        why = ("weights do not fit" if "weights alone" in str(e) else
               "misses the target" if "latency target" in str(e) else "no batch fits")
        return dict(model=model, gpus=gpus, tpot_target_ms=tpot_ms, status=why, reason=str(e),
                    plan_s=round(time.perf_counter() - t0, 2))
    dt = time.perf_counter() - t0
    c = p.search.chosen
    binding = next((n for n in p.search.notes if n.startswith(("decode batch", "batch"))), "")
    return dict(
        model=model, gpus=gpus, tpot_target_ms=tpot_ms, status="planned",
        parallel=f"dp{c.dp} tp{c.tp} pp{c.pp} ep{c.ep} etp{c.etp}",
        batch=c.sequences, binds="memory" if "memory binds" in binding else ("latency" if "binds" in binding else "-"),
        binding_note=binding, prompt_len=p.workload.prompt_len, output_len=p.workload.output_len,
        tpot_ms=round(c.latency_ms, 3), tokens_per_s=round(c.tokens_per_s, 1),
        memory_gib=round(c.memory_gib, 2), moe_step_ms=round(p.predicted.moe_time_per_step_ms, 3),
        tokens_per_step_scored=round(p.predicted.tokens_per_step, 1), plan_s=round(dt, 2),
        within_target=dt <= TARGET_S,
    )


def table(rows: list[dict]) -> str:
    out = ["| model | GPUs | TPOT target | parallel | batch | binds | TPOT ms | tokens/s | GiB/GPU | plan s |",
           "|---|---:|---:|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        tgt = "-" if r["tpot_target_ms"] is None else f"{r['tpot_target_ms']:g} ms"
        if r["status"] == "planned":
            out.append(f"| {r['model']} | {r['gpus']} | {tgt} | {r['parallel']} | {r['batch']} | {r['binds']} | "
                       f"{r['tpot_ms']:.2f} | {r['tokens_per_s']:,.0f} | {r['memory_gib']:.1f} | {r['plan_s']:.1f} |")
        else:
            out.append(f"| {r['model']} | {r['gpus']} | {tgt} | {r['status']} | - | - | - | - | - | {r['plan_s']:.1f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=None, help="comma-separated presets (default: all)")
    ap.add_argument("--gpus", default="1,2,8")
    ap.add_argument("--tpot", default="none,20", help="per-output-token targets, ms ('none': no target)")
    ap.add_argument("--time-limit", type=float, default=5.0, help="placement solver limit per case, s")
    ap.add_argument("--out", default="benchmarks/results/serving.json")
    a = ap.parse_args()
    models = a.models.split(",") if a.models else sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
    targets = [None if t == "none" else float(t) for t in a.tpot.split(",")]
    rows = []
    for tpot in targets:
        for m in models:
            for g in (int(x) for x in a.gpus.split(",")):
                r = case(m, g, a.time_limit, tpot)
                rows.append(r)
                print(f"{m:18} {g} GPU(s) tpot {tpot}: {r['status']:18} {r.get('batch', '-')!s:>6} {r['plan_s']:6.2f} s",
                      flush=True)
    planned = [r for r in rows if r["status"] == "planned"]
    fits = [r for r in rows if r["tpot_target_ms"] is None]
    summary = dict(cases=len(rows), planned=len(planned),
                   weights_fit_and_planned=all(r["status"] in ("planned", "weights do not fit") for r in fits),
                   slowest_plan_s=max((r["plan_s"] for r in rows), default=0.0),
                   all_within_target=all(r["plan_s"] <= TARGET_S for r in rows))
    res = dict(hardware=HW, time_limit_s=a.time_limit, target_s=TARGET_S, summary=summary, rows=rows,
               command="python benchmarks/serving.py" + (f" --time-limit {a.time_limit:g}" if a.time_limit != 5.0 else "")
               + (f" --tpot {a.tpot}" if a.tpot != "none,20" else ""))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(a.out), json.dumps(res, indent=1) + "\n")
    print(table(rows))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
