"""Parallelism search: every valid factorization of the cluster, ranked by predicted step time.

Legend: N GPUs (n per node), L layers, E routed experts (R redundant slots when serving), s
sequence length, B global batch (sequences). Degrees: tp, cp, pp (vpp virtual stages),
dp = N / (tp·cp·pp), ep, etp; micro-batch b; recompute none / selective / full; distributed
optimizer on / off. Serving has no cp, b or optimizer: attention is data-parallel over
dp = N / (tp·pp) ranks, experts over ep·etp GPUs of a stage.

**Rules.** A candidate breaking a rule of :mod:`planner.specs.degrees` (the one home of the
degree rules) is rejected with the rule and numbers (:func:`rule_violation`). The search adds
its policy: TP stays inside a node's NVLink domain unless ``cross_node``; so does EP×ETP in
training (Megatron keeps EP×TP on NVLink, docs/facts.md §4), while serving lets EP span nodes
(DeepEP's inter-node kernels, docs/facts.md §3). Then memory must fit
(:mod:`planner.solve.search_memory`) and, when serving with a latency target, the predicted
per-token latency must be within it. Sequence parallelism is on whenever tp > 1.

**Search.** Candidates are enumerated in a fixed order; degrees the user gives are fixed. The
per-layer kernel times are cached by the sub-tuple they depend on (:class:`~planner.cost.step.
StepModel`), so a candidate costs a few arithmetic operations. Pruning is by dominance, never by
heuristics: for one set of degrees, recompute none is faster than selective, which is faster than
full, so the first recompute that fits memory is the only one timed (the slower ones that also
fit are dominated); memory is checked before timing.

**Serving batch.** A decode candidate's batch (sequences in flight across the cluster, ``r``
per data-parallel rank × dp) is the stated one, or the largest that (1) fits memory — weights,
activations and the KV cache of ``r`` sequences at their longest, prompt + output tokens, in the
KV dtype (:func:`~planner.solve.search_memory.candidate_memory`; memory grows with ``r``, so a
bisection finds the largest) — and (2) meets the time-per-output-token target, one decode step
timed at the mean context prompt + output / 2 (step time grows with ``r``: a bisection below the
memory bound). The candidate records which bound set its batch and by how much the next one
misses it (``binding``, ``binding_note``: the plan's note). A decode TTFT target is checked on a
prefill of one prompt per data-parallel rank on the same GPUs. Prefill steps hold one prompt per
GPU unless a batch is stated, the step time being the time to first token. A candidate is
rejected only when one sequence per rank does not fit or misses the target; the error then
names the fields that would change it (the CLI spells them as flags).

**Ranking.** Training: step time (equivalently tokens/s at the fixed global batch). Serving:
throughput among candidates within the latency target. Near-ties go to the simplest
configuration (:func:`planner.solve.candidates.rank`).

The result is data (:class:`SearchResult`); :mod:`planner.solve.search_report` turns it into the
plan's fields, :mod:`planner.exports.launch` into launch arguments, :mod:`planner.cli.render`
into text.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from planner.cost.memory import GIB
from planner.cost.serve_step import TBO_MODES, serve_step
from planner.cost.step import RECOMPUTE, StepModel
from planner.errors import InfeasibleError, InputError
from planner.solve.candidates import TIE_RELATIVE, Candidate, Rejected, SearchResult, rank
from planner.solve.search_memory import (
    MEMORY_RESERVE_GIB,
    SERVE_MEMORY_FIELDS,
    budget_bytes,
    candidate_memory,
    memory_reason,
)
from planner.solve.search_report import predicted_figures, to_report
from planner.solve.search_train import check_a2a_overlap, train_notes, train_variants
from planner.solve.serve_imbalance import IMBALANCE_NOTE, ROUTINGS, imbalance_fn
from planner.specs.cluster import ClusterSpec
from planner.specs.degrees import (
    Degrees,
    divisors,
    iter_degree_problems,
    require_positive,
    require_redundant,
)
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.workload import Workload, serving_lengths

__all__ = [
    "FIXABLE", "MEMORY_RESERVE_GIB", "MODES", "TIE_RELATIVE", "Candidate", "Rejected", "SearchResult",
    "budget_bytes", "candidate_memory", "default_global_batch", "memory_reason", "predicted_figures", "rank",
    "check_serving_pricing", "rule_violation", "search", "search_workload", "to_report",
]

MICRO_BATCHES = (1, 2, 4, 8)
#: Decode: the search's ceiling on sequences per data-parallel rank (a bound of arithmetic, far
#: above what memory allows any preset).
MAX_SEQUENCES_PER_RANK = 1 << 20
MODES = ("train", "prefill", "decode")
FIXABLE = ("tp", "pp", "dp", "ep", "etp", "vpp", "cp", "micro_batch", "recompute", "distributed_optimizer",
           "pp_first", "pp_last")
#: Interleaving depths the search tries besides the divisors of the layers per rank (the others
#: need an uneven layout, :func:`planner.specs.degrees.pipeline_layout`).
VPP_EXTRA = (2, 4)
#: Training token dispatchers: Megatron's ``alltoall`` (every (token, expert) pair sent) or
#: ``deepep`` (``flex`` with DeepEP: one copy per destination GPU / node).
DISPATCHERS = {"alltoall": "pairs", "deepep": "deepep"}


def rule_violation(
    model: ModelSpec, cluster: ClusterSpec, c: Candidate, *, seq_len: int, global_batch: int | None = None,
    redundant: int = 0, cross_node: bool = False, fixed: frozenset[str] | set[str] = frozenset(),
) -> tuple[str, str] | None:
    """(rule, reason) for the first rule ``c`` breaks (memory and latency excluded), or None.
    ``fixed``: the degrees the user gave; in training a fixed tp or ep (etp) is honoured across
    nodes (the in-node policy applies to what the search chooses; serving keeps its rules)."""
    train = c.mode == "train"
    d = Degrees(c.dp, c.tp, c.pp, c.ep, c.etp, c.vpp, c.cp, c.micro_batch, c.pp_first, c.pp_last)
    problems = iter_degree_problems(
        model, cluster, d, redundant=0 if train else redundant, tp_in_node=not cross_node and not (train and "tp" in fixed),
        ep_in_node=train and not cross_node and not ({"ep", "etp"} & set(fixed)), seq_len=seq_len if train else None,
        global_batch=global_batch if train else None,
    )
    first = next(problems, None)
    return None if first is None else (first.rule, first.message)


def _opts(fixed: dict[str, Any], name: str, values: list) -> list:
    v = fixed.get(name)
    return [v] if v is not None else values


def default_global_batch(num_gpus: int) -> int:
    """Training batch (sequences) when none is given: max(256, 2·N)."""
    return max(256, 2 * num_gpus)


def _checked_fixed(
    mode: str, fixed: dict[str, Any] | None, seq_len: int, latency_target_ms: float | None, redundant: int
) -> dict[str, Any]:
    """The fixed degrees given (``None`` dropped), after the search's input checks."""
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)} for the parallelism search (got {mode!r})", field="mode")
    fixed = {k: v for k, v in (fixed or {}).items() if v is not None}
    bad = set(fixed) - set(FIXABLE)
    if bad:
        raise InputError(f"fixed degrees: unknown {sorted(bad)}; known: {', '.join(FIXABLE)}")
    if ("pp_first" in fixed or "pp_last" in fixed) and "pp" not in fixed:
        raise InputError("pp_first/pp_last need pp fixed too (they split the layers of that pipeline)", field="pp_first")
    require_positive(**{k: v for k, v in fixed.items() if isinstance(v, int)})
    if "recompute" in fixed and fixed["recompute"] not in RECOMPUTE:
        raise InputError(
            f"recompute must be one of {', '.join(RECOMPUTE)} (got {fixed['recompute']!r})", field="recompute"
        )
    if mode != "train":
        for k in ("cp", "vpp", "micro_batch", "recompute", "distributed_optimizer", "pp_first", "pp_last"):
            if k in fixed and fixed[k] not in (1, None):
                raise InputError(f"{k} applies to mode 'train' only", field=k)
    require_positive(seq_len=seq_len, latency_target_ms=latency_target_ms)
    require_redundant(redundant)
    return fixed


