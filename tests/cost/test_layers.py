"""Router, permute/combine, attention, dense/shared FFN, uniform MoE layer, training factor."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost import layers
from planner.cost.compute import device_fit, expert_ffn_ms
from planner.cost.moe_layer import uniform_moe_layer
from planner.errors import InputError
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model

H100 = load_hardware("h100-sxm")


def test_memory_pass_closed_form():
    c = device_fit(H100).fixed_ms / 4
    assert layers.memory_pass_ms(H100, 0) == 0.0
    assert layers.memory_pass_ms(H100, 3e9, efficiency=1.0) == pytest.approx(c + 3e9 / (H100.hbm_bandwidth_gbps * 1e9) * 1e3)
    m = load_model("mixtral-8x7b")
    # permute: T·h read + T·k·h written, bf16
    want = layers.memory_pass_ms(H100, 1000 * (1 + 2) * 4096 * 2)
    assert layers.permute_ms(H100, m, 1000) == pytest.approx(want)
    assert layers.combine_ms(H100, m, 1000) == pytest.approx(want)
    assert layers.router_ms(H100, m, 0) == 0.0


def test_gemm_and_attention_grow_with_work():
    assert layers.gemm_ms(H100, 0, 4096, 4096) == 0.0
    ms = [layers.gemm_ms(H100, m, 4096, 4096) for m in (1, 64, 1024, 16384)]
    assert all(b >= a for a, b in zip(ms, ms[1:], strict=False))
    m = load_model("qwen3-30b-a3b")
    dec = [layers.attention_ms(H100, m, mode="decode", sequences=64, context=c).total_ms for c in (128, 1024, 8192, 65536)]
    assert all(b > a for a, b in zip(dec, dec[1:], strict=False))
    pre = [layers.attention_ms(H100, m, mode="prefill", sequences=1, seq_len=s).total_ms for s in (256, 2048, 16384)]
    assert all(b > a for a, b in zip(pre, pre[1:], strict=False))
    tp2 = layers.attention_ms(H100, m, mode="prefill", sequences=1, seq_len=16384, tp=2).total_ms
    assert tp2 < pre[-1]
    with pytest.raises(InputError, match="mode must be"):
        layers.attention_ms(H100, m, mode="train", sequences=1)


def test_dense_and_shared_ffn_use_the_expert_curve_and_training_is_3x():
    v2l = load_model("deepseek-v2-lite")  # shared experts 2 × 1408, dense FFN 10944
    assert layers.shared_experts_ms(H100, v2l, 512) == pytest.approx(float(expert_ffn_ms(H100, 2048, 2816, "bf16", 512)))
    assert layers.dense_ffn_ms(H100, v2l, 512) == pytest.approx(float(expert_ffn_ms(H100, 2048, 10944, "bf16", 512)))
    assert layers.shared_experts_ms(H100, load_model("mixtral-8x7b"), 512) == 0.0
    assert layers.training_ms(2.0) == 6.0


def test_uniform_moe_layer_closed_forms():
    m = load_model("mixtral-8x7b")  # 8 experts, top-2
    one = uniform_moe_layer(H100, m, 4096, ep=1)
    assert one.comm_ms == 0 and one.nvlink_bytes_per_gpu == 0 and one.rdma_bytes_per_gpu == 0
    assert one.tokens_per_expert == 4096 * 2 / 8
    assert one.compute_ms == pytest.approx(8 * float(expert_ffn_ms(H100, 4096, 14336, "bf16", 1024)))
    eight = uniform_moe_layer(H100, m, 4096, ep=8, dispatcher="pairs")
    assert eight.experts_per_gpu == 1
    assert eight.compute_ms == pytest.approx(float(expert_ffn_ms(H100, 4096, 14336, "bf16", 1024)))
    # pairs: each GPU sends its 512 tokens × k = 2 × (n−1)/n of them to other GPUs
    assert eight.nvlink_bytes_per_gpu == pytest.approx(512 * 2 * 7 / 8 * 4096 * 2)
    want = 2 * (H100.nvlink.latency_us * 1e-3 + eight.nvlink_bytes_per_gpu / (H100.nvlink.bandwidth_gbps * 1e9) * 1e3)
    assert eight.comm_ms == pytest.approx(want)
    # one expert per GPU: two distinct experts are always two GPUs, so DeepEP saves nothing ...
    assert uniform_moe_layer(H100, m, 4096, ep=8).nvlink_bytes_per_gpu == eight.nvlink_bytes_per_gpu
    # ... but with 16 experts per GPU (Qwen3-30B, top-8) a token often picks two on one GPU
    q = load_model("qwen3-30b-a3b")
    pairs = uniform_moe_layer(H100, q, 4096, ep=8, dispatcher="pairs").nvlink_bytes_per_gpu
    assert uniform_moe_layer(H100, q, 4096, ep=8).nvlink_bytes_per_gpu < 0.8 * pairs
    assert eight.moe_layer_ms == pytest.approx(sum(
        getattr(eight, k) for k in ("router_ms", "permute_ms", "comm_ms", "compute_ms", "combine_ms", "shared_experts_ms")
    ))
    tokens = np.array([0, 100, 1000, 10000, 100000])
    totals = [uniform_moe_layer(H100, m, t, ep=8).moe_layer_ms for t in tokens]
    assert totals[0] == 0 and all(b >= a for a, b in zip(totals, totals[1:], strict=False))
    with pytest.raises(InputError, match=r"^ep \(3\) must divide"):
        uniform_moe_layer(H100, m, 100, ep=3)


def test_decode_attention_reads_the_whole_mla_cache_and_ceil_kv_heads_per_rank():
    assert [layers.kv_heads_per_rank(8, t) for t in (1, 2, 3, 8, 16)] == [8, 4, 3, 1, 1]
    hw = load_hardware("h100-sxm")

    def core(name, tp):
        return layers.attention_ms(hw, load_model(name), mode="decode", sequences=64, context=32768, tp=tp).core_ms

    # MLA (DeepSeek-V3): long-context decode is bound by reading the latent cache, which every TP
    # rank holds whole: TP 8 is not faster than TP 1 (it was 8x before the rule)
    assert core("deepseek-v3", 8) == pytest.approx(core("deepseek-v3", 1), rel=0.01)
    # GQA with 4 KV heads (Qwen3-30B-A3B): TP 4 and TP 8 both keep one head per rank
    assert core("qwen3-30b-a3b", 8) == pytest.approx(core("qwen3-30b-a3b", 4))
    assert core("qwen3-30b-a3b", 2) == pytest.approx(2 * core("qwen3-30b-a3b", 4), rel=0.02)


def test_prefill_attention_core_runs_at_the_published_flash_throughput():
    """DeepSeek-V3, 4 prompts of 4,000 tokens, 128 heads of 192: 2·4·4000²·128·192 FLOPs at the
    cuDNN forward figure interpolated between 2,048 (617) and 4,096 (609) TFLOP/s, plus the fitted
    per-kernel fixed cost; the same forward the training model prices."""
    hw = load_hardware("h100-sxm")
    m = load_model("deepseek-v3")
    a = layers.attention_ms(hw, m, mode="prefill", sequences=4, seq_len=4000, tp=1)
    x = (np.log2(4000) - 11.0)
    tflops = 617.0 + x * (609.0 - 617.0)
    flops = 2.0 * 4 * 4000**2 * 128 * 192
    fixed = device_fit(hw, "bf16").fixed_ms / layers._FFN_KERNELS
    assert a.core_ms == pytest.approx(fixed + flops / (tflops * 1e12) * 1e3, rel=1e-9)
    assert a.core_ms == pytest.approx(fixed + layers.flash_attention_ms(hw, m, 4, 4000, 1)[0], rel=1e-12)
