"""Parallelism search: every valid factorization of the cluster, ranked by predicted step time.

Legend: N GPUs (n per node), L layers, E routed experts (R redundant slots when serving), f expert
FFN width, a query heads, kv KV heads, s sequence length, B global batch (sequences). Degrees:
tp, cp, pp (vpp virtual stages), dp = N / (tp·cp·pp), ep, etp; micro-batch b; recompute
none / selective / full; distributed optimizer on / off. Serving has no cp, b or optimizer:
attention is data-parallel over dp = N / (tp·pp) ranks, experts over ep·etp GPUs of a stage.

**Rules** (the real systems'; a candidate breaking one is rejected with the rule and numbers,
:func:`rule_violation`):

1. dp·tp·cp·pp = N (by construction: dp is what is left).
2. tp divides a (and kv for GQA: each TP rank keeps whole KV heads, Megatron's
   ``num_query_groups % tp``); etp divides f; ep divides E (training: Megatron keeps one copy of
   each expert) or E + R (serving, with redundant slots).
3. TP stays inside a node's NVLink domain (n GPUs) unless ``cross_node`` is allowed; so does
   EP×ETP in training (Megatron keeps EP×TP on NVLink, docs/facts.md §4). Serving lets EP span nodes
   (DeepEP's inter-node kernels, docs/facts.md §3; SGLang/vLLM wide-EP deployments).
4. Megatron's expert-data-parallel rule: ep·etp divides dp·cp·tp (the experts of a stage shard
   over its GPUs; edp = dp·cp·tp / (ep·etp) GPUs hold the same experts).
5. pp <= L and the last stage keeps at least one layer (⌈L/pp⌉ layers per stage; an uneven split
   is written as Megatron's ``--decoder-last-pipeline-num-layers``); vpp > 1 needs pp > 1,
   L divisible by pp·vpp and a number of micro-batches divisible by pp (interleaved 1F1B).
6. cp > 1 needs s divisible by 2·cp (Megatron's load-balanced causal split).
7. B divisible by dp·b (training).
8. Memory fits: the step's memory (:mod:`planner.cost.memory`: training with the recompute and
   optimizer choice, or inference weights + KV cache + activations) within the GPU's usable
   memory less :data:`MEMORY_RESERVE_GIB`.
9. Serving with a latency target: the predicted per-token latency is within it.

Sequence parallelism is on whenever tp > 1 (Megatron requires it when TP and EP combine).

**Search.** Candidates are enumerated in a fixed order; degrees the user gives are fixed. The
per-layer kernel times are cached by the sub-tuple they depend on (:class:`~planner.cost.step.
StepModel`), so a candidate costs a few arithmetic operations. Pruning is by dominance, never by
heuristics: for one set of degrees, recompute none is faster than selective, which is faster than
full, so the first recompute that fits memory is the only one timed (the slower ones that also
fit are dominated); memory is checked before timing.

**Ranking.** Training: step time (equivalently tokens/s at the fixed global batch). Serving:
throughput (tokens per second), among candidates within the latency target. The step-time model
is good to ~10% (benchmarks/parallelism.py), so figures within :data:`TIE_RELATIVE` (1%) of the
fastest count as tied, and among those the simplest wins: smallest cp, then tp, pp, vpp, etp, ep,
then the largest micro-batch, the lightest recompute, the distributed optimizer, then the figure
itself and the degrees in a fixed order: the choice is deterministic.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

from planner.cost.memory import GIB, MemoryBreakdown, inference_memory, training_memory
from planner.cost.step import RECOMPUTE, ModelView, StepModel, serve_step
from planner.errors import InfeasibleError, InputError
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec

#: GPU memory kept free of the planned tensors: CUDA context and NCCL buffers (~1-2 GiB) and
#: allocator fragmentation. An assumption, not a measurement.
MEMORY_RESERVE_GIB = 4.0
MICRO_BATCHES = (1, 2, 4, 8)
#: Decode: sequences per GPU tried when the batch is not given (powers of two up to this).
MAX_DECODE_SEQUENCES_PER_GPU = 256
MODES = ("train", "prefill", "decode")
FIXABLE = ("tp", "pp", "dp", "ep", "etp", "vpp", "cp", "micro_batch", "recompute", "distributed_optimizer")


#: Relative difference in the ranked figure below which two candidates count as tied.
TIE_RELATIVE = 0.01


def _within(c: Candidate, best: Candidate) -> bool:
    if c.mode == "train":
        return c.step_ms <= best.step_ms * (1 + TIE_RELATIVE)
    return c.tokens_per_s >= best.tokens_per_s * (1 - TIE_RELATIVE)


def rank(feasible: list[Candidate]) -> list[Candidate]:
    """Candidates best first: by the ranked figure, except that the first is the simplest of
    those within :data:`TIE_RELATIVE` of the fastest (module docstring, "Ranking")."""
    out = sorted(feasible, key=Candidate.sort_key)
    if out:
        best = min((c for c in out if _within(c, out[0])), key=Candidate.simplicity_key)
        out.remove(best)
        out.insert(0, best)
    return out


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


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
    sequences: int = 0  #: serving: sequences in one step across the cluster
    step_ms: float = math.inf
    tokens_per_s: float = 0.0
    tflops_per_gpu: float | None = None
    latency_ms: float | None = None
    memory: MemoryBreakdown | None = None
    detail: dict[str, float] = field(default_factory=dict)

    def degrees(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dp": self.dp, "tp": self.tp, "pp": self.pp, "ep": self.ep, "etp": self.etp}
        if self.mode == "train":
            d.update(cp=self.cp, vpp=self.vpp, micro_batch=self.micro_batch, recompute=self.recompute,
                     distributed_optimizer=self.distributed_optimizer)
        else:
            d.update(sequences=self.sequences)
        return d

    def label(self) -> str:
        s = f"dp{self.dp} tp{self.tp} pp{self.pp} ep{self.ep} etp{self.etp}"
        if self.mode == "train":
            s += f" cp{self.cp} vpp{self.vpp} mb{self.micro_batch} {self.recompute}"
            s += " distopt" if self.distributed_optimizer else " no-distopt"
        elif self.sequences:
            s += f" batch {self.sequences}"
        return s

    def simplicity_key(self) -> tuple:
        return (
            self.cp, self.tp, self.pp, self.vpp, self.etp, self.ep, -self.micro_batch,
            RECOMPUTE.index(self.recompute), not self.distributed_optimizer, self.sort_key(),
        )

    def sort_key(self) -> tuple:
        primary = round(self.step_ms, 6) if self.mode == "train" else -round(self.tokens_per_s, 3)
        return (
            primary, self.tp, self.cp, self.pp, self.vpp, self.ep, self.etp, -self.micro_batch,
            RECOMPUTE.index(self.recompute), not self.distributed_optimizer,
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


# ---- rules ------------------------------------------------------------------------------------


def rule_violation(
    model: ModelSpec, cluster: ClusterSpec, c: Candidate, *, seq_len: int, global_batch: int | None = None,
    redundant: int = 0, cross_node: bool = False,
) -> tuple[str, str] | None:
    """(rule, reason) for the first rule of the module docstring ``c`` breaks (memory and latency
    excluded), or None."""
    N, n = cluster.num_gpus, cluster.gpus_per_node
    att = model.attention
    if c.dp * c.tp * c.cp * c.pp != N:
        return "product", f"dp × tp × cp × pp ({c.dp} × {c.tp} × {c.cp} × {c.pp}) must equal the {N} GPUs"
    if att.num_heads % c.tp or (att.kind == "gqa" and att.num_kv_heads % c.tp):
        return "tp-heads", (
            f"tp {c.tp} must divide the {att.num_heads} attention heads"
            + (f" and the {att.num_kv_heads} KV heads" if att.kind == "gqa" else "")
        )
    if model.expert_intermediate_size % c.etp:
        return "etp-width", f"etp {c.etp} must divide the expert FFN width {model.expert_intermediate_size}"
    slots = model.num_experts + (redundant if c.mode != "train" else 0)
    if slots % c.ep:
        what = f"{model.num_experts} experts" + (f" + {redundant} redundant" if slots != model.num_experts else "")
        return "ep-experts", f"ep {c.ep} must divide the {what} (= {slots}): every EP rank holds the same number"
    span = n
    if not cross_node and c.tp > n:
        return "tp-node", f"tp {c.tp} spans more than one node ({n} GPUs per node); TP stays on NVLink"
    if not (cross_node or c.mode != "train") and c.ep * c.etp > span:
        return "ep-node", (
            f"ep × etp ({c.ep} × {c.etp} = {c.ep * c.etp}) spans more than one node ({n} GPUs per node); "
            "allow cross-node expert parallelism to search it"
        )
    if (c.dp * c.cp * c.tp) % (c.ep * c.etp):
        return "edp", (
            f"ep × etp ({c.ep} × {c.etp}) must divide dp × cp × tp ({c.dp} × {c.cp} × {c.tp} = {c.dp * c.cp * c.tp}): "
            "the experts of a stage shard over its GPUs (Megatron's expert-data-parallel rule)"
        )
    if c.pp > model.num_layers:
        return "pp-layers", f"pp {c.pp} exceeds the model's {model.num_layers} layers"
    per = math.ceil(model.num_layers / c.pp)
    if model.num_layers - (c.pp - 1) * per < 1:
        return "pp-layers", f"pp {c.pp} with ⌈{model.num_layers}/{c.pp}⌉ = {per} layers per stage leaves the last stage empty"
    if c.mode == "train":
        if c.vpp > 1:
            if c.pp == 1:
                return "vpp", f"vpp {c.vpp} needs pp > 1"
            if model.num_layers % (c.pp * c.vpp):
                return "vpp", f"pp × vpp ({c.pp} × {c.vpp}) must divide the {model.num_layers} layers"
        if c.cp > 1 and seq_len % (2 * c.cp):
            return "cp-seq", f"cp {c.cp} needs the sequence length {seq_len} divisible by 2 × cp = {2 * c.cp}"
        if global_batch is not None:
            if global_batch % (c.dp * c.micro_batch):
                return "batch", (
                    f"global batch {global_batch} must be a multiple of dp × micro-batch ({c.dp} × {c.micro_batch})"
                )
            mbs = global_batch // (c.dp * c.micro_batch)
            if c.vpp > 1 and mbs % c.pp:
                return "vpp", f"interleaving needs micro-batches ({mbs}) divisible by pp ({c.pp})"
    return None


# ---- memory -------------------------------------------------------------------------------------


def budget_bytes(hw: HardwareProfile) -> float:
    return hw.hbm_bytes - MEMORY_RESERVE_GIB * GIB


def candidate_memory(model: ModelSpec, c: Candidate, *, seq_len: int, global_batch: int = 0, redundant: int = 0) -> MemoryBreakdown:
    """Memory per GPU of ``c`` (module docstring, rule 8)."""
    if c.mode == "train":
        return training_memory(
            model, slots_per_gpu=model.num_experts // c.ep, tp=c.tp, pp=c.pp, dp=c.dp * c.cp, ep=c.ep, etp=c.etp,
            vpp=c.vpp, seq_len=seq_len // c.cp, micro_batch=c.micro_batch,
            num_microbatches=global_batch // (c.dp * c.micro_batch) if global_batch else None,
            distributed_optimizer=c.distributed_optimizer, recompute=c.recompute,  # type: ignore[arg-type]
        )
    per_rank = math.ceil(c.sequences / c.dp)
    new = 1 if c.mode == "decode" else seq_len
    return inference_memory(
        model, slots_per_gpu=(model.num_experts + redundant) // c.ep, tp=c.tp, pp=c.pp, etp=c.etp,
        kv_tokens=per_rank * (seq_len + (1 if c.mode == "decode" else 0)), batch_tokens=per_rank * new // c.tp,
    )


def memory_reason(mem: MemoryBreakdown, budget: float, hw: HardwareProfile, mode: str, recompute: str = "full") -> str:
    g = mem.as_gib()
    parts = ", ".join(f"{k} {v:.1f}" for k, v in g.items() if k != "total" and v > 0.05)
    if mode == "train":
        fix = "raise pp or ep" + (", use recompute full" if recompute != "full" else "") + ", or add GPUs"
    else:
        fix = "raise ep or tp, lower the batch, or add GPUs"
    return (
        f"needs {g['total']:.1f} GiB per GPU ({parts}), has {budget / GIB:.1f} "
        f"({hw.name} has {hw.hbm_bytes / GIB:.1f} GiB, {MEMORY_RESERVE_GIB:g} reserved); {fix}"
    )


# ---- enumeration --------------------------------------------------------------------------------


def _opts(fixed: dict[str, Any], name: str, values: list) -> list:
    v = fixed.get(name)
    return [v] if v is not None else values


def default_global_batch(num_gpus: int) -> int:
    """Training batch (sequences) when none is given: max(256, 2·N)."""
    return max(256, 2 * num_gpus)


def search(
    model: ModelSpec,
    hw: HardwareProfile,
    cluster: ClusterSpec,
    *,
    mode: str = "train",
    seq_len: int = 4096,
    global_batch: int | None = None,
    fixed: dict[str, Any] | None = None,
    redundant: int = 0,
    latency_target_ms: float | None = None,
    cross_node: bool = False,
    top_n: int = 5,
    max_rejected: int = 5,
) -> SearchResult:
    """Search the parallel configuration of ``mode`` (module docstring).

    ``fixed``: degrees the user gave (keys of :data:`FIXABLE`; ``None`` values are searched).
    ``global_batch``: training sequences per step (default :func:`default_global_batch`); serving
    sequences per step (default: decode tries powers of two per GPU and keeps the best that fits,
    prefill one prompt per GPU). Raises :class:`InputError` when a fixed degree breaks a rule and
    :class:`InfeasibleError` when nothing fits, naming the binding constraint.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"--mode must be one of {', '.join(MODES)} for the parallelism search (got {mode!r})")
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    bad = set(fixed) - set(FIXABLE)
    if bad:
        raise InputError(f"fixed degrees: unknown {sorted(bad)}; known: {', '.join(FIXABLE)}")
    for k, v in fixed.items():
        if isinstance(v, int) and not isinstance(v, bool) and v <= 0:
            raise InputError(f"--{k.replace('_', '-')} must be > 0 (got {v})")
    if "recompute" in fixed and fixed["recompute"] not in RECOMPUTE:
        raise InputError(f"--recompute must be one of {', '.join(RECOMPUTE)} (got {fixed['recompute']!r})")
    if mode != "train":
        for k in ("cp", "vpp", "micro_batch", "recompute", "distributed_optimizer"):
            if k in fixed and fixed[k] not in (1, None):
                raise InputError(f"--{k.replace('_', '-')} applies to --mode train only")
    if seq_len <= 0:
        raise InputError(f"--seq-len must be > 0 (got {seq_len})")
    if latency_target_ms is not None and latency_target_ms <= 0:
        raise InputError(f"--latency-target-ms must be > 0 (got {latency_target_ms})")
    if redundant < 0:
        raise InputError(f"--redundant-experts must be >= 0 (got {redundant})")
    N, n = cluster.num_gpus, cluster.gpus_per_node
    budget = budget_bytes(hw)
    model = ModelView.of(model)  # type: ignore[assignment]
    sm = StepModel(model, hw, n)
    if mode == "train":
        gb = global_batch or default_global_batch(N)
    else:
        gb = global_batch
    rule_counts: dict[str, int] = {}
    rule_examples: dict[str, Rejected] = {}
    mem_rejected: list[Rejected] = []
    lat_rejected: list[Rejected] = []
    feasible: list[Candidate] = []
    enumerated = evaluated = 0
    fixed_error: list[str] = []

    def reject_rule(c: Candidate, rule: str, reason: str) -> None:
        rule_counts[rule] = rule_counts.get(rule, 0) + 1
        rule_examples.setdefault(rule, Rejected(c, rule, reason))

    tp_opts = _opts(fixed, "tp", [d for d in _divisors(N) if d <= n or cross_node])
    etp_opts = _opts(fixed, "etp", [d for d in _divisors(model.expert_intermediate_size) if d <= n and d <= N])
    slots_total = model.num_experts + (redundant if mode != "train" else 0)
    ep_all = [d for d in _divisors(slots_total) if d <= N]
    ep_opts = _opts(fixed, "ep", ep_all)
    if mode == "train":
        cp_opts = _opts(fixed, "cp", [d for d in _divisors(N) if d <= 16])
        mb_opts = _opts(fixed, "micro_batch", list(MICRO_BATCHES))
        rc_opts = _opts(fixed, "recompute", list(RECOMPUTE))
        # the distributed optimizer needs less memory and, by the step formulas, no more time
        # (reduce-scatter 4 B + all-gather 2 B per parameter against an all-reduce of 4 B, i.e.
        # 6 against 8 bus bytes, and a smaller optimizer step): off is dominated unless fixed
        do_opts = _opts(fixed, "distributed_optimizer", [True])
    else:
        cp_opts, mb_opts, rc_opts, do_opts = [1], [1], ["none"], [False]
    for tp in tp_opts:
        for cp in cp_opts:
            if N % (tp * cp):
                continue
            pp_opts = _opts(fixed, "pp", [d for d in _divisors(N // (tp * cp)) if d <= model.num_layers])
            for pp in pp_opts:
                if N % (tp * cp * pp):
                    continue
                dp = N // (tp * cp * pp)
                if "dp" in fixed and fixed["dp"] != dp:
                    continue
                vpp_opts = _opts(fixed, "vpp", [1] + [v for v in range(2, model.num_layers // max(pp, 1) + 1)
                                                      if pp > 1 and model.num_layers % (pp * v) == 0] if mode == "train" else [1])
                for ep in ep_opts:
                    for etp in etp_opts:
                        for vpp in vpp_opts:
                            for mb in mb_opts:
                                enumerated += 1
                                base = Candidate(mode=mode, dp=dp, tp=tp, pp=pp, ep=ep, etp=etp, cp=cp, vpp=vpp,
                                                 micro_batch=mb, recompute=rc_opts[-1], distributed_optimizer=True)
                                v = rule_violation(model, cluster, base, seq_len=seq_len, global_batch=gb if mode == "train" else None,
                                                   redundant=redundant, cross_node=cross_node)
                                if v is not None:
                                    reject_rule(base, *v)
                                    continue
                                if mode == "train":
                                    evaluated += _train_variants(
                                        sm, model, hw, N, base, gb, seq_len, rc_opts, do_opts, budget, feasible, mem_rejected
                                    )
                                else:
                                    evaluated += _serve_variants(
                                        model, hw, cluster, base, gb, seq_len, redundant, budget, latency_target_ms,
                                        feasible, mem_rejected, lat_rejected,
                                    )
    if fixed and not feasible and not mem_rejected and not lat_rejected:
        ex = sorted(rule_examples.values(), key=lambda r: -rule_counts[r.rule])
        if ex:
            fixed_error.append(ex[0].reason)
        given = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in fixed.items())
        raise InputError(f"no valid configuration with {given}: {fixed_error[0] if fixed_error else 'no factorization of the GPUs'}")

    def explained(r: Rejected) -> Rejected:
        if r.reason or r.candidate.memory is None:
            return r
        return Rejected(r.candidate, r.rule, memory_reason(r.candidate.memory, budget, hw, mode, r.candidate.recompute))

    if not feasible:
        if lat_rejected:  # these fit in memory: the latency target is what binds
            fastest = min(lat_rejected, key=lambda r: r.candidate.latency_ms or math.inf)
            raise InfeasibleError(f"no configuration meets the latency target; the fastest ({fastest.candidate.label()}) {fastest.reason}")
        if mem_rejected:
            closest = explained(min(mem_rejected, key=lambda r: (r.candidate.memory.total if r.candidate.memory else math.inf)))
            raise InfeasibleError(f"no configuration fits in memory; the closest ({closest.candidate.label()}) {closest.reason}")
        ex = max(rule_examples.values(), key=lambda r: rule_counts[r.rule]) if rule_examples else None
        raise InfeasibleError(f"no valid factorization of {N} GPUs: {ex.reason if ex else 'none enumerated'}")
    feasible = rank(feasible)
    best = feasible[0]
    key_best = best.sort_key()
    # the best rejected: faster than the choice but over memory (or latency), then one per rule
    rej = sorted(mem_rejected + lat_rejected, key=lambda r: r.candidate.sort_key())
    rej = [r for r in rej if r.candidate.sort_key() < key_best][:max_rejected] or rej[:max_rejected]
    rej = [explained(r) for r in rej] + sorted(rule_examples.values(), key=lambda r: r.rule)
    notes = []
    if best.pp > 1 and model.num_layers % best.pp:
        per = math.ceil(model.num_layers / best.pp)
        notes.append(
            f"uneven pipeline: {per} layers per stage, {model.num_layers - (best.pp - 1) * per} on the last "
            f"(Megatron: --decoder-last-pipeline-num-layers)"
        )
    return SearchResult(
        best=best, alternatives=feasible[:top_n], rejected=rej, rule_counts=dict(sorted(rule_counts.items())),
        evaluated=evaluated, enumerated=enumerated, time_s=time.perf_counter() - t0, budget_gib=budget / GIB, notes=notes,
    )


def _train_variants(
    sm: StepModel, model: ModelSpec, hw: HardwareProfile, N: int, base: Candidate, gb: int, seq_len: int,
    rc_opts: list[str], do_opts: list[bool], budget: float, feasible: list[Candidate], mem_rejected: list[Rejected],
) -> int:
    timed = 0
    for do in do_opts:
        fit = None
        lean = None
        for rc in rc_opts:  # none < selective < full in time: the first that fits dominates
            c = Candidate(mode="train", dp=base.dp, tp=base.tp, pp=base.pp, ep=base.ep, etp=base.etp, cp=base.cp,
                          vpp=base.vpp, micro_batch=base.micro_batch, recompute=rc, distributed_optimizer=do)
            mem = candidate_memory(model, c, seq_len=seq_len, global_batch=gb)
            object.__setattr__(c, "memory", mem)  # c is local until appended
            if mem.total <= budget:
                fit = c
                break
            lean = c
        if fit is None:
            if lean is not None and lean.memory is not None and lean.memory.total <= 1.5 * budget:
                st = sm.train_step(num_gpus=N, tp=lean.tp, pp=lean.pp, ep=lean.ep, etp=lean.etp, cp=lean.cp, vpp=lean.vpp,
                                   micro_batch=lean.micro_batch, global_batch=gb, seq_len=seq_len, recompute=lean.recompute,
                                   distributed_optimizer=do)
                timed += 1
                lean = replace(lean, step_ms=st.step_ms, tokens_per_s=st.tokens_per_s, tflops_per_gpu=st.tflops_per_gpu)
            if lean is not None:
                mem_rejected.append(Rejected(lean, "memory", ""))  # reason written for the few reported
            continue
        st = sm.train_step(num_gpus=N, tp=fit.tp, pp=fit.pp, ep=fit.ep, etp=fit.etp, cp=fit.cp, vpp=fit.vpp,
                           micro_batch=fit.micro_batch, global_batch=gb, seq_len=seq_len, recompute=fit.recompute,
                           distributed_optimizer=do)
        timed += 1
        feasible.append(replace(
            fit, step_ms=st.step_ms, tokens_per_s=st.tokens_per_s, tflops_per_gpu=st.tflops_per_gpu,
            detail={"bubble_fraction": st.bubble_fraction, "micro_batches": st.micro_batches, "global_batch": gb,
                    "dp_exposed_ms": st.dp_exposed_ms, "p2p_ms": st.p2p_ms, **st.parts},
        ))
    return timed


def _serve_variants(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, base: Candidate, gb: int | None, seq_len: int,
    redundant: int, budget: float, target: float | None, feasible: list[Candidate], mem_rejected: list[Rejected],
    lat_rejected: list[Rejected],
) -> int:
    N = cluster.num_gpus
    if gb is not None:
        batches = [gb]
    elif base.mode == "decode":
        batches = [N * (2**i) for i in range(int(math.log2(MAX_DECODE_SEQUENCES_PER_GPU)) + 1)]
    else:  # prefill: one prompt per GPU
        batches = [N]
    timed = 0
    best_here: Candidate | None = None
    for seqs in batches:
        c = replace(base, sequences=seqs)
        mem = candidate_memory(model, c, seq_len=seq_len, redundant=redundant)
        c = replace(c, memory=mem)
        if mem.total > budget:
            if best_here is None:
                mem_rejected.append(Rejected(c, "memory", memory_reason(mem, budget, hw, base.mode)))
            break
        st = serve_step(model, hw, mode=base.mode, num_gpus=N, gpus_per_node=cluster.gpus_per_node, tp=c.tp, pp=c.pp,
                        ep=c.ep, etp=c.etp, sequences=seqs, seq_len=seq_len, redundant=redundant)
        timed += 1
        c = replace(c, step_ms=st.step_ms, tokens_per_s=st.throughput_tokens_per_s, latency_ms=st.latency_per_token_ms,
                    detail={"moe_layer_ms": st.moe_layer_ms, "attention_ms": st.attention_ms, "tokens_per_step": st.tokens_per_step})
        if target is not None and st.latency_per_token_ms > target:
            if best_here is None:
                lat_rejected.append(Rejected(
                    c, "latency", f"predicts {st.latency_per_token_ms:.2f} ms per token, over the {target:g} ms target; "
                    "raise ep or tp, or lower the batch"))
            break
        if best_here is None or c.sort_key() < best_here.sort_key():
            best_here = c
    if best_here is not None:
        feasible.append(best_here)
    return timed


# ---- into the plan ------------------------------------------------------------------------------


def _alternative(c: Candidate, global_batch: int | None):
    from planner.specs.search import Alternative

    train = c.mode == "train"
    return Alternative(
        dp=c.dp, tp=c.tp, pp=c.pp, ep=c.ep, etp=c.etp, cp=c.cp, vpp=c.vpp,
        micro_batch=c.micro_batch if train else None, recompute=c.recompute if train else None,  # type: ignore[arg-type]
        distributed_optimizer=c.distributed_optimizer if train else None,
        global_batch=int(c.detail.get("global_batch", global_batch or 0)) or None if train else None,
        sequences=c.sequences if not train and c.sequences else None,
        step_ms=c.step_ms, tokens_per_s=c.tokens_per_s, tflops_per_gpu=c.tflops_per_gpu, latency_ms=c.latency_ms,
        memory_gib=c.memory.total_gib if c.memory is not None else 0.0,
    )


def to_report(result: SearchResult, fixed: dict[str, Any], mode: str, global_batch: int | None = None):
    """The :class:`~planner.specs.search.SearchReport` of a search, for ``plan.json``."""
    from planner.specs.search import RejectedConfig, SearchReport

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


def launch_args(plan) -> Any:
    """Megatron-core (train) or vLLM and SGLang (serving) arguments for a plan, reusing the
    exporters' argument builders so that ``export`` and ``plan`` agree."""
    from planner.exports import megatron, sglang, vllm
    from planner.specs.search import LaunchArgs

    if plan.workload.mode == "train":
        return LaunchArgs(megatron=megatron.args(plan))
    par = plan.parallel
    v = vllm.flags(plan)
    if par.pp > 1:
        v += ["--pipeline-parallel-size", str(par.pp)]
    return LaunchArgs(vllm=v, sglang=sglang.flags(plan, None))


def render_launch(plan) -> list[str]:
    """Lines for ``moe-planner plan``: the search summary and the launch commands."""
    import shlex

    s, la = plan.search, plan.launch
    lines: list[str] = []
    if s is not None:
        lines.append("")
        lines += [
            f"  parallelism search: {s.enumerated} candidates, {s.evaluated} timed in {s.time_s:.2f} s; "
            f"ranked by {s.objective}" + (f"; fixed: {', '.join(s.fixed)}" if s.fixed else ""),
            "  (whole-model step at uniform routing, experts as one grouped GEMM per GPU; the MoE figures above"
            + (" replay the trace with grouped GEMMs too)" if plan.workload.expert_kernel == "grouped" else
               " replay the trace with experts run one after another (--expert-kernel loop), an upper bound for"
               " grouped kernels)"),
        ]
        for i, a in enumerate(s.alternatives):
            extra = (f" mb {a.micro_batch} {a.recompute}{' distopt' if a.distributed_optimizer else ''}"
                     f" cp {a.cp} vpp {a.vpp}") if a.micro_batch else f" batch {a.sequences}"
            fig = (f"{a.tflops_per_gpu:.0f} TFLOP/s/GPU" if a.tflops_per_gpu is not None else f"{a.latency_ms:.2f} ms/token")
            lines.append(
                f"  {'*' if i == 0 else ' '} dp {a.dp} tp {a.tp} pp {a.pp} ep {a.ep} etp {a.etp}{extra}: "
                f"{a.step_ms:.1f} ms/step, {a.tokens_per_s:,.0f} tok/s, {fig}, {a.memory_gib:.1f} GiB"
            )
        for r in s.rejected[:3]:
            lines.append(f"    rejected {r.config}: {r.reason}")
        lines += [f"  note: {n}" for n in s.notes]
    if la is not None:
        for name, argv, cmd in (("megatron", la.megatron, "pretrain_gpt.py"), ("vllm", la.vllm, "vllm serve MODEL"),
                                ("sglang", la.sglang, "python -m sglang.launch_server --model-path MODEL")):
            if argv:
                lines.append(f"  {name}: {cmd} {shlex.join(argv)}")
    return lines
