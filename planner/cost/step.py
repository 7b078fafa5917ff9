"""Step time of one training step of a whole deployment, composed from the per-kernel pieces of
:mod:`planner.cost`.

Legend: N GPUs, n GPUs per node, L layers, h hidden, E routed experts, k top-k, s sequence
length, b micro-batch, B global batch, tp/cp/pp/vpp/dp/ep/etp the degrees (dp = N/(tp·cp·pp)),
m = B/(dp·b) micro-batches. Times in ms. The full specification is docs/cost_model.md §5.

Why a closed form: the parallelism search (:mod:`planner.solve.parallel`) prices thousands of
layouts, so a step is a few sums over per-layer pieces that :class:`StepModel` memoizes:

- **training, one micro-batch on one GPU**: attention (with CP ring and TP collectives; the core
  at cuDNN's published flash-attention throughput, :data:`CUDNN_ATTN_H100_TFLOPS`), the MoE block
  (router, permute, the experts as Transformer Engine runs them — one GEMM per expert,
  :data:`TRAIN_EXPERT_KERNEL` —, the ``alltoall`` dispatcher's sort by local expert, dispatch /
  combine under uniform routing, ETP collectives), the dense FFN, the LM head; backward ≈ 2 ×
  forward, the attention core its own, plus fp32 main-gradient accumulation and recompute;
- **pipeline** (1F1B, interleaved with vpp; Narayanan et al. 2021):
  ``t_pipe = (m + (pp − 1)/vpp) · t_stage`` plus exposed p2p when not interleaved;
- **EP all-to-all overlap** (``a2a_overlap``: Megatron's combined 1F1B,
  ``--overlap-moe-expert-parallel-comm``): in the steady state the forward of one micro-batch
  and the backward of another run layer by layer on a compute and a communication stream, so
  each all-to-all phase hides behind the other micro-batch's work (:func:`paired_layer_ms`);
  the warm-up forwards and cool-down backwards stay exposed (:func:`paired_fraction`);
- **data-parallel sync** (Megatron DDP with overlap): reduce-scatter + all-gather (distributed
  optimizer) or all-reduce, exposed beyond the last / first micro-batch's backward / forward;
  optimizer ≈ 30 B per local parameter shard;
- **model FLOPs** in Megatron-LM's convention (:func:`model_flops_per_step`), so TFLOP/s figures
  compare with Megatron's reports;

Serving steps (prefill, decode) are priced in :mod:`planner.cost.serve_step`.

No constant here is fitted to a published run: kernel times come from the profile, links from
docs/facts.md §3, the factors from their sources (benchmarks/parallelism.py compares the result
with Megatron-core's published Mixtral 8x7B run).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from planner.cost.comm import Link, collective_scalar_ms, group_link, nic, nvlink, uniform_copies
from planner.cost.compute import ACTIVATION_BYTES, grouped_experts_ms
from planner.cost.layers import (
    attention_ms,
    combine_ms,
    dense_ffn_ms,
    dispatcher_sync_ms,
    flash_attention_ms,
    fp8_cast_ms,
    gemm_ms,
    memory_pass_ms,
    permute_ms,
    router_ms,
    shared_experts_ms,
    training_ms,
)
from planner.cost.memory import TRAIN_DTYPES
from planner.errors import InputError
from planner.specs.degrees import PipelineLayout, pipeline_layout
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec

#: Bytes the optimizer step reads and writes per local parameter shard (fp32 master weight, Adam
#: m and v read and written, fp32 gradient read, bf16 weight written): 12 + 12 + 4 + 2 ≈ 30.
OPTIMIZER_STEP_BYTES = 30.0
#: Fraction of a stage's micro-batch time during which gradient reduce-scatter can overlap (the
#: backward of the last micro-batch, ≈ 2/3 of forward + backward) and during which the weight
#: all-gather can overlap (the forward of the first, ≈ 1/3).
REDUCE_WINDOW, GATHER_WINDOW = 2.0 / 3.0, 1.0 / 3.0
RECOMPUTE = ("none", "selective", "full")
#: Elementwise traffic of one layer's forward outside the GEMMs and the attention core, in units
#: of T·h·2 bytes: two RMSNorms (read + write: 2 × 2), two residual adds (read 2, write 1: 2 × 3),
#: RoPE on q and k (read + write ≈ 2 × (a + kv)·d_h / h, taken as 2 for GQA models).
ELEMENTWISE_PASSES = 12.0
#: Gradient accumulation into fp32 main gradients (Megatron's gradient-accumulation fusion): each
#: micro-batch's weight-gradient GEMMs read and write 4 + 4 bytes per local parameter.
MAIN_GRAD_BYTES = 8.0
#: How Megatron runs a GPU's local experts in training: ``--moe-grouped-gemm`` with Transformer
#: Engine is TEGroupedMLP -> te.GroupedLinear, whose GEMMs go through ``general_grouped_gemm`` ->
#: ``nvte_multi_stream_cublas_gemm``: one cuBLAS GEMM per expert, spread over 4 compute streams
#: (TransformerEngine transformer_engine/common/gemm/cublaslt_gemm.cu, ``num_streams = 4`` in
#: include/transformer_engine/gemm.h), not one grouped kernel. So a GPU's experts cost the sum of
#: the profile's per-expert FFN times (``kernel="loop"``: the measured bf16 / fp8 tables, the fp8
#: one with its own cast of h), not the device-model grouped launch. The streams overlap only the
#: fixed cost of small GEMMs; training's experts see thousands of tokens each (M = k·b·s·ep/E), where
#: the tables run at 400-650 TFLOP/s and the overlap is small, so it is not credited.
TRAIN_EXPERT_KERNEL = "loop"


#: Slow-down of compute while an all-to-all runs beside it: Megatron Core's report (arXiv
#: 2603.07685 §4.2.3, as summarised in Megatron-LM docs/user-guide/features/moe_a2a_overlap.md,
#: "Performance results") has DeepEP reserve 20 SMs per H100 and observe about a 20% loss of GEMM
#: efficiency. Applied to the compute that shares time with a communication phase.
OVERLAP_GEMM_SLOWDOWN = 0.20


def paired_layer_ms(attn_f: float, expert_f: float, attn_b: float, expert_b: float, a2a: float) -> float:
    """Forward of one micro-batch's MoE layer paired with the backward of another's, under
    Megatron's combined 1F1B (``--overlap-moe-expert-parallel-comm``). The schedule issues, on a
    compute and a communication stream, ``F.attn``, ``B.combine``, ``F.dispatch``,
    ``B.expert``, ``B.dispatch``, ``F.expert``, ``F.combine``, ``B.attn``, each node waiting for
    the one it depends on (Megatron-LM docs/user-guide/features/moe_a2a_overlap.md, "Fine-grained
    execution"), so the pair takes four windows, each the longer of a compute node ``x`` and one
    all-to-all phase ``a2a``, the compute slowed by ``g`` (:data:`OVERLAP_GEMM_SLOWDOWN`) for the
    time it shares with the phase::

        Σ over x in (attn_f, expert_b, expert_f, attn_b) of max(x + g·min(x, a2a), a2a)

    against ``attn_f + expert_f + attn_b + expert_b + 4·a2a`` run one after the other (never
    more while g < 1). The all-to-all's own slow-down beside the GEMMs is not priced."""
    g = OVERLAP_GEMM_SLOWDOWN
    return sum(max(x + g * min(x, a2a), a2a) for x in (attn_f, expert_b, expert_f, attn_b))


def paired_fraction(pp: int, vpp: int, micro_batches: int) -> float:
    """Share of the first pipeline rank's model-chunk passes that combined 1F1B pairs: of its
    ``m·vpp`` forwards, the warm-up ones (Megatron's interleaved schedule: ``2(pp − 1) +
    (vpp − 1)·pp``, plus the one forward the overlap moves into warm-up; without pipelining the
    first forward) run alone, and as many backwards at the end. The first rank has the longest
    warm-up and starts and ends the step."""
    chunks = micro_batches * vpp
    warm = 1 if pp == 1 else 2 * (pp - 1) + (vpp - 1) * pp + 1
    return max(0, chunks - warm) / chunks


def overlap_problem(*, ep: int, pp: int, vpp: int, mtp_layers: int) -> str | None:
    """Why Megatron refuses ``--overlap-moe-expert-parallel-comm`` for a layout, or None
    (moe_a2a_overlap.md, "Hard requirements": EP > 1; PP > 1 needs virtual pipeline stages;
    at most one MTP layer)."""
    if ep <= 1:
        return f"a2a_overlap needs ep > 1 (got ep {ep}): there is no expert all-to-all to overlap"
    if pp > 1 and vpp <= 1:
        return f"a2a_overlap with pp {pp} needs vpp > 1 (Megatron runs it on the interleaved schedule only)"
    if mtp_layers > 1:
        return f"a2a_overlap allows at most one MTP layer (the model has {mtp_layers})"
    return None


# ---- links ------------------------------------------------------------------------------------


def _link(hw: HardwareProfile, size: int, stride: int, gpus_per_node: int) -> Link:
    return group_link(hw, max(1, size), gpus_per_node, max(1, stride))


_coll = collective_scalar_ms


def alltoall_ms(
    hw: HardwareProfile, model: ModelSpec, tokens: float, ep: int, etp: int, gpus_per_node: int, dispatcher: str,
    bytes_per_token: float | None = None,
) -> float:
    """One dispatch phase (ms) of ``tokens`` per GPU over an EP group of ``ep`` ranks ``etp`` GPUs
    apart, under uniform routing (docs/cost_model.md §5); each copy moves ``bytes_per_token``
    (default: the hidden state in bf16, so combine costs the same as dispatch)."""
    if ep <= 1 or tokens <= 0:
        return 0.0
    n_ep = max(1, min(ep, gpus_per_node // etp, hw.nvlink.gpus_per_domain // etp))
    if ep % n_ep:
        n_ep = math.gcd(ep, n_ep)
    # Megatron's ``alltoall`` sends every pair; anything else is priced as DeepEP
    intra, inter = uniform_copies(model.num_experts, model.top_k, ep, n_ep,
                                  "pairs" if dispatcher == "pairs" else "deepep")
    bpt = model.hidden_size * ACTIVATION_BYTES if bytes_per_token is None else bytes_per_token
    t_nvl = nvlink(hw).message_ms(tokens * intra * bpt) if intra > 0 else 0.0
    t_nic = nic(hw).message_ms(tokens * inter * bpt) if inter > 0 else 0.0
    return max(t_nvl, t_nic)


# ---- training -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainLayerTimes:
    """Forward times (ms) of one layer and micro-batch on one GPU, split into compute and comm."""

    attn_core: float
    attn_compute: float  #: projections + core + elementwise passes (norms, residuals, RoPE)
    attn_comm: float  #: TP all-gather + reduce-scatter, exposed CP ring
    moe_compute: float
    moe_comm: float  #: dispatch + combine, ETP gathers, TP collectives of the block
    dense_compute: float
    dense_comm: float
    head_compute: float
    attn_core_bwd: float = 0.0  #: backward of the attention core (cuDNN's published throughput)
    moe_sort: float = 0.0  #: the alltoall dispatcher's sort / unsort by local expert (in moe_compute)


@dataclass(frozen=True)
class TrainStep:
    """Predicted training step on the slowest pipeline stage (docs/cost_model.md §5)."""

    step_ms: float
    stage_ms: float  #: one micro-batch, forward + backward, slowest stage
    pipeline_ms: float
    bubble_fraction: float
    p2p_ms: float
    dp_exposed_ms: float
    optimizer_ms: float
    micro_batches: int
    tokens_per_s: float
    model_flops: float
    tflops_per_gpu: float
    parts: dict[str, float] = field(default_factory=dict)


def model_flops_per_step(model: ModelSpec, global_batch: int, seq_len: int) -> float:
    """Model FLOPs of one training step, Megatron's convention (docs/cost_model.md §5)."""
    att = model.attention
    matmul = model.active_params - (0 if model.tie_embeddings else model.hidden_size * model.vocab_size)
    tokens = float(global_batch) * seq_len
    qk = att.head_dim if att.kind != "mla" else (att.head_dim + (att.v_head_dim or att.head_dim)) / 2
    flops = 6.0 * tokens * matmul + 12.0 * tokens * seq_len * model.num_layers * att.num_heads * qk
    if model.mtp_layers:  # Megatron counts each MTP layer as one more layer of the last layer's kind,
        # its 2h -> h projection and one more output layer (num_floating_point_operations)
        h = model.hidden_size
        last_moe = (model.num_layers - 1) in set(model.moe_layers)
        ffn = (model.top_k * model.expert_params + model.shared_params_per_layer + model.router_params_per_layer
               if last_moe else model.dense_ffn_params_per_layer)
        per = model.attention.params_per_layer(h) + ffn + 2 * h * h + h * model.vocab_size
        flops += model.mtp_layers * (6.0 * tokens * per + 12.0 * tokens * seq_len * att.num_heads * qk)
    return flops


class StepModel:
    """The step-time cost object of one (model, hardware, node size): the search calls
    :meth:`train_step` for thousands of candidates that share its per-layer pieces, so each
    piece is a pure method memoized on this instance (``functools.cache`` in ``__init__``)."""

    def __init__(self, model: ModelSpec, hw: HardwareProfile, gpus_per_node: int, train_dtype: str = "bf16") -> None:
        if train_dtype not in TRAIN_DTYPES:
            raise InputError(f"train_dtype must be one of {', '.join(TRAIN_DTYPES)} (got {train_dtype!r})", field="train_dtype")
        self.model = model
        self.hw, self.gpn = hw, gpus_per_node
        #: the dtype the linear layers compute in (the training dtype, never the checkpoint's)
        self.gemm_dtype = train_dtype
        for name in ("_attention", "_moe_block", "_tok_ops", "_experts", "_dense", "_head", "_train_layers",
                     "_split", "link", "_casts", "_mtp_proj", "_flops", "_sort", "_a2a_hidden"):
            setattr(self, name, functools.cache(getattr(self, name)))

    # per-layer pieces -----------------------------------------------------------------------

    def _attention(self, tp: int, cp: int, b: int, s: int) -> tuple[float, float, float]:
        """Projections (forward), attention core forward and core backward of one micro-batch:
        the core at cuDNN's published flash-attention throughput (:func:`~planner.cost.layers.flash_attention_ms`)."""
        a = attention_ms(self.hw, self.model, mode="prefill", sequences=b, seq_len=s, tp=tp, weight_dtype=self.gemm_dtype)
        fwd, bwd = flash_attention_ms(self.hw, self.model, b, s, tp)
        return a.projections_ms / cp, fwd / cp, bwd / cp

    def _mtp_proj(self, tp: int, T: float) -> float:
        """Forward + backward of an MTP layer's 2h -> h projection (DeepSeek-V3 §2.2)."""
        h = self.model.hidden_size
        return training_ms(gemm_ms(self.hw, T, max(1, h // tp), 2 * h, self.gemm_dtype))

    def _flops(self, global_batch: int, seq_len: int) -> float:
        return model_flops_per_step(self.model, global_batch, seq_len)

    def _casts(self, tp: int, etp: int, T: float) -> tuple[float, float, float]:
        """fp8 training: casts of one micro-batch's GEMM operands (forward inputs and backward
        output gradients, layers.fp8_cast_ms) of the attention, MoE and dense blocks; 0 in bf16."""
        if self.gemm_dtype != "fp8":
            return 0.0, 0.0, 0.0
        m, hw, h = self.model, self.hw, self.model.hidden_size
        n_att = m.attention.params_per_layer(h) / (h * tp)
        att = fp8_cast_ms(hw, T * (h + n_att))
        routed = m.top_k * T / tp  # token copies this GPU's experts see (uniform routing)
        f = m.expert_intermediate_size / etp
        moe = fp8_cast_ms(hw, routed * (2 * h + 3 * f))
        if m.shared_ffn_size:
            moe += fp8_cast_ms(hw, T * (2 * h + 3 * m.shared_ffn_size / tp))
        dense = fp8_cast_ms(hw, T * (2 * h + 3 * m.dense_intermediate_size / tp)) if m.num_dense_layers else 0.0
        return att, moe, dense

    def _tok_ops(self, tp: int, T: float) -> float:
        """Router, permute, combine and shared experts of one MoE block."""
        m, hw, t_gpu = self.model, self.hw, T / tp
        return (
            router_ms(hw, m, t_gpu) + permute_ms(hw, m, t_gpu) + combine_ms(hw, m, t_gpu)
            + shared_experts_ms(hw, m, T, etp=tp, dtype=self.gemm_dtype)
        )

    def _experts(self, M: float, local: int, f: int) -> float:
        m = self.model
        tok = np.full((1, local), M)
        return float(grouped_experts_ms(self.hw, m.hidden_size, f, self.gemm_dtype, tok, kernel=TRAIN_EXPERT_KERNEL)[0])

    def _sort(self, tp: int, cp: int, b: int, s: int, ep: int, etp: int, dispatcher: str) -> float:
        """Forward of Megatron's ``alltoall`` dispatcher's second permutation: with more than one
        local expert, the tokens received from the EP ranks are sorted by local expert
        (``sort_chunks_by_idxs`` after the all-to-all) and unsorted before the combine
        (megatron/core/transformer/moe/token_dispatcher.py, MoEAlltoAllTokenDispatcher: "Permutation
        2: Sort tokens by local expert"): two memory passes, each reading and writing the
        R = k·T/tp·etp token copies this GPU's experts receive (uniform routing). DeepEP's
        ``flex`` path permutes the received tokens once, which ``permute_ms`` / ``combine_ms`` price."""
        m = self.model
        if dispatcher != "pairs" or ep <= 1 or m.num_experts // ep <= 1:
            return 0.0
        R = m.top_k * b * s / cp / tp * etp
        return 2.0 * memory_pass_ms(self.hw, 2.0 * R * m.hidden_size * ACTIVATION_BYTES)

    def _moe_block(self, tp: int, cp: int, b: int, s: int, ep: int, etp: int, dispatcher: str) -> tuple[float, float]:
        m, hw = self.model, self.hw
        T = b * s / cp
        t_gpu = T / tp
        E = m.num_experts
        M = m.top_k * t_gpu * ep * etp / E
        compute = (self._tok_ops(tp, T) + self._experts(M, E // ep, m.expert_intermediate_size // etp)
                   + self._sort(tp, cp, b, s, ep, etp, dispatcher))
        comm = 2.0 * alltoall_ms(hw, m, t_gpu, ep, etp, self.gpn, dispatcher)
        if etp > 1:
            buf = m.top_k * t_gpu * etp * m.hidden_size * ACTIVATION_BYTES
            link = self.link(etp, 1)
            comm += _coll("all_gather", buf, etp, link) + _coll("reduce_scatter", buf, etp, link)
        if m.shared_ffn_size and tp > 1:  # the shared expert follows the dense part's TP
            link = self.link(tp, 1)
            comm += _coll("all_gather", T * m.hidden_size * ACTIVATION_BYTES, tp, link)
            comm += _coll("reduce_scatter", T * m.hidden_size * ACTIVATION_BYTES, tp, link)
        return compute, comm

    def _dense(self, tp: int, T: float) -> float:
        return dense_ffn_ms(self.hw, self.model, T, tp, dtype=self.gemm_dtype) if self.model.num_dense_layers else 0.0

    def _head(self, tp: int, T: float) -> float:
        m, hw = self.model, self.hw
        return gemm_ms(hw, T, max(1, m.vocab_size // tp), m.hidden_size, m.weight_dtype) + memory_pass_ms(
            hw, 2 * 4.0 * T * m.vocab_size / tp
        )

    def _tp_block_comm(self, tp: int, tokens: float) -> float:
        if tp <= 1:
            return 0.0
        link = self.link(tp, 1)
        nbytes = tokens * self.model.hidden_size * ACTIVATION_BYTES
        return _coll("all_gather", nbytes, tp, link) + _coll("reduce_scatter", nbytes, tp, link)

    def layer_times(self, *, tp: int, cp: int, b: int, s: int, ep: int, etp: int, dispatcher: str = "pairs") -> TrainLayerTimes:
        """Forward times of each kind of layer for one micro-batch (docs/cost_model.md §5)."""
        m, hw = self.model, self.hw
        T = b * s / cp
        proj, core, core_bwd = self._attention(tp, cp, b, s)
        attn_comm = self._tp_block_comm(tp, T)
        if cp > 1:
            att = m.attention
            kv = att.kv_bytes_per_token_per_layer(2.0) if att.kind == "mla" else 2 * att.num_kv_heads * att.head_dim * 2.0
            link = self.link(cp, tp)
            ring = (cp - 1) * link.message_ms(T * kv / max(1, tp if att.kind != "mla" else 1))
            attn_comm += max(0.0, ring - core)
        moe_c, moe_comm = self._moe_block(tp, cp, b, s, ep, etp, dispatcher) if m.num_moe_layers else (0.0, 0.0)
        elementwise = memory_pass_ms(hw, ELEMENTWISE_PASSES * T * m.hidden_size * ACTIVATION_BYTES)
        return TrainLayerTimes(
            attn_core=core, attn_core_bwd=core_bwd, moe_sort=self._sort(tp, cp, b, s, ep, etp, dispatcher) if m.num_moe_layers else 0.0,
            attn_compute=proj + core + elementwise, attn_comm=attn_comm, moe_compute=moe_c,
            moe_comm=moe_comm + (self._tp_block_comm(tp, T) if m.shared_ffn_size == 0 else 0.0),
            dense_compute=self._dense(tp, T), dense_comm=self._tp_block_comm(tp, T), head_compute=self._head(tp, T),
        )

    def _train_layers(
        self, tp: int, cp: int, b: int, s: int, ep: int, etp: int, dispatcher: str, recompute: str
    ) -> tuple[float, float, float, float, TrainLayerTimes]:
        """Forward + backward of one attention+MoE layer, attention+dense layer and the LM head
        with its loss."""
        m, hw = self.model, self.hw
        lt = self.layer_times(tp=tp, cp=cp, b=b, s=s, ep=ep, etp=etp, dispatcher=dispatcher)
        c_att, c_moe, c_dense = self._casts(tp, etp, b * s / cp)
        # Megatron's alltoall dispatcher syncs the split sizes to the host in each forward
        sync = dispatcher_sync_ms(hw) if ep > 1 and dispatcher == "pairs" else 0.0

        def train_layer(compute: float, comm: float, core: float, core_bwd: float, sort: float, params: float,
                        cast: float, host: float) -> float:
            # backward: 2 × forward, the attention core its own (cuDNN's backward throughput), the
            # dispatcher's sort / unsort once more (its backward is the inverse permutation, one
            # pass each); fp32 main-grad accumulation; fp8 casts of the forward inputs and backward
            # gradients (once each), host waits per forward
            t = training_ms(compute) + core_bwd - 2.0 * core - sort + 2.0 * comm + cast + host
            t += memory_pass_ms(hw, MAIN_GRAD_BYTES * params)
            if recompute == "full":
                t += compute + comm + cast / 2 + host
            elif recompute == "selective":
                t += core
            return t

        p_attn = m.attention.params_per_layer(m.hidden_size) / tp
        p_moe = (m.num_experts // ep) * m.expert_params / etp + (m.shared_params_per_layer + m.router_params_per_layer) / tp
        t_attn = train_layer(lt.attn_compute, lt.attn_comm, lt.attn_core, lt.attn_core_bwd, 0.0, p_attn, c_att, 0.0)
        t_moe = t_attn + train_layer(lt.moe_compute, lt.moe_comm, 0.0, 0.0, lt.moe_sort, p_moe, c_moe, sync)
        t_dense = t_attn + train_layer(lt.dense_compute, lt.dense_comm, 0.0, 0.0, 0.0, m.dense_ffn_params_per_layer / tp,
                                       c_dense, 0.0)
        return t_attn, t_moe, t_dense, training_ms(lt.head_compute), lt

    def _a2a_hidden(self, tp: int, cp: int, b: int, s: int, ep: int, etp: int, dispatcher: str) -> float:
        """Time (ms) combined 1F1B hides in one MoE layer's forward + backward of a steady-state
        pair (:func:`paired_layer_ms`): the attention node is the attention block with the router
        and the permutation before dispatch, the expert node the rest of the MoE block; their
        backwards are the training model's (2 × forward, the attention core its own, the
        dispatcher's sort once). ETP and TP collectives stay where they are, exposed."""
        m, hw = self.model, self.hw
        t_gpu = b * s / cp / tp
        a2a = alltoall_ms(hw, m, t_gpu, ep, etp, self.gpn, dispatcher)
        if a2a <= 0.0 or not m.num_moe_layers:
            return 0.0
        lt = self.layer_times(tp=tp, cp=cp, b=b, s=s, ep=ep, etp=etp, dispatcher=dispatcher)
        pre = router_ms(hw, m, t_gpu) + permute_ms(hw, m, t_gpu)
        attn_f = lt.attn_compute + lt.attn_comm + pre
        expert_f = lt.moe_compute - pre
        attn_b = 2.0 * (lt.attn_compute - lt.attn_core) + lt.attn_core_bwd + lt.attn_comm + 2.0 * pre
        expert_b = 2.0 * expert_f - lt.moe_sort
        alone = attn_f + expert_f + attn_b + expert_b + 4.0 * a2a
        return alone - paired_layer_ms(attn_f, expert_f, attn_b, expert_b, a2a)

    def _split(self, pp: int, vpp: int, first: int | None, last: int | None) -> tuple[PipelineLayout, list[tuple[int, int]]]:
        """The pipeline layout (specs.degrees.pipeline_layout) and the (MoE, dense) decoder-layer
        counts of each pipeline rank."""
        m = self.model
        layout = pipeline_layout(m.num_layers, pp, vpp, mtp=m.mtp_layers, first=first, last=last)
        if isinstance(layout, str):
            raise InputError(f"pp: {layout}", field="pp")
        counts = list(layout.rank_counts(m.moe_layers))
        return layout, counts

    def _stage_times(
        self, pp: int, vpp: int, first: int | None, last: int | None, t_moe: float, t_dense: float, head: float,
        embed: float, mtp: float,
    ) -> list[float]:
        """One micro-batch, forward + backward, of every pipeline rank: its decoder layers, the
        embedding on rank 0, the output layer with its loss and the MTP layers on the last."""
        _, counts = self._split(pp, vpp, first, last)
        out = [n_moe * t_moe + n_dense * t_dense for n_moe, n_dense in counts]
        out[0] += embed
        out[-1] += head + mtp
        return out

    def link(self, size: int, stride: int) -> Link:
        return _link(self.hw, size, stride, self.gpn)

    # the step ---------------------------------------------------------------------------------

    def train_step(
        self,
        *,
        num_gpus: int,
        tp: int,
        pp: int,
        ep: int,
        etp: int = 1,
        cp: int = 1,
        vpp: int = 1,
        micro_batch: int = 1,
        global_batch: int,
        seq_len: int,
        recompute: str = "selective",
        distributed_optimizer: bool = True,
        dispatcher: str = "pairs",
        pp_first: int | None = None,
        pp_last: int | None = None,
        a2a_overlap: bool = False,
    ) -> TrainStep:
        """Predicted step of Megatron-style training (docs/cost_model.md §5); ``pp_first`` /
        ``pp_last``: decoder layers of the first / last pipeline rank (default: the layout of
        :func:`planner.specs.degrees.pipeline_layout`). ``dispatcher``: ``pairs`` (Megatron's
        ``alltoall``) or ``deepep`` (``flex`` with DeepEP). ``a2a_overlap``: combined 1F1B
        (module docstring); a layout Megatron cannot run it on raises :class:`InputError`."""
        m, hw = self.model, self.hw
        if recompute not in RECOMPUTE:
            raise InputError(f"recompute must be one of {', '.join(RECOMPUTE)} (got {recompute!r})")
        for name, v in (("tp", tp), ("pp", pp), ("ep", ep), ("etp", etp), ("cp", cp), ("vpp", vpp), ("micro_batch", micro_batch)):
            if v <= 0:
                raise InputError(f"{name} must be > 0 (got {v})")
        if num_gpus % (tp * cp * pp):
            raise InputError(f"tp × cp × pp ({tp} × {cp} × {pp}) must divide the {num_gpus} GPUs")
        dp = num_gpus // (tp * cp * pp)
        if global_batch % (dp * micro_batch):
            raise InputError(
                f"global batch ({global_batch}) must be a multiple of dp × micro-batch ({dp} × {micro_batch})"
            )
        mbs = global_batch // (dp * micro_batch)
        if a2a_overlap:
            problem = overlap_problem(ep=ep, pp=pp, vpp=vpp, mtp_layers=m.mtp_layers)
            if problem:
                raise InputError(problem, field="a2a_overlap")
        t_attn, t_moe, t_dense, head, lt = self._train_layers(tp, cp, micro_batch, seq_len, ep, etp, dispatcher, recompute)
        T = micro_batch * seq_len / cp
        embed = memory_pass_ms(hw, 2.0 * 2.0 * T * m.hidden_size * ACTIVATION_BYTES / tp)  # lookup + grad scatter
        mtp = 0.0
        last_moe = (m.num_layers - 1) in set(m.moe_layers)  # an MTP layer is one more of the last layer's kind
        if m.mtp_layers:  # that layer, its 2h -> h projection, one more head
            mtp = m.mtp_layers * ((t_moe if last_moe else t_dense) + self._mtp_proj(tp, T) + head)
        stages = self._stage_times(pp, vpp, pp_first, pp_last, t_moe, t_dense, head, embed, mtp)
        stage = max(stages)
        pipe = (mbs + (pp - 1) / vpp) * stage
        hidden, paired = 0.0, 0.0
        if a2a_overlap:  # steady-state pairs run at the paired stage time; fill and drain as before
            saved = self._a2a_hidden(tp, cp, micro_batch, seq_len, ep, etp, dispatcher)
            mtp_ov = mtp - (m.mtp_layers * saved if last_moe else 0.0)
            stage_ov = max(self._stage_times(pp, vpp, pp_first, pp_last, t_moe - saved, t_dense, head, embed, mtp_ov))
            paired = paired_fraction(pp, vpp, mbs)
            hidden = mbs * paired * (stage - stage_ov)
            pipe -= hidden
        bubble = (pp - 1) / (vpp * mbs) if pp > 1 else 0.0
        # pipeline p2p
        p2p = 0.0
        if pp > 1 and vpp == 1:
            link = self.link(2, num_gpus // pp)
            nbytes = micro_batch * seq_len / cp * m.hidden_size * ACTIVATION_BYTES / tp
            p2p = 2.0 * mbs * link.message_ms(nbytes)
        # data-parallel sync
        moe_stage = math.ceil(m.num_moe_layers / pp)
        p_dense = m.non_expert_params / (tp * pp)
        p_exp = (m.num_experts // ep) * m.expert_params * moe_stage / etp
        dgrp, egrp = dp * cp, dp * cp * tp // (ep * etp)
        dlink = self.link(dgrp, tp)
        elink = self.link(egrp, ep * etp)
        if distributed_optimizer:
            red = _coll("reduce_scatter", 4.0 * p_dense, dgrp, dlink) + _coll("reduce_scatter", 4.0 * p_exp, egrp, elink)
            wb = TRAIN_DTYPES[self.gemm_dtype]  # fp8: fp8 parameters are gathered (--fp8-param-gather)
            gat = _coll("all_gather", wb * p_dense, dgrp, dlink) + _coll("all_gather", wb * p_exp, egrp, elink)
            shard = p_dense / dgrp + p_exp / egrp
        else:
            red = _coll("all_reduce", 4.0 * p_dense, dgrp, dlink) + _coll("all_reduce", 4.0 * p_exp, egrp, elink)
            gat = 0.0
            shard = p_dense + p_exp
        exposed = max(0.0, red - REDUCE_WINDOW * stage) + max(0.0, gat - GATHER_WINDOW * stage)
        optim = memory_pass_ms(hw, OPTIMIZER_STEP_BYTES * shard)
        step = pipe + p2p + exposed + optim
        flops = self._flops(global_batch, seq_len)
        return TrainStep(
            step_ms=step, stage_ms=stage, pipeline_ms=pipe, bubble_fraction=bubble, p2p_ms=p2p, dp_exposed_ms=exposed,
            optimizer_ms=optim, micro_batches=mbs, tokens_per_s=global_batch * seq_len / (step * 1e-3),
            model_flops=flops, tflops_per_gpu=flops / (step * 1e-3) / num_gpus / 1e12,
            parts={
                "attention_fwd_ms": lt.attn_compute, "attention_comm_fwd_ms": lt.attn_comm,
                "moe_compute_fwd_ms": lt.moe_compute, "moe_comm_fwd_ms": lt.moe_comm,
                "moe_layer_train_ms": t_moe, "dp_reduce_ms": red, "dp_gather_ms": gat,
                "attention_core_fwd_ms": lt.attn_core, "attention_core_bwd_ms": lt.attn_core_bwd,
                "moe_sort_fwd_ms": lt.moe_sort, "a2a_hidden_ms": hidden, "a2a_paired_fraction": paired,
            },
        )
