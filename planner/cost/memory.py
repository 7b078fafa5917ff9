"""Memory per GPU, for training and for inference (bytes; GIB = 2**30).

Legend: h hidden, f expert FFN width, f_sh shared-expert width, f_d dense FFN width, k top-k,
a attention heads, V vocabulary, s sequence length, b micro-batch (sequences), L_st layers of a
pipeline stage (⌈layers / pp⌉), L_moe MoE layers of a stage (⌈MoE layers / pp⌉), S slots per GPU
(experts incl. redundant replicas), tp/pp/dp/ep/etp/vpp the parallel degrees.

**Weights** (serving: in the checkpoint's dtypes, ``expert_dtype`` and ``weight_dtype``)::

    experts_g    = S · 3·h·f · B_expert · L_moe / etp          (replicas count: a slot is a copy)
    non_expert_g = non-expert parameters · B_weight / (tp · pp)
    weights_g    = experts_g + non_expert_g                      (:func:`weights_per_gpu_bytes`)

**Training** (Megatron-LM mixed precision with Adam; docs/facts.md §6) prices the weights in the
*training* dtype, not the checkpoint's (DeepSeek-V3's fp8 ``expert_dtype`` is how it is served):

- ``train_dtype="bf16"``: 2 (bf16 weight) + 4 (fp32 gradient) + 12 (fp32 master weight, Adam m
  and v) = 18 bytes per parameter.
- ``train_dtype="fp8"``: the linear layers' weights (routed and shared experts, dense FFNs,
  attention projections) are held in fp8, 1 byte (Transformer Engine fp8 parameters, Megatron
  ``--fp8-param-gather``); embeddings, output head and router gates stay bf16 (DeepSeek-V3
  technical report, arXiv 2412.19437 §3.3.1, keeps them in higher precision). Gradients stay
  fp32 (4) and the optimizer keeps fp32 master weights and fp32 Adam m and v (12), as
  Megatron's optimizer does: 17 bytes per linear parameter. (DeepSeek-V3 §3.3.2 also keeps
  fp32 master weights and gradients but stores Adam's moments in bf16; not modelled.)

The distributed optimizer shards the 12 over the data-parallel group (experts over
``edp = dp·tp/(ep·etp)``). Activations per layer and micro-batch follow Korthikanti et al. 2022 (Table 2) with sequence
parallelism and the recompute mode, the attention core as flash attention (no s² tensors kept:
without recompute only its fp32 log-sum-exp per head and query is added), and a 1F1B first stage holds ``min(pp, micro-batches)`` of
them (× ``1 + (pp − 1)/(pp·vpp)`` interleaved); rank r holds ``min(pp − r, micro-batches)`` of its
own layers (an uneven layout can make another rank the fullest), and the fullest rank counts.
Formulas in full: docs/cost_model.md §4.

**Inference**::

    kv_g   = kv_tokens · L_st · kv_rank
             GQA/MHA: kv_rank = 2·⌈kv_heads/tp⌉·head_dim·B  (heads split over TP; one
                      replicated head per rank when tp > kv_heads)
             MLA:     kv_rank = (kv_lora_rank + qk_rope_head_dim)·B  (not divided by tp:
                      every TP rank keeps the whole latent cache; docs/facts.md §6)
    act_g  = T · B_act · (2h + (a + 2·kv_heads)·head_dim/tp + 2·k·h + 3·k·f/etp)   (one layer at a time)
    disp_g = 2 · T · k · h · B_act                                      (dispatch send + receive buffers)

where ``kv_tokens`` are the tokens whose KV cache this GPU holds (its data-parallel rank's
sequences × context), ``T`` the tokens of one forward pass on this GPU, B_act = 2 (bf16).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

from planner.cost.compute import ACTIVATION_BYTES
from planner.errors import InputError
from planner.specs.degrees import pipeline_layout
from planner.specs.model import DTYPE_BYTES, ModelSpec

GIB = 1024**3
#: Training bytes per parameter besides the weight: fp32 gradient, then optimizer states
#: (fp32 master weight, Adam m and v), whatever the training dtype.
GRAD_BYTES = 4
OPTIMIZER_BYTES = 12
#: Training dtypes and the bytes of a weight of a linear layer in each.
TRAIN_DTYPES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0}
#: Weights that stay bf16 in fp8 training (embeddings, output head, router gates).
HIGH_PRECISION_BYTES = 2.0

Recompute = Literal["none", "selective", "full"]


def _positive(**kw: int) -> None:
    for name, v in kw.items():
        if v <= 0:
            raise InputError(f"{name} must be > 0 (got {v})")


def weights_per_gpu_bytes(model: ModelSpec, slots_per_gpu: int, tp: int, pp: int, etp: int) -> float:
    """Bytes of weights one GPU holds (experts of its slots plus its share of the rest)."""
    moe_layers_per_stage = math.ceil(model.num_moe_layers / pp)
    experts = slots_per_gpu * model.expert_bytes * moe_layers_per_stage / etp
    return experts + model.non_expert_bytes / (tp * pp)


def train_weight_bytes(model: ModelSpec, slots_per_gpu: int, tp: int, pp: int, etp: int, train_dtype: str = "bf16") -> float:
    """Bytes of weights one GPU holds in training (module docstring, **Training**): every weight
    in ``train_dtype``, except that fp8 keeps embeddings, output head and routers in bf16."""
    try:
        b = TRAIN_DTYPES[train_dtype]
    except KeyError:
        raise InputError(
            f"train_dtype must be one of {', '.join(TRAIN_DTYPES)} (got {train_dtype!r})", field="train_dtype"
        ) from None
    moe_layers_per_stage = math.ceil(model.num_moe_layers / pp)
    experts = slots_per_gpu * model.expert_params * moe_layers_per_stage / etp * b
    high = model.embedding_params + model.num_moe_layers * model.router_params_per_layer
    linear = model.non_expert_params - high
    return experts + (linear * b + high * HIGH_PRECISION_BYTES) / (tp * pp)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU by kind (absent kinds are 0)."""

    weights: float
    gradients: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    kv_cache: float = 0.0
    dispatch_buffers: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.kv_cache + self.dispatch_buffers

    @property
    def total_gib(self) -> float:
        return self.total / GIB

    def as_gib(self) -> dict[str, float]:
        d = {k: v / GIB for k, v in asdict(self).items()}
        d["total"] = self.total_gib
        return d


