"""Training strategies besides Megatron's layouts, priced by the same cost model as what-if
candidates: each re-prices what it changes in a Megatron step (:class:`~planner.cost.step.
StepModel`) and in its memory (:func:`~planner.cost.memory.training_memory`).

Legend: N GPUs, n per node, E routed experts, P_e parameters of one expert, L_moe MoE layers of
the slowest pipeline stage (⌈MoE layers / pp⌉), m micro-batches, W = m + (pp − 1)/vpp the
stage-times of a 1F1B step, B_w bytes of a weight in the training dtype. Per MoE layer and
micro-batch, forward: ``a2a`` dispatch + combine (:func:`~planner.cost.step.alltoall_ms`, 2
phases), ``e`` the grouped expert GEMMs of the GPU's E/ep experts; backward moves the same bytes
and computes 2·e. A strategy changes the MoE layer's forward + backward by Δ and the data-parallel
sync and optimizer; the step is then::

    stage' = stage + L_moe · Δ
    step'  = W · stage' + p2p + exposed_sync' + optimizer'

Strategies (assumptions in :data:`STRATEGIES`; every one is a model of the published design,
not of its code):

- ``megatron``: the step model as it is (uniform routing). ``imbalance`` ι ≥ 1 (max / mean
  tokens of an EP rank, e.g. from a trace) makes the busiest GPU's experts and all-to-all ι times
  longer: Δ = (ι − 1)·(3e + 2·a2a).
- ``fsmoe`` (Pan et al. 2025, FSMoE, arXiv 2501.10714 §4): the MoE layer's tokens split into r
  chunks whose all-to-all runs beside the previous chunk's experts. A chunk costs its own
  latency (FSMoE models each as ``α + n/r · β``): ``D_r = r · a2a(T/r)``, ``E_r = r · e(T/r)``
  priced by the same kernels, and two resources in a pipeline take
  ``max(D_r, E_r) + min(D_r, E_r)/r`` (r = 1: serial; the fill term is one chunk of the
  smaller). Forward with E_r, backward with 2·E_r; r ∈ :data:`CHUNKS` chosen per layer, as
  FSMoE's pipeline-degree search does. Gradient sync: Megatron already overlaps the reduce-
  scatter with the last micro-batch's backward; FSMoE's gradient partitioning is taken to reach
  the same window (no change against Megatron; against DeepSpeed-MoE it hides the sync).
- ``fssdp`` (Qing et al. 2025, Hecate, arXiv 2502.02581): expert parameters, gradients and
  optimizer states sharded over the N/pp GPUs of a pipeline stage; "sparsely materializes MoE
  parameters from scratch in each iteration" (the abstract): each MoE layer gathers the weights
  of the E/ep experts a GPU computes (all-gather over those GPUs) once per training step,
  prefetched during the previous layer's compute of the first micro-batch, keeps them for the
  step, and reduce-scatters their fp32 gradients once, behind the last micro-batch's backward;
  only what exceeds one layer's compute is exposed. (``per_micro_batch=True``: gathered again in
  every micro-batch's forward and backward and freed in between, as ZeRO-3 does.) The experts'
  data-parallel sync of Megatron is gone. Placement is materialized anew each iteration, so the
  load is taken as balanced (ι = 1).
- ``deepspeed-moe`` (Rajbhandari et al. 2022, DeepSpeed-MoE, arXiv 2201.05596 §4; ZeRO:
  Rajbhandari et al. 2020, arXiv 1910.02054 §5): experts over ep GPUs × N/ep expert-data-parallel,
  the rest data-parallel (tp kept, no pipeline: pp = 1), ZeRO stage z for memory: 2 + 2 + 12 bytes
  per parameter (fp16/bf16 weight and gradient, fp32 master and Adam m, v; ZeRO §3.1); z ≥ 1 shards
  the 12, z ≥ 2 the gradients, z = 3 the weights (gathered per layer and micro-batch, as fssdp
  gathers experts). Gradients move in 2 bytes; DeepSpeed's ``overlap_comm`` is off by default for
  stages 1-2, so the sync is exposed whole. ``offload`` (ZeRO-Offload, Ren et al. 2021, arXiv
  2101.06840 §4): optimizer states in host memory, Adam on the host: per step the 2-byte
  gradients go down (overlapped with the last backward) and 2-byte weights come up over PCIe
  (the profile's copy curves), the host step reads and writes :data:`~planner.cost.step.
  OPTIMIZER_STEP_BYTES` per parameter at ``host_memory_gbps`` shared by the node's GPUs.

No constant here is fitted to a published speedup (benchmarks/strategies.py compares them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from planner.cost.comm import collective_scalar_ms, group_link
from planner.cost.compute import grouped_experts_ms
from planner.cost.memory import (
    GRAD_BYTES,
    OPTIMIZER_BYTES,
    TRAIN_DTYPES,
    MemoryBreakdown,
    training_memory,
)
from planner.cost.step import (
    GATHER_WINDOW,
    OPTIMIZER_STEP_BYTES,
    REDUCE_WINDOW,
    TRAIN_EXPERT_KERNEL,
    StepModel,
    TrainStep,
    alltoall_ms,
)
from planner.cost.transfer import d2h_ms, h2d_ms
from planner.errors import InputError

#: Chunk counts FSMoE's pipeline may use (its search picks the degree; powers of two here).
CHUNKS = (1, 2, 4, 8, 16)
#: DeepSpeed mixed precision (ZeRO §3.1): fp16/bf16 weight 2 + gradient 2, fp32 master weight
#: and Adam m, v 12 bytes per parameter; gradients communicated in 2 bytes.
DS_WEIGHT_BYTES, DS_GRAD_BYTES = 2.0, 2.0
#: Host memory bandwidth per node (GB/s) the host Adam of ZeRO-Offload reads and writes at: an
#: assumption (a two-socket server of 8 DDR4-3200 channels each has ~400 GB/s peak; half of it
#: taken as achieved), not in the hardware profiles, which have no host figure. A parameter.
HOST_MEMORY_GBPS = 200.0
STRATEGY_NAMES = ("megatron", "fsmoe", "fssdp", "deepspeed-moe")

#: What each strategy assumes (the docstring in short), shown beside its row.
STRATEGIES: dict[str, tuple[str, ...]] = {
    "megatron": (
        "Megatron-core layout of the search, uniform routing unless an imbalance is given",
        "gradient reduce-scatter overlapped with the last micro-batch's backward (distributed optimizer)",
    ),
    "fsmoe": (
        "all-to-all pipelined with the expert GEMMs in r chunks (r searched), each chunk paying its own latency",
        "backward pipelined likewise; gradient sync overlapped as Megatron's (same window)",
        "ETP/TP collectives and the rest of the layer unchanged",
    ),
    "fssdp": (
        "experts' weights, gradients and optimizer states sharded over the GPUs of a pipeline stage",
        "per MoE layer and training step: all-gather of the E/ep experts' weights before the first micro-batch, "
        "reduce-scatter of their fp32 gradients after the last, each hidden behind one layer's compute",
        "expert load balanced by the per-iteration placement (imbalance 1)",
    ),
    "deepspeed-moe": (
        "experts over ep × N/ep expert-data-parallel, the rest data-parallel; tp kept, pp 1",
        "ZeRO stage z: 16 bytes per parameter, sharded by stage; gradients sync in 2 bytes, not overlapped "
        "(overlap_comm off)",
        "offload: optimizer states and Adam on the host, PCIe per the profile, host memory bandwidth assumed",
    ),
}


@dataclass(frozen=True)
class Layout:
    """A Megatron-style training layout (the degrees of :meth:`StepModel.train_step`)."""

    num_gpus: int
    tp: int
    pp: int
    ep: int
    global_batch: int
    seq_len: int
    etp: int = 1
    cp: int = 1
    vpp: int = 1
    micro_batch: int = 1
    recompute: str = "selective"
    dispatcher: str = "pairs"

    @property
    def dp(self) -> int:
        return self.num_gpus // (self.tp * self.cp * self.pp)


@dataclass(frozen=True)
class StrategyPrice:
    """One strategy's predicted step and memory per GPU."""

    strategy: str
    layout: Layout
    step_ms: float
    tflops_per_gpu: float
    memory: MemoryBreakdown
    parts: dict[str, float] = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()


