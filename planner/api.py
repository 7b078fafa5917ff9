"""Python API: ``planner.plan(...)`` and friends (docs/contracts.md, "Python API").

The CLI is a thin shell over these functions: everything ``moe-planner plan`` can do, a trainer
can do from Python with the same arguments.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _pkg_version
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from planner.cost.compute import expert_ffn_ms, grouped_model_ms
from planner.cost.memory import GIB, weights_per_gpu_bytes
from planner.errors import InfeasibleError, InputError
from planner.simulator import (
    DEFAULT_RELAY,
    DISPATCH,
    SimResult,
    check_relay,
    combine_groups,
    describe,
    simulate_placement,
)
from planner.solve import baselines
from planner.solve import parallel as parallel_search
from planner.solve.degrees import resolve_degrees
from planner.solve.placement import PlacementCost, PlacementInputs, solve_placement
from planner.specs.base import format_validation_error
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile, load_hardware
from planner.specs.model import ModelSpec
from planner.specs.model_io import load_model
from planner.specs.plan import (
    LayerPrediction,
    Parallel,
    Placement,
    Plan,
    Predicted,
    Provenance,
    SolverReport,
)
from planner.specs.workload import Workload
from planner.traces import (
    CountsTrace,
    Trace,
    check_against_model,
    default_trace_path,
    load_trace,
    synth_trace,
)
from planner.traces.expand import CAVEAT, tokens_from_counts
from planner.traces.stats import group_limit_excess
from planner.traces.stream import StreamedTrace

BASELINES = ("contiguous", "round-robin", "eplb")
DEFAULT_MODEL = "qwen3-30b-a3b"
#: Share of tokens breaking the model's group-limited routing above which the plan says so.
GROUP_EXCESS_NOTE = 0.01
DEFAULT_HARDWARE = "h100-sxm"


def version() -> str:
    try:
        return _pkg_version("moe-planner")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def resolve_model(model: str | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else load_model(model)


def resolve_hardware(hardware: str | HardwareProfile) -> HardwareProfile:
    return hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)


def resolve_trace(
    trace: str | Path | Trace | CountsTrace | None, model: ModelSpec, seed: int, tokens_per_step: int | None = None
) -> tuple[Trace, str, np.ndarray | None]:
    """The trace to plan from, a label for provenance, and — for counts-only and streamed
    traces — the recorded counts of every step as (step ids [S], counts [S, L, E]): the
    per-token trace is then sampled from them (counts only) or holds a sample of the steps
    (streamed, :mod:`planner.traces.stream`)."""
    if trace is None:
        path = default_trace_path(model.name)
        if path is not None:
            t = load_trace(path)
            label = f"shipped:{path.name}"
        else:
            t = synth_trace(model, num_tokens=8192, tokens_per_step=512, seed=seed)
            label = f"synthetic(seed={seed})"
    elif isinstance(trace, str | Path):
        t = load_trace(trace, model=model, tokens_per_step=tokens_per_step)
        label = Path(trace).name
    else:
        t = trace
        label = "in-memory"
    check_against_model(t, model, label)
    if isinstance(t, StreamedTrace):
        return t, f"{label} (streamed)", (t.recorded_steps, t.recorded_counts)
    if not t.has_tokens:
        counts = t.counts_per_step()
        return tokens_from_counts(t, model.top_k, seed), f"{label} (counts only)", (np.arange(len(counts)), counts)
    return t, label, None


def counts_only(label: str) -> bool:
    """Whether a trace label (:func:`resolve_trace`) names tokens sampled from per-expert counts."""
    return label.endswith("(counts only)")


def trace_notes(trace: Trace, label: str) -> tuple[str, ...]:
    """The caveats a trace puts on the figures made from it: counts-only (tokens sampled from
    counts) and streamed (a sample of steps); labels as :func:`resolve_trace` gives them."""
    notes = (CAVEAT,) if counts_only(label) else ()
    return notes + ((trace.note(),) if isinstance(trace, StreamedTrace) else ())


def _hash_inputs(parts: dict[str, Any], trace: Trace) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(parts, sort_keys=True, default=str).encode())
    arrays = [trace.topk_ids, trace.step]
    if isinstance(trace, StreamedTrace):  # the sample's ids, and the exact counts of every step
        arrays += [trace.recorded_steps, trace.recorded_counts]
    for arr in arrays:
        a = np.ascontiguousarray(arr)
        h.update(str(a.shape).encode())
        h.update(a.astype(np.int64).tobytes())
    return h.hexdigest()


def stage_source_gpus(trace: Trace, num_gpus: int) -> np.ndarray:
    """GPU (of a pipeline stage's ``num_gpus``) each token starts on: int64 [T].

    A trace recorded on R data-parallel ranks is replayed on ``num_gpus`` GPUs: recorded rank
    ``r`` owns GPUs ``[r·n/R, (r+1)·n/R)`` when ``n >= R`` (its tokens of a step spread over
    them in contiguous blocks), or shares GPU ``r·n // R`` with its neighbours when ``n < R``.
    Traces without ranks spread each step's tokens over the GPUs in contiguous blocks.
    """
    if trace.source_rank is None:
        return trace.source_ranks(num_gpus)
    r_T = trace.source_rank.astype(np.int64)
    recorded = int(r_T.max()) + 1
    if recorded >= num_gpus:
        return r_T * num_gpus // recorded
    lo = r_T * num_gpus // recorded
    width = (r_T + 1) * num_gpus // recorded - lo
    _, step_idx = np.unique(trace.step, return_inverse=True)
    key = step_idx * recorded + r_T
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    start = np.searchsorted(sorted_key, sorted_key, side="left")
    size = np.searchsorted(sorted_key, sorted_key, side="right") - start
    pos = np.empty_like(r_T)
    pos[order] = np.arange(r_T.size) - start
    size_T = np.empty_like(r_T)
    size_T[order] = size
    return lo + pos * width // size_T


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a trace is dispatched from (one pipeline stage's EP groups).

    ``group_T`` expert-data-parallel group, ``src_T`` EP rank inside the group, ``index_T``
    position inside the group (the dispatch rule's token index), ``step_T`` step index in
    ``[0, num_steps)``; ``gpus_per_node`` EP ranks per node as the simulator sees them.
    """

    group_T: np.ndarray
    src_T: np.ndarray
    index_T: np.ndarray
    step_T: np.ndarray
    num_steps: int
    num_groups: int
    gpus_per_node: int


def token_layout(trace: Trace, cluster: ClusterSpec, par: Parallel) -> TokenLayout:
    """A pipeline stage's GPUs form ``edp = GPUs / (ep · etp)`` groups of ``ep`` EP ranks; a token
    starting on stage GPU ``g`` is dispatched inside group ``g // (ep · etp)`` from EP rank
    ``(g mod (ep · etp)) // etp``."""
    stage_gpus = cluster.num_gpus // par.pp
    group_size = par.ep * par.etp
    gpu_T = stage_source_gpus(trace, stage_gpus)
    _, step_idx = np.unique(trace.step, return_inverse=True)
    group_T = gpu_T // group_size
    order = np.argsort(group_T, kind="stable")
    counts = np.bincount(group_T, minlength=stage_gpus // group_size)
    index_T = np.empty_like(group_T)
    index_T[order] = np.arange(group_T.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return TokenLayout(
        group_T=group_T, src_T=(gpu_T % group_size) // par.etp, index_T=index_T, step_T=step_idx.astype(np.int64),
        num_steps=int(step_idx.max()) + 1, num_groups=stage_gpus // group_size,
        gpus_per_node=ep_ranks_per_node(cluster, par),
    )


def ep_ranks_per_node(cluster: ClusterSpec, par: Parallel) -> int:
    """EP ranks per node as the simulator sees them (an EP rank spans ``etp`` GPUs)."""
    return max(1, min(cluster.gpus_per_node, par.ep * par.etp) // par.etp)


def _simulate(
    phy2log: np.ndarray, trace: Trace, model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec,
    par: Parallel, dispatch: str, relay: str | None = None, kernel: str = "loop",
) -> SimResult:
    """Simulate every expert-data-parallel group of EP ranks on the tokens that start in it
    (:func:`token_layout`); groups run side by side (:func:`planner.simulator.combine_groups`).
    ``kernel``: how local experts run (:data:`planner.cost.compute.KERNELS`)."""
    slots = phy2log.shape[1] // par.ep
    lay = token_layout(trace, cluster, par)
    results = []
    for grp in range(lay.num_groups):
        mask = lay.group_T == grp
        results.append(
            simulate_placement(
                phy2log,
                slots,
                trace.topk_ids[:, mask],
                lay.step_T[mask],
                lay.src_T[mask],
                hw=hw,
                hidden=model.hidden_size,
                ffn=model.expert_intermediate_size // par.etp,
                dtype=model.expert_dtype,
                num_experts=model.num_experts,
                gpus_per_node=lay.gpus_per_node,
                dispatch=dispatch,
                num_steps=lay.num_steps,
                relay=relay,
                kernel=kernel,
            )
        )
    return combine_groups(results)


def placement_cost(model: ModelSpec, hw: HardwareProfile, par: Parallel, kernel: str = "loop") -> PlacementCost:
    """The cost model the placement solver optimises (what :func:`_simulate` charges; with
    ``kernel="grouped"`` each slot's share of its GPU's launch — the launch itself is the same
    for every GPU that has a token, so it does not move the placement)."""
    ffn = model.expert_intermediate_size // par.etp
    per_slot = grouped_model_ms if kernel == "grouped" else expert_ffn_ms
    return PlacementCost(
        ffn_ms=lambda n: per_slot(hw, model.hidden_size, ffn, model.expert_dtype, n),
        token_bytes=model.hidden_size * 2.0,
        nvlink_gbps=hw.nvlink.bandwidth_gbps, nvlink_latency_us=hw.nvlink.latency_us,
        nic_gbps=hw.nic.bandwidth_gbps, nic_latency_us=hw.nic.latency_us,
        overlap=hw.comm_overlap, expert_bytes=model.expert_bytes / par.etp,
    )


def placement_inputs(problem: Problem, relay: str | None = None) -> PlacementInputs:
    """The placement problem (arrays) of a prepared problem's planning steps."""
    pr = problem
    m, par = pr.model, pr.parallel
    lay = token_layout(pr.plan_trace, pr.cluster, par)
    return PlacementInputs(
        ids_LTk=pr.plan_trace.topk_ids, step_T=lay.step_T, src_T=lay.src_T, tok_index_T=lay.index_T,
        num_steps=lay.num_steps, num_experts=m.num_experts, num_gpus=par.ep, gpus_per_node=lay.gpus_per_node,
        slots_per_gpu=pr.slots_per_gpu, cost=placement_cost(m, pr.hardware, par, pr.workload.expert_kernel), n_group=m.n_group,
        topk_group=m.topk_group, dispatch=pr.dispatch, group_T=lay.group_T if lay.num_groups > 1 else None,
        relay=check_relay(relay),
    )


def summarize(sim: SimResult, evaluated_on: str, memory_gib: float, notes: list[str] | None = None) -> Predicted:
    """Predicted figures of a simulation (means over steps; percentiles of the per-step sum)."""
    layer_ms = sim.layer_ms_SL
    step_ms = sim.step_ms_S
    per_layer = [
        LayerPrediction(
            layer=i,
            compute_ms=float(sim.compute_ms_SL[:, i].mean()),
            comm_ms=float(sim.comm_ms_SL[:, i].mean()),
            total_ms=float(layer_ms[:, i].mean()),
            imbalance=float(sim.imbalance_SL[:, i].mean()),
        )
        for i in range(layer_ms.shape[1])
    ]
    return Predicted(
        evaluated_on=evaluated_on,
        moe_time_per_step_ms=float(step_ms.mean()),
        moe_time_p50_ms=float(np.percentile(step_ms, 50)),
        moe_time_p99_ms=float(np.percentile(step_ms, 99)),
        moe_layer_ms=float(layer_ms.mean()),
        compute_ms=float(sim.compute_ms_SL.mean()),
        comm_ms=float(sim.comm_ms_SL.mean()),
        imbalance=float(sim.imbalance_SL.mean()),
        intra_node_bytes_per_step=float(sim.intra_bytes_SL.sum(1).mean()),
        inter_node_bytes_per_step=float(sim.inter_bytes_SL.sum(1).mean()),
        tokens_per_step=float(sim.tokens_S.mean()),
        memory_per_gpu_gib=memory_gib,
        per_layer=per_layer,
        notes=notes or [],
    )


def baseline_placement(
    name: str, weight_LE: np.ndarray, model: ModelSpec, cluster: ClusterSpec, par: Parallel, redundant: int
) -> np.ndarray:
    """``phy2log`` [L, E + R] of a named baseline."""
    L, E = weight_LE.shape
    if name in ("contiguous", "round-robin") and redundant:
        raise InputError(
            f"--baseline {name} places no redundant experts (got --redundant-experts {redundant}); use --baseline eplb"
        )
    if name == "contiguous":
        return baselines.contiguous(L, E, par.ep)
    if name == "round-robin":
        return baselines.round_robin(L, E, par.ep)
    if name == "eplb":
        nodes = max(1, par.ep // cluster.gpus_per_node) if par.ep >= cluster.gpus_per_node else 1
        groups = model.n_group or 1
        return baselines.eplb(weight_LE, E + redundant, groups, nodes, par.ep)
    raise InputError(f"--baseline must be one of {', '.join(BASELINES)} (got {name!r})")


@dataclass(frozen=True)
class Problem:
    """Validated inputs of one planning run (what ``--dry-run`` reports)."""

    model: ModelSpec
    hardware: HardwareProfile
    cluster: ClusterSpec
    workload: Workload
    parallel: Parallel
    trace: Trace
    trace_label: str
    plan_trace: Trace
    plan_counts_LE: np.ndarray
    eval_trace: Trace
    evaluated_on: str
    redundant_experts: int
    baseline: str | None
    dispatch: str
    time_limit: float
    seed: int
    options: dict[str, Any]
    #: the parallelism search (planner.solve.parallel.SearchResult) that chose ``parallel``
    search: Any = None
    fixed: dict[str, Any] | None = None

    @property
    def slots_per_gpu(self) -> int:
        return (self.model.num_experts + self.redundant_experts) // self.parallel.ep

    def size(self) -> dict[str, Any]:
        """Problem size, as ``--dry-run`` prints it."""
        m, par = self.model, self.parallel
        return {
            "model": m.name,
            "moe_layers": m.num_moe_layers,
            "experts": m.num_experts,
            "top_k": m.top_k,
            "gpus": self.cluster.num_gpus,
            "parallel": par.model_dump(),
            "physical_slots": m.num_experts + self.redundant_experts,
            "slots_per_gpu": self.slots_per_gpu,
            "trace": self.trace_label,
            "trace_tokens": self.trace.num_tokens,
            "trace_steps": self.trace.num_steps,
            "planning_steps": self.plan_trace.num_steps,
            "held_out_steps": self.eval_trace.num_steps if self.eval_trace is not self.plan_trace else 0,
            "candidates": [self.baseline] if self.baseline else self.candidate_names(),
            "weights_per_gpu_gib": round(self.weights_per_gpu() / GIB, 3),
            **({"memory_per_gpu_gib": round(self.check_memory() / GIB, 3),
                "search": f"{self.search.best.label()}: {self.search.best.step_ms:.1f} ms/step, "
                          f"{self.search.best.tokens_per_s:,.0f} tok/s ({self.search.enumerated} candidates, "
                          f"{self.search.time_s:.2f} s)"} if self.search is not None else {}),
            "gpu_memory_gib": round(self.hardware.hbm_bytes / GIB, 3),
        }

    def weights_per_gpu(self) -> float:
        """Bytes of weights one GPU holds with this problem's slots and degrees."""
        par = self.parallel
        return weights_per_gpu_bytes(self.model, self.slots_per_gpu, par.tp, par.pp, par.etp)

    def check_memory(self) -> float:
        """Memory per GPU in bytes for the mode when the parallelism search ran (weights,
        gradients, optimizer, activations, KV cache: it checked the budget), else weights only;
        :class:`InfeasibleError` naming the numbers when they do not fit."""
        if self.search is not None and self.search.best.memory is not None:
            return self.search.best.memory.total
        m, par, hw = self.model, self.parallel, self.hardware
        mem, cap = self.weights_per_gpu(), hw.hbm_bytes
        if mem > cap:
            raise InfeasibleError(
                f"weights need {mem / GIB:.1f} GiB per GPU ({self.slots_per_gpu} expert slots × {m.num_moe_layers} MoE"
                f" layers × {m.expert_bytes / 1e6:.1f} MB / etp {par.etp} + non-expert {m.non_expert_bytes / GIB:.1f}"
                f" GiB / (tp {par.tp} × pp {par.pp})), {hw.name} has {cap / GIB:.1f} GiB; raise ep, tp or pp, or add GPUs"
            )
        return mem

    def candidate_names(self) -> list[str]:
        return [b for b in BASELINES if not (self.redundant_experts and b != "eplb")]


def prepare(
    model: str | ModelSpec = DEFAULT_MODEL,
    hardware: str | HardwareProfile = DEFAULT_HARDWARE,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    mode: str = "decode",
    trace: str | Path | Trace | None = None,
    ep: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    etp: int | None = None,
    vpp: int | None = None,
    micro_batch: int | None = None,
    global_batch: int | None = None,
    seq_len: int = 4096,
    tokens_per_step: int | None = None,
    redundant_experts: int = 0,
    gpu_memory_gb: float | None = None,
    baseline: str | None = None,
    dispatch: str = "even",
    time_limit: float = 60.0,
    seed: int = 0,
    train_fraction: float = 0.75,
    cp: int | None = None,
    recompute: str | None = None,
    distributed_optimizer: bool | None = None,
    latency_target_ms: float | None = None,
    cross_node: bool = False,
    expert_kernel: str = "loop",
) -> Problem:
    """Load and check every input of a planning run; raises :class:`InputError` on bad input.

    For ``train``, ``prefill`` and ``decode`` the degrees given are fixed and the rest chosen by
    the parallelism search (:mod:`planner.solve.parallel`; ``cp``, ``recompute``,
    ``distributed_optimizer``, ``latency_target_ms`` and ``cross_node`` are its options; decode's
    batch defaults to the trace's tokens per step). :class:`InfeasibleError` when nothing fits.
    """
    if time_limit <= 0:
        raise InputError(f"--time-limit must be > 0 seconds (got {time_limit})")
    if not 0 < train_fraction <= 1:
        raise InputError(f"train_fraction must be in (0, 1] (got {train_fraction})")
    if dispatch not in DISPATCH:
        raise InputError(f"--dispatch must be one of {', '.join(DISPATCH)} (got {dispatch!r})")
    if baseline is not None and baseline not in BASELINES:
        raise InputError(f"--baseline must be one of {', '.join(BASELINES)} (got {baseline!r})")
    if nodes <= 0 or gpus_per_node <= 0:
        raise InputError(f"--nodes and --gpus-per-node must be > 0 (got {nodes}, {gpus_per_node})")
    m = resolve_model(model)
    hw = resolve_hardware(hardware)
    cluster = ClusterSpec(hardware=hw.name, num_nodes=nodes, gpus_per_node=gpus_per_node)
    try:
        workload = Workload(
            mode=mode, seq_len=seq_len, micro_batch=micro_batch, global_batch=global_batch,
            tokens_per_step=tokens_per_step, gpu_memory_gb=gpu_memory_gb, expert_kernel=expert_kernel,
        )
    except ValidationError as e:
        raise InputError(format_validation_error("workload", e)) from None
    if mode == "offload":  # one GPU, experts in host memory: planner.offload
        from planner.offload import prepare_offload

        tr, trace_label, _recorded = resolve_trace(trace, m, seed, tokens_per_step)
        return prepare_offload(
            m, hw, tr, trace_label, gpu_memory_gb=gpu_memory_gb, batch=micro_batch, seq_len=seq_len, seed=seed,
            time_limit=time_limit, train_fraction=train_fraction, workload=workload,
            notes=trace_notes(tr, trace_label),
        )
    par = resolve_degrees(m, cluster, ep=ep, tp=tp, pp=pp, dp=dp, etp=etp, vpp=vpp, redundant=redundant_experts)
    if baseline in ("contiguous", "round-robin") and redundant_experts:
        raise InputError(
            f"--baseline {baseline} places no redundant experts (got --redundant-experts {redundant_experts}); "
            "use --baseline eplb"
        )
    tr, trace_label, recorded_counts = resolve_trace(trace, m, seed, tokens_per_step)
    if tr.num_steps >= 2:
        plan_tr, eval_tr = tr.split(train_fraction)
        if eval_tr.num_steps == 0:
            plan_tr, eval_tr = tr.split(1 - 1 / tr.num_steps)
        evaluated_on = (
            f"held-out steps: the last {eval_tr.num_steps} of {tr.num_steps} (planned on the first {plan_tr.num_steps})"
        )
    else:
        plan_tr = eval_tr = tr
        evaluated_on = "the planning step itself (the trace has one step: no held-out data)"
    if recorded_counts is not None:  # balance on what was recorded (every planning step), not on the samples
        rec_steps, rec_counts = recorded_counts
        planning = rec_steps < eval_tr.steps[0] if eval_tr is not plan_tr else np.ones(len(rec_steps), bool)
        plan_counts = rec_counts[planning].sum(axis=0)
    else:
        plan_counts = plan_tr.counts()
    # parallelism search (planner.solve.parallel): the degrees given are fixed, the rest searched
    fixed = {
        "tp": tp, "pp": pp, "dp": dp, "ep": ep, "etp": etp, "vpp": vpp, "cp": cp, "micro_batch": micro_batch,
        "recompute": recompute, "distributed_optimizer": distributed_optimizer,
    }
    found = None
    if mode in parallel_search.MODES:
        if mode == "decode" and global_batch is None:
            batch = max(1, round(tr.num_tokens / max(1, tr.num_steps)))  # the trace's tokens per step
        else:
            batch = global_batch
        found = parallel_search.search(
            m, hw, cluster, mode=mode, seq_len=seq_len, global_batch=batch, fixed=fixed, redundant=redundant_experts,
            latency_target_ms=latency_target_ms, cross_node=cross_node,
        )
        b = found.best
        par = Parallel(dp=b.dp, tp=b.tp, pp=b.pp, ep=b.ep, etp=b.etp, vpp=b.vpp, cp=b.cp)
    options = {
        "cp": cp, "recompute": recompute, "distributed_optimizer": distributed_optimizer,
        "latency_target_ms": latency_target_ms, "cross_node": cross_node,
        "ep": ep, "tp": tp, "pp": pp, "dp": dp, "etp": etp, "vpp": vpp,
        "redundant_experts": redundant_experts, "baseline": baseline, "dispatch": dispatch,
        "seed": seed, "train_fraction": train_fraction,
    }
    return Problem(
        model=m, hardware=hw, cluster=cluster, workload=workload, parallel=par, trace=tr,
        trace_label=trace_label, plan_trace=plan_tr, plan_counts_LE=plan_counts, eval_trace=eval_tr, evaluated_on=evaluated_on,
        redundant_experts=redundant_experts, baseline=baseline, dispatch=dispatch,
        time_limit=time_limit, seed=seed, options=options, search=found, fixed=fixed,
    )


def previous_placement(previous: Plan | str | Path | np.ndarray, problem: Problem) -> np.ndarray:
    """The previous plan's ``physical_to_logical`` [L, P], checked against ``problem``."""
    m = problem.model
    P = m.num_experts + problem.redundant_experts
    if isinstance(previous, str | Path):
        previous = Plan.load(previous)
    if isinstance(previous, Plan):
        if previous.model.num_experts != m.num_experts or previous.model.num_moe_layers != m.num_moe_layers:
            raise InputError(
                f"--previous: the previous plan is for {previous.model.name} ({previous.model.num_moe_layers} MoE layers "
                f"× {previous.model.num_experts} experts), this problem has {m.num_moe_layers} × {m.num_experts}"
            )
        arr = np.asarray(previous.placement.physical_to_logical, dtype=np.int64)
    else:
        arr = np.asarray(previous, dtype=np.int64)
    if arr.ndim != 2 or arr.shape != (m.num_moe_layers, P):
        raise InputError(
            f"--previous: the previous placement has shape {list(arr.shape)} [layers, slots], this problem needs "
            f"[{m.num_moe_layers}, {P}] ({m.num_experts} experts + {problem.redundant_experts} redundant); "
            "re-plan with the same --redundant-experts and EP size"
        )
    if arr.min() < 0 or arr.max() >= m.num_experts:
        raise InputError(f"--previous: expert ids must be in [0, {m.num_experts})")
    return arr


def solve(
    problem: Problem,
    *,
    previous: Plan | str | Path | np.ndarray | None = None,
    migration_weight: float = 0.01,
    relay: str | None = None,
) -> Plan:
    """Place experts for a prepared problem and score the placement on held-out steps.

    With a baseline the named baseline is returned. Otherwise the placement solver
    (:func:`planner.solve.placement.solve_placement`: stage-1 MILP, replicas, GPU assignment and
    local search, within ``problem.time_limit`` seconds) places the experts; ``solver.candidates``
    holds the planning-step objective of the solver's placement and of every baseline it was
    compared with, and the plan keeps the best. ``previous`` (a plan, its path, or a
    ``physical_to_logical`` array) adds a migration penalty: ``migration_weight`` × the time to
    copy the moved experts' weights, per planning step (module docstring of
    :mod:`planner.solve.placement`). ``relay``: the simulator's convention for where an
    inter-node copy lands, for planning and scoring (default :data:`planner.simulator.DEFAULT_RELAY`).
    """
    from planner.offload import OffloadProblem, solve_offload

    if isinstance(problem, OffloadProblem):
        if previous is not None:
            raise InputError("--previous re-plans expert placement; it has no effect with --mode offload")
        return solve_offload(problem)
    t0 = time.perf_counter()
    relay = check_relay(relay)
    pr = problem
    m, hw, cluster, par = pr.model, pr.hardware, pr.cluster, pr.parallel
    kernel = pr.workload.expert_kernel
    slots = pr.slots_per_gpu
    mem = pr.check_memory()
    if migration_weight < 0:
        raise InputError(f"migration_weight must be >= 0 (got {migration_weight})")
    weight_LE = pr.plan_counts_LE.astype(np.float64)
    notes = list(trace_notes(pr.trace, pr.trace_label))
    # tokens drawn from counts carry no groups to check
    excess = 0.0 if counts_only(pr.trace_label) else group_limit_excess(pr.plan_trace, m.n_group, m.topk_group)
    if excess > GROUP_EXCESS_NOTE:
        notes.append(
            f"the trace does not follow {m.name}'s group-limited routing: {excess:.0%} of tokens pick experts in "
            f"more than topk_group = {m.topk_group} of its n_group = {m.n_group} groups (recorded with another "
            "model, or with group routing off?); EPLB keeps groups together regardless"
            + ("; the solver moves single experts between nodes where that saves inter-node copies"
               if ep_ranks_per_node(cluster, par) < par.ep and pr.baseline is None else "")
        )
    if pr.baseline is not None and previous is not None:
        raise InputError(f"--previous re-plans with the solver; it has no effect with --baseline {pr.baseline}")
    if pr.baseline is not None:
        p2l = baseline_placement(pr.baseline, weight_LE, m, cluster, par, pr.redundant_experts)
    else:
        prev = previous_placement(previous, pr) if previous is not None else None
        extra = {
            name: baseline_placement(name, weight_LE, m, cluster, par, pr.redundant_experts)
            for name in pr.candidate_names() if name != "eplb"
        }

        def objective(phy2log: np.ndarray) -> float:
            return float(_simulate(phy2log, pr.plan_trace, m, hw, cluster, par, pr.dispatch, relay, kernel).step_ms_S.mean())

        res = solve_placement(
            placement_inputs(pr, relay), time_limit=pr.time_limit, seed=pr.seed, previous_LP=prev,
            migration_weight=migration_weight if prev is not None else 0.0, evaluate=objective,
            extra_candidates=extra,
        )
        p2l = res.phy2log_LP
        if res.chosen != "placement-ilp" and "placement-ilp" in res.candidates:
            notes.append(
                f"the solver's own placement scored {res.candidates['placement-ilp']:.3f} ms on the planning steps; "
                f"the {res.chosen} placement ({res.objective:.3f} ms) was better and is kept"
            )
        elif res.chosen != "placement-ilp":
            notes.append(
                f"the time limit ({pr.time_limit:g} s) ran out before the solver's own placement could be scored on "
                f"the planning steps; the {res.chosen} placement ({res.objective:.3f} ms) is kept — raise --time-limit"
            )
    # the solver already scored its pick on the planning steps (no migration term without --previous)
    known = res.objective if pr.baseline is None and previous is None else None
    notes += _replica_cost_note(pr, p2l, relay, known)
    sim = _simulate(p2l, pr.eval_trace, m, hw, cluster, par, pr.dispatch, relay, kernel)
    if relay != DEFAULT_RELAY:
        notes.append(f"traffic scored with the simulator's {relay!r} relay convention")
    predicted = summarize(sim, pr.evaluated_on, mem / GIB, notes)
    search_report = None
    if pr.search is not None:
        predicted = predicted.model_copy(update=parallel_search.predicted_figures(pr.search))
        search_report = parallel_search.to_report(pr.search, pr.fixed or {}, pr.workload.mode)
    elapsed = round(time.perf_counter() - t0, 3)
    if pr.baseline is None:
        solver = SolverReport(
            name="placement-ilp", status=res.status, objective=res.objective, bound=res.bound, gap=res.gap,
            time_s=round(res.time_s, 3), candidates=res.candidates,
        )
    else:
        solver = SolverReport(name=pr.baseline, status="baseline", objective=None, time_s=elapsed)
    inputs = {
        "model": m.model_dump(mode="json"),
        "hardware": hw.model_dump(mode="json"),
        "cluster": cluster.model_dump(mode="json"),
        "workload": pr.workload.model_dump(mode="json"),
        "options": pr.options,
    }
    if pr.baseline is None and previous is not None:
        inputs["previous"] = hashlib.sha256(np.ascontiguousarray(prev).tobytes()).hexdigest()
        inputs["migration_weight"] = migration_weight
    provenance = Provenance(
        version=version(),
        seed=pr.seed,
        input_hash=_hash_inputs(inputs, pr.trace),
        created=_dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        trace=pr.trace_label,
    )
    out = Plan(
        model=m,
        cluster=cluster,
        workload=pr.workload,
        parallel=par,
        placement=Placement(slots_per_gpu=slots, physical_to_logical=p2l.tolist()),
        dispatch=pr.dispatch,
        predicted=predicted,
        search=search_report,
        solver=solver,
        provenance=provenance,
    )
    if search_report is not None:
        out = out.model_copy(update={"launch": parallel_search.launch_args(out)})
    return out


def _replica_cost_note(pr: Problem, p2l: np.ndarray, relay: str, t_plan: float | None = None) -> list[str]:
    """A note when the same GPUs without redundant slots (contiguous, E / ep per GPU) predict less
    MoE time on the planning steps than the plan: at small token counts an expert's GEMM is bound
    by reading its weights, and every replica that receives tokens reads them once more.
    ``t_plan``: the plan's planning-step MoE ms when already known (else simulated here)."""
    m, par = pr.model, pr.parallel
    if pr.redundant_experts <= 0 or m.num_experts % par.ep:
        return []
    kernel = pr.workload.expert_kernel
    weight_LE = pr.plan_counts_LE.astype(np.float64)
    plain = baseline_placement("contiguous", weight_LE, m, pr.cluster, par, 0)
    def planning_ms(p: np.ndarray) -> float:
        return float(_simulate(p, pr.plan_trace, m, pr.hardware, pr.cluster, par, pr.dispatch, relay, kernel)
                     .step_ms_S.mean())

    t_plain = planning_ms(plain)
    if t_plan is None:
        t_plan = planning_ms(p2l)
    if t_plain >= t_plan:
        return []
    return [
        f"without redundant slots (contiguous, {m.num_experts // par.ep} experts per GPU) the planning steps predict "
        f"{t_plain:.3f} ms of MoE time per step against {t_plan:.3f} ms with {pr.redundant_experts}: at these token "
        "counts a replica costs another read of its weights more than it balances; consider --redundant-experts 0"
    ]


def plan(model: str | ModelSpec = DEFAULT_MODEL, hardware: str | HardwareProfile = DEFAULT_HARDWARE, **kwargs: Any) -> Plan:
    """Plan expert placement for ``model`` on ``nodes × gpus_per_node`` GPUs of ``hardware``.

    Takes the keyword arguments of :func:`prepare` (the ``moe-planner plan`` options with
    underscores) plus ``previous``, ``migration_weight`` and ``relay`` of :func:`solve`. The trace (a path,
    a :class:`~planner.traces.Trace`, or ``None`` for the model's shipped or a synthetic trace)
    is split by steps: the first ``train_fraction`` is planned on, the rest is held out and
    scores the plan (``plan.predicted``).
    """
    solve_kw = {k: kwargs.pop(k) for k in ("previous", "migration_weight", "relay") if k in kwargs}
    return solve(prepare(model, hardware, **kwargs), **solve_kw)


@dataclass(frozen=True)
class SimulationReport:
    """A plan replayed through a trace, step by step (:func:`simulate`)."""

    plan: Plan
    trace_label: str
    relay: str
    result: SimResult  #: per-step, per-layer arrays
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (:func:`planner.simulator.describe`) with what was simulated."""
        p = self.plan
        out = {
            "model": p.model.name,
            "cluster": f"{p.cluster.num_nodes} x {p.cluster.gpus_per_node} {p.cluster.hardware}",
            "parallel": p.parallel.model_dump(),
            "dispatch": p.dispatch,
            "relay": self.relay,
            "trace": self.trace_label,
        }
        out.update(describe(self.result))
        out["notes"] = list(self.notes)
        return out


def simulate(
    plan: Plan | str | Path,
    trace: str | Path | Trace | CountsTrace,
    *,
    hardware: str | HardwareProfile | None = None,
    tokens_per_step: int | None = None,
    relay: str | None = None,
) -> SimulationReport:
    """Replay every step of ``trace`` through ``plan``'s placement (all steps: the trace is not
    split). ``hardware`` defaults to the plan's profile by name; ``relay`` to
    :data:`planner.simulator.DEFAULT_RELAY`. Offload plans (a ``cache``) are replayed through the
    expert-cache simulator instead (:class:`planner.offload.OffloadSimulationReport`)."""
    p = Plan.load(plan) if isinstance(plan, str | Path) else plan
    if p.cache is not None:  # offload plan: the cache simulator (planner.offload)
        from planner.offload import OffloadSimulationReport

        return OffloadSimulationReport.run(p, trace, hardware, tokens_per_step)
    hw = resolve_hardware(hardware if hardware is not None else p.cluster.hardware)
    relay = check_relay(relay)
    tr, label, _counts = resolve_trace(trace, p.model, p.provenance.seed, tokens_per_step)
    notes = trace_notes(tr, label)
    p2l = np.asarray(p.placement.physical_to_logical, dtype=np.int64)
    cluster = ClusterSpec(hardware=hw.name, num_nodes=p.cluster.num_nodes, gpus_per_node=p.cluster.gpus_per_node)
    sim = _simulate(p2l, tr, p.model, hw, cluster, p.parallel, p.dispatch, relay=relay, kernel=p.workload.expert_kernel)
    return SimulationReport(plan=p, trace_label=label, relay=relay, result=sim, notes=notes)
