"""Step-time model (planner/cost/step.py): hand-checked FLOPs, pipeline, memory and serving cases."""

import math

import numpy as np
import pytest

from planner.cost.comm import collective_ms, nvlink
from planner.cost.comm import collective_scalar_ms as _coll
from planner.cost.serve_step import serve_step
from planner.cost.step import StepModel, model_flops_per_step
from planner.errors import InputError
from planner.solve.parallel import Candidate, candidate_memory
from planner.specs.model_io import load_model


def test_model_flops_follow_megatrons_count(mixtral):
    # Mixtral: active 12,879,659,008 params, untied input embedding 4096 × 32000 = 131,072,000
    # (not a matmul); attention 12 · B · s² · L · a · d_h with a·d_h = 32·128 = 4096
    B, s = 2, 4096
    want = 6 * B * s * (12_879_659_008 - 131_072_000) + 12 * B * s * s * 32 * 32 * 128
    assert model_flops_per_step(mixtral, B, s) == pytest.approx(want, rel=1e-12)


def test_training_memory_of_the_published_mixtral_layout(mixtral):
    # TP1 EP8 PP4, dp 16: one expert of 3·4096·14336 = 176,160,768 params per layer, 8 layers per
    # stage → 1,409,286,144 expert params; non-expert 46,702,526,464 − 256 · 176,160,768 =
    # 1,605,369,856, a quarter per stage = 401,342,464.
    c = Candidate(mode="train", dp=16, tp=1, pp=4, ep=8, vpp=8, micro_batch=1, recompute="selective")
    mem = candidate_memory(mixtral, c, seq_len=4096, global_batch=256)
    expert, dense = 1_409_286_144, 401_342_464
    assert mem.weights == pytest.approx(2 * (expert + dense))
    assert mem.gradients == pytest.approx(4 * (expert + dense))
    # distributed optimizer: 12 B over edp = dp·tp/(ep·etp) = 2 for experts and over dp = 16 for the rest
    assert mem.optimizer == pytest.approx(12 * (expert / 2 + dense / 16))
    # activations: s·b·h·(18 + 4·f_eff/h) per layer, f_eff = 2·14336 + 0 + 4096/2 = 30720;
    # 8 layers, pp = 4 micro-batches in flight × (1 + 3/32) for vpp 8
    per_layer = 4096 * 4096 * (18 + 4 * 30720 / 4096)
    assert mem.activations == pytest.approx(per_layer * 8 * 4 * (1 + 3 / 32))


def test_pipeline_bubble_and_throughput_identities(mixtral, hw):
    sm = StepModel(mixtral, hw, 8)
    kw = dict(num_gpus=64, tp=1, pp=4, ep=8, micro_batch=1, global_batch=256, seq_len=4096)
    plain = sm.train_step(**kw)
    inter = sm.train_step(**kw, vpp=8)
    m = 256 // 16
    assert plain.micro_batches == inter.micro_batches == m
    assert plain.pipeline_ms == pytest.approx((m + 3) * plain.stage_ms)
    assert inter.pipeline_ms == pytest.approx((m + 3 / 8) * inter.stage_ms)
    assert inter.bubble_fraction == pytest.approx(3 / (8 * m))
    assert inter.step_ms < plain.step_ms  # smaller bubble, p2p overlapped
    assert plain.p2p_ms > 0 and inter.p2p_ms == 0
    # tokens/s and TFLOP/s are the step's tokens and model FLOPs over its time
    assert inter.tokens_per_s == pytest.approx(256 * 4096 / (inter.step_ms / 1e3))
    assert inter.tflops_per_gpu == pytest.approx(model_flops_per_step(mixtral, 256, 4096) / (inter.step_ms / 1e3) / 64 / 1e12)


def test_recompute_costs_time_in_order(mixtral, hw):
    sm = StepModel(mixtral, hw, 8)
    kw = dict(num_gpus=64, tp=1, pp=4, ep=8, vpp=8, micro_batch=1, global_batch=256, seq_len=4096)
    t = [sm.train_step(**kw, recompute=r).step_ms for r in ("none", "selective", "full")]
    assert t[0] < t[1] < t[2]
    # full recompute runs each layer's forward once more: about 4/3 of the compute
    assert 1.15 < t[2] / t[0] < 1.4


