"""One forward step of a serving deployment (``prefill``, ``decode``): attention data-parallel over
dp ranks, per layer attention + TP all-reduce + the MoE block with DeepEP dispatch, composed from
the per-kernel pieces of :mod:`planner.cost` (docs/cost_model.md §5). Training steps are
:mod:`planner.cost.step`.
"""

from __future__ import annotations

import math
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


@dataclass(frozen=True)
class ServeStep:
    """Predicted serving step (docs/cost_model.md §5)."""

    step_ms: float  #: one forward step through all layers
    tokens_per_step: float
    throughput_tokens_per_s: float
    latency_per_token_ms: float  #: decode: the step; prefill: the whole prompt (time to first token)
    moe_layer_ms: float
    attention_ms: float


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
) -> ServeStep:
    """One forward step of ``sequences`` across the cluster (docs/cost_model.md §5); decode
    attention reads its KV cache in ``kv_dtype``."""
    if mode not in ("prefill", "decode"):
        raise InputError(f"mode must be 'prefill' or 'decode' (got {mode!r})")
    if num_gpus % (tp * pp):
        raise InputError(f"tp × pp ({tp} × {pp}) must divide the {num_gpus} GPUs")
    dp = num_gpus // (tp * pp)
    per_rank = math.ceil(sequences / dp)
    new = 1 if mode == "decode" else seq_len
    t_rank = per_rank * new  # tokens of one attention-DP rank
    if mode == "decode":
        att = attention_ms(hw, model, mode="decode", sequences=per_rank, context=seq_len, tp=tp,
                           kv_dtype=kv_dtype).total_ms
    else:
        att = attention_ms(hw, model, mode="prefill", sequences=per_rank, seq_len=seq_len, tp=tp).total_ms
    tp_link = _link(hw, tp, 1, gpus_per_node)
    att += 2.0 * _coll("all_reduce", t_rank * model.hidden_size * ACTIVATION_BYTES, tp, tp_link)
    moe = 0.0
    if model.num_moe_layers:
        t_gpu = t_rank / tp  # the MoE block splits a rank's tokens over its TP GPUs
        slots = (model.num_experts + redundant) // ep
        M = model.top_k * t_gpu * ep * etp / (model.num_experts + redundant)
        f = model.expert_intermediate_size // etp
        experts = float(
            grouped_experts_ms(hw, model.hidden_size, f, model.expert_dtype, np.full((1, slots), M), kernel="grouped")[0]
        )
        comm = 2.0 * alltoall_ms(hw, model, t_gpu, ep, etp, gpus_per_node, dispatcher) * (1.0 - hw.comm_overlap)
        if etp > 1:
            buf = model.top_k * t_gpu * etp * model.hidden_size * ACTIVATION_BYTES
            link = _link(hw, etp, 1, gpus_per_node)
            comm += _coll("all_gather", buf, etp, link) + _coll("reduce_scatter", buf, etp, link)
        moe = (
            router_ms(hw, model, t_gpu) + permute_ms(hw, model, t_gpu) + combine_ms(hw, model, t_gpu)
            + shared_experts_ms(hw, model, t_rank, etp=tp) + experts + comm
        )
    dense = dense_ffn_ms(hw, model, t_rank, tp) if model.num_dense_layers else 0.0
    head_tokens = per_rank  # only the last position of each sequence needs logits
    head = gemm_ms(hw, head_tokens, max(1, model.vocab_size // tp), model.hidden_size, model.weight_dtype)
    step = model.num_layers * att + model.num_moe_layers * moe + model.num_dense_layers * dense + head
    step += (pp - 1) * float(nic(hw).latency_us if num_gpus // pp >= gpus_per_node else nvlink(hw).latency_us) * 1e-3
    tokens = float(sequences * new)
    return ServeStep(
        step_ms=step, tokens_per_step=tokens, throughput_tokens_per_s=tokens / (step * 1e-3),
        latency_per_token_ms=step, moe_layer_ms=moe, attention_ms=att,
    )