def _step(sm: StepModel, lay: Layout) -> TrainStep:
    return sm.train_step(
        num_gpus=lay.num_gpus, tp=lay.tp, pp=lay.pp, ep=lay.ep, etp=lay.etp, cp=lay.cp, vpp=lay.vpp,
        micro_batch=lay.micro_batch, global_batch=lay.global_batch, seq_len=lay.seq_len,
        recompute=lay.recompute, dispatcher=lay.dispatcher,
    )


def _memory(sm: StepModel, lay: Layout) -> MemoryBreakdown:
    m = sm.model
    return training_memory(
        m, slots_per_gpu=m.num_experts // lay.ep, tp=lay.tp, pp=lay.pp, dp=lay.dp * lay.cp, ep=lay.ep,
        etp=lay.etp, vpp=lay.vpp, seq_len=lay.seq_len // lay.cp, micro_batch=lay.micro_batch,
        num_microbatches=lay.global_batch // (lay.dp * lay.micro_batch), recompute=lay.recompute,  # type: ignore[arg-type]
        train_dtype=sm.gemm_dtype,
    )


@dataclass(frozen=True)
class MoePieces:
    """Per MoE layer and micro-batch on one GPU, forward (ms), and the step's shape."""

    a2a: float  #: dispatch + combine
    experts: float  #: grouped GEMMs of the GPU's experts
    tokens: float  #: tokens of one micro-batch on one GPU (b·s / (cp·tp))
    moe_layers: int  #: MoE layers of the slowest stage
    window: float  #: W = m + (pp − 1)/vpp
    expert_params: float  #: expert parameters one GPU holds (E/ep · P_e · L_moe / etp)


