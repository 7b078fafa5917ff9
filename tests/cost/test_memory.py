"""Memory per GPU: a small configuration computed by hand, and the docs/facts.md §6 rules."""

from __future__ import annotations

import pytest

from planner.cost.memory import (
    activation_bytes_per_layer,
    inference_memory,
    kv_bytes_per_token,
    training_memory,
    weights_per_gpu_bytes,
)
from planner.errors import InputError
from planner.specs.model_io import load_model
from tests.conftest import make_model

# make_model(): h 64, 3 layers (all MoE), 8 experts, top-2, f 32, GQA 4 heads / 2 KV heads / d 16,
# vocab 100, bf16. By hand:
#   expert params      3·64·32                      = 6144
#   embeddings         2·100·64                     = 12800
#   attention / layer  q 64·4·16 + kv 2·64·2·16 + o 4·16·64 = 4096 + 4096 + 4096 = 12288 → ×3 = 36864
#   routers            64·8 ·3                      = 1536
#   non-expert         12800 + 36864 + 1536          = 51200
EXPERT, NON_EXPERT = 6144, 51200


def test_hand_computed_parameters():
    m = make_model()
    assert m.expert_params == EXPERT and m.non_expert_params == NON_EXPERT


def test_training_memory_by_hand():
    m = make_model()
    # ep 2 over dp 2 (tp 1): 4 slots per GPU, 3 MoE layers; edp = dp·tp/(ep·etp) = 1
    mem = training_memory(m, slots_per_gpu=4, dp=2, ep=2, seq_len=8, micro_batch=1)
    experts = 4 * EXPERT * 3  # 73728 parameters on the GPU
    assert mem.weights == 2 * (experts + NON_EXPERT)  # 249856 bytes
    assert mem.gradients == 4 * (experts + NON_EXPERT)  # 499712
    assert mem.optimizer == 12 * (experts / 1 + NON_EXPERT / 2)  # 884736 + 307200
    # selective recompute: s·b·h·(18 + 4·f_eff/h), f_eff = k·f + f_sh + (k−1)·h/2 = 64 + 0 + 32 = 96
    per_layer = 8 * 1 * 64 * (18 + 4 * 96 / 64)  # 12288
    assert mem.activations == 3 * per_layer
    assert mem.total == mem.weights + mem.gradients + mem.optimizer + mem.activations


def test_eighteen_bytes_plain_and_six_plus_twelve_over_dp_distributed():
    m = make_model()
    params = 8 * EXPERT * 3 + NON_EXPERT  # ep 1: all 8 experts on every GPU
    plain = training_memory(m, slots_per_gpu=8, dp=4, seq_len=8, micro_batch=1, distributed_optimizer=False)
    assert (plain.weights + plain.gradients + plain.optimizer) / params == pytest.approx(18.0)
    dist = training_memory(m, slots_per_gpu=8, dp=4, seq_len=8, micro_batch=1)
    assert (dist.weights + dist.gradients + dist.optimizer) / params == pytest.approx(6 + 12 / 4)


def test_recompute_and_pipeline_in_flight():
    m = make_model()
    sel = activation_bytes_per_layer(m, 8, 1, 1, "selective")
    none = activation_bytes_per_layer(m, 8, 1, 1, "none")
    full = activation_bytes_per_layer(m, 8, 1, 1, "full")
    assert none - sel == 4 * 4 * 8 * 1  # flash attention keeps one fp32 log-sum-exp per head and query: 4·a·s·b
    assert full == 2 * 8 * 1 * 64
    assert activation_bytes_per_layer(m, 8, 1, 2) == sel / 2  # sequence parallelism splits over tp
    one = training_memory(m, slots_per_gpu=8, seq_len=8, micro_batch=1, pp=1).activations
    # pp 3: one layer per stage, the first stage holds 3 micro-batches in flight
    three = training_memory(m, slots_per_gpu=8, seq_len=8, micro_batch=1, pp=3).activations
    assert three == pytest.approx(one / 3 * 3)
    few = training_memory(m, slots_per_gpu=8, seq_len=8, micro_batch=1, pp=3, num_microbatches=2).activations
    assert few == pytest.approx(one / 3 * 2)
    inter = training_memory(m, slots_per_gpu=8, seq_len=8, micro_batch=1, pp=3, vpp=2).activations
    assert inter == pytest.approx(three * (1 + 2 / 6))


def test_weights_per_gpu_counts_replicas_and_splits():
    m = make_model()
    assert weights_per_gpu_bytes(m, 4, 1, 1, 1) == 2 * (4 * EXPERT * 3 + NON_EXPERT)
    assert weights_per_gpu_bytes(m, 5, 1, 1, 1) - weights_per_gpu_bytes(m, 4, 1, 1, 1) == 2 * EXPERT * 3
    assert weights_per_gpu_bytes(m, 4, 2, 1, 2) == 2 * (4 * EXPERT * 3 / 2 + NON_EXPERT / 2)


