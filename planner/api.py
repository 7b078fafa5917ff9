"""Python API: ``planner.plan(...)`` and friends (docs/contracts.md, "Python API").

The CLI is a thin shell over these functions: everything ``moe-planner plan`` can do, a trainer
can do from Python with the same arguments (the options are listed once, in
:class:`planner.specs.options.PlanOptions`). :func:`prepare` checks and loads the inputs,
:func:`solve` places the experts and scores the placement on held-out steps; offload runs go to
:mod:`planner.offload`, the scoring to :mod:`planner.score`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from planner.cost.memory import GIB, train_weight_bytes, weights_per_gpu_bytes
from planner.errors import InfeasibleError, InputError
from planner.exports.launch import launch_args
from planner.offload import OffloadProblem, OffloadSimulationReport, prepare_offload, solve_offload
from planner.plan_notes import group_routing_note, prefill_step_note, replica_cost_note
from planner.progress import stage
from planner.provenance import array_hash, input_hash, make_provenance
from planner.ray_map import ray_map
from planner.resolve import (
    resolve_hardware,
    resolve_model,
    resolve_trace,
    trace_arrays,
    trace_notes,
)
from planner.score import (
    BASELINES,
    baseline_placement,
    check_baseline,
    placement_cost,
    simulate_stage,
    summarize,
    token_layout,
)
from planner.simulator import DEFAULT_RELAY, DISPATCH, SimResult, check_relay, describe
from planner.solve import parallel as parallel_search
from planner.solve.degrees import resolve_degrees
from planner.solve.placement import PlacementInputs, PlacementResult, solve_placement
from planner.solve.search_train import check_a2a_overlap
from planner.specs.base import format_validation_error
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.options import (
    DEFAULT_HARDWARE,
    DEFAULT_MODEL,
    SOLVE_OPTIONS,
    check_plan_kwargs,
    require_migration_weight,
    require_placement_workers,
    require_time_limit,
)
from planner.specs.plan import Parallel, Placement, Plan, SolverReport
from planner.specs.workload import DEFAULT_PREFILL_TOKENS, Workload, check_pool_options
from planner.traces import CountsTrace, Trace
from planner.traces.steps import workload_steps

__all__ = ["Problem", "SimulationReport", "placement_inputs", "plan", "prepare", "simulate", "solve"]


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
    #: how the workload formed steps from the trace's sequences (planner.traces.steps), if it did
    steps_note: str | None = None

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
        """Bytes of weights one GPU holds with this problem's slots and degrees (training: in the
        training dtype, :func:`planner.cost.memory.train_weight_bytes`)."""
        par, w = self.parallel, self.workload
        if w.mode == "train":
            return train_weight_bytes(self.model, self.slots_per_gpu, par.tp, par.pp, par.etp, w.train_dtype)
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


def _check_options(
    time_limit: float, train_fraction: float, dispatch: str, baseline: str | None, nodes: int, gpus_per_node: int
) -> None:
    """The rules on single options that :func:`prepare` checks before loading anything."""
    require_time_limit(time_limit)
    if not 0 < train_fraction <= 1:
        raise InputError(f"train_fraction must be in (0, 1] (got {train_fraction})", field="train_fraction")
    if dispatch not in DISPATCH:
        raise InputError(f"dispatch must be one of {', '.join(DISPATCH)} (got {dispatch!r})", field="dispatch")
    check_baseline(baseline, 0)
    if nodes <= 0:
        raise InputError(f"nodes must be > 0 (got {nodes})", field="nodes")
    if gpus_per_node <= 0:
        raise InputError(f"gpus_per_node must be > 0 (got {gpus_per_node})", field="gpus_per_node")


def _split_trace(
    tr: Trace, train_fraction: float, recorded_counts: tuple[np.ndarray, np.ndarray] | None
) -> tuple[Trace, Trace, str, np.ndarray]:
    """(planning steps, held-out steps, what the plan is scored on, per-expert counts [L, E] to
    balance on): the first ``train_fraction`` of the steps is planned on, the rest scores the plan
    (at least one step each when there are two); a one-step trace is planned and scored on itself."""
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
    return plan_tr, eval_tr, evaluated_on, plan_counts


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
    train_dtype: str = "bf16",
    batch: int | None = None,
    prompt_len: int | None = None,
    output_len: int | None = None,
    request_rate: float | None = None,
    kv_dtype: str = "bf16",
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    prefill_nodes: int | None = None,
    decode_nodes: int | None = None,
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    expert_precisions: str | None = None,
    max_accuracy_cost: float | None = None,
    pp_first: int | None = None,
    pp_last: int | None = None,
    two_batch_overlap: str | None = None,
    routing: str | None = None,
    a2a_overlap: str | None = None,
    prefill_budget: str = "engine",
) -> Problem | OffloadProblem:
    """Load and check every input of a planning run; raises :class:`InputError` on bad input.

    The keywords and their defaults are :class:`planner.specs.options.PlanOptions`' (a test keeps
    them equal). For ``train``, ``prefill`` and ``decode`` the degrees given are fixed and the rest
    chosen by the parallelism search (:mod:`planner.solve.parallel`; ``cp``, ``recompute``,
    ``distributed_optimizer``, ``latency_target_ms``, ``cross_node``, in training ``a2a_overlap``,
    are its options). Serving is stated by ``prompt_len``, ``output_len``, ``batch``,
    ``request_rate``, ``kv_dtype``, ``ttft_ms``, ``tpot_ms`` (the Workload), its step priced with
    ``two_batch_overlap`` (default off) and ``routing`` (default uniform); an omitted decode batch
    is the largest that fits memory and meets the targets, and the steps the placement is planned
    and scored on hold that batch (prefill: ``prefill_budget``; :func:`~planner.traces.steps.workload_steps`).
    :class:`InfeasibleError` when nothing fits.
    """
    if mode == "serve":  # two pools, each a plan of its own: planner.serve_plan
        raise InputError("mode 'serve' plans a prefill and a decode pool: call planner.plan_serving", field="mode")
    check_pool_options(mode, prefill_nodes, decode_nodes, prefill_tokens)
    parallel_search.check_serving_pricing(mode, two_batch_overlap, routing)
    check_a2a_overlap(mode, a2a_overlap)
    _check_options(time_limit, train_fraction, dispatch, baseline, nodes, gpus_per_node)
    m, hw = resolve_model(model), resolve_hardware(hardware)
    cluster = ClusterSpec(hardware=hw.name, num_nodes=nodes, gpus_per_node=gpus_per_node)
    try:
        workload = Workload(
            mode=mode, seq_len=seq_len, micro_batch=micro_batch, global_batch=global_batch,
            tokens_per_step=tokens_per_step, gpu_memory_gb=gpu_memory_gb, expert_kernel=expert_kernel,
            train_dtype=train_dtype, batch=batch, prompt_len=prompt_len, output_len=output_len,
            request_rate=request_rate, kv_dtype=kv_dtype, ttft_ms=ttft_ms, tpot_ms=tpot_ms, prefill_budget=prefill_budget)
    except ValidationError as e:
        raise InputError(format_validation_error("workload", e)) from None
    if mode == "offload":  # one GPU, experts in host memory: planner.offload
        tr, trace_label, _recorded = resolve_trace(trace, m, seed, tokens_per_step)
        return prepare_offload(
            m, hw, tr, trace_label, gpu_memory_gb=gpu_memory_gb, batch=micro_batch if micro_batch is not None else batch,
            seq_len=seq_len, seed=seed, time_limit=time_limit, train_fraction=train_fraction, workload=workload,
            notes=trace_notes(tr, trace_label), expert_precisions=expert_precisions, max_accuracy_cost=max_accuracy_cost,
        )
    if expert_precisions is not None or max_accuracy_cost is not None:
        raise InputError("expert_precisions / max_accuracy_cost choose precisions in mode offload only", field="expert_precisions")
    par = resolve_degrees(m, cluster, ep=ep, tp=tp, pp=pp, dp=dp, etp=etp, vpp=vpp, redundant=redundant_experts)
    check_baseline(baseline, redundant_experts)
    tr, trace_label, recorded_counts = resolve_trace(trace, m, seed, tokens_per_step)
    # parallelism search (planner.solve.parallel): the degrees given are fixed, the rest searched;
    # serving: it also finds the batch, which then decides the steps the placement is planned on
    fixed = {"tp": tp, "pp": pp, "dp": dp, "ep": ep, "etp": etp, "vpp": vpp, "cp": cp, "micro_batch": micro_batch,
             "recompute": recompute, "distributed_optimizer": distributed_optimizer, "pp_first": pp_first,
             "pp_last": pp_last}
    stage("parallelism search")
    found, workload = parallel_search.search_workload(
        m, hw, cluster, workload, fixed=fixed, redundant=redundant_experts, latency_target_ms=latency_target_ms,
        cross_node=cross_node, two_batch_overlap=two_batch_overlap, routing=routing, a2a_overlap=a2a_overlap,
        trace=tr if trace is not None else None,
    )  # output length: stated or the default, not the trace's sequences (those are whole requests)
    tr, steps_note = workload_steps(tr, workload, cluster.num_gpus, seed, regroup=recorded_counts is None)
    plan_tr, eval_tr, evaluated_on, plan_counts = _split_trace(tr, train_fraction, recorded_counts)
    if found is not None:
        b = found.best
        par = Parallel(dp=b.dp, tp=b.tp, pp=b.pp, ep=b.ep, etp=b.etp, vpp=b.vpp, cp=b.cp)
    options = {
        "cp": cp, "recompute": recompute, "distributed_optimizer": distributed_optimizer, "latency_target_ms":
        latency_target_ms, "cross_node": cross_node, "batch": batch, "ep": ep, "tp": tp, "pp": pp, "dp": dp, "etp": etp,
        "vpp": vpp, "redundant_experts": redundant_experts, "baseline": baseline, "dispatch": dispatch,
        "seed": seed, "train_fraction": train_fraction, "two_batch_overlap": two_batch_overlap, "routing": routing,
        "a2a_overlap": a2a_overlap}
    return Problem(
        model=m, hardware=hw, cluster=cluster, workload=workload, parallel=par, trace=tr,
        trace_label=trace_label, plan_trace=plan_tr, plan_counts_LE=plan_counts, eval_trace=eval_tr, evaluated_on=evaluated_on,
        redundant_experts=redundant_experts, baseline=baseline, dispatch=dispatch,
        time_limit=time_limit, seed=seed, options=options, search=found, fixed=fixed, steps_note=steps_note,
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
                f"previous: the previous plan is for {previous.model.name} ({previous.model.num_moe_layers} MoE layers "
                f"× {previous.model.num_experts} experts), this problem has {m.num_moe_layers} × {m.num_experts}",
                field="previous",
            )
        arr = np.asarray(previous.placement.physical_to_logical, dtype=np.int64)
    else:
        arr = np.asarray(previous, dtype=np.int64)
    if arr.ndim != 2 or arr.shape != (m.num_moe_layers, P):
        raise InputError(
            f"previous: the previous placement has shape {list(arr.shape)} [layers, slots], this problem needs "
            f"[{m.num_moe_layers}, {P}] ({m.num_experts} experts + {problem.redundant_experts} redundant); "
            "re-plan with the same redundant_experts and EP size",
            field="previous",
        )
    if arr.min() < 0 or arr.max() >= m.num_experts:
        raise InputError(f"previous: expert ids must be in [0, {m.num_experts})", field="previous")
    return arr


def _place(
    pr: Problem, prev: np.ndarray | None, migration_weight: float, relay: str, notes: list[str], workers: int = 0,
) -> tuple[np.ndarray, PlacementResult | None]:
    """``phy2log`` [L, P] of the problem's baseline, or of the placement solver (with its result;
    its layers as Ray tasks on ``workers`` workers when > 0); appends to ``notes`` when a baseline
    beat the solver's own placement."""
    m, hw, cluster, par = pr.model, pr.hardware, pr.cluster, pr.parallel
    weight_LE = pr.plan_counts_LE.astype(np.float64)
    if pr.baseline is not None:
        return baseline_placement(pr.baseline, weight_LE, m, cluster, par, pr.redundant_experts), None
    kernel = pr.workload.expert_kernel
    extra = {
        name: baseline_placement(name, weight_LE, m, cluster, par, pr.redundant_experts)
        for name in pr.candidate_names() if name != "eplb"
    }

    def objective(phy2log: np.ndarray) -> float:
        return float(simulate_stage(phy2log, pr.plan_trace, m, hw, cluster, par, pr.dispatch, relay, kernel).step_ms_S.mean())

    res = solve_placement(
        placement_inputs(pr, relay), time_limit=pr.time_limit, previous_LP=prev,
        migration_weight=migration_weight if prev is not None else 0.0, evaluate=objective,
        extra_candidates=extra, map_layers=ray_map(workers) if workers else None,
    )
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
    return res.phy2log_LP, res


