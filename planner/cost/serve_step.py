"""One forward step of a serving deployment (``prefill``, ``decode``): attention data-parallel over
dp ranks, per layer attention + TP all-reduce + the MoE block with DeepEP dispatch, composed from
the per-kernel pieces of :mod:`planner.cost` (docs/cost_model.md §5). Training steps are
:mod:`planner.cost.step`.

**Two-batch overlap** (``two_batch_overlap``; SGLang ``--enable-two-batch-overlap``, after
DeepSeek's profile-data design; docs/serving.md). The step's tokens split into two micro-batches
(SGLang ``two_batch_overlap.py``: prefill splits the prompts at the balanced token sum, or cuts a
prompt in the middle when that leaves the halves further apart than 48/52, so each half holds
half the tokens; decode splits the sequences ``bs // 2``), and the MoE layers run as a list of
operations cut by yield points (``operations_strategy.py``). The compute stream runs the two
micro-batches' stages alternately (micro-batch B starting ``delta`` stages behind A: 0 in prefill,
2 in decode); dispatch and combine are launched on DeepEP's one communication stream and waited
for by the stage that needs their result, so one micro-batch's all-to-all runs while the other
computes. :func:`tbo_schedule` replays that order exactly (max over the two streams, no constant
fitted); the stages are priced per half from the same tables (GEMMs at half M, so weight reads
are paid twice). Prefill's DeepEP normal kernels hold SMs while they run and SGLang restricts
DeepGEMM to the rest (``deep_gemm_num_sms = SMs − DeepEP's``), so prefill compute under overlap
is slowed by ``SMs / (SMs − DEEPEP_NORMAL_SMS)``; decode's low-latency kernels take either all
SMs briefly or none while in flight (LMSYS blog 2025-05-05, TBO decode breakdown) and SGLang
sets no limit there, so decode compute is not slowed. Dense layers and the LM head run on the
whole batch (SGLang overlaps the MoE layers only: dense-layer TBO is not implemented there).
The flat ``hw.comm_overlap`` factor applies only without two-batch overlap.

**Routing imbalance** (``imbalance``). Uniform routing gives every GPU the mean load; a real step
waits for the busiest GPU. ``imbalance`` is (experts, alltoall): the busiest GPU's expert tokens
over the mean, and its dispatch copies (sent or received) over the mean, or a callable
``(ep, tokens per GPU) -> (experts, alltoall)`` asked at each priced token count (a two-batch
half at its own; :func:`planner.solve.serve_imbalance.imbalance_fn` derives it from routing). The
experts are priced at the busiest GPU (its slots hold ``experts ×`` the mean tokens: the kernel
tables decide what that costs; at small M weight reads dominate and extra tokens cost little)
and each dispatch/combine phase moves ``alltoall ×`` the mean bytes. Default 1.0: uniform.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from planner.cost.comm import collective_scalar_ms as _coll
from planner.cost.comm import nic, nvlink
from planner.cost.compute import ACTIVATION_BYTES, grouped_experts_ms
from planner.cost.layers import (
    attention_ms,
    combine_ms,
    dense_ffn_ms,
    gemm_ms,
    permute_ms,
    router_ms,
    shared_experts_ms,
)
from planner.cost.step import _link, alltoall_ms
from planner.errors import InputError
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec

#: ``two_batch_overlap`` values: off, on, or whichever step is faster.
TBO_MODES = ("off", "on", "auto")
#: SMs DeepEP's normal (prefill) kernels occupy: DeepEP V1's tested and tuned setting
#: (``tests/test_internode.py`` ``num_sms = 24``; DeepEP's README for V2: "for V3-like legacy
#: training, SM usage reduced from 24 to 4-6"); SGLang passes ``SMs − this`` to DeepGEMM in TBO
#: prefill (``operations_strategy.py``, ``deep_gemm_num_sms``).
DEEPEP_NORMAL_SMS = 24
#: Channels per fp32 scale when a dispatch is quantized to fp8: SGLang quantizes a token's hidden
#: state to fp8 in groups of 128 channels before DeepEP's normal dispatch and dispatches fp8 through
#: the low-latency kernels (``token_dispatcher/deepep.py``: ``per_token_group_quant_fp8(x, 128)``,
#: ``low_latency_dispatch(use_fp8=True)``) when its DeepGEMM experts run in fp8; combine stays bf16.
#: DeepEP's README measures its kernels the same way ("FP8 dispatching and BF16 combining").
FP8_DISPATCH_GROUP = 128
#: Layers :func:`tbo_schedule` replays before extending the per-layer period to the rest.
_TBO_REPLAY_LAYERS = 8

#: ``imbalance`` as given: one factor for both, (experts, alltoall), or a callable (ep, tokens per
#: GPU) -> (experts, alltoall)
Imbalance = float | tuple[float, float] | Callable[[int, float], tuple[float, float]]

#: one operation of a micro-batch: ("c", ms) compute; ("send", kind, ms) launch a dispatch or
#: combine on the communication stream; ("wait", kind) the compute stream waits for it; ("yield",)
Op = tuple


@dataclass(frozen=True)
class ServeStep:
    """Predicted serving step (docs/cost_model.md §5)."""

    step_ms: float  #: one forward step through all layers
    tokens_per_step: float
    throughput_tokens_per_s: float
    latency_per_token_ms: float  #: decode: the step; prefill: the whole prompt (time to first token)
    moe_layer_ms: float  #: one MoE block on the whole batch, communication exposed (without overlap)
    attention_ms: float
    two_batch_overlap: bool = False  #: the step is priced with two-batch overlap
    tbo_layer_ms: float = 0.0  #: with overlap: one MoE layer (attention + MoE) of both micro-batches


@dataclass(frozen=True)
class _Pieces:
    """One layer's pieces on one GPU (ms) for ``tokens`` tokens of an attention-DP rank."""

    proj: float
    core: float
    tp_comm: float
    router: float
    permute: float
    combine: float
    shared: float
    experts: float
    etp_comm: float
    a2a: float  #: one dispatch phase, not discounted
    a2a_combine: float  #: one combine phase, not discounted
    dense: float


