"""Compute cost of the rest of a layer: router, permute/unpermute and combine, attention, dense
FFN and shared experts, and training (forward + backward).

Legend: T tokens on the GPU, h hidden, E routed experts, k top-k, a query heads, kv KV heads,
d_h head dim, s sequence length, c context length (decode), b sequences, B_act = 2 (bf16
activations), B_w bytes per weight. Times in ms. Every kernel is priced with the device model of
:mod:`planner.cost.compute` (its fitted constants for the profile):

- **one GEMM** ``[M, K] @ [K, N]`` (router, attention projections)::

      t = c/4 + (tw^p + tc^p)^(1/p),   tw = (N·K·B_w + M·(N+K)·B_act) / (η_w·BW),   tc = Q(M,N,K) / (η_c·peak)

  with ``c``, ``p``, ``η_c`` of the device fit (``c`` is the fixed cost of an expert FFN's four
  kernels — two GEMMs, SiLU, multiply — so one kernel pays a quarter of it), ``η_w`` =
  :data:`~planner.cost.compute.STREAM_EFFICIENCY` and ``Q`` the tile/wave-quantized FLOPs;
- **a memory-bound pass** of ``n`` bytes (permute, combine, softmax/top-k): ``t = c/4 + n / (η_m·BW)``
  with η_m = :data:`MEMORY_OP_EFFICIENCY`;
- **an FFN** of width f over M tokens (dense layer, shared experts) is an expert FFN of that
  shape: :func:`planner.cost.compute.expert_ffn_ms` (the profile's table when measured).

Formulas (docs/facts.md §1-2, §6)::

    router      GEMM [T, h] @ [h, E], then softmax/top-k over T·E fp32 scores (read + write)
    permute     T·h·B_act read + T·k·h·B_act written (each token copied once per chosen expert)
    combine     T·k·h·B_act read + T·h·B_act written (weighted sum of the k expert outputs)
    attention, prefill (per layer, b sequences of s tokens, causal, flash attention):
                projections: GEMMs of the attention weights over b·s tokens
                core: 2·b·s²·a·d_h FLOPs (QKᵀ and PV, half the square), reads/writes q, k, v, o
    attention, decode (one new token per sequence, c tokens of context each):
                projections over b tokens; core: 4·b·c·a·d_h FLOPs, reads the KV cache
                b·c·kv_bytes_per_token_per_layer (docs/facts.md §6)
    training    forward + backward ≈ 3 × forward (backward computes input and weight gradients)

**fp8 training** (Transformer Engine's recipes, Megatron ``--fp8-format``): the GEMMs run on the
profile's fp8 tables and fp8 peak (``dtype="fp8"``); every GEMM operand that is not already fp8 is
cast first: in the forward the input activations, in the backward the output gradients, each
element costing :data:`FP8_CAST_BYTES` (amax read, cast-transpose read, fp8 copy and transpose
written: TE's ``cast_transpose`` kernels with current scaling), priced as one memory pass
(:func:`fp8_cast_ms`). Weights are cast once per step, not per micro-batch (TE caches them over
gradient accumulation).

**Token-dispatcher bookkeeping**: Megatron's ``alltoall`` dispatcher copies the per-expert token
counts to the host before each all-to-all (the split sizes NCCL needs), which empties the GPU's
queue: the GPU waits for that copy (the profile's PCIe copy latency) and for the host to issue
the next kernel (:func:`dispatcher_sync_ms`, :data:`HOST_KERNEL_US` per kernel: the profile's
measured host issue time of eager kernels). Router and permute / unpermute are memory passes and
GEMMs priced as below, each paying the per-kernel fixed cost of the device fit.

The projections of MLA (DeepSeek) are the model's attention parameters as GEMMs of the same
total size; the core uses ``num_heads`` and ``head_dim`` (q/k) as for standard attention.

:data:`MEMORY_OP_EFFICIENCY` (0.5) is an assumption for engine kernels (fused gather/scatter):
docs/facts.md §2 measured far less for a plain-torch reference layer (index_select/index_add permute and
combine of DeepSeek-V3 shapes at 16384 tokens cost ~17 ms over a 16.6 ms GEMM floor, about 0.08 of
the copy bandwidth); pass ``efficiency`` to price such a layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.cost.compute import (
    ACTIVATION_BYTES,
    STREAM_EFFICIENCY,
    device_fit,
    dtype_bytes,
    expert_ffn_ms,
    gemm_flops_q,
    peak_tflops,
)
from planner.errors import InputError
from planner.specs.hardware import HardwareProfile
from planner.specs.model import DTYPE_BYTES, ModelSpec

#: Fraction of the copy bandwidth reached by permute / combine / softmax passes (assumption for
#: fused engine kernels; see the module docstring).
MEMORY_OP_EFFICIENCY = 0.5
#: Backward over forward FLOPs (input and weight gradients): training step ≈ (1 + 2) × forward.
BACKWARD_FACTOR = 2.0
#: Kernels of an expert FFN whose fixed cost the device fit's ``fixed_ms`` covers.
_FFN_KERNELS = 4
#: Bytes one fp8 cast moves per GEMM operand element (module docstring, **fp8 training**): the
#: amax pass of current scaling reads the bf16 tensor (2), the fused cast-transpose reads it
#: again (2) and writes the fp8 copy and its transpose (1 + 1).
FP8_CAST_BYTES = 6.0
#: Host time to issue one eager kernel (µs), measured on the H100 (host speed, not the GPU's): 60.5 µs for an eager expert FFN of five kernels
#: (hwprofiles/measurements/h100-sxm-2026-11-23.json, ``ffn_host_us``, median of 240 rows).
HOST_KERNEL_US = 60.5 / 5
#: Kernels of Megatron's ``alltoall`` token dispatcher issued after its device-to-host sync before
#: the GPU has queued work again (megatron/core/transformer/moe/token_dispatcher.py: the splits
#: reach the host, then the all-to-all of the tokens is the next kernel): one.
DISPATCH_KERNELS_AFTER_SYNC = 1


def _kernel_fixed_ms(hw: HardwareProfile, dtype: str) -> float:
    return device_fit(hw, dtype).fixed_ms / _FFN_KERNELS


def gemm_ms(hw: HardwareProfile, m: float, n: int, k: int, dtype: str = "bf16") -> float:
    """Time (ms) of one GEMM ``[m, k] @ [k, n]`` with ``dtype`` weights (module docstring); 0 if m = 0."""
    if m < 0 or n <= 0 or k <= 0:
        raise InputError(f"GEMM sizes must be m >= 0, n > 0, k > 0 (got m={m}, n={n}, k={k})")
    if m == 0:
        return 0.0
    fit = device_fit(hw, dtype)
    bw = hw.hbm_bandwidth_gbps * 1e9
    tw = (n * k * dtype_bytes(dtype) + m * (n + k) * ACTIVATION_BYTES) / (STREAM_EFFICIENCY * bw) * 1e3
    tc = float(gemm_flops_q(np.array([float(m)]), n, k, hw.num_sms)[0]) / (fit.compute_eff * peak_tflops(hw, dtype) * 1e12) * 1e3
    p = fit.softmax_p
    return fit.fixed_ms / _FFN_KERNELS + float((tw**p + tc**p) ** (1.0 / p))


def memory_pass_ms(hw: HardwareProfile, nbytes: float, efficiency: float = MEMORY_OP_EFFICIENCY) -> float:
    """Time (ms) of a memory-bound kernel moving ``nbytes`` (read + written); 0 bytes → 0."""
    if nbytes < 0:
        raise InputError(f"nbytes must be >= 0 (got {nbytes:g})")
    if not 0 < efficiency <= 1:
        raise InputError(f"efficiency must be in (0, 1] (got {efficiency})")
    if nbytes == 0:
        return 0.0
    return _kernel_fixed_ms(hw, "bf16") + nbytes / (efficiency * hw.hbm_bandwidth_gbps * 1e9) * 1e3


def router_ms(hw: HardwareProfile, model: ModelSpec, tokens: float) -> float:
    """Router of one MoE layer over ``tokens``: the gate GEMM and softmax/top-k over fp32 scores."""
    if tokens <= 0:
        return 0.0
    gate = gemm_ms(hw, tokens, model.num_experts, model.hidden_size, model.weight_dtype)
    return gate + memory_pass_ms(hw, 2 * 4.0 * tokens * model.num_experts)


def permute_ms(hw: HardwareProfile, model: ModelSpec, tokens: float, efficiency: float = MEMORY_OP_EFFICIENCY) -> float:
    """Copy each token once per chosen expert into expert order (before dispatch)."""
    if tokens <= 0:
        return 0.0
    return memory_pass_ms(hw, tokens * (1 + model.top_k) * model.hidden_size * ACTIVATION_BYTES, efficiency)


def combine_ms(hw: HardwareProfile, model: ModelSpec, tokens: float, efficiency: float = MEMORY_OP_EFFICIENCY) -> float:
    """Unpermute and weighted sum of each token's k expert outputs (after combine)."""
    return permute_ms(hw, model, tokens, efficiency)