def moe_pieces(sm: StepModel, lay: Layout, st: TrainStep) -> MoePieces:
    """The MoE pieces of ``lay`` a strategy re-prices (module docstring)."""
    m = sm.model
    t_gpu = lay.micro_batch * lay.seq_len / lay.cp / lay.tp
    return MoePieces(
        a2a=2.0 * alltoall_ms(sm.hw, m, t_gpu, lay.ep, lay.etp, sm.gpn, lay.dispatcher),
        experts=experts_ms(sm, lay, t_gpu),
        tokens=t_gpu,
        moe_layers=math.ceil(m.num_moe_layers / lay.pp),
        window=st.micro_batches + (lay.pp - 1) / lay.vpp,
        expert_params=(m.num_experts // lay.ep) * m.expert_params * math.ceil(m.num_moe_layers / lay.pp) / lay.etp,
    )


def experts_ms(sm: StepModel, lay: Layout, t_gpu: float) -> float:
    """The GPU's E/ep experts over ``t_gpu`` tokens routed uniformly, with the step model's
    expert kernel (:data:`~planner.cost.step.TRAIN_EXPERT_KERNEL`)."""
    m = sm.model
    per_expert = m.top_k * t_gpu * lay.ep * lay.etp / m.num_experts
    if per_expert <= 0:
        return 0.0
    tok = np.full((1, m.num_experts // lay.ep), per_expert)
    return float(grouped_experts_ms(sm.hw, m.hidden_size, m.expert_intermediate_size // lay.etp, sm.gemm_dtype,
                                     tok, kernel=TRAIN_EXPERT_KERNEL)[0])


def _result(name: str, sm: StepModel, lay: Layout, step_ms: float, mem: MemoryBreakdown,
            parts: dict[str, float], st: TrainStep) -> StrategyPrice:
    tflops = st.model_flops / (step_ms * 1e-3) / lay.num_gpus / 1e12
    return StrategyPrice(name, lay, step_ms, tflops, mem, parts, STRATEGIES[name])


def _restep(st: TrainStep, pieces: MoePieces, delta_layer: float) -> tuple[float, float]:
    """(stage', step') of Megatron's step with each MoE layer Δ longer, its sync windows kept."""
    stage = st.stage_ms + pieces.moe_layers * delta_layer
    return stage, st.step_ms + pieces.window * pieces.moe_layers * delta_layer


def price_megatron(sm: StepModel, lay: Layout, imbalance: float = 1.0) -> StrategyPrice:
    """Megatron's step (``imbalance`` > 1: the busiest EP rank's experts and all-to-all longer)."""
    if not (imbalance >= 1.0 and math.isfinite(imbalance)):
        raise InputError(f"imbalance must be a finite number >= 1 (got {imbalance})", field="imbalance")
    st = _step(sm, lay)
    p = moe_pieces(sm, lay, st)
    delta = (imbalance - 1.0) * (3.0 * p.experts + 2.0 * p.a2a) if lay.ep > 1 else 0.0
    _, step = _restep(st, p, delta)
    parts = {"a2a_fwd_ms": p.a2a, "experts_fwd_ms": p.experts, "imbalance_ms": p.window * p.moe_layers * delta}
    return _result("megatron", sm, lay, step, _memory(sm, lay), parts, st)


def pipelined_ms(comm: float, compute: float, chunks: int) -> float:
    """Two resources in a pipeline of ``chunks`` equal chunks (the chunk costs already include
    their per-chunk latency): ``max + min / chunks``; one chunk: ``comm + compute``."""
    if chunks <= 0 or comm < 0 or compute < 0:
        raise InputError(f"chunks must be > 0 and times >= 0 (got {chunks}, {comm}, {compute})")
    return max(comm, compute) + min(comm, compute) / chunks


def fsmoe_layer(sm: StepModel, lay: Layout, t_gpu: float) -> tuple[float, int, int]:
    """(saving in ms of one MoE layer's forward + backward against the serial Megatron layer,
    forward chunks, backward chunks)."""
    a2a1 = 2.0 * alltoall_ms(sm.hw, sm.model, t_gpu, lay.ep, lay.etp, sm.gpn, lay.dispatcher)
    e1 = experts_ms(sm, lay, t_gpu)
    serial_f, serial_b = a2a1 + e1, a2a1 + 2.0 * e1
    best_f, best_b, rf, rb = serial_f, serial_b, 1, 1
    for r in CHUNKS[1:]:
        d = r * 2.0 * alltoall_ms(sm.hw, sm.model, t_gpu / r, lay.ep, lay.etp, sm.gpn, lay.dispatcher)
        e = r * experts_ms(sm, lay, t_gpu / r)
        f, b = pipelined_ms(d, e, r), pipelined_ms(d, 2.0 * e, r)
        if f < best_f:
            best_f, rf = f, r
        if b < best_b:
            best_b, rb = b, r
    return (serial_f - best_f) + (serial_b - best_b), rf, rb


def price_fsmoe(sm: StepModel, lay: Layout, *, sync_exposed: bool = False) -> StrategyPrice:
    """FSMoE's pipelined all-to-all on ``lay`` (module docstring). ``sync_exposed``: price the
    data-parallel sync as Megatron's (default) — FSMoE's gradient partitioning reaches the same
    overlap window."""
    st = _step(sm, lay)
    p = moe_pieces(sm, lay, st)
    save, rf, rb = fsmoe_layer(sm, lay, p.tokens) if lay.ep > 1 else (0.0, 1, 1)
    stage, step = _restep(st, p, -save)
    # Megatron's exposed sync re-computed for the shorter stage (its windows shrink with it)
    red, gat = st.parts.get("dp_reduce_ms", 0.0), st.parts.get("dp_gather_ms", 0.0)
    new = max(0.0, red - REDUCE_WINDOW * stage) + max(0.0, gat - GATHER_WINDOW * stage)
    step += new - st.dp_exposed_ms
    parts = {"saved_per_moe_layer_ms": save, "chunks_fwd": float(rf), "chunks_bwd": float(rb)}
    return _result("fsmoe", sm, lay, step, _memory(sm, lay), parts, st)


def _expert_sync(sm: StepModel, lay: Layout, p: MoePieces, grad_bytes: float, weight_bytes: float,
                 all_reduce: bool) -> tuple[float, float]:
    """(reduce, gather) ms of the experts' data-parallel sync over N·... / (ep·etp) GPUs."""
    egrp = lay.dp * lay.cp * lay.tp // (lay.ep * lay.etp)
    link = group_link(sm.hw, max(1, egrp), sm.gpn, max(1, lay.ep * lay.etp))
    if all_reduce:
        return collective_scalar_ms("all_reduce", grad_bytes * p.expert_params, egrp, link), 0.0
    return (collective_scalar_ms("reduce_scatter", grad_bytes * p.expert_params, egrp, link),
            collective_scalar_ms("all_gather", weight_bytes * p.expert_params, egrp, link))


def _dense_sync(sm: StepModel, lay: Layout, grad_bytes: float, weight_bytes: float,
                all_reduce: bool) -> tuple[float, float]:
    """(reduce, gather) ms of the non-expert parameters' data-parallel sync."""
    m = sm.model
    p_dense = m.non_expert_params / (lay.tp * lay.pp)
    dgrp = lay.dp * lay.cp
    link = group_link(sm.hw, max(1, dgrp), sm.gpn, max(1, lay.tp))
    if all_reduce:
        return collective_scalar_ms("all_reduce", grad_bytes * p_dense, dgrp, link), 0.0
    return (collective_scalar_ms("reduce_scatter", grad_bytes * p_dense, dgrp, link),
            collective_scalar_ms("all_gather", weight_bytes * p_dense, dgrp, link))


def fssdp_layer_comm(sm: StepModel, lay: Layout) -> tuple[float, float]:
    """(forward, backward) ms of one MoE layer's FSSDP collectives: all-gather of the GPU's E/ep
    experts' weights over the N/pp GPUs of its stage; backward: that gather again and the fp32 gradients'
    reduce-scatter."""
    m = sm.model
    per_layer = (m.num_experts // lay.ep) * m.expert_params / lay.etp
    grp = lay.num_gpus // lay.pp  # the GPUs of one pipeline stage
    link = group_link(sm.hw, grp, sm.gpn, 1)
    gather = collective_scalar_ms("all_gather", TRAIN_DTYPES[sm.gemm_dtype] * per_layer, grp, link)
    scatter = collective_scalar_ms("reduce_scatter", GRAD_BYTES * per_layer, grp, link)
    return gather, gather + scatter


def price_fssdp(sm: StepModel, lay: Layout, *, per_micro_batch: bool = False) -> StrategyPrice:
    """Hecate's fully sharded sparse data parallelism on ``lay`` (module docstring).

    Hecate "sparsely materializes MoE parameters from scratch in each iteration" (arXiv
    2502.02581, abstract): each MoE layer's experts are gathered once per training step, before
    the first micro-batch's forward reaches the layer (prefetched behind one layer's compute),
    kept for the step's micro-batches, and their gradients reduce-scattered once, behind the last
    micro-batch's backward of the layer. ``per_micro_batch`` prices the ZeRO-3-like variant
    instead: gathered again in every micro-batch's forward and backward, freed in between."""
    st = _step(sm, lay)
    p = moe_pieces(sm, lay, st)
    lt = sm.layer_times(tp=lay.tp, cp=lay.cp, b=lay.micro_batch, s=lay.seq_len, ep=lay.ep, etp=lay.etp,
                        dispatcher=lay.dispatcher)
    fwd_layer = lt.attn_compute + lt.moe_compute  # the compute one prefetch hides behind
    g_f, g_b = fssdp_layer_comm(sm, lay)
    wb = TRAIN_DTYPES[sm.gemm_dtype]
    mem = _memory(sm, lay)
    mp = p.expert_params
    per_layer = mp / p.moe_layers
    shard = mp * lay.ep * lay.etp * lay.pp / lay.num_gpus
    if per_micro_batch:
        delta = max(0.0, g_f - fwd_layer) + max(0.0, g_b - 2.0 * fwd_layer)
        stage, step = _restep(st, p, delta)
        exposed_once = 0.0
        # two layers of gathered weights (the one computing and the one prefetched), one layer's
        # fp32 gradient buffer, the rest sharded
        weights = mem.weights - wb * mp + wb * (shard + 2 * per_layer)
        gradients = mem.gradients - GRAD_BYTES * mp + GRAD_BYTES * (shard + per_layer)
    else:
        delta = 0.0
        stage, step = st.stage_ms, st.step_ms
        scatter = g_b - g_f  # fssdp_layer_comm's backward is the gather again plus the reduce-scatter
        exposed_once = p.moe_layers * (max(0.0, g_f - fwd_layer) + max(0.0, scatter - 2.0 * fwd_layer))
        step += exposed_once
        # the step's materialized experts stay (as Megatron's local experts) beside the shard
        weights = mem.weights + wb * shard
        gradients = mem.gradients
    # the experts' data-parallel sync leaves Megatron's step: only the dense part's is left
    red_d, gat_d = _dense_sync(sm, lay, 4.0, wb, False)
    new = max(0.0, red_d - REDUCE_WINDOW * stage) + max(0.0, gat_d - GATHER_WINDOW * stage)
    step += new - st.dp_exposed_ms
    mem = MemoryBreakdown(weights=weights, gradients=gradients, optimizer=mem.optimizer, activations=mem.activations)
    parts = {"gather_fwd_ms": g_f, "gather_scatter_bwd_ms": g_b, "exposed_per_moe_layer_ms": delta,
             "exposed_once_per_step_ms": exposed_once}
    return _result("fssdp", sm, lay, step, mem, parts, st)


def price_deepspeed_moe(
    sm: StepModel, lay: Layout, *, zero_stage: int = 2, offload: bool = False,
    host_memory_gbps: float = HOST_MEMORY_GBPS,
) -> StrategyPrice:
    """DeepSpeed-MoE's expert + data parallelism with ZeRO ``zero_stage`` (1-3) and optional
    optimizer offload on ``lay`` with its pipeline folded into data parallelism (module docstring)."""
    if zero_stage not in (1, 2, 3):
        raise InputError(f"zero_stage must be 1, 2 or 3 (got {zero_stage})", field="zero_stage")
    if not host_memory_gbps > 0:
        raise InputError(f"host_memory_gbps must be > 0 (got {host_memory_gbps})", field="host_memory_gbps")
    m = sm.model
    lay = Layout(lay.num_gpus, lay.tp, 1, lay.ep, lay.global_batch, lay.seq_len, lay.etp, lay.cp, 1,
                 lay.micro_batch, lay.recompute, lay.dispatcher)
    if lay.global_batch % (lay.dp * lay.micro_batch):
        raise InputError(f"global batch ({lay.global_batch}) must be a multiple of dp × micro-batch "
                         f"({lay.dp} × {lay.micro_batch}) once the pipeline is folded into data parallelism")
    st = _step(sm, lay)
    p = moe_pieces(sm, lay, st)
    # ZeRO-1 all-reduces the gradients, ZeRO-2 and 3 reduce-scatter them; 1 and 2 all-gather
    # the updated weights after the step, 3 gathers them per layer instead
    ar = zero_stage == 1
    red_d, gat_d = _dense_sync(sm, lay, DS_GRAD_BYTES, DS_WEIGHT_BYTES, ar)
    red_e, gat_e = _expert_sync(sm, lay, p, DS_GRAD_BYTES, DS_WEIGHT_BYTES, ar)
    if ar:
        gat_d = _dense_sync(sm, lay, DS_GRAD_BYTES, DS_WEIGHT_BYTES, False)[1]
        gat_e = _expert_sync(sm, lay, p, DS_GRAD_BYTES, DS_WEIGHT_BYTES, False)[1]
    step = st.step_ms - st.dp_exposed_ms - st.optimizer_ms
    p_dense = m.non_expert_params / lay.tp
    edp = lay.dp * lay.cp * lay.tp // (lay.ep * lay.etp)
    dp = lay.dp * lay.cp
    shard = p_dense / dp + p.expert_params / edp
    layer_gather = 0.0
    if zero_stage == 3:  # weights gathered per layer and micro-batch, forward and backward
        lt = sm.layer_times(tp=lay.tp, cp=lay.cp, b=lay.micro_batch, s=lay.seq_len, ep=lay.ep, etp=lay.etp,
                            dispatcher=lay.dispatcher)
        hide = lt.attn_compute + lt.moe_compute
        g_d = collective_scalar_ms("all_gather", DS_WEIGHT_BYTES * p_dense / m.num_layers, dp,
                                   group_link(sm.hw, max(1, dp), sm.gpn, max(1, lay.tp)))
        egrp_link = group_link(sm.hw, max(1, edp), sm.gpn, max(1, lay.ep * lay.etp))
        g_e = collective_scalar_ms("all_gather", DS_WEIGHT_BYTES * p.expert_params / p.moe_layers, edp, egrp_link)

        def exposed(g: float) -> float:
            return max(0.0, g - hide) + max(0.0, g - 2.0 * hide)

        n_moe = m.num_moe_layers
        layer_gather = st.micro_batches * ((m.num_layers - n_moe) * exposed(g_d) + n_moe * exposed(g_d + g_e))
        gat_d = gat_e = 0.0
    sync = red_d + gat_d + red_e + gat_e  # overlap_comm off: exposed whole
    parts = {"sync_ms": sync, "zero3_gather_ms": layer_gather}
    if offload:
        copy_up = float(h2d_ms(sm.hw, DS_WEIGHT_BYTES * shard))
        copy_down = float(d2h_ms(sm.hw, DS_GRAD_BYTES * shard))
        host = OPTIMIZER_STEP_BYTES * shard / (host_memory_gbps / sm.gpn * 1e9) * 1e3
        optim = max(0.0, copy_down - REDUCE_WINDOW * st.stage_ms) + host + copy_up
        parts.update(host_adam_ms=host, pcie_up_ms=copy_up, pcie_down_ms=copy_down)
    else:
        optim = st.optimizer_ms
    step += sync + layer_gather + optim
    # memory: 16 bytes per parameter, sharded by stage over the data-parallel groups
    act = _memory(sm, lay).activations
    w_div = (dp, edp) if zero_stage == 3 else (1, 1)
    g_div = (dp, edp) if zero_stage >= 2 else (1, 1)
    weights = DS_WEIGHT_BYTES * (p_dense / w_div[0] + p.expert_params / w_div[1])
    if zero_stage == 3:
        # the gathered layer and the next
        weights += DS_WEIGHT_BYTES * 2 * (p_dense / m.num_layers + p.expert_params / p.moe_layers)
    grads = DS_GRAD_BYTES * (p_dense / g_div[0] + p.expert_params / g_div[1])
    optim_b = 0.0 if offload else OPTIMIZER_BYTES * shard
    mem = MemoryBreakdown(weights=weights, gradients=grads, optimizer=optim_b, activations=act)
    name = "deepspeed-moe"
    out = _result(name, sm, lay, step, mem, parts, st)
    extra = f"ZeRO-{zero_stage}" + (" + offload" if offload else "")
    return StrategyPrice(out.strategy, out.layout, out.step_ms, out.tflops_per_gpu, out.memory,
                         {**out.parts, "zero_stage": float(zero_stage)}, (extra, *out.assumptions))


def price(name: str, sm: StepModel, lay: Layout, **kw: float | int | bool) -> StrategyPrice:
    """The strategy ``name`` (:data:`STRATEGY_NAMES`) on ``lay``; ``kw`` its own settings."""
    fns = {"megatron": price_megatron, "fsmoe": price_fsmoe, "fssdp": price_fssdp,
           "deepspeed-moe": price_deepspeed_moe}
    if name not in fns:
        raise InputError(f"strategy must be one of {', '.join(STRATEGY_NAMES)} (got {name!r})", field="strategy")
    return fns[name](sm, lay, **kw)  # type: ignore[operator]
