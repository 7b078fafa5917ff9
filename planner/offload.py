"""Offload mode: one GPU, experts in pinned host memory (``plan --mode offload --gpu-memory-gb X``).

The pieces: :mod:`planner.cachesim` (simulator, predictor, Belady), :mod:`planner.solve.cache`
(sizing by DP over layers and policy search). This module builds the problem (trace in decode
shape, memory budget, cost figures), solves it into a :class:`~planner.specs.plan.Plan` with its
``cache`` section, replays plans (``simulate``) and draws the sizing curve.

**Memory budget** (bytes; ``--gpu-memory-gb`` X in GB = 10⁹ bytes)::

    experts = X·10⁹ − non-expert weights − KV cache − activations − staging
    KV      = b · seq_len · kv_bytes_per_token          (b = decode batch: ``micro_batch``, default 1)
    staging = min(E, k·b) expert buffers for on-demand copies (a layer's misses at most)
    slots   = ⌊experts / expert_bytes⌋                   (resident + dynamic + prefetch buffers)

``experts < 0`` is infeasible (:class:`~planner.errors.InfeasibleError` with the numbers).
Weights, KV cache and activations come from :func:`planner.cost.memory.inference_memory`.

**Cost figures** (:func:`offload_timing`, per decode step of b tokens with ``seq_len`` tokens of
context each): ``pre`` = decode attention + router + shared experts + permute and combine of one
MoE layer (:mod:`planner.cost.layers`), ``other`` = the dense layers (attention + dense FFN),
``c`` = one expert's pinned host-to-device copy (:func:`planner.cost.transfer.h2d_ms`),
K(M) = :func:`planner.cost.compute.expert_ffn_ms`. Embeddings and the LM head are not counted.
A missed expert run on the host CPU costs ``K_cpu(M) = 0.103 ms + max(bytes / 43.5 GB/s,
2·params·M / 1 TFLOP/s)``: the line through docs/facts.md §2's two CPU measurements at one token
(the FLOP term for several tokens is an assumption; the host is not in the hardware profiles).

**Trace** (:func:`decode_split`): offloaded decoding runs a few tokens per step. A trace with
sequences (``seq_id`` / ``pos``) is decoded as a server would
(:func:`planner.traces.steps.decode_steps`: b concurrent sequences, one token each per step, a
finished sequence replaced by the next in arrival order; at b = 1 the sequences one after
another, tokens in ``pos`` order) and split **by sequences**: the first ``train_fraction`` of the
sequences (arrival order) are planned on, the later ones are decoded after them and score the
plan — no sequence is cut between the two. A trace without sequences whose steps hold more than
b tokens (the shipped synthetic traces: 16 steps of 512 tokens) is cut to its first
``decode_tokens`` / steps tokens of each step (consecutive tokens of a step come from one rank's
sequences) and regrouped into decode steps of b consecutive tokens; the first
``train_fraction`` of those steps is planned on, the rest scores the plan.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.cache_bounds import access_keys, belady_misses
from planner.cachesim import (
    CacheConfig,
    CacheSimResult,
    OffloadTiming,
    PrefetchConfig,
    decode_steps,
    fit_predictor,
    step_counts,
    step_probs,
)
from planner.cachesim_fast import replay
from planner.cost.compute import expert_ffn_ms
from planner.cost.layers import (
    attention_ms,
    combine_ms,
    dense_ffn_ms,
    permute_ms,
    router_ms,
    shared_experts_ms,
)
from planner.cost.memory import GIB, inference_memory
from planner.cost.transfer import h2d_ms
from planner.errors import InfeasibleError, InputError
from planner.io import atomic_write_bytes, atomic_write_text
from planner.provenance import input_hash, make_provenance
from planner.resolve import resolve_hardware, resolve_trace
from planner.solve import precision as prec_ilp
from planner.solve.cache import (
    BASELINES,
    REFERENCE_STEPS,
    CacheSolution,
    baseline_configs,
    solve_cache,
)
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.plan import (
    CachePlan,
    CachePredicted,
    LayerPrediction,
    Parallel,
    Placement,
    Plan,
    Predicted,
    Prefetch,
    Provenance,
    SolverReport,
)
from planner.specs.workload import Workload
from planner.traces import Trace
from planner.traces.steps import decode_steps as seq_decode_steps
from planner.traces.steps import sequences as seq_sequences

GB = 1e9
#: Host-CPU expert FFN (bf16, 16 cores, 1 token): t = CPU_EXPERT_FIXED_MS + expert bytes / CPU_EXPERT_GBPS,
#: the line through docs/facts.md §2's two measurements (Mixtral-8x7B expert, 352.3 MB: 8.2 ms;
#: Qwen3-30B-A3B expert, 9.44 MB: 0.32 ms): 43.5 GB/s and 0.103 ms.
CPU_EXPERT_GBPS = 43.5
CPU_EXPERT_FIXED_MS = 0.103
#: Host-CPU bf16 throughput for several tokens (an assumption, not measured): TFLOP/s.
CPU_TFLOPS = 1.0
#: Decode tokens kept from a trace with large steps (spread over its steps).
DECODE_TOKENS = 2048


def decode_trace(trace: Trace, batch: int, decode_tokens: int = DECODE_TOKENS) -> Trace:
    """The trace in decode shape (module docstring), without a planning split."""
    if decode_tokens <= 0:
        raise InputError(f"decode_tokens must be > 0 (got {decode_tokens})", field="decode_tokens")
    if trace.has_sequences:
        return seq_decode_steps(trace, batch)
    step = trace.step
    _, idx = np.unique(step, return_inverse=True)
    n_steps = int(idx.max()) + 1
    per_step = trace.num_tokens / n_steps
    if per_step > batch:
        keep_n = max(batch, decode_tokens // n_steps)
        starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
        pos = np.arange(trace.num_tokens) - starts[idx]
        mask = pos < keep_n
        trace = Trace(trace.topk_ids[:, mask], trace.num_experts, step=step[mask], model=trace.model, source=trace.source)
    return decode_steps(trace, batch)


def decode_split(trace: Trace, batch: int, train_fraction: float, decode_tokens: int = DECODE_TOKENS) -> tuple[Trace, int, str]:
    """The decode-shaped trace, its number of planning steps and what was held out (module
    docstring: by sequences when the trace has them, else by steps)."""
    if not 0 < train_fraction < 1:
        raise InputError(f"train_fraction must be in (0, 1) (got {train_fraction})", field="train_fraction")
    if not trace.has_sequences:
        tr = decode_trace(trace, batch, decode_tokens)
        S = int(np.unique(tr.step).size)
        P = int(min(max(round(S * train_fraction), 1), S - 1)) if S > 1 else S
        return tr, P, f"held-out decode steps: the last {S - P} of {S} (planned on the first {P})"
    order, starts, lengths = seq_sequences(trace)
    N = starts.size
    if N < 2:
        raise InputError(f"{trace.source}: offload planning on sequences needs >= 2 sequences (got {N})")
    n_plan = int(min(max(round(N * train_fraction), 1), N - 1))
    seq_T = np.empty(trace.num_tokens, np.int64)
    seq_T[order] = np.repeat(np.arange(N), lengths)
    parts = []
    for sel in (seq_T < n_plan, seq_T >= n_plan):
        parts.append(seq_decode_steps(trace.take(sel), batch))
    P = int(parts[0].step.max()) + 1
    tr = Trace(np.concatenate([parts[0].topk_ids, parts[1].topk_ids], axis=1), trace.num_experts,
               step=np.concatenate([parts[0].step, parts[1].step + P]), model=trace.model, source=trace.source)
    S = int(tr.step.max()) + 1
    how = (f"held-out sequences: the last {N - n_plan} of {N} in arrival order ({S - P} decode steps at batch"
           f" {batch}; planned on the first {n_plan}, {P} steps)")
    return tr, P, how


def offload_timing(model: ModelSpec, hw: HardwareProfile, batch: int, context: int, dtype: str | None = None) -> OffloadTiming:
    """Cost figures of one decode step (module docstring); ``dtype``: the experts in that precision."""
    model = model if dtype is None else ModelSpec.model_validate({**model.model_dump(), "expert_dtype": dtype})
    b = batch
    att = attention_ms(hw, model, mode="decode", sequences=b, context=context).total_ms
    pre = att + router_ms(hw, model, b) + shared_experts_ms(hw, model, b) + permute_ms(hw, model, b) + combine_ms(hw, model, b)
    other = model.num_dense_layers * (att + dense_ffn_ms(hw, model, b))
    ffn = np.asarray(expert_ffn_ms(hw, model.hidden_size, model.expert_intermediate_size, model.expert_dtype, np.arange(b + 1)))
    ffn = ffn.astype(np.float64)
    ffn[0] = 0.0
    M = np.arange(b + 1)
    cpu = CPU_EXPERT_FIXED_MS + np.maximum(
        model.expert_bytes / (CPU_EXPERT_GBPS * 1e6), 2.0 * model.expert_params * M / (CPU_TFLOPS * 1e9)
    )
    cpu[0] = 0.0
    return OffloadTiming(
        copy_ms=float(h2d_ms(hw, model.expert_bytes)), ffn_ms_M=ffn, pre_ms=float(pre), other_ms=float(other),
        overlap=hw.pcie.copy_compute_overlap, expert_bytes=float(model.expert_bytes), cpu_ms_M=cpu,
    )


@dataclass(frozen=True)
class Budget:
    """GPU memory split (bytes) and the expert slots it leaves."""

    total: float
    non_expert: float
    kv_cache: float
    activations: float
    staging: float
    staging_slots: int
    experts: float
    slots: int

    def describe(self) -> dict[str, float]:
        return {
            "gpu_memory_gib": self.total / GIB, "non_expert_gib": self.non_expert / GIB, "kv_cache_gib": self.kv_cache / GIB,
            "activations_gib": self.activations / GIB, "staging_gib": self.staging / GIB, "experts_gib": self.experts / GIB,
            "expert_slots": self.slots,
        }


def memory_budget(model: ModelSpec, gpu_memory_gb: float, batch: int, seq_len: int) -> Budget:
    """The module docstring's budget; :class:`InfeasibleError` when the experts get nothing."""
    total = gpu_memory_gb * GB
    mem = inference_memory(model, slots_per_gpu=1, kv_tokens=batch * seq_len, batch_tokens=batch)
    non_expert = float(model.non_expert_bytes)
    act = mem.activations + mem.dispatch_buffers
    staging_slots = min(model.num_experts, model.top_k * batch)
    staging = staging_slots * model.expert_bytes
    experts = total - non_expert - mem.kv_cache - act - staging
    if experts < 0:
        raise InfeasibleError(
            f"gpu_memory_gb {gpu_memory_gb:g} ({total / GIB:.2f} GiB) is less than what {model.name} needs besides cached"
            f" experts: non-expert weights {non_expert / GIB:.2f} GiB + KV cache {mem.kv_cache / GIB:.2f} GiB (batch {batch}"
            f" × {seq_len} tokens) + activations {act / GIB:.3f} GiB + {staging_slots} staging buffers"
            f" {staging / GIB:.2f} GiB = {(total - experts) / GIB:.2f} GiB; raise `gpu_memory_gb` to at least"
            f" {math.ceil((total - experts) / GB * 100) / 100:g}",
            field="gpu_memory_gb", mentions=("gpu_memory_gb",),
        )
    slots = int(experts // model.expert_bytes)
    return Budget(total, non_expert, mem.kv_cache, act, staging, staging_slots, experts, slots)


@dataclass(frozen=True)
class OffloadProblem:
    """Validated inputs of one offload planning run."""

    model: ModelSpec
    hardware: HardwareProfile
    workload: Workload
    trace: Trace  #: decode-shaped
    trace_label: str
    plan_steps: int
    counts_SLE: np.ndarray
    timing: OffloadTiming
    budget: Budget
    batch: int
    seed: int
    time_limit: float
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    split: str = ""  #: what was held out (decode_split)
    precision: prec_ilp.PrecisionSpec | None = None  #: a precision per expert (planner.solve.precision)

    @property
    def evaluated_on(self) -> str:
        S = self.counts_SLE.shape[0]
        return self.split or f"held-out decode steps: the last {S - self.plan_steps} of {S} (planned on the first {self.plan_steps})"

    def size(self) -> dict[str, Any]:
        m = self.model
        out = {
            "model": m.name, "mode": "offload", "moe_layers": m.num_moe_layers, "experts": m.num_experts, "top_k": m.top_k,
            "trace": self.trace_label, "decode_batch": self.batch, "decode_steps": int(self.counts_SLE.shape[0]),
            "planning_steps": self.plan_steps, "expert_mb": round(m.expert_bytes / 1e6, 3),
            "all_experts_gib": round(m.num_moe_layers * m.num_experts * m.expert_bytes / GIB, 3),
        }
        out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in self.budget.describe().items()})
        return out

    def check_memory(self) -> float:
        return self.budget.total - self.budget.experts + self.budget.slots * self.model.expert_bytes

    @property
    def prefetch_count(self) -> int:
        return min(self.model.num_experts, self.model.top_k * self.batch)

    def probs(self) -> np.ndarray:
        """Prefetch probabilities over all decode steps from a predictor fitted on the planning steps."""
        tr = self.trace
        _, s_T = np.unique(tr.step, return_inverse=True)
        plan_mask = s_T < self.plan_steps
        pred = fit_predictor(tr.topk_ids[:, plan_mask], tr.num_experts)
        return step_probs(pred, tr.topk_ids, tr.step, tr.num_experts)