def shared_experts_ms(
    hw: HardwareProfile, model: ModelSpec, tokens: float, etp: int = 1, dtype: str | None = None
) -> float:
    """Shared experts of one MoE layer: an FFN of width ``shared_ffn_size / etp`` over all tokens
    (``dtype``: the GEMMs' dtype, default the model's ``weight_dtype``)."""
    if model.shared_ffn_size == 0 or tokens <= 0:
        return 0.0
    dt = dtype or model.weight_dtype
    return float(expert_ffn_ms(hw, model.hidden_size, max(1, model.shared_ffn_size // etp), dt, tokens))


def dense_ffn_ms(hw: HardwareProfile, model: ModelSpec, tokens: float, tp: int = 1, dtype: str | None = None) -> float:
    """The FFN of one dense layer (width ``dense_intermediate_size / tp``) over ``tokens``."""
    if model.dense_intermediate_size == 0 or tokens <= 0:
        return 0.0
    dt = dtype or model.weight_dtype
    return float(expert_ffn_ms(hw, model.hidden_size, max(1, model.dense_intermediate_size // tp), dt, tokens))


def fp8_cast_ms(hw: HardwareProfile, elements: float) -> float:
    """Transformer Engine's fp8 casts of ``elements`` GEMM operand elements (module docstring,
    **fp8 training**): :data:`FP8_CAST_BYTES` per element in one memory pass; 0 elements → 0."""
    if elements < 0:
        raise InputError(f"elements must be >= 0 (got {elements:g})")
    return memory_pass_ms(hw, FP8_CAST_BYTES * elements) if elements else 0.0


def dispatcher_sync_ms(hw: HardwareProfile, kernels_after: int = DISPATCH_KERNELS_AFTER_SYNC) -> float:
    """Host time the GPU waits for in one token dispatch (module docstring, **token-dispatcher
    bookkeeping**): the device-to-host copy of the split sizes, then ``kernels_after`` kernels
    issued from an empty queue, at the profile's measured host issue time per eager kernel."""
    if kernels_after < 0:
        raise InputError(f"kernels_after must be >= 0 (got {kernels_after})")
    return (hw.pcie.copy_latency_us + kernels_after * HOST_KERNEL_US) * 1e-3


@dataclass(frozen=True)
class AttentionTime:
    """One attention layer on one GPU, ms."""

    projections_ms: float
    core_ms: float

    @property
    def total_ms(self) -> float:
        return self.projections_ms + self.core_ms


def attention_ms(
    hw: HardwareProfile,
    model: ModelSpec,
    *,
    mode: str,
    sequences: int,
    seq_len: int = 0,
    context: int = 0,
    tp: int = 1,
    kv_dtype: str = "bf16",
    weight_dtype: str | None = None,
) -> AttentionTime:
    """Attention of one layer for ``sequences`` on one GPU (module docstring).

    ``mode``: ``prefill`` (``seq_len`` new tokens each) or ``decode`` (one new token each,
    ``context`` tokens of KV cache each). Heads and projections are split over ``tp``;
    ``weight_dtype`` prices the projections in another dtype than the model's (fp8 training).
    """
    if mode not in ("prefill", "decode"):
        raise InputError(f"mode must be 'prefill' or 'decode' (got {mode!r})")
    if sequences < 0 or tp <= 0:
        raise InputError(f"sequences must be >= 0 and tp > 0 (got {sequences}, {tp})")
    if sequences == 0:
        return AttentionTime(0.0, 0.0)
    att, h = model.attention, model.hidden_size
    if mode == "prefill" and seq_len <= 0:
        raise InputError(f"seq_len must be > 0 for prefill (got {seq_len})")
    if mode == "decode" and context < 0:
        raise InputError(f"context must be >= 0 for decode (got {context})")
    tokens = sequences * (seq_len if mode == "prefill" else 1)
    # projections: the attention weights as one square-ish GEMM of the same size, split over tp
    params = att.params_per_layer(h) / tp
    proj = gemm_ms(hw, tokens, max(1, int(params // h)), h, weight_dtype or model.weight_dtype)
    heads = max(1, att.num_heads // tp)
    fit = device_fit(hw, "bf16")
    peak = fit.compute_eff * peak_tflops(hw, "bf16") * 1e12
    bw = STREAM_EFFICIENCY * hw.hbm_bandwidth_gbps * 1e9
    kv_b = DTYPE_BYTES.get(kv_dtype)
    if kv_b is None:
        raise InputError(f"kv_dtype: unknown dtype {kv_dtype!r}; known: {', '.join(DTYPE_BYTES)}")
    if mode == "prefill":  # the causal flash-attention forward at its published throughput
        nbytes = tokens * (2 * heads + 2 * kv_heads_per_rank(att.num_kv_heads, tp)) * att.head_dim * ACTIVATION_BYTES
        flash = flash_attention_ms(hw, model, sequences, seq_len, tp)[0]
        return AttentionTime(proj, fit.fixed_ms / _FFN_KERNELS + max(flash, nbytes / bw * 1e3))
    else:
        flops = 4.0 * sequences * context * heads * att.head_dim
        kv_tok = att.kv_bytes_per_token_per_layer(kv_b)
        # MLA: every TP rank reads the whole latent cache (vLLM and SGLang replicate it, docs/facts.md §6);
        # GQA / MHA: a rank reads its ⌈kv_heads / tp⌉ heads (one replicated head when tp > kv_heads)
        if att.kind != "mla":
            kv_tok = 2 * kv_heads_per_rank(att.num_kv_heads, tp) * att.head_dim * kv_b
        nbytes = sequences * context * kv_tok
    p = fit.softmax_p
    core = fit.fixed_ms / _FFN_KERNELS + ((flops / peak * 1e3) ** p + (nbytes / bw * 1e3) ** p) ** (1.0 / p)
    return AttentionTime(proj, float(core))


#: Flash-attention throughput (TFLOP/s, causal FLOPs convention 2·b·s²·a·d_h forward) of cuDNN's
#: fused attention, what Transformer Engine runs on H100, head dim 128, bf16, by sequence length:
#: FlashAttention-3 paper (Shah et al. 2024, arXiv 2407.08608), Fig. "Attention forward speed,
#: head dim 128 (H100 80GB SXM5)" (cuDNN bars) and Fig. "Attention backward speed, head dim 128"
#: (cuDNN bars). Measured without a causal mask: the causal kernel of the same length runs at most
#: this fast, so these are optimistic bounds. Other head dims are priced with these (no table here).
#: The profile's device fit is used on other GPUs (the figures are H100 measurements).
#: The H100 SXM's dense bf16 peak (datasheet), the reference of :data:`CUDNN_ATTN_H100_TFLOPS`.
H100_BF16_PEAK = 989.4
CUDNN_ATTN_H100_TFLOPS = {  # seq_len: (forward, backward)
    512: (497.0, 305.0), 1024: (574.0, 408.0), 2048: (617.0, 465.0), 4096: (609.0, 499.0),
    8192: (600.0, 518.0), 16384: (595.0, 516.0),
}

#: Flash-attention backward over forward for the attention core: the backward runs five matrix
#: products to the forward's two (Dao 2023, FlashAttention-2, §3.1-3.2), so 2.5 rather than the
#: 2 of a plain GEMM.
ATTN_BACKWARD_FACTOR = 2.5
#: :data:`CUDNN_ATTN_H100_TFLOPS` as interpolation arrays (log2 seq_len, forward, backward), built
#: once: :func:`flash_attention_ms` is on the serving search's path (every prefill candidate).
_FLASH_LOG2_S = np.log2(np.array(sorted(CUDNN_ATTN_H100_TFLOPS), dtype=np.float64))
_FLASH_FWD, _FLASH_BWD = (np.array([CUDNN_ATTN_H100_TFLOPS[k][i] for k in sorted(CUDNN_ATTN_H100_TFLOPS)])
                          for i in (0, 1))


def flash_attention_ms(hw: HardwareProfile, model: ModelSpec, b: int, s: int, tp: int) -> tuple[float, float]:
    """Forward and backward (ms) of the causal flash-attention core of one layer over ``b``
    sequences of ``s`` tokens, ``a/tp`` heads: 2·b·s²·(a/tp)·d_h FLOPs forward, 2.5 × that backward
    (:data:`ATTN_BACKWARD_FACTOR`), at :data:`CUDNN_ATTN_H100_TFLOPS` (log-interpolated in s, clamped
    at its ends) scaled by the profile's bf16 peak over the H100's 989.4 (a compute-bound kernel).
    Training prices both; a serving prefill step its forward (:func:`attention_ms`)."""
    if b <= 0 or s <= 0 or tp <= 0:
        raise InputError(f"b, s and tp must be > 0 (got {b}, {s}, {tp})")
    att = model.attention
    flops = 2.0 * b * s * s * max(1, att.num_heads // tp) * att.head_dim
    scale = hw.peak_tflops.get("bf16", H100_BF16_PEAK) / H100_BF16_PEAK
    x = math.log2(s)
    t_f = float(np.interp(x, _FLASH_LOG2_S, _FLASH_FWD)) * scale
    t_b = float(np.interp(x, _FLASH_LOG2_S, _FLASH_BWD)) * scale
    return flops / (t_f * 1e12) * 1e3, ATTN_BACKWARD_FACTOR * flops / (t_b * 1e12) * 1e3


def kv_heads_per_rank(kv_heads: int, tp: int) -> int:
    """KV heads one TP rank keeps: ⌈kv_heads / tp⌉ (a replicated head when tp > kv_heads), the rule
    :func:`planner.cost.memory.kv_bytes_per_token` prices."""
    return -(-kv_heads // tp)


def training_ms(forward_ms: float) -> float:
    """Forward + backward of a layer from its forward time (≈ 3×, module docstring)."""
    if forward_ms < 0:
        raise InputError(f"forward_ms must be >= 0 (got {forward_ms})")
    return forward_ms * (1.0 + BACKWARD_FACTOR)
