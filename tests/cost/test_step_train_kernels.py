"""Training step, issue 19: the experts as Transformer Engine runs them (one GEMM per expert, the
profile's per-expert tables), the alltoall dispatcher's sort / unsort by local expert, and the
attention core at cuDNN's published flash-attention throughput — each by hand, and monotone in
tokens and experts."""

import math

import numpy as np
import pytest

from planner.cost.compute import expert_ffn_ms
from planner.cost.layers import CUDNN_ATTN_H100_TFLOPS, flash_attention_ms, memory_pass_ms
from planner.cost.step import StepModel
from planner.specs.model_io import load_model


@pytest.fixture(scope="module")
def qwen():
    return load_model("qwen3-30b-a3b")


def test_experts_are_the_sum_of_per_expert_table_times(hw, qwen):
    # TE's GroupedLinear: one cuBLAS GEMM per expert; 16 local experts of 4096 tokens each in fp8
    sm = StepModel(qwen, hw, 8, "fp8")
    by_hand = 16 * float(expert_ffn_ms(hw, 2048, 768, "fp8", 4096))
    assert sm._experts(4096.0, 16, 768) == pytest.approx(by_hand)
    ts = [sm._experts(4096.0, n, 768) for n in (1, 2, 8, 16, 32)]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)  # strictly more with more local experts
    ms = [sm._experts(m, 16, 768) for m in (16.0, 256.0, 4096.0, 16384.0)]
    assert ms == sorted(ms)


def test_sort_by_local_expert_by_hand(hw, qwen):
    sm = StepModel(qwen, hw, 8)
    # Qwen3-30B, micro-batch 2 × 4096 tokens, EP8: 16 local experts receive R = 8 · 8192 copies
    R = 8 * 2 * 4096
    by_hand = 2 * memory_pass_ms(hw, 2 * R * 2048 * 2.0)
    assert sm._sort(1, 1, 2, 4096, 8, 1, "pairs") == pytest.approx(by_hand)
    # ETP gathers the TP ranks' tokens: tp 2, etp 2 sees the same copies as tp 1, etp 1
    assert sm._sort(2, 1, 2, 4096, 8, 2, "pairs") == pytest.approx(by_hand)
    # DeepEP permutes once (priced by permute/combine); one local expert needs no sort
    assert sm._sort(1, 1, 2, 4096, 8, 1, "deepep") == 0.0
    assert sm._sort(1, 1, 2, 4096, 128, 1, "pairs") == 0.0
    mix = StepModel(load_model("mixtral-8x7b"), hw, 8)
    assert mix._sort(1, 1, 1, 4096, 8, 1, "pairs") == 0.0 and mix._sort(1, 1, 1, 4096, 4, 1, "pairs") > 0.0
    # monotone in tokens, and in experts (more experts per GPU: a sort once there are several)
    ts = [sm._sort(1, 1, b, 4096, 8, 1, "pairs") for b in (1, 2, 4)]
    assert ts == sorted(ts) and len(set(ts)) == 3
    es = [sm._sort(1, 1, 1, 4096, ep, 1, "pairs") for ep in (128, 64, 8)]  # 1, 2, 16 local experts
    assert es == sorted(es)


def test_attention_core_at_cudnn_throughput_by_hand(hw, qwen):
    flops = 2.0 * 2 * 4096**2 * 32 * 128  # 2·b·s²·a·d_h, b = 2, s = 4096, 32 heads of 128
    fwd, bwd = flash_attention_ms(hw, qwen, 2, 4096, 1)
    assert fwd == pytest.approx(flops / 609e12 * 1e3)
    assert bwd == pytest.approx(2.5 * flops / 499e12 * 1e3)
    # TP splits the heads; between the published lengths the throughput is log-interpolated
    assert flash_attention_ms(hw, qwen, 2, 4096, 2)[0] == pytest.approx(fwd / 2)
    x = (math.log2(3000) - 11) / 1.0
    tf = 617.0 + x * (609.0 - 617.0)
    assert flash_attention_ms(hw, qwen, 1, 3000, 1)[0] == pytest.approx(2.0 * 3000**2 * 32 * 128 / (tf * 1e12) * 1e3)
    # monotone in tokens (sequence length and sequences)
    ts = [flash_attention_ms(hw, qwen, b, s, 1)[1] for b, s in ((1, 512), (1, 4096), (2, 4096), (1, 16384))]
    assert ts == sorted(ts)
    assert set(CUDNN_ATTN_H100_TFLOPS) == {512, 1024, 2048, 4096, 8192, 16384}
    with pytest.raises(Exception, match="must be > 0"):
        flash_attention_ms(hw, qwen, 0, 4096, 1)


def test_step_reports_the_new_parts(hw, qwen):
    st = StepModel(qwen, hw, 8, "fp8").train_step(
        num_gpus=16, tp=1, pp=2, vpp=24, ep=8, micro_batch=2, global_batch=512, seq_len=4096)
    p = st.parts
    for key in ("attention_fwd_ms", "moe_compute_fwd_ms", "moe_comm_fwd_ms", "moe_layer_train_ms",
                "dp_reduce_ms", "dp_gather_ms", "attention_core_fwd_ms", "attention_core_bwd_ms", "moe_sort_fwd_ms"):
        assert key in p and np.isfinite(p[key])
    assert p["moe_sort_fwd_ms"] > 0 and p["attention_core_bwd_ms"] > 2 * p["attention_core_fwd_ms"]