def prepare_offload(
    model: ModelSpec, hw: HardwareProfile, trace: Trace, trace_label: str, *, gpu_memory_gb: float, batch: int | None,
    seq_len: int, seed: int, time_limit: float, train_fraction: float, decode_tokens: int = DECODE_TOKENS,
    workload: Workload | None = None, notes: tuple[str, ...] = (), expert_precisions: str | None = None,
    max_accuracy_cost: float | None = None,
) -> OffloadProblem:
    """Check the inputs of an offload run and build the problem (module docstring)."""
    b = 1 if batch is None else int(batch)
    if b <= 0:
        raise InputError(f"micro_batch (decode batch in offload mode) must be > 0 (got {b})", field="micro_batch")
    if gpu_memory_gb * GB > hw.hbm_bytes:
        raise InputError(
            f"gpu_memory_gb {gpu_memory_gb:g} ({gpu_memory_gb * GB / GIB:.1f} GiB) exceeds {hw.name}'s"
            f" {hw.hbm_bytes / GIB:.1f} GiB",
            field="gpu_memory_gb",
        )
    if not trace.has_tokens:
        raise InputError(f"{trace_label}: offload planning needs a per-token trace (counts-only statistics have no order)")
    tr, plan_steps, split = decode_split(trace, b, min(train_fraction, 1 - 1e-9), decode_tokens)
    counts = step_counts(tr.topk_ids, tr.step, tr.num_experts)
    S = counts.shape[0]
    if S < 2:
        raise InputError(f"{trace_label}: offload planning needs >= 2 decode steps (got {S})")
    budget = memory_budget(model, gpu_memory_gb, b, seq_len)
    prec = prec_ilp.parse_precisions(expert_precisions, model.expert_dtype, max_accuracy_cost)
    wl = workload or Workload(mode="offload", seq_len=seq_len, micro_batch=b, gpu_memory_gb=gpu_memory_gb)
    return OffloadProblem(
        model=model, hardware=hw, workload=wl, trace=tr, trace_label=trace_label, plan_steps=plan_steps, counts_SLE=counts,
        timing=offload_timing(model, hw, b, seq_len), budget=budget, batch=b, seed=seed, time_limit=time_limit,
        options={"gpu_memory_gb": gpu_memory_gb, "micro_batch": b, "seq_len": seq_len, "seed": seed,
                 "train_fraction": train_fraction, "decode_tokens": decode_tokens, **(prec.options() if prec else {})},
        notes=notes, split=split, precision=prec,
    )


