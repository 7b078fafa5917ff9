"""Training strategies as what-if candidates of the parallelism search: the search's best
Megatron layout, then each strategy of :mod:`planner.cost.strategies` priced on the same layout
(DeepSpeed-MoE folds the pipeline into data parallelism), with its memory against the budget.

A row is data (:class:`StrategyRow`); ``moe-planner plan --mode train --strategies`` prints
them (:mod:`planner.cli.render_strategies`). The search itself still ranks Megatron layouts only:
these are what-ifs beside its choice, not candidates it may pick.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.cost.memory import GIB
from planner.cost.step import StepModel
from planner.cost.strategies import Layout, StrategyPrice, price
from planner.errors import InputError
from planner.solve.candidates import Candidate
from planner.solve.parallel import DISPATCHERS, search
from planner.solve.search_memory import budget_bytes
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile, load_hardware
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan

#: The what-ifs priced beside the search's layout: (label, strategy, its settings).
WHAT_IFS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("megatron (search's choice)", "megatron", {}),
    ("fsmoe: pipelined all-to-all", "fsmoe", {}),
    ("fssdp (Hecate)", "fssdp", {}),
    ("deepspeed-moe ZeRO-1", "deepspeed-moe", {"zero_stage": 1}),
    ("deepspeed-moe ZeRO-2", "deepspeed-moe", {"zero_stage": 2}),
    ("deepspeed-moe ZeRO-3", "deepspeed-moe", {"zero_stage": 3}),
    ("deepspeed-moe ZeRO-2 + offload", "deepspeed-moe", {"zero_stage": 2, "offload": True}),
)


@dataclass(frozen=True)
class StrategyRow:
    """One what-if: the strategy, its predicted step, throughput and memory, and whether it fits."""

    label: str
    strategy: str
    layout: str
    step_ms: float
    tflops_per_gpu: float
    memory_gib: float
    fits: bool
    assumptions: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "strategy": self.strategy, "layout": self.layout, "step_ms": self.step_ms,
                "tflops_per_gpu": self.tflops_per_gpu, "memory_gib": self.memory_gib, "fits": self.fits,
                "assumptions": list(self.assumptions)}


def layout_of(c: Candidate, num_gpus: int, global_batch: int, seq_len: int, dispatcher: str = "alltoall") -> Layout:
    """The :class:`~planner.cost.strategies.Layout` of a training candidate."""
    if c.mode != "train":
        raise InputError(f"strategies price training layouts (got a {c.mode} candidate)", field="mode")
    return Layout(num_gpus=num_gpus, tp=c.tp, pp=c.pp, ep=c.ep, global_batch=global_batch, seq_len=seq_len,
                  etp=c.etp, cp=c.cp, vpp=c.vpp, micro_batch=c.micro_batch, recompute=c.recompute,
                  dispatcher=DISPATCHERS.get(dispatcher, dispatcher))


def _label(p: StrategyPrice) -> str:
    lay = p.layout
    return (f"dp{lay.dp} tp{lay.tp} pp{lay.pp} ep{lay.ep} etp{lay.etp} cp{lay.cp} vpp{lay.vpp} "
            f"mb{lay.micro_batch} {lay.recompute}")


def price_rows(sm: StepModel, lay: Layout, budget: float, imbalance: float = 1.0) -> list[StrategyRow]:
    """Each of :data:`WHAT_IFS` on ``lay``; ``imbalance`` (max / mean tokens of an EP rank) is
    the load the EP layouts see (FSSDP re-places experts each iteration: balanced)."""
    rows = []
    for label, name, kw in WHAT_IFS:
        extra = dict(kw)
        if name == "megatron":
            extra["imbalance"] = imbalance
        try:
            p = price(name, sm, lay, **extra)
        except InputError as e:  # e.g. the batch does not divide once the pipeline is folded
            rows.append(StrategyRow(label, name, "-", float("nan"), float("nan"), float("nan"), False, (str(e),)))
            continue
        rows.append(StrategyRow(label, name, _label(p), p.step_ms, p.tflops_per_gpu, p.memory.total / GIB,
                                p.memory.total <= budget, p.assumptions))
    return rows


def what_if(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, *, seq_len: int = 4096,
    global_batch: int | None = None, train_dtype: str = "bf16", dispatcher: str = "alltoall",
    fixed: dict[str, Any] | None = None, imbalance: float = 1.0, best: Candidate | None = None,
) -> list[StrategyRow]:
    """The search's best training layout (or ``best`` when given) and every strategy priced on
    it (module docstring)."""
    if best is None:
        res = search(model, hw, cluster, mode="train", seq_len=seq_len, global_batch=global_batch, fixed=fixed,
                     train_dtype=train_dtype, dispatcher=dispatcher)
        best = res.best
        global_batch = int(best.detail.get("global_batch", global_batch or 0)) or global_batch
    if global_batch is None:
        raise InputError("global_batch is needed with a given layout", field="global_batch")
    sm = StepModel(model, hw, cluster.gpus_per_node, train_dtype)
    lay = layout_of(best, cluster.num_gpus, global_batch, seq_len, dispatcher)
    return price_rows(sm, lay, budget_bytes(hw), imbalance)


def plan_what_if(plan: Plan, imbalance: float = 1.0) -> list[StrategyRow]:
    """:func:`what_if` on a training plan's chosen layout (its search's first alternative)."""
    if plan.workload.mode != "train" or plan.search is None or not plan.search.alternatives:
        raise InputError("strategies apply to a training plan with a parallelism search (--mode train)",
                         field="strategies")
    a = plan.search.alternatives[0]
    best = Candidate(mode="train", dp=a.dp, tp=a.tp, pp=a.pp, ep=a.ep, etp=a.etp, cp=a.cp, vpp=a.vpp,
                     micro_batch=a.micro_batch or 1, recompute=a.recompute or "selective")
    hw = load_hardware(plan.cluster.hardware)
    gb = a.global_batch or plan.workload.global_batch
    return what_if(plan.model, hw, plan.cluster, seq_len=plan.workload.seq_len, global_batch=gb,
                   train_dtype=plan.workload.train_dtype, imbalance=imbalance, best=best)
