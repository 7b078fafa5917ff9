"""The parallelism search's candidates, rejections and result, and how candidates are ranked.

The step-time model is good to ~10% (benchmarks/parallelism.py), so figures within
:data:`TIE_RELATIVE` (1%) of the fastest count as tied, and among those the simplest wins:
smallest cp, then tp, pp, vpp, etp, ep, then the largest micro-batch, the lightest recompute, the
distributed optimizer, no all-to-all overlap, then the figure itself and the degrees in a fixed order, so that the
choice is deterministic. Training ranks by step time; serving by throughput.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from planner.cost.memory import MemoryBreakdown
from planner.cost.step import RECOMPUTE

#: Relative difference in the ranked figure below which two candidates count as tied.
TIE_RELATIVE = 0.01


@dataclass(frozen=True)
class Candidate:
    """One configuration with its predicted figures."""

    mode: str
    dp: int
    tp: int
    pp: int
    ep: int
    etp: int = 1
    cp: int = 1
    vpp: int = 1
    micro_batch: int = 1
    recompute: str = "selective"
    distributed_optimizer: bool = True
    pp_first: int | None = None  #: train: decoder layers of the first pipeline rank (None: the default layout)
    pp_last: int | None = None  #: train: decoder layers of the last pipeline rank
    a2a_overlap: bool = False  #: train: priced with Megatron's combined 1F1B (planner.cost.step)
    sequences: int = 0  #: serving: sequences in one step across the cluster
    step_ms: float = math.inf
    tokens_per_s: float = 0.0
    tflops_per_gpu: float | None = None
    latency_ms: float | None = None
    memory: MemoryBreakdown | None = None
    detail: dict[str, float] = field(default_factory=dict)
    #: serving: what set the batch (``memory``, ``latency``, ``stated``, ``default``, ``ceiling``)
    binding: str = ""
    #: serving: that bound in words and numbers (the plan's note)
    binding_note: str = ""

    def degrees(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dp": self.dp, "tp": self.tp, "pp": self.pp, "ep": self.ep, "etp": self.etp}
        if self.mode == "train":
            d.update(cp=self.cp, vpp=self.vpp, micro_batch=self.micro_batch, recompute=self.recompute,
                     distributed_optimizer=self.distributed_optimizer)
            if self.pp_first is not None or self.pp_last is not None:
                d.update(pp_first=self.pp_first, pp_last=self.pp_last)
        else:
            d.update(sequences=self.sequences)
        return d

    def label(self) -> str:
        s = f"dp{self.dp} tp{self.tp} pp{self.pp} ep{self.ep} etp{self.etp}"
        if self.mode == "train":
            s += f" cp{self.cp} vpp{self.vpp} mb{self.micro_batch} {self.recompute}"
            s += " distopt" if self.distributed_optimizer else " no-distopt"
            if self.pp_first is not None or self.pp_last is not None:
                s += f" pp-first {self.pp_first or '-'} pp-last {self.pp_last or '-'}"
            s += " a2a-overlap" if self.a2a_overlap else ""
        elif self.sequences:
            s += f" batch {self.sequences}"
        return s

    def simplicity_key(self) -> tuple:
        return (
            self.cp, self.tp, self.pp, self.vpp, self.etp, self.ep, -self.micro_batch,
            RECOMPUTE.index(self.recompute), not self.distributed_optimizer, self.a2a_overlap, self.sort_key(),
        )

    def sort_key(self) -> tuple:
        primary = round(self.step_ms, 6) if self.mode == "train" else -round(self.tokens_per_s, 3)
        return (
            primary, self.tp, self.cp, self.pp, self.vpp, self.ep, self.etp, -self.micro_batch,
            RECOMPUTE.index(self.recompute), not self.distributed_optimizer, self.a2a_overlap,
        )


@dataclass(frozen=True)
class Rejected:
    """A candidate that broke a rule or did not fit, with the reason in words and numbers."""

    candidate: Candidate
    rule: str
    reason: str


@dataclass(frozen=True)
class SearchResult:
    best: Candidate
    alternatives: list[Candidate]  #: the top-N, best first (includes ``best``)
    rejected: list[Rejected]  #: the fastest candidates that did not fit, and rule examples
    rule_counts: dict[str, int]  #: how many candidates each rule rejected
    evaluated: int  #: candidates timed
    enumerated: int
    time_s: float
    budget_gib: float
    notes: list[str] = field(default_factory=list)


def _within(c: Candidate, best: Candidate) -> bool:
    if c.mode == "train":
        return c.step_ms <= best.step_ms * (1 + TIE_RELATIVE)
    return c.tokens_per_s >= best.tokens_per_s * (1 - TIE_RELATIVE)


def rank(feasible: list[Candidate]) -> list[Candidate]:
    """Candidates best first: by the ranked figure, except that the first is the simplest of
    those within :data:`TIE_RELATIVE` of the fastest (module docstring)."""
    out = sorted(feasible, key=Candidate.sort_key)
    if out:
        best = min((c for c in out if _within(c, out[0])), key=Candidate.simplicity_key)
        out.remove(best)
        out.insert(0, best)
    return out