#: Bytes flash attention keeps per head and query for its backward: the fp32 log-sum-exp.
FLASH_LSE_BYTES = 4.0


def activation_bytes_per_layer(
    model: ModelSpec, seq_len: int, micro_batch: int, tp: int, recompute: Recompute = "selective", moe: bool = True
) -> float:
    """Activation bytes one layer keeps for backward, per micro-batch (module docstring)."""
    _positive(seq_len=seq_len, micro_batch=micro_batch, tp=tp)
    s, b, h = seq_len, micro_batch, model.hidden_size
    if recompute == "full":
        return 2.0 * s * b * h / tp
    if recompute not in ("none", "selective"):
        raise InputError(f"recompute must be 'none', 'selective' or 'full' (got {recompute!r})")
    if moe:
        f_eff = model.top_k * model.expert_intermediate_size + model.shared_ffn_size + (model.top_k - 1) * h / 2
    else:
        f_eff = model.dense_intermediate_size
    per = s * b * h * (18.0 + 4.0 * f_eff / h) / tp
    if recompute == "none":
        # Megatron runs the attention core as flash attention (Transformer Engine's fused
        # attention): no s² score, softmax or dropout tensors are kept (Korthikanti's 5·a·s²·b),
        # only the softmax statistics, one fp32 log-sum-exp per head and query (Dao et al. 2022,
        # FlashAttention §3.1; Dao 2023, FlashAttention-2 §3.1.2)
        per += FLASH_LSE_BYTES * model.attention.num_heads * s * b / tp
    return per


def training_memory(
    model: ModelSpec,
    *,
    slots_per_gpu: int,
    tp: int = 1,
    pp: int = 1,
    dp: int = 1,
    ep: int = 1,
    etp: int = 1,
    vpp: int = 1,
    seq_len: int,
    micro_batch: int,
    num_microbatches: int | None = None,
    distributed_optimizer: bool = True,
    recompute: Recompute = "selective",
    train_dtype: str = "bf16",
    pp_first: int | None = None,
    pp_last: int | None = None,
    a2a_overlap: bool = False,
) -> MemoryBreakdown:
    """Bytes per GPU in Megatron-style training, the weights in ``train_dtype`` (``bf16`` or
    ``fp8``; module docstring): weights, gradients and optimizer of a stage of ⌈L/pp⌉ layers,
    activations of the pipeline rank holding the most (its layers of the pipeline layout,
    ``pp_first`` / ``pp_last`` as :func:`planner.specs.degrees.pipeline_layout` takes them).
    ``a2a_overlap`` (Megatron's combined 1F1B): with pp > 1 the schedule moves one more model
    chunk's forward into warm-up (Megatron-LM docs/user-guide/features/moe_a2a_overlap.md), so
    every rank holds one more chunk of a micro-batch; without pipelining a forward runs beside
    another micro-batch's backward layer by layer (one more layer at the peak). The allocator's
    extra reserve across the two streams that the same page describes is not priced."""
    _positive(slots_per_gpu=slots_per_gpu, tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, vpp=vpp)
    if (dp * tp) % (ep * etp):
        raise InputError(f"ep × etp ({ep} × {etp}) must divide dp × tp ({dp} × {tp}): experts shard inside a stage")
    edp = dp * tp // (ep * etp)
    moe_per_stage = math.ceil(model.num_moe_layers / pp)
    expert_params = slots_per_gpu * model.expert_params * moe_per_stage / etp
    other_params = model.non_expert_params / (tp * pp)
    weights = train_weight_bytes(model, slots_per_gpu, tp, pp, etp, train_dtype)
    grads = GRAD_BYTES * (expert_params + other_params)
    if distributed_optimizer:
        optim = OPTIMIZER_BYTES * (expert_params / edp + other_params / dp)
    else:
        optim = OPTIMIZER_BYTES * (expert_params + other_params)
    mbs = pp if num_microbatches is None else max(1, num_microbatches)
    activations = _activations(model, seq_len, micro_batch, tp, pp, vpp, mbs, recompute, pp_first, pp_last, a2a_overlap)
    return MemoryBreakdown(weights=weights, gradients=grads, optimizer=optim, activations=activations)