def active_experts(slots: int, experts: int, top_k: int, tokens: float) -> float:
    """Expected local expert slots that receive at least one of ``tokens`` routed token choices
    under uniform routing: each of ``slots`` slots misses a token with probability ``1 − k/E``
    (``experts`` counts every physical slot, replicas sharing their expert's tokens)."""
    if tokens <= 0:
        return 0.0
    return slots * (1.0 - (1.0 - top_k / experts) ** tokens)


def _experts_ms(hw: HardwareProfile, model: ModelSpec, slots: int, phys: int, M: float, f: int, group_tokens: float) -> float:
    """Grouped GEMM of ``slots`` local slots (of ``phys`` in the EP group) holding ``M`` tokens each
    on average, priced over the slots expected to receive any of the group's ``group_tokens``
    tokens (:func:`active_experts`; at small batches most slots are idle and their weights are not
    read). The grouped kernel costs ``c + Σ_e (D(M_e) − c)``: linear in the number of experts at a
    given M, so a fractional count interpolates exactly between one and two experts."""
    n = active_experts(slots, phys, model.top_k, group_tokens)
    if n <= 0 or M <= 0:
        return 0.0
    m_act = slots * M / n
    one, two = (float(grouped_experts_ms(hw, model.hidden_size, f, model.expert_dtype, np.full((1, j), m_act),
                                         kernel="grouped")[0]) for j in (1, 2))
    return one + (n - 1.0) * (two - one)