def test_published_mixtral_layout_is_within_15_percent_of_468_tflops(mixtral, hw):
    # docs/facts.md §4: Megatron-core, Mixtral 8x7B on 64 H100, TP1 EP8 PP4 VP8: 468 TFLOP/s per GPU
    st = StepModel(mixtral, hw, 8).train_step(
        num_gpus=64, tp=1, pp=4, ep=8, vpp=8, micro_batch=1, global_batch=256, seq_len=4096
    )
    assert abs(st.tflops_per_gpu / 468 - 1) < 0.15


def test_bad_inputs_are_input_errors(mixtral, hw):
    sm = StepModel(mixtral, hw, 8)
    with pytest.raises(InputError, match="global batch"):
        sm.train_step(num_gpus=64, tp=1, pp=4, ep=8, micro_batch=3, global_batch=256, seq_len=4096)
    with pytest.raises(InputError, match="recompute"):
        sm.train_step(num_gpus=64, tp=1, pp=4, ep=8, global_batch=256, seq_len=4096, recompute="some")
    with pytest.raises(InputError, match="divide"):
        sm.train_step(num_gpus=64, tp=3, pp=4, ep=8, global_batch=256, seq_len=4096)


def test_scalar_collective_matches_comm_module(hw):
    link = nvlink(hw)
    for kind in ("all_reduce", "all_gather", "reduce_scatter"):
        for nbytes in (1e3, 3.3e7, 5e9):
            assert _coll(kind, nbytes, 8, link) == pytest.approx(float(collective_ms(kind, np.array([nbytes]), 8, link)[0]))
    assert _coll("all_reduce", 1e6, 1, link) == 0.0


def test_spec_caches_the_step_model_figures(mixtral):
    v = mixtral
    assert v.num_moe_layers == 32 and v.moe_layers == tuple(range(32))
    assert v.non_expert_params == mixtral.non_expert_params and v.active_params == mixtral.active_params


def test_decode_throughput_is_batch_over_step(hw):
    q = load_model("qwen3-30b-a3b")
    st = serve_step(q, hw, mode="decode", num_gpus=8, gpus_per_node=8, tp=1, pp=1, ep=8, sequences=512, seq_len=4096)
    assert st.tokens_per_step == 512
    assert st.throughput_tokens_per_s == pytest.approx(512 / (st.step_ms / 1e3))
    assert st.latency_per_token_ms == st.step_ms
    # a step is all layers: 48 MoE layers of attention + MoE and the LM head
    assert st.step_ms > 48 * (st.attention_ms + st.moe_layer_ms)
    assert math.isfinite(st.step_ms)
    # prefill: the step's tokens are sequences × prompt length
    pf = serve_step(q, hw, mode="prefill", num_gpus=8, gpus_per_node=8, tp=1, pp=1, ep=8, sequences=8, seq_len=2048)
    assert pf.tokens_per_step == 8 * 2048


def test_decode_reads_its_kv_cache_in_kv_dtype():
    from planner.specs.hardware import load_hardware

    m, hw = load_model("qwen3-30b-a3b"), load_hardware("h100-sxm")
    kw = dict(num_gpus=8, gpus_per_node=8, tp=1, pp=1, ep=8, sequences=1024, seq_len=8192)
    bf16 = serve_step(m, hw, mode="decode", **kw)
    fp8 = serve_step(m, hw, mode="decode", kv_dtype="fp8", **kw)
    # 128 sequences per rank × 8192 tokens of GQA KV: attention is bound by the cache read, which
    # fp8 halves; the MoE layers do not read the cache
    assert fp8.attention_ms < 0.6 * bf16.attention_ms
    assert fp8.moe_layer_ms == bf16.moe_layer_ms
    pre = [serve_step(m, hw, mode="prefill", kv_dtype=d, **{**kw, "sequences": 8, "seq_len": 1024}) for d in ("bf16", "fp8")]
    assert pre[0].step_ms == pre[1].step_ms  # prefill writes the cache; its time is the same model