@dataclass
class _Tally:
    """What the enumeration has seen so far."""

    rule_counts: dict[str, int]
    rule_examples: dict[str, Rejected]
    mem_rejected: list[Rejected]
    lat_rejected: list[Rejected]
    feasible: list[Candidate]
    enumerated: int = 0
    evaluated: int = 0

    def reject_rule(self, c: Candidate, rule: str, reason: str) -> None:
        self.rule_counts[rule] = self.rule_counts.get(rule, 0) + 1
        self.rule_examples.setdefault(rule, Rejected(c, rule, reason))


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
    train_dtype: str = "bf16",
    dispatcher: str = "alltoall",
    top_n: int = 5,
    max_rejected: int = 5,
    output_len: int | None = None,
    kv_dtype: str = "bf16",
    ttft_ms: float | None = None,
    request_rate: float | None = None,
    two_batch_overlap: str = "off",
    imbalance: Any = 1.0,
    a2a_overlap: str = "off",
) -> SearchResult:
    """Search the parallel configuration of ``mode`` (module docstring).

    ``fixed``: degrees the user gave (keys of :data:`FIXABLE`; ``None`` values are searched).
    ``global_batch``: training sequences per step (default :func:`default_global_batch`); serving
    sequences per step (default: decode the largest batch within memory and the target, prefill
    one prompt per GPU). Serving: ``seq_len`` is the prompt, ``output_len`` the tokens a decode
    sequence adds (its KV cache grows to ``seq_len + output_len``; time at the mean context,
    ``seq_len + output_len / 2``), ``latency_target_ms`` the TPOT (decode) or TTFT (prefill)
    target, ``ttft_ms`` (decode) a prefill of one prompt per data-parallel rank, ``kv_dtype`` the
    cache's dtype, ``request_rate`` a rate to report the plan against, ``two_batch_overlap`` the
    serving step's two-batch overlap (``off``, ``on``, ``auto``: the faster; planner.cost.serve_step), ``imbalance`` its routing imbalance (serve_step's). Training: ``train_dtype``
    (``bf16`` or ``fp8``) prices GEMMs, casts and memory; ``dispatcher`` (:data:`DISPATCHERS`) the
    token all-to-all; ``a2a_overlap`` Megatron's combined 1F1B (:mod:`planner.solve.search_train`).
    Raises :class:`InputError` when a fixed degree breaks a rule and
    :class:`InfeasibleError` when nothing fits, naming the binding constraint.
    """
    t0 = time.perf_counter()
    fixed = _checked_fixed(mode, fixed, seq_len, latency_target_ms, redundant)
    check_a2a_overlap(mode, None if a2a_overlap == "off" else a2a_overlap)
    require_positive(output_len=output_len, ttft_ms=ttft_ms, request_rate=request_rate)
    sv = ServeSpec(output_len=output_len, kv_dtype=kv_dtype, ttft_ms=ttft_ms, request_rate=request_rate,
                   two_batch_overlap=two_batch_overlap, imbalance=imbalance)
    N, n = cluster.num_gpus, cluster.gpus_per_node
    budget = budget_bytes(hw)
    if dispatcher not in DISPATCHERS:
        raise InputError(f"dispatcher must be one of {', '.join(DISPATCHERS)} (got {dispatcher!r})", field="dispatcher")
    sm = StepModel(model, hw, n, train_dtype if mode == "train" else "bf16")
    if mode == "train":
        gb = global_batch or default_global_batch(N)
    else:
        gb = global_batch
    t = _Tally({}, {}, [], [], [])
    tp_opts = _opts(fixed, "tp", [d for d in divisors(N) if d <= n or cross_node])
    etp_opts = _opts(fixed, "etp", [d for d in divisors(model.expert_intermediate_size) if d <= n and d <= N])
    slots_total = model.num_experts + (redundant if mode != "train" else 0)
    ep_all = [d for d in divisors(slots_total) if d <= N]
    ep_opts = _opts(fixed, "ep", ep_all)
    if mode == "train":
        cp_opts = _opts(fixed, "cp", [d for d in divisors(N) if d <= 16])
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
            pp_opts = _opts(fixed, "pp", [d for d in divisors(N // (tp * cp)) if d <= model.num_layers])
            for pp in pp_opts:
                if N % (tp * cp * pp):
                    continue
                dp = N // (tp * cp * pp)
                if "dp" in fixed and fixed["dp"] != dp:
                    continue
                vpp_opts = _opts(fixed, "vpp", [1] + [v for v in range(2, model.num_layers // max(pp, 1) + 1)
                                                      if pp > 1 and (model.num_layers % (pp * v) == 0 or v in VPP_EXTRA)]
                                 if mode == "train" else [1])
                for ep in ep_opts:
                    for etp in etp_opts:
                        for vpp in vpp_opts:
                            for mb in mb_opts:
                                t.enumerated += 1
                                base = Candidate(mode=mode, dp=dp, tp=tp, pp=pp, ep=ep, etp=etp, cp=cp, vpp=vpp,
                                                 micro_batch=mb, recompute=rc_opts[-1], distributed_optimizer=True,
                                                 pp_first=fixed.get("pp_first"), pp_last=fixed.get("pp_last"))
                                v = rule_violation(model, cluster, base, seq_len=seq_len, global_batch=gb if mode == "train" else None,
                                                   redundant=redundant, cross_node=cross_node, fixed=set(fixed))
                                if v is not None:
                                    t.reject_rule(base, *v)
                                    continue
                                if mode == "train":
                                    t.evaluated += train_variants(
                                        sm, model, hw, N, base, gb, seq_len, rc_opts, do_opts, budget, t.feasible, t.mem_rejected,
                                        train_dtype, DISPATCHERS[dispatcher], a2a_overlap,
                                    )
                                else:
                                    t.evaluated += _serve_variants(
                                        model, hw, cluster, base, gb, seq_len, redundant, budget, latency_target_ms,
                                        t.feasible, t.mem_rejected, t.lat_rejected, sv,
                                    )
    result = _finish(t, model, hw, N, mode, fixed, budget, top_n, max_rejected, t0)
    if mode == "train":
        result.notes.extend(train_notes(result.best, model, cluster, fixed, cross_node, dispatcher, train_dtype,
                                        a2a_overlap))
    else:
        result.notes.extend(_serve_notes(result.best, mode, seq_len, sv, N))
    return result


def _serve_notes(best: Candidate, mode: str, seq_len: int, sv: ServeSpec, N: int) -> list[str]:
    """What set the chosen serving batch, and the request rate against the rate the plan sustains."""
    notes = [best.binding_note] if best.binding_note else []
    per_request = (sv.output_len or 0) if mode == "decode" else seq_len
    if sv.request_rate is not None and per_request and best.tokens_per_s > 0:
        rate = best.tokens_per_s / per_request
        copies = math.ceil(sv.request_rate / rate - 1e-9)
        what = f"{per_request} output tokens" if mode == "decode" else f"a {per_request}-token prompt"
        notes.append(
            f"request rate: the plan sustains {rate:,.2f} requests/s ({best.tokens_per_s:,.0f} tokens/s, {what} "
            f"each); {sv.request_rate:g} requests/s need {copies} such deployment(s), {copies * N} GPUs"
            + (" (this one suffices)" if copies <= 1 else "")
        )
    return notes


def _finish(
    t: _Tally, model: ModelSpec, hw: HardwareProfile, N: int, mode: str, fixed: dict[str, Any], budget: float,
    top_n: int, max_rejected: int, t0: float,
) -> SearchResult:
    """The ranked result of an enumeration, or the error naming what binds."""
    feasible, mem_rejected, lat_rejected = t.feasible, t.mem_rejected, t.lat_rejected
    rule_counts, rule_examples = t.rule_counts, t.rule_examples
    if fixed and not feasible and not mem_rejected and not lat_rejected:
        ex = sorted(rule_examples.values(), key=lambda r: -rule_counts[r.rule])
        given = ", ".join(f"{k}={v}" for k, v in fixed.items())
        raise InputError(f"no valid configuration with {given}: {ex[0].reason if ex else 'no factorization of the GPUs'}")

    def explained(r: Rejected) -> Rejected:
        if r.reason or r.candidate.memory is None:
            return r
        return Rejected(r.candidate, r.rule, memory_reason(r.candidate.memory, budget, hw, mode, r.candidate.recompute))

    if not feasible:
        if lat_rejected:  # these fit in memory: the latency target is what binds
            fastest = min(lat_rejected, key=lambda r: r.candidate.latency_ms or math.inf)
            which = "time-to-first-token" if fastest.rule == "ttft" or mode == "prefill" else "per-output-token"
            raise InfeasibleError(  # the reason names fields in backquotes: the CLI shows them as flags
                f"no configuration meets the {which} latency target; the fastest ({fastest.candidate.label()}) {fastest.reason}",
                mentions=("batch", "prompt_len", "tpot_ms", "ttft_ms"))
        if mem_rejected:
            closest = explained(min(mem_rejected, key=lambda r: (r.candidate.memory.total if r.candidate.memory else math.inf)))
            cc = closest.candidate
            one = (" with one sequence per data-parallel rank" if cc.sequences == cc.dp else f" at batch {cc.sequences}"
                   ) if mode == "decode" else ""
            raise InfeasibleError(
                f"no configuration fits in memory{one}; the closest ({closest.candidate.label()}) {closest.reason}",
                mentions=SERVE_MEMORY_FIELDS if mode != "train" else (),
            )
        ex = max(rule_examples.values(), key=lambda r: rule_counts[r.rule]) if rule_examples else None
        raise InfeasibleError(f"no valid factorization of {N} GPUs: {ex.reason if ex else 'none enumerated'}")
    feasible = rank(feasible)
    best = feasible[0]
    key_best = best.sort_key()
    # the best rejected: faster than the choice but over memory (or latency), then one per rule
    rej = sorted(mem_rejected + lat_rejected, key=lambda r: r.candidate.sort_key())
    rej = [r for r in rej if r.candidate.sort_key() < key_best][:max_rejected] or rej[:max_rejected]
    rej = [explained(r) for r in rej] + sorted(rule_examples.values(), key=lambda r: r.rule)
    notes: list[str] = []
    return SearchResult(
        best=best, alternatives=feasible[:top_n], rejected=rej, rule_counts=dict(sorted(rule_counts.items())),
        evaluated=t.evaluated, enumerated=t.enumerated, time_s=time.perf_counter() - t0, budget_gib=budget / GIB, notes=notes,
    )


@dataclass(frozen=True)
class ServeSpec:
    """What a serving search needs besides the degrees (:func:`search`'s serving keywords)."""

    output_len: int | None = None
    kv_dtype: str = "bf16"
    ttft_ms: float | None = None  #: decode: one prompt per data-parallel rank prefilled within this
    request_rate: float | None = None
    two_batch_overlap: str = "off"  #: serve_step's mode (planner.cost.serve_step.TBO_MODES)
    imbalance: Any = 1.0  #: serve_step's routing imbalance (a factor, a pair or a callable)


def _largest(ok: Any, hi: int | None = None) -> int:
    """The largest r >= 1 with ``ok(r)``, ``ok`` monotone (true then false) and ``ok(1)`` true;
    ``hi``: a known upper end (else found by doubling up to :data:`MAX_SEQUENCES_PER_RANK`)."""
    lo = 1
    if hi is None:
        hi = 2
        while hi < MAX_SEQUENCES_PER_RANK and ok(hi):
            lo, hi = hi, hi * 2
        if hi >= MAX_SEQUENCES_PER_RANK and ok(MAX_SEQUENCES_PER_RANK):
            return MAX_SEQUENCES_PER_RANK
    elif ok(hi):
        return hi
    while hi - lo > 1:  # ok(lo), not ok(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _serve_variants(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, base: Candidate, gb: int | None, seq_len: int,
    redundant: int, budget: float, target: float | None, feasible: list[Candidate], mem_rejected: list[Rejected],
    lat_rejected: list[Rejected], sv: ServeSpec = ServeSpec(),
) -> int:
    """The serving candidate of ``base``'s degrees at its batch: the stated one, one prompt per GPU
    (prefill), or the largest decode batch that fits memory and meets the target (module
    docstring); appends it to ``feasible`` or a rejection. Returns the steps timed."""
    N, decode = cluster.num_gpus, base.mode == "decode"
    ctx_time = seq_len + (sv.output_len // 2 if decode and sv.output_len else 0)  # mean context of a decode
    timed = 0

    def memory(seqs: int) -> Any:
        return candidate_memory(model, replace(base, sequences=seqs), seq_len=seq_len, redundant=redundant,
                                output_len=sv.output_len, kv_dtype=sv.kv_dtype)

    def step(seqs: int, mode: str = base.mode) -> Any:
        nonlocal timed
        timed += 1
        return serve_step(model, hw, mode=mode, num_gpus=N, gpus_per_node=cluster.gpus_per_node, tp=base.tp,
                          pp=base.pp, ep=base.ep, etp=base.etp, sequences=seqs,
                          seq_len=ctx_time if mode == "decode" else seq_len, redundant=redundant,
                          kv_dtype=sv.kv_dtype, two_batch_overlap=sv.two_batch_overlap, imbalance=sv.imbalance)

    dp = base.dp
    first = replace(base, sequences=gb or (N if not decode else dp), memory=memory(gb or (N if not decode else dp)))
    if first.memory is not None and first.memory.total > budget:
        mem_rejected.append(Rejected(first, "memory", memory_reason(first.memory, budget, hw, base.mode)))
        return timed
    if decode and sv.ttft_ms is not None:
        pf = step(dp, "prefill").step_ms
        if pf > sv.ttft_ms:
            lat_rejected.append(Rejected(replace(first, latency_ms=pf), "ttft", (
                f"prefills one {seq_len}-token prompt per data-parallel rank in {pf:.2f} ms, over the "
                f"{sv.ttft_ms:g} ms time-to-first-token target; raise tp or ep, shorten the prompt (`prompt_len`) or relax "
                "the target (`ttft_ms`)")))
            return timed
    what = "per output token" if decode else "to first token"
    if gb is not None or not decode:
        seqs, binding = (gb, "stated") if gb is not None else (N, "default")
        note = (f"batch {seqs} as stated" if gb is not None else
                f"prefill batch: one {seq_len}-token prompt per GPU ({N})")
    else:  # the largest batch (sequences per data-parallel rank × dp) within memory, then the target
        r_mem = _largest(lambda r: memory(r * dp).total <= budget)
        r, binding = r_mem, ("ceiling" if r_mem >= MAX_SEQUENCES_PER_RANK else "memory")
        over = memory((r_mem + 1) * dp)
        kv_seq = over.kv_cache / (r_mem + 1) if over.kv_cache else 0.0
        note = (f"decode batch {r_mem * dp} ({r_mem} per data-parallel rank × {dp}): memory binds — {r_mem + 1} per "
                f"rank would need {over.total / GIB:.1f} GiB per GPU, over the {budget / GIB:.1f} GiB budget "
                f"(KV cache {kv_seq / 2**20:.1f} MiB per sequence at {seq_len + (sv.output_len or 1)} tokens in "
                f"{sv.kv_dtype})")
        if target is not None and step(r_mem * dp).latency_per_token_ms > target:
            if step(dp).latency_per_token_ms > target:
                r, binding = 1, "latency"  # even one sequence per rank misses the target: rejected below
            else:
                r = _largest(lambda r: step(r * dp).latency_per_token_ms <= target, r_mem)
                slower = step((r + 1) * dp).latency_per_token_ms
                binding = "latency"
                note = (f"decode batch {r * dp} ({r} per data-parallel rank × {dp}): the {target:g} ms per-output-token "
                        f"target binds — {r + 1} per rank predicts {slower:.2f} ms (memory would hold {r_mem} per rank)")
        seqs = r * dp
    c = replace(base, sequences=seqs, memory=memory(seqs))
    st = step(seqs)
    c = replace(c, step_ms=st.step_ms, tokens_per_s=st.throughput_tokens_per_s, latency_ms=st.latency_per_token_ms,
                detail={"moe_layer_ms": st.moe_layer_ms, "attention_ms": st.attention_ms,
                        "tokens_per_step": st.tokens_per_step, "two_batch_overlap": float(st.two_batch_overlap)},
                binding=binding, binding_note=note)
    if c.memory is not None and c.memory.total > budget:
        mem_rejected.append(Rejected(c, "memory", memory_reason(c.memory, budget, hw, base.mode)))
    elif target is not None and st.latency_per_token_ms > target:
        lat_rejected.append(Rejected(
            c, "latency", f"predicts {st.latency_per_token_ms:.2f} ms {what} at batch {seqs}, over the {target:g} ms "
            "target; raise ep or tp" + (", lower the batch (`batch`)" if gb is not None else "")
            + (", or relax the target (`tpot_ms`)" if decode else ", or relax the target (`ttft_ms`)")))
    else:
        feasible.append(c)
    return timed


def _serving_targets(
    mode: str, latency_target_ms: float | None, tpot_ms: float | None, ttft_ms: float | None
) -> tuple[float | None, float | None]:
    """(the search's latency target, decode's TTFT target): TPOT in decode, TTFT in prefill;
    ``latency_target_ms`` is the older name of the mode's one."""
    if mode == "prefill" and tpot_ms is not None:
        raise InputError("tpot_ms applies to mode decode (a prefill step's target is ttft_ms)", field="tpot_ms")
    own, name = (tpot_ms, "tpot_ms") if mode == "decode" else (ttft_ms, "ttft_ms")
    if latency_target_ms is not None and own is not None and latency_target_ms != own:
        raise InputError(
            f"latency_target_ms ({latency_target_ms:g}) is the older name of {name} ({own:g}) in mode {mode}; give one",
            field="latency_target_ms",
        )
    target = own if own is not None else latency_target_ms
    return target, ttft_ms if mode == "decode" else None


def check_serving_pricing(mode: str, two_batch_overlap: str | None, routing: str | None) -> None:
    """``two_batch_overlap`` and ``routing`` price serving steps: given, they must be allowed values
    and the mode prefill or decode (serve takes them through :func:`planner.plan_serving`)."""
    for name, value, allowed in (("two_batch_overlap", two_batch_overlap, TBO_MODES), ("routing", routing, ROUTINGS)):
        if value is not None and mode not in ("prefill", "decode"):
            raise InputError(f"{name} prices serving steps: it applies to modes prefill, decode and serve, not {mode}",
                             field=name)
        if value is not None and value not in allowed:
            raise InputError(f"{name} must be one of {', '.join(allowed)} (got {value!r})", field=name)


def search_workload(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, workload: Workload, *, fixed: dict[str, Any],
    redundant: int = 0, latency_target_ms: float | None = None, cross_node: bool = False,
    mean_sequence_len: float | None = None, two_batch_overlap: str | None = None, routing: str | None = None,
    trace: Any = None, a2a_overlap: str | None = None,
) -> tuple[SearchResult | None, Workload]:
    """:func:`search` for ``workload`` (``None`` for the modes it does not serve), and the workload
    with what serving resolved written in — prompt and output lengths
    (:func:`~planner.specs.workload.serving_lengths`; ``mean_sequence_len``: the trace's, when it
    has sequences) and the batch found — so that the plan records them and simulate and validate
    form the same steps. Training steps are priced with ``a2a_overlap`` (default ``off``), serving
    steps with ``two_batch_overlap`` (default ``off``) and
    ``routing`` (default ``uniform``; ``eplb``: the busiest GPU under EPLB, derived from ``trace``
    or the model's, :func:`planner.solve.serve_imbalance.imbalance_fn`)."""
    mode = workload.mode
    check_serving_pricing(mode, two_batch_overlap, routing)
    check_a2a_overlap(mode, a2a_overlap)
    if mode not in MODES:
        return None, workload
    if mode == "train":
        found = search(
            model, hw, cluster, mode=mode, seq_len=workload.seq_len, global_batch=workload.global_batch, fixed=fixed,
            redundant=redundant, latency_target_ms=latency_target_ms, cross_node=cross_node,
            train_dtype=workload.train_dtype, a2a_overlap=a2a_overlap or "off",
        )
        return found, workload
    target, ttft = _serving_targets(mode, latency_target_ms, workload.tpot_ms, workload.ttft_ms)
    prompt, output, how = serving_lengths(workload, mean_sequence_len if mode == "decode" else None)
    found = search(
        model, hw, cluster, mode=mode, seq_len=prompt, global_batch=workload.serving_batch, fixed=fixed,
        redundant=redundant, latency_target_ms=target, cross_node=cross_node,
        output_len=output if mode == "decode" else None, kv_dtype=workload.kv_dtype, ttft_ms=ttft,
        request_rate=workload.request_rate, two_batch_overlap=two_batch_overlap or "off",
        imbalance=imbalance_fn(model, redundant, mode, cluster.gpus_per_node, trace) if routing == "eplb" else 1.0,
    )
    if routing == "eplb":
        found.notes.insert(0, IMBALANCE_NOTE + "the step priced at its busiest GPU under EPLB with "
                              f"{redundant} redundant experts, derived from routing at the step's tokens per GPU")
    found.notes.insert(0, f"serving lengths: {how}" if mode == "decode" else f"serving lengths: prompt {prompt}")
    update: dict[str, Any] = {"batch": found.best.sequences, "prompt_len": prompt,
                              "batch_searched": workload.serving_batch is None}
    if mode == "decode":
        update["output_len"] = output
    return found, workload.model_copy(update=update)