# ---- evaluation -------------------------------------------------------------------------------


def evaluate(pr: OffloadProblem, cfg: CacheConfig, probs: np.ndarray | None = None) -> CacheSimResult:
    """Replay all decode steps through ``cfg`` (prefetch on ``probs``), counting the held-out ones."""
    if cfg.prefetch is not None:
        if probs is None:
            probs = pr.probs()
        cfg = CacheConfig(cfg.resident_LE, cfg.dynamic_L, cfg.policy,
                          PrefetchConfig(probs, cfg.prefetch.threshold, cfg.prefetch.max_count), cfg.cpu)
    return replay(pr.counts_SLE, cfg, pr.timing, record_from=pr.plan_steps, batch=pr.batch)


def belady_bound(pr: OffloadProblem, slots: int) -> int:
    """Belady's demand copies on the held-out steps with ``slots`` shared slots, warm start."""
    return belady_misses(access_keys(pr.counts_SLE[pr.plan_steps:]), slots, warm=True)


def baselines(pr: OffloadProblem) -> dict[str, CacheConfig]:
    """The published caches at the same expert slots (:data:`planner.solve.cache.BASELINES`,
    fitted on the planning steps): per-layer even LRU (mixtral-offloading), the global top-k
    frequency set (KTransformers' GPU set), the same with every miss run on the CPU (as
    KTransformers runs its CPU experts); and per-layer LFU of the same size."""
    L, E = pr.model.num_moe_layers, pr.model.num_experts
    out = baseline_configs(pr.counts_SLE[: pr.plan_steps], L, E, pr.budget.slots)
    lru = out[BASELINES[0]]
    out["even-lfu"] = CacheConfig(lru.resident_LE, lru.dynamic_L, "lfu")
    return out


