"""A parallelism search's result as the plan's data: its report and its predicted figures.

Plain data for ``plan.json`` (:class:`~planner.specs.search.SearchReport` and fields of
:class:`~planner.specs.plan.Predicted`); launch arguments are built by :mod:`planner.exports.launch`
and text is rendered by :mod:`planner.cli.render`.
"""

from __future__ import annotations

import math
from typing import Any

from planner.solve.candidates import Candidate, SearchResult
from planner.specs.search import Alternative, RejectedConfig, SearchReport


def _alternative(c: Candidate, global_batch: int | None) -> Alternative:
    train = c.mode == "train"
    return Alternative(
        dp=c.dp, tp=c.tp, pp=c.pp, ep=c.ep, etp=c.etp, cp=c.cp, vpp=c.vpp,
        micro_batch=c.micro_batch if train else None, recompute=c.recompute if train else None,  # type: ignore[arg-type]
        distributed_optimizer=c.distributed_optimizer if train else None,
        pp_first=c.pp_first if train else None, pp_last=c.pp_last if train else None,
        global_batch=int(c.detail.get("global_batch", global_batch or 0)) or None if train else None,
        sequences=c.sequences if not train and c.sequences else None,
        step_ms=c.step_ms, tokens_per_s=c.tokens_per_s, tflops_per_gpu=c.tflops_per_gpu, latency_ms=c.latency_ms,
        two_batch_overlap=bool(c.detail.get("two_batch_overlap")) if not train else None,
        a2a_overlap=c.a2a_overlap if train else None,
        memory_gib=c.memory.total_gib if c.memory is not None else 0.0,
    )


def to_report(result: SearchResult, fixed: dict[str, Any], mode: str, global_batch: int | None = None) -> SearchReport:
    """The :class:`~planner.specs.search.SearchReport` of a search, for ``plan.json``."""
    objective = "step time (tokens/s at the fixed global batch)" if mode == "train" else (
        "throughput (tokens/s)" + (" within the latency target" if any(r.rule == "latency" for r in result.rejected) else "")
    )
    return SearchReport(
        objective=objective,
        fixed=sorted(k for k, v in fixed.items() if v is not None),
        chosen=_alternative(result.best, global_batch),
        alternatives=[_alternative(c, global_batch) for c in result.alternatives],
        rejected=[
            RejectedConfig(config=r.candidate.label(), rule=r.rule, reason=r.reason,
                           step_ms=r.candidate.step_ms if math.isfinite(r.candidate.step_ms) else None)
            for r in result.rejected
        ],
        rule_counts=result.rule_counts, enumerated=result.enumerated, evaluated=result.evaluated,
        memory_budget_gib=result.budget_gib, time_s=round(result.time_s, 3), notes=result.notes,
    )


def predicted_figures(result: SearchResult) -> dict[str, Any]:
    """Fields of :class:`~planner.specs.plan.Predicted` the step-time model fills."""
    b = result.best
    mem = b.memory.as_gib() if b.memory is not None else {}
    out: dict[str, Any] = {
        "step_time_ms": b.step_ms, "tokens_per_s": b.tokens_per_s,
        "memory_per_gpu_gib": mem.get("total", 0.0),
        "memory_breakdown_gib": {k: v for k, v in mem.items() if k != "total"},
    }
    if b.mode == "train":
        out["tflops_per_gpu"] = b.tflops_per_gpu
    else:
        out["latency_per_token_ms"] = b.latency_ms
    return out