def _pieces(
    model: ModelSpec, hw: HardwareProfile, *, mode: str, seqs: int, seq_len: int, tokens: float, tp: int, ep: int,
    etp: int, redundant: int, gpus_per_node: int, dispatcher: str, kv_dtype: str, core_scale: float = 1.0,
    imbalance: Imbalance = 1.0,
) -> _Pieces:
    """A layer's pieces for ``tokens`` tokens of one attention-DP rank (``seqs`` sequences of
    ``seq_len`` in prefill, or ``seqs`` decode sequences at context ``seq_len``). ``core_scale``
    scales the prefill attention core (a half of a step holds half of its causal attention);
    ``imbalance`` (module docstring) puts the experts and the all-to-all at the busiest GPU."""
    if mode == "decode":
        a = attention_ms(hw, model, mode="decode", sequences=seqs, context=seq_len, tp=tp, kv_dtype=kv_dtype)
        proj, core = a.projections_ms, a.core_ms
    else:
        a = attention_ms(hw, model, mode="prefill", sequences=seqs, seq_len=seq_len, tp=tp)
        # the projections depend on the tokens alone: a half's are one prompt of its tokens
        proj = a.projections_ms if core_scale == 1.0 else attention_ms(
            hw, model, mode="prefill", sequences=1, seq_len=max(1, math.ceil(tokens)), tp=tp).projections_ms
        core = a.core_ms * core_scale
    tp_comm = 2.0 * _coll("all_reduce", tokens * model.hidden_size * ACTIVATION_BYTES, tp,
                          _link(hw, tp, 1, gpus_per_node))
    router = permute = comb = shared = experts = etp_comm = a2a = a2a_c = 0.0
    if model.num_moe_layers:
        t_gpu = tokens / tp  # the MoE block splits a rank's tokens over its TP GPUs
        phys = model.num_experts + redundant
        slots = phys // ep
        f_exp, f_a2a = imbalance_factors(imbalance, ep, t_gpu)
        M = model.top_k * t_gpu * ep * etp / phys * f_exp
        experts = _experts_ms(hw, model, slots, phys, M, model.expert_intermediate_size // etp,
                              t_gpu * ep * etp * f_exp)
        a2a, a2a_c = serve_alltoall_ms(hw, model, t_gpu * f_a2a, ep, etp, gpus_per_node, dispatcher, mode)
        if etp > 1:
            buf = model.top_k * t_gpu * etp * model.hidden_size * ACTIVATION_BYTES
            link = _link(hw, etp, 1, gpus_per_node)
            etp_comm = _coll("all_gather", buf, etp, link) + _coll("reduce_scatter", buf, etp, link)
        router, permute, comb = router_ms(hw, model, t_gpu), permute_ms(hw, model, t_gpu), combine_ms(hw, model, t_gpu)
        shared = shared_experts_ms(hw, model, tokens, etp=tp)
    dense = dense_ffn_ms(hw, model, tokens, tp) if model.num_dense_layers else 0.0
    return _Pieces(proj, core, tp_comm, router, permute, comb, shared, experts, etp_comm, a2a, a2a_c, dense)


def dispatch_bytes_per_token(model: ModelSpec, dispatcher: str) -> float:
    """Bytes one dispatched copy of a token moves: fp8 with one fp32 scale per
    :data:`FP8_DISPATCH_GROUP` channels through DeepEP when the experts run in fp8, else bf16."""
    h = model.hidden_size
    if dispatcher == "deepep" and model.expert_dtype == "fp8":
        return h + 4.0 * math.ceil(h / FP8_DISPATCH_GROUP)
    return h * ACTIVATION_BYTES


def serve_alltoall_ms(hw: HardwareProfile, model: ModelSpec, tokens: float, ep: int, etp: int, gpus_per_node: int,
                      dispatcher: str, mode: str) -> tuple[float, float]:
    """(dispatch, combine) ms of one serving MoE layer's ``tokens`` per GPU under uniform routing.
    DeepEP runs its normal kernels in prefill (one copy per destination node, forwarded over NVLink
    there) and its low-latency kernels in decode (SGLang ``--deepep-mode auto``), which send one copy
    per selected expert straight to that expert's GPU — DeepEP's low-latency example and its measured
    table count every top-k copy (README: 128 tokens, top-8, EP64: dispatch 173 µs, combine 314 µs),
    peers of the same node over NVLink since DeepEP #173 (2025-06). Dispatch moves
    :func:`dispatch_bytes_per_token`, combine the bf16 hidden state. Other dispatchers: bf16 both ways."""
    if dispatcher != "deepep":
        one = alltoall_ms(hw, model, tokens, ep, etp, gpus_per_node, dispatcher)
        return one, one
    copies = "pairs" if mode == "decode" else "deepep"
    disp = alltoall_ms(hw, model, tokens, ep, etp, gpus_per_node, copies, dispatch_bytes_per_token(model, dispatcher))
    comb = alltoall_ms(hw, model, tokens, ep, etp, gpus_per_node, copies, model.hidden_size * ACTIVATION_BYTES)
    return disp, comb


def imbalance_factors(imbalance: Imbalance, ep: int, tokens_per_gpu: float) -> tuple[float, float]:
    """(experts, alltoall) factors of ``imbalance`` (module docstring) at ``tokens_per_gpu``;
    each must be >= 1 (the busiest GPU holds at least the mean)."""
    if callable(imbalance):
        f = imbalance(ep, tokens_per_gpu) if ep > 1 else (1.0, 1.0)
    elif isinstance(imbalance, tuple):
        f = imbalance
    else:
        f = (imbalance, imbalance)
    f_exp, f_a2a = (float(x) for x in f)
    if not (f_exp >= 1.0 and f_a2a >= 1.0 and math.isfinite(f_exp) and math.isfinite(f_a2a)):
        raise InputError(f"imbalance must be >= 1 (busiest GPU over the mean; got {f_exp:g}, {f_a2a:g})",
                         field="imbalance")
    return f_exp, f_a2a