# ---- solve ------------------------------------------------------------------------------------


def solve_offload(pr: OffloadProblem, **solve_kw: Any) -> Plan:
    """Size and fill the cache on the planning steps, score it on the held-out steps: a Plan."""
    m, hw = pr.model, pr.hardware
    L, E = m.num_moe_layers, m.num_experts
    P = pr.plan_steps
    probs = pr.probs() if P <= REFERENCE_STEPS else None  # prefetch is tried on short traces only
    if pr.budget.slots >= L * E:  # everything fits: nothing to offload
        sol_cfg = CacheConfig(np.ones((L, E), bool), np.zeros(L, np.int64), "lru")
        chosen, status, candidates, time_s, thr, pf_count = "all-resident", "optimal", {}, 0.0, None, 0
    elif pr.precision is not None:  # a precision per expert: the ILP of planner.solve.precision (docs/offload.md §6)
        tims = [offload_timing(m, hw, pr.batch, pr.workload.seq_len, p) for p in pr.precision.names]
        sol = prec_ilp.solve_precision(pr.counts_SLE[:P], tims, pr.precision, pr.budget.experts, m.expert_params,
                                       batch=pr.batch, time_limit=pr.time_limit)
        sol_cfg, chosen, status, candidates, time_s = sol.config, sol.chosen, sol.answer.status, sol.candidates, sol.time_s
        thr, pf_count = None, 0
    else:
        sol: CacheSolution = solve_cache(
            pr.counts_SLE[:P], None if probs is None else probs[:P], pr.timing, pr.budget.slots, pr.prefetch_count, batch=pr.batch,
            **{"time_limit": pr.time_limit, **solve_kw},
        )
        sol_cfg, chosen, status = sol.config, sol.chosen, "time_limit" if sol.stopped_by_time else "heuristic"
        candidates, time_s, thr, pf_count = sol.candidates, sol.time_s, sol.threshold, sol.prefetch_count
    mixed = sol.answer if chosen != "all-resident" and isinstance(sol, prec_ilp.PrecisionSolution) else None
    sim = evaluate(pr, sol_cfg, probs) if mixed is None else prec_ilp.replay_precision(
        pr.counts_SLE, mixed.resident_LE, mixed.precision_LE, tims, sol_cfg.cpu, record_from=P, batch=pr.batch)
    bel, held = belady_bound(pr, pr.budget.slots), pr.counts_SLE.shape[0] - P
    pf = None if thr is None else Prefetch(count=pf_count, predictor="cross-layer-transition", threshold=thr,
                                           accuracy=sim.prefetch_accuracy)
    used_slots = int(sol_cfg.resident_LE.sum() + sol_cfg.dynamic_L.sum()) + pf_count + pr.budget.staging_slots
    exp_bytes = used_slots * m.expert_bytes if mixed is None else mixed.resident_bytes + pr.budget.staging
    stats = sim.summary()
    cache = CachePlan(
        budget_bytes=int(pr.budget.experts + pr.budget.staging),
        resident=[np.flatnonzero(sol_cfg.resident_LE[i]).tolist() for i in range(L)],
        dynamic_slots=sol_cfg.dynamic_L.astype(int).tolist(), policy=sol_cfg.policy,
        prefetch=pf, staging_slots=pr.budget.staging_slots,
        cpu_execution=sol_cfg.cpu, accuracy_cost=None if mixed is None else mixed.accuracy_cost,
        expert_precision=None if mixed is None else np.asarray(pr.precision.names)[mixed.precision_LE].tolist(),
        predicted=CachePredicted(
            hit_rate=sim.hit_rate, hit_rate_per_layer=[float(x) for x in sim.hit_rate_L],
            transfers_per_step=stats["transfers_per_step"], cpu_per_step=stats["cpu_per_step"],
            bytes_per_step=stats["bytes_per_step"],
            stall_ms_per_step=stats["stall_ms_per_step"], step_ms=stats["step_ms"], tokens_per_s=stats["tokens_per_s"],
            decode_batch=pr.batch, belady_transfers_per_step=bel / max(held, 1),
        ),
    )
    predicted = _predicted(pr, sim, (pr.budget.non_expert + exp_bytes) / GIB)
    plan_sim = sol.planning if chosen != "all-resident" else None
    solver = SolverReport(
        name="cache-dp" if mixed is None else "precision-ilp", status=status,
        objective=None if plan_sim is None else float(plan_sim.step_ms_S.mean()), time_s=round(time_s, 3), candidates=candidates,
    )
    if chosen != "all-resident":
        if sol.sampled_steps is not None:
            err = "" if sol.sample_error is None else f" (relative standard error of its step time {sol.sample_error:.1%})"
            predicted.notes.append(f"the policy search scored {sol.sampled_steps} of the {P} planning steps, in windows{err}")
        predicted.notes.extend(f"not tried: {x}" for x in sol.skipped)
        if probs is None:
            predicted.notes.append(f"not tried: prefetch ({P} planning steps: more than the {REFERENCE_STEPS} the reference"
                                   " replay takes)")
        predicted.notes.append(f"policy chosen on the planning steps: {chosen}" + (prec_ilp.describe(mixed, pr.precision) if mixed else ""))
    return Plan(
        model=m, cluster=ClusterSpec(hardware=hw.name, num_nodes=1, gpus_per_node=1), workload=pr.workload,
        parallel=Parallel(dp=1, tp=1, pp=1, ep=1),
        placement=Placement(slots_per_gpu=E, physical_to_logical=[list(range(E)) for _ in range(L)]),
        cache=cache, predicted=predicted, solver=solver, provenance=_provenance(pr),
    )