def test_kv_cache_per_token():
    m = make_model()
    assert kv_bytes_per_token(m) == 3 * 2 * 2 * 16 * 2  # layers · 2 · kv_heads · d · bf16
    assert kv_bytes_per_token(m, tp=2) == 3 * 2 * 1 * 16 * 2
    assert kv_bytes_per_token(m, tp=4) == 3 * 2 * 1 * 16 * 2  # a TP rank keeps at least one KV head
    v3 = load_model("deepseek-v3")
    assert kv_bytes_per_token(v3) == 61 * (512 + 64) * 2  # MLA latent: docs/facts.md §6
    # the latent is not split by TP: every rank keeps all of it (vLLM, SGLang)
    assert kv_bytes_per_token(v3, tp=8, kv_dtype="fp8") == 61 * (512 + 64) * 1
    assert kv_bytes_per_token(v3, tp=8, pp=2) == 31 * (512 + 64) * 2  # ⌈61/2⌉ layers on the first stage


def test_gqa_kv_heads_split_by_tp_and_replicated_past_the_head_count():
    # 8 KV heads of 128, 2 layers, bf16: per token and layer 2·heads·128·2 bytes on one rank
    m = make_model(num_layers=2, attention={"kind": "gqa", "num_heads": 32, "num_kv_heads": 8, "head_dim": 128})
    per_head = 2 * 2 * 128 * 2  # layers · (K and V) · head_dim · bf16
    assert kv_bytes_per_token(m, tp=1) == 8 * per_head
    assert kv_bytes_per_token(m, tp=2) == 4 * per_head
    assert kv_bytes_per_token(m, tp=8) == 1 * per_head
    assert kv_bytes_per_token(m, tp=16) == 1 * per_head  # 16 ranks, 8 heads: each head on 2 ranks
    # the whole cluster holds ⌈kv/tp⌉·tp heads: 8 at tp ≤ 8, 16 at tp 16 (the replicas)
    assert [kv_bytes_per_token(m, tp=t) * t / per_head for t in (1, 2, 4, 8, 16)] == [8, 8, 8, 8, 16]
    # an MLA model of the same layers: the per-rank cache does not fall with tp
    mla = make_model(num_layers=2, attention={"kind": "mla", "num_heads": 32, "num_kv_heads": 32, "head_dim": 192,
                                              "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
                                              "v_head_dim": 128})
    assert {kv_bytes_per_token(mla, tp=t) for t in (1, 2, 8, 16)} == {2 * (512 + 64) * 2}
    tp8 = inference_memory(mla, slots_per_gpu=4, tp=8, kv_tokens=1000)
    assert tp8.kv_cache == 1000 * 2 * 576 * 2


def test_training_weights_in_the_training_dtype_not_the_checkpoint():
    # experts stored fp8 (as DeepSeek-V3 ships them): training still holds them in bf16
    m = make_model(expert_dtype="fp8")
    bf16 = training_memory(m, slots_per_gpu=4, dp=2, ep=2, seq_len=8, micro_batch=1)
    experts = 4 * EXPERT * 3  # 73728 parameters on the GPU
    assert bf16.weights == 2 * (experts + NON_EXPERT)
    # fp8 training: linear weights 1 byte; embeddings (12800) and routers (1536) stay bf16
    fp8 = training_memory(m, slots_per_gpu=4, dp=2, ep=2, seq_len=8, micro_batch=1, train_dtype="fp8")
    high = 12800 + 1536
    assert fp8.weights == 1 * (experts + NON_EXPERT - high) + 2 * high  # 73728 + 36864 + 28672 = 139264
    # gradients (fp32) and optimizer states (fp32 master, Adam m, v) do not depend on the dtype
    assert fp8.gradients == bf16.gradients == 4 * (experts + NON_EXPERT)
    assert fp8.optimizer == bf16.optimizer
    assert bf16.weights - fp8.weights == experts + NON_EXPERT - high  # one byte per linear parameter
    with pytest.raises(InputError, match="train_dtype must be one of bf16, fp8"):
        training_memory(m, slots_per_gpu=4, seq_len=8, micro_batch=1, train_dtype="fp4")


def test_deepseek_v3_training_experts_at_bf16():
    v3 = load_model("deepseek-v3")
    assert v3.expert_dtype == "fp8"  # served in fp8
    mem = training_memory(v3, slots_per_gpu=8, tp=1, pp=16, dp=64, ep=64, seq_len=4096, micro_batch=1)
    moe_stage = -(-v3.num_moe_layers // 16)
    assert mem.weights >= 8 * moe_stage * v3.expert_params * 2  # bf16 experts, twice their fp8 bytes


def test_inference_memory_parts():
    m = make_model()
    mem = inference_memory(m, slots_per_gpu=4, kv_tokens=1000, batch_tokens=10)
    assert mem.weights == weights_per_gpu_bytes(m, 4, 1, 1, 1)
    assert mem.kv_cache == 1000 * kv_bytes_per_token(m)
    assert mem.dispatch_buffers == 2 * 10 * 2 * 64 * 2
    assert mem.activations == 10 * 2 * (2 * 64 + (4 + 4) * 16 + 2 * 2 * 64 + 3 * 2 * 32)
    assert mem.gradients == mem.optimizer == 0
    assert mem.as_gib()["total"] == pytest.approx(mem.total / 2**30)


def test_bad_memory_input():
    m = make_model()
    with pytest.raises(InputError, match="ep × etp"):
        training_memory(m, slots_per_gpu=4, dp=2, ep=4, seq_len=8, micro_batch=1)
    with pytest.raises(InputError, match="recompute must be"):
        activation_bytes_per_layer(m, 8, 1, 1, "some")
    with pytest.raises(InputError, match=r"tp must be > 0 \(got 0\)"):
        inference_memory(m, slots_per_gpu=4, tp=0)