def _stages(ops: Sequence[Op]) -> list[list[Op]]:
    out: list[list[Op]] = [[]]
    for op in ops:
        if op[0] == "yield":
            out.append([])
        else:
            out[-1].append(op)
    return [s for s in out if s]


def _replay(stages: list[list[Op]], delta: int) -> float:
    """Time of two micro-batches running ``stages`` each in SGLang's order
    (``execute_overlapped_operations``: A's first ``delta`` stages, then A and B alternately, then
    B's last ``delta``) on one compute stream and one communication stream."""
    n = len(stages)
    order = [(0, i) for i in range(min(delta, n))]
    for i in range(n - min(delta, n)):
        order += [(0, i + min(delta, n)), (1, i)]
    order += [(1, i) for i in range(n - min(delta, n), n)]
    t, comm_free = 0.0, 0.0
    done: list[dict[str, float]] = [{}, {}]
    for mb, i in order:
        for op in stages[i]:
            if op[0] == "c":
                t += op[1]
            elif op[0] == "send":  # launched behind the compute stream's work so far
                comm_free = max(t, comm_free) + op[2]
                done[mb][op[1]] = comm_free
            else:  # wait
                t = max(t, done[mb].get(op[1], 0.0))
    return max(t, comm_free)


def tbo_schedule(layer_ops: Sequence[Op], layers: int, delta: int) -> float:
    """Time (ms) of ``layers`` consecutive layers of two equal micro-batches, each layer one
    micro-batch's operations ``layer_ops`` (yield points split them into stages; a layer's last
    stage runs on into the next layer's first, as SGLang concatenates the layers' operations).
    Past :data:`_TBO_REPLAY_LAYERS` layers the schedule is periodic: the replayed layers' last
    per-layer increment extends it."""
    if layers <= 0:
        return 0.0
    n = min(layers, _TBO_REPLAY_LAYERS)
    t_n = _replay(_stages(list(layer_ops) * n), delta)
    if layers == n:
        return t_n
    t_prev = _replay(_stages(list(layer_ops) * (n - 1)), delta)
    return t_n + (layers - n) * (t_n - t_prev)


def layer_ops(mode: str, p: _Pieces, slow: float = 1.0) -> list[Op]:
    """One micro-batch's operations in one MoE layer, as SGLang's DeepSeek strategies cut them
    (``operations_strategy.py``): prefill ``[attention, gate, dispatch_a] | [dispatch_b, experts,
    combine_a] | [shared experts, combine_b, output]``; decode ``[attention prepare] | [attention
    core, gate] | [dispatch_a, shared experts] | [dispatch_b, experts, combine_a] | [combine_b] |
    [output]``. ``slow`` scales every compute operation (prefill: the SMs DeepEP holds)."""
    def c(ms: float) -> Op:
        return ("c", ms * slow)
    y = ("yield",)
    if mode == "prefill":
        return [c(p.proj + p.core + p.tp_comm + p.router + p.permute), ("send", "d", p.a2a), y,
                ("wait", "d"), c(p.experts + p.etp_comm), ("send", "c", p.a2a_combine), y,
                c(p.shared), ("wait", "c"), c(p.combine)]
    return [c(p.proj), y, c(p.core + p.tp_comm + p.router), y, ("send", "d", p.a2a), c(p.shared), y,
            ("wait", "d"), c(p.permute + p.experts + p.etp_comm), ("send", "c", p.a2a_combine), y, ("wait", "c"), y,
            c(p.combine)]


def _step(model: ModelSpec, hw: HardwareProfile, p: _Pieces, tbo_layers_ms: float | None, head: float, pp_ms: float) -> float:
    att = p.proj + p.core + p.tp_comm
    dense = model.num_dense_layers * (att + p.dense)
    if tbo_layers_ms is not None:
        return dense + tbo_layers_ms + head + pp_ms
    moe = _moe_ms(hw, p)
    return model.num_layers * att + model.num_moe_layers * moe + model.num_dense_layers * p.dense + head + pp_ms