def _predicted(pr: OffloadProblem, sim: CacheSimResult, memory_gib: float) -> Predicted:
    moe_S = sim.layer_ms_SL.sum(axis=1)
    expert_SL = sim.compute_ms_SL  # attention, router and shared experts (pre) plus routed experts
    notes = list(pr.notes) + [
        "offload: comm_ms is the stall waiting for expert copies (or CPU experts); compute_ms the layer's"
        " attention, router and expert FFNs",
        "embeddings and the LM head are not in the step time",
        "offload mode plans one GPU, every expert in pinned host memory (--nodes / --gpus-per-node are not used)",
    ]
    return Predicted(
        evaluated_on=pr.evaluated_on,
        moe_time_per_step_ms=float(moe_S.mean()), moe_time_p50_ms=float(np.percentile(moe_S, 50)),
        moe_time_p99_ms=float(np.percentile(moe_S, 99)), moe_layer_ms=float(sim.layer_ms_SL.mean()),
        compute_ms=float(expert_SL.mean()), comm_ms=float(sim.stall_ms_SL.mean()), imbalance=1.0,
        intra_node_bytes_per_step=0.0, inter_node_bytes_per_step=0.0, tokens_per_step=float(pr.batch),
        memory_per_gpu_gib=memory_gib,
        per_layer=[
            LayerPrediction(layer=i, compute_ms=float(expert_SL[:, i].mean()), comm_ms=float(sim.stall_ms_SL[:, i].mean()),
                            total_ms=float(sim.layer_ms_SL[:, i].mean()), imbalance=1.0)
            for i in range(sim.layer_ms_SL.shape[1])
        ],
        notes=notes, tokens_per_s=sim.tokens_per_s,
    )