@functools.lru_cache(maxsize=65536)
def _activations(
    model: ModelSpec, seq_len: int, micro_batch: int, tp: int, pp: int, vpp: int, mbs: int, recompute: Recompute,
    pp_first: int | None, pp_last: int | None, a2a_overlap: bool = False,
) -> float:
    """Activation bytes of the fullest pipeline rank (:func:`training_memory`); memoized, since
    the parallelism search asks for the same pipeline under many expert layouts."""
    moe_per_stage = math.ceil(model.num_moe_layers / pp)
    act_moe = activation_bytes_per_layer(model, seq_len, micro_batch, tp, recompute, moe=True)
    act_dense = activation_bytes_per_layer(model, seq_len, micro_batch, tp, recompute, moe=False) if model.num_dense_layers else 0.0
    interleave = 1.0 + (pp - 1) / (pp * vpp) if vpp > 1 else 1.0
    layout = pipeline_layout(model.num_layers, pp, vpp, mtp=model.mtp_layers, first=pp_first, last=pp_last)
    counts = None if isinstance(layout, str) else layout.rank_counts(model.moe_layers)
    activations = 0.0
    for r in range(pp):  # rank r of a 1F1B pipeline holds min(pp − r, micro-batches) in flight
        if counts is None:  # no layout Megatron runs (the rules say so elsewhere): ⌈L/pp⌉ each
            n_moe, n_dense = moe_per_stage, max(0, math.ceil(model.num_layers / pp) - moe_per_stage)
        else:
            n_moe, n_dense = counts[r]
        per_mb = n_moe * act_moe + n_dense * act_dense
        extra = (per_mb / vpp if pp > 1 else per_mb / max(1, n_moe + n_dense)) if a2a_overlap else 0.0
        activations = max(activations, per_mb * min(pp - r, mbs) * interleave + extra)
    return activations

def kv_bytes_per_token(model: ModelSpec, tp: int = 1, pp: int = 1, kv_dtype: str = "bf16") -> float:
    """KV-cache bytes one token adds on one GPU (its stage's layers, its TP share).

    GQA/MHA heads split over TP, each rank keeping ⌈kv_heads/tp⌉ (one replicated head when
    tp > kv_heads: vLLM's attention layers keep ``max(1, kv_heads // tp)``). The MLA latent is
    one vector per token that cannot be split by heads, so every TP rank keeps all of it (vLLM:
    "MLA is always replicated"; SGLang's DP-attention guide: TP over MLA duplicates the KV cache
    on every GPU; docs/facts.md §6)."""
    _positive(tp=tp, pp=pp)
    try:
        b = DTYPE_BYTES[kv_dtype]
    except KeyError:
        raise InputError(f"kv_dtype: unknown dtype {kv_dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None
    att = model.attention
    layers = math.ceil(model.num_layers / pp)
    if att.kind == "mla":  # one latent per token, not split by heads: every TP rank keeps all of it
        return layers * att.kv_bytes_per_token_per_layer(b)
    heads = math.ceil(att.num_kv_heads / tp)  # tp > kv_heads: each rank keeps one replicated head
    return layers * 2 * heads * att.head_dim * b


def inference_memory(
    model: ModelSpec,
    *,
    slots_per_gpu: int,
    tp: int = 1,
    pp: int = 1,
    etp: int = 1,
    kv_tokens: int = 0,
    batch_tokens: int = 0,
    kv_dtype: str = "bf16",
) -> MemoryBreakdown:
    """Bytes per GPU when serving: weights (replicas included), KV cache of ``kv_tokens``,
    activations and dispatch buffers of a forward pass of ``batch_tokens`` tokens."""
    _positive(slots_per_gpu=slots_per_gpu, tp=tp, pp=pp, etp=etp)
    if kv_tokens < 0 or batch_tokens < 0:
        raise InputError(f"kv_tokens and batch_tokens must be >= 0 (got {kv_tokens}, {batch_tokens})")
    att, h, k = model.attention, model.hidden_size, model.top_k
    kv = kv_tokens * kv_bytes_per_token(model, tp, pp, kv_dtype)
    per_tok = (
        2 * h
        + (att.num_heads + 2 * att.num_kv_heads) * att.head_dim / tp
        + 2 * k * h
        + 3 * k * model.expert_intermediate_size / etp
    )
    act = batch_tokens * ACTIVATION_BYTES * per_tok
    disp = 2.0 * batch_tokens * k * h * ACTIVATION_BYTES
    return MemoryBreakdown(
        weights=weights_per_gpu_bytes(model, slots_per_gpu, tp, pp, etp),
        activations=act, kv_cache=kv, dispatch_buffers=disp,
    )