def _moe_ms(hw: HardwareProfile, p: _Pieces) -> float:
    comm = (p.a2a + p.a2a_combine) * (1.0 - hw.comm_overlap) + p.etp_comm
    return p.router + p.permute + p.combine + p.shared + p.experts + comm


def serve_step(
    model: ModelSpec,
    hw: HardwareProfile,
    *,
    mode: str,
    num_gpus: int,
    gpus_per_node: int,
    tp: int,
    pp: int,
    ep: int,
    etp: int = 1,
    sequences: int,
    seq_len: int,
    redundant: int = 0,
    dispatcher: str = "deepep",
    kv_dtype: str = "bf16",
    two_batch_overlap: str | bool = "off",
    imbalance: Imbalance = 1.0,
) -> ServeStep:
    """One forward step of ``sequences`` across the cluster (docs/cost_model.md §5); decode
    attention reads its KV cache in ``kv_dtype``. ``two_batch_overlap`` (:data:`TBO_MODES`, or a
    bool): price the MoE layers as two overlapped micro-batches (module docstring), not, or
    whichever is faster (``auto``); one decode sequence per rank cannot split and is priced
    without. ``imbalance``: the busiest GPU over the mean (module docstring; 1.0 uniform)."""
    if mode not in ("prefill", "decode"):
        raise InputError(f"mode must be 'prefill' or 'decode' (got {mode!r})")
    if num_gpus % (tp * pp):
        raise InputError(f"tp × pp ({tp} × {pp}) must divide the {num_gpus} GPUs")
    tbo = {True: "on", False: "off"}.get(two_batch_overlap, two_batch_overlap)  # type: ignore[call-overload]
    if tbo not in TBO_MODES:
        raise InputError(f"two_batch_overlap must be one of {', '.join(TBO_MODES)} (got {two_batch_overlap!r})",
                         field="two_batch_overlap")
    dp = num_gpus // (tp * pp)
    per_rank = math.ceil(sequences / dp)
    new = 1 if mode == "decode" else seq_len
    t_rank = per_rank * new  # tokens of one attention-DP rank
    kw = dict(mode=mode, tp=tp, ep=ep, etp=etp, redundant=redundant, gpus_per_node=gpus_per_node,
              dispatcher=dispatcher, kv_dtype=kv_dtype, imbalance=imbalance)
    full = _pieces(model, hw, seqs=per_rank, seq_len=seq_len, tokens=t_rank, **kw)  # type: ignore[arg-type]
    head_tokens = per_rank  # only the last position of each sequence needs logits
    head = gemm_ms(hw, head_tokens, max(1, model.vocab_size // tp), model.hidden_size, model.weight_dtype)
    pp_ms = (pp - 1) * float(nic(hw).latency_us if num_gpus // pp >= gpus_per_node else nvlink(hw).latency_us) * 1e-3
    tokens = float(sequences * new)
    plain = _step(model, hw, full, None, head, pp_ms)

    def result(step: float, overlap: bool, layer: float) -> ServeStep:
        return ServeStep(step_ms=step, tokens_per_step=tokens, throughput_tokens_per_s=tokens / (step * 1e-3),
                         latency_per_token_ms=step, moe_layer_ms=_moe_ms(hw, full) if model.num_moe_layers else 0.0,
                         attention_ms=full.proj + full.core + full.tp_comm, two_batch_overlap=overlap,
                         tbo_layer_ms=layer)

    if tbo == "off" or not model.num_moe_layers or (mode == "decode" and per_rank < 2):
        return result(plain, False, 0.0)
    if mode == "decode":  # sequences split bs // 2 and the rest: both halves priced as the larger
        half = _pieces(model, hw, seqs=math.ceil(per_rank / 2), seq_len=seq_len, tokens=math.ceil(per_rank / 2), **kw)  # type: ignore[arg-type]
        slow, delta = 1.0, 2
    else:  # half the tokens each (whole prompts, or a prompt cut in the middle) and half the causal attention
        half = _pieces(model, hw, seqs=per_rank, seq_len=seq_len, tokens=t_rank / 2, core_scale=0.5, **kw)  # type: ignore[arg-type]
        slow, delta = hw.num_sms / max(1, hw.num_sms - DEEPEP_NORMAL_SMS), 0
    layers = tbo_schedule(layer_ops(mode, half, slow), model.num_moe_layers, delta)
    over = _step(model, hw, full, layers, head, pp_ms)
    if tbo == "auto" and over >= plain:
        return result(plain, False, 0.0)
    return result(over, True, layers / model.num_moe_layers)