def cache_memory_problems(cache: CachePlan, model: ModelSpec, hw: HardwareProfile) -> list[str]:
    """``moe-planner check`` for an offload plan: the cache's experts fit its budget, and the
    budget plus the non-expert weights fit the GPU."""
    out = []
    slots = sum(len(r) for r in cache.resident) + sum(cache.dynamic_slots) + cache.staging_slots
    slots += cache.prefetch.count if cache.prefetch is not None else 0
    need = slots * model.expert_bytes if cache.expert_precision is None else cache.staging_slots * model.expert_bytes + (
        prec_ilp.resident_bytes(cache.resident, cache.expert_precision, model.expert_params))
    if need > cache.budget_bytes * (1 + 1e-9):
        out.append(
            f"cache: {slots} expert buffers × {model.expert_bytes / 1e6:.1f} MB = {need / GIB:.2f} GiB exceed"
            f" cache.budget_bytes ({cache.budget_bytes / GIB:.2f} GiB)"
        )
    total = cache.budget_bytes + model.non_expert_bytes
    if total > hw.hbm_bytes:
        out.append(
            f"memory: cache budget {cache.budget_bytes / GIB:.1f} GiB + non-expert weights {model.non_expert_bytes / GIB:.1f}"
            f" GiB exceed {hw.name}'s {hw.hbm_bytes / GIB:.1f} GiB"
        )
    return out