def _input_hash(pr: Problem, prev: np.ndarray | None, migration_weight: float) -> str:
    """The plan's ``provenance.input_hash``: the inputs as JSON, the trace's arrays."""
    inputs = {
        "model": pr.model.model_dump(mode="json"),
        "hardware": pr.hardware.model_dump(mode="json"),
        "cluster": pr.cluster.model_dump(mode="json"),
        "workload": pr.workload.model_dump(mode="json"),
        "options": pr.options,
    }
    if prev is not None:
        inputs["previous"] = array_hash(prev)
        inputs["migration_weight"] = migration_weight
    return input_hash(inputs, trace_arrays(pr.trace))


def solve(
    problem: Problem | OffloadProblem,
    *,
    previous: Plan | str | Path | np.ndarray | None = None,
    migration_weight: float = 0.01,
    relay: str | None = None,
    placement_workers: int = 0,
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
    ``placement_workers`` > 0 solves the placement's layers as Ray tasks on that many workers
    (:func:`planner.ray_map.ray_map`; the same placement as one process, docs/sweep.md).
    """
    require_placement_workers(placement_workers)
    if isinstance(problem, OffloadProblem):
        if previous is not None:
            raise InputError("previous re-plans expert placement; it has no effect with mode offload", field="previous")
        return solve_offload(problem)
    t0 = time.perf_counter()
    relay = check_relay(relay)
    pr = problem
    m, hw, cluster, par = pr.model, pr.hardware, pr.cluster, pr.parallel
    mem = pr.check_memory()
    require_migration_weight(migration_weight)
    notes = list(trace_notes(pr.trace, pr.trace_label)) + ([pr.steps_note] if pr.steps_note else [])
    notes += group_routing_note(m, cluster, par, pr.trace_label, pr.plan_trace, pr.baseline)
    if pr.baseline is not None and previous is not None:
        raise InputError(
            f"previous re-plans with the solver; it has no effect with baseline {pr.baseline}", field="previous"
        )
    prev = previous_placement(previous, pr) if previous is not None and pr.baseline is None else None
    stage("baseline placement" if pr.baseline is not None else "placement solver")
    p2l, res = _place(pr, prev, migration_weight, relay, notes, placement_workers)
    # the solver already scored its pick on the planning steps (no migration term without --previous)
    known = res.objective if res is not None and previous is None else None
    notes += replica_cost_note(pr.plan_trace, pr.plan_counts_LE, m, hw, cluster, par, pr.redundant_experts, pr.dispatch,
                               pr.workload.expert_kernel, p2l, relay, known)
    stage("scoring on held-out steps")
    sim = simulate_stage(p2l, pr.eval_trace, m, hw, cluster, par, pr.dispatch, relay, pr.workload.expert_kernel)
    if relay != DEFAULT_RELAY:
        notes.append(f"traffic scored with the simulator's {relay!r} relay convention")
    search_report = None
    if pr.search is not None:
        notes += prefill_step_note(pr.workload.mode, pr.search.best.sequences, pr.workload.prompt_len,
                                   float(sim.tokens_S.mean()) if sim.tokens_S.size else 0.0, pr.trace.num_tokens)
    predicted = summarize(sim, pr.evaluated_on, mem / GIB, notes)
    if pr.search is not None:
        predicted = predicted.model_copy(update=parallel_search.predicted_figures(pr.search))
        search_report = parallel_search.to_report(pr.search, pr.fixed or {}, pr.workload.mode)
    elapsed = round(time.perf_counter() - t0, 3)
    if res is not None:
        solver = SolverReport(
            name="placement-ilp", status=res.status, objective=res.objective, bound=res.bound, gap=res.gap,
            time_s=round(res.time_s, 3), candidates=res.candidates,
        )
    else:
        solver = SolverReport(name=pr.baseline, status="baseline", objective=None, time_s=elapsed)
    out = Plan(
        model=m,
        cluster=cluster,
        workload=pr.workload,
        parallel=par,
        placement=Placement(slots_per_gpu=pr.slots_per_gpu, physical_to_logical=p2l.tolist()),
        dispatch=pr.dispatch,
        predicted=predicted,
        search=search_report,
        solver=solver,
        provenance=make_provenance(pr.seed, pr.trace_label, _input_hash(pr, prev, migration_weight)),
    )
    if search_report is not None:
        out = out.model_copy(update={"launch": launch_args(out)})
    return out


def plan(model: str | ModelSpec = DEFAULT_MODEL, hardware: str | HardwareProfile = DEFAULT_HARDWARE, **kwargs: Any) -> Plan:
    """Plan expert placement for ``model`` on ``nodes × gpus_per_node`` GPUs of ``hardware``.

    Takes the keyword arguments of :func:`prepare` (the ``moe-planner plan`` options with
    underscores) plus ``previous``, ``migration_weight`` and ``relay`` of :func:`solve`: the
    fields of :class:`planner.specs.options.PlanOptions`, against which they are checked (an
    unknown keyword or a value of the wrong type is an :class:`InputError` naming it). The trace
    (a path, a :class:`~planner.traces.Trace`, or ``None`` for the model's shipped or a synthetic
    trace) is split by steps: the first ``train_fraction`` is planned on, the rest is held out and
    scores the plan (``plan.predicted``).
    """
    check_plan_kwargs({"model": model, "hardware": hardware, **kwargs})
    solve_kw = {k: kwargs.pop(k) for k in SOLVE_OPTIONS if k in kwargs}
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
        return OffloadSimulationReport.run(p, trace, hardware, tokens_per_step)
    hw = resolve_hardware(hardware if hardware is not None else p.cluster.hardware)
    relay = check_relay(relay)
    tr, label, counts = resolve_trace(trace, p.model, p.provenance.seed, tokens_per_step)
    tr, steps_note = workload_steps(tr, p.workload, p.cluster.num_gpus, p.provenance.seed, regroup=counts is None)
    notes = trace_notes(tr, label) + ((steps_note,) if steps_note else ())
    p2l = np.asarray(p.placement.physical_to_logical, dtype=np.int64)
    cluster = ClusterSpec(hardware=hw.name, num_nodes=p.cluster.num_nodes, gpus_per_node=p.cluster.gpus_per_node)
    sim = simulate_stage(p2l, tr, p.model, hw, cluster, p.parallel, p.dispatch, relay=relay, kernel=p.workload.expert_kernel)
    return SimulationReport(plan=p, trace_label=label, relay=relay, result=sim, notes=notes)
