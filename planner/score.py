"""A placement scored on a trace: which GPU each token starts on, the simulation, the baselines.

Planning, ``simulate`` and ``validate`` must charge a placement the same way, or the plan's
figures and the measurement would disagree for reasons that are not the cost model's. This
module is that one way: the token layout over a pipeline stage's expert-data-parallel groups
(:func:`token_layout`), the simulation of every group (:func:`simulate_stage`), the cost the
placement solver optimises (:func:`placement_cost`, the same charges), the named baselines and
the predicted figures of a simulation (:func:`summarize`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost.compute import ACTIVATION_BYTES, expert_ffn_ms, grouped_model_ms
from planner.errors import InputError
from planner.simulator import SimResult, combine_groups, simulate_placement
from planner.solve import baselines
from planner.solve.placement import PlacementCost
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.plan import LayerPrediction, Parallel, Predicted
from planner.traces import Trace

BASELINES = ("contiguous", "round-robin", "eplb")


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


def simulate_stage(
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
    """The cost model the placement solver optimises (what :func:`simulate_stage` charges; with
    ``kernel="grouped"`` each slot's share of its GPU's launch — the launch itself is the same
    for every GPU that has a token, so it does not move the placement)."""
    ffn = model.expert_intermediate_size // par.etp
    per_slot = grouped_model_ms if kernel == "grouped" else expert_ffn_ms
    return PlacementCost(
        ffn_ms=lambda n: per_slot(hw, model.hidden_size, ffn, model.expert_dtype, n),
        token_bytes=model.hidden_size * ACTIVATION_BYTES,
        nvlink_gbps=hw.nvlink.bandwidth_gbps, nvlink_latency_us=hw.nvlink.latency_us,
        nic_gbps=hw.nic.bandwidth_gbps, nic_latency_us=hw.nic.latency_us,
        overlap=hw.comm_overlap, expert_bytes=model.expert_bytes / par.etp,
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


def check_baseline(name: str | None, redundant: int) -> None:
    """:class:`InputError` (field ``baseline``) for an unknown baseline, or one that places no
    redundant experts asked for with some."""
    if name is None:
        return
    if name not in BASELINES:
        raise InputError(f"baseline must be one of {', '.join(BASELINES)} (got {name!r})", field="baseline")
    if name in ("contiguous", "round-robin") and redundant:
        raise InputError(
            f"baseline {name} places no redundant experts (got redundant_experts {redundant}); use baseline eplb",
            field="baseline",
        )


def baseline_placement(
    name: str, weight_LE: np.ndarray, model: ModelSpec, cluster: ClusterSpec, par: Parallel, redundant: int
) -> np.ndarray:
    """``phy2log`` [L, E + R] of a named baseline."""
    L, E = weight_LE.shape
    check_baseline(name, redundant)
    if name == "contiguous":
        return baselines.contiguous(L, E, par.ep)
    if name == "round-robin":
        return baselines.round_robin(L, E, par.ep)
    nodes = max(1, par.ep // cluster.gpus_per_node) if par.ep >= cluster.gpus_per_node else 1
    groups = model.n_group or 1
    return baselines.eplb(weight_LE, E + redundant, groups, nodes, par.ep)