def _provenance(pr: OffloadProblem) -> Provenance:
    """The plan's provenance: its inputs and the decode-shaped trace's ids (without their shape:
    :func:`planner.provenance.input_hash`)."""
    inputs = {"model": pr.model.model_dump(mode="json"), "hardware": pr.hardware.model_dump(mode="json"),
              "workload": pr.workload.model_dump(mode="json"), "options": pr.options}
    return make_provenance(pr.seed, pr.trace_label, input_hash(inputs, [pr.trace.topk_ids], shapes=False))


# ---- replaying a plan -------------------------------------------------------------------------


def plan_config(plan: Plan, probs: np.ndarray | None) -> CacheConfig:
    """The plan's cache as a simulator configuration (prefetch on ``probs``)."""
    c, m = plan.cache, plan.model
    if c is None:
        raise InputError("the plan has no cache section (not an offload plan)")
    res = np.zeros((m.num_moe_layers, m.num_experts), bool)
    for i, row in enumerate(c.resident):
        res[i, row] = True
    pf = None
    if c.prefetch is not None and c.prefetch.count > 0 and probs is not None:
        thr = c.prefetch.threshold if c.prefetch.threshold is not None else 0.0
        pf = PrefetchConfig(probs, thr, c.prefetch.count)
    return CacheConfig(res, np.asarray(c.dynamic_slots, np.int64), c.policy, pf, c.cpu_execution)


def simulate_plan(plan: Plan, trace: Trace, hw: HardwareProfile, *, train_fraction: float = 0.75) -> dict[str, Any]:
    """Replay ``trace`` (decode-shaped at the plan's batch) through an offload plan. The prefetch
    predictor is refitted on the first ``train_fraction`` of its steps; figures are over the rest."""
    b = plan.workload.micro_batch or 1
    tr, P, how = decode_split(trace, b, min(train_fraction, 1 - 1e-9), DECODE_TOKENS)
    counts = step_counts(tr.topk_ids, tr.step, tr.num_experts)
    S = counts.shape[0]
    if S < 2:
        raise InputError(f"simulate: the trace gives {S} decode step(s) at batch {b}; needs >= 2")
    probs = None
    pf = plan.cache.prefetch if plan.cache is not None else None
    if pf is not None and pf.count > 0:  # the predictor only matters to a plan that prefetches
        _, s_T = np.unique(tr.step, return_inverse=True)
        pred = fit_predictor(tr.topk_ids[:, s_T < P], tr.num_experts)
        probs = step_probs(pred, tr.topk_ids, tr.step, tr.num_experts)
    cfg = plan_config(plan, probs)
    timing = offload_timing(plan.model, hw, b, plan.workload.seq_len)
    names, prec_LE = prec_ilp.precision_index(plan.cache.expert_precision) if plan.cache.expert_precision else ((), None)
    tims = [offload_timing(plan.model, hw, b, plan.workload.seq_len, p) for p in names]
    sim = (replay(counts, cfg, timing, record_from=P, batch=b) if prec_LE is None
           else prec_ilp.replay_precision(counts, cfg.resident_LE, prec_LE, tims, cfg.cpu, record_from=P, batch=b))
    out = sim.summary()
    out["hit_rate_per_layer"] = [float(x) for x in sim.hit_rate_L]
    out["evaluated_on"] = f"{how}; prefetch predictor fitted on the planning steps"
    return out


# ---- sizing curve -----------------------------------------------------------------------------


def sizing_curve(
    model: ModelSpec, hw: HardwareProfile, trace: Trace, trace_label: str, budgets_gb: list[float], *, batch: int | None = None,
    seq_len: int = 4096, seed: int = 0, train_fraction: float = 0.75, **solve_kw: Any,
) -> list[dict[str, Any]]:
    """Hit rate and predicted tokens/s of the solved plan at each GPU memory budget (GB)."""
    rows = []
    for gb in budgets_gb:
        row: dict[str, Any] = {"gpu_memory_gb": gb}
        try:
            pr = prepare_offload(model, hw, trace, trace_label, gpu_memory_gb=gb, batch=batch, seq_len=seq_len, seed=seed,
                                 time_limit=60.0, train_fraction=train_fraction)
        except InfeasibleError:
            row.update({"expert_slots": 0, "hit_rate": None, "tokens_per_s": None, "stall_ms_per_step": None,
                        "transfers_per_step": None, "feasible": False})
            rows.append(row)
            continue
        p = solve_offload(pr, **solve_kw)
        cp = p.cache.predicted
        row.update({"expert_slots": pr.budget.slots, "hit_rate": cp.hit_rate, "tokens_per_s": cp.tokens_per_s,
                    "stall_ms_per_step": cp.stall_ms_per_step, "transfers_per_step": cp.transfers_per_step, "feasible": True})
        rows.append(row)
    return rows


def write_sizing_curve(rows: list[dict[str, Any]], out_dir: str | Path, title: str) -> tuple[Path, Path]:
    """``sizing.csv`` and ``sizing.png`` (hit rate and tokens/s against the budget) in ``out_dir``."""
    out = Path(out_dir)
    cols = ["gpu_memory_gb", "expert_slots", "feasible", "hit_rate", "tokens_per_s", "stall_ms_per_step", "transfers_per_step"]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]}" for c in cols) for r in rows]
    csv = out / "sizing.csv"
    atomic_write_text(csv, "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["feasible"]]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    x = [r["gpu_memory_gb"] for r in ok]
    ax.plot(x, [r["hit_rate"] for r in ok], "o-", color="tab:blue", label="hit rate")
    ax.set_xlabel("GPU memory budget (GB)")
    ax.set_ylabel("expert hit rate", color="tab:blue")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(x, [r["tokens_per_s"] for r in ok], "s--", color="tab:red", label="tokens/s")
    ax2.set_ylabel("predicted decode tokens/s", color="tab:red")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    png = out / "sizing.png"
    atomic_write_bytes(png, buf.getvalue())
    return csv, png


@dataclass(frozen=True)
class OffloadSimulationReport:
    """An offload plan replayed through a trace (what ``planner.simulate`` returns for plans with a
    ``cache``): :func:`simulate_plan`'s figures."""

    plan: Plan
    trace_label: str
    figures: dict[str, Any]

    @classmethod
    def run(cls, plan: Plan, trace: Any, hardware: Any, tokens_per_step: int | None) -> OffloadSimulationReport:
        hw = resolve_hardware(hardware if hardware is not None else plan.cluster.hardware)
        tr, label, _ = resolve_trace(trace, plan.model, plan.provenance.seed, tokens_per_step)
        return cls(plan=plan, trace_label=label, figures=simulate_plan(plan, tr, hw))

    def summary(self) -> dict[str, Any]:
        p = self.plan
        out = {"mode": "offload", "model": p.model.name, "hardware": p.cluster.hardware, "trace": self.trace_label,
               "decode_batch": p.workload.micro_batch or 1, "gpu_memory_gb": p.workload.gpu_memory_gb}
        out.update(self.figures)
        if p.cache is not None and p.cache.predicted is not None:
            out["plan_predicted"] = p.cache.predicted.model_dump(mode="json", exclude={"hit_rate_per_layer"})
        return out
