"""Serving step (planner/cost/serve_step.py): two-batch overlap by hand, and decode experts priced
over the experts a small batch activates."""

import numpy as np
import pytest

from planner.cost.compute import grouped_experts_ms
from planner.cost.serve_step import (
    _pieces,
    _replay,
    _stages,
    active_experts,
    serve_step,
    tbo_schedule,
)
from planner.errors import InputError
from planner.specs.model_io import load_model

Y = ("yield",)


def test_two_micro_batches_by_hand():
    # one layer, prefill's cut: [attention 2, dispatch 3] | [wait, experts 4, combine 3] | [shared 1, wait, output 1]
    ops = [("c", 2.0), ("send", "d", 3.0), Y, ("wait", "d"), ("c", 4.0), ("send", "c", 3.0), Y,
           ("c", 1.0), ("wait", "c"), ("c", 1.0)]
    # A0 0-2, A's dispatch 2-5; B0 2-4, B's dispatch queues behind A's: 5-8; A1 waits to 5, runs 5-9,
    # A's combine 9-12; B1 9-13 (its dispatch ended at 8), B's combine 13-16; A2 13-14, waits for
    # its combine to 14, 14-15; B2 15-16, waits to 16, 16-17
    assert tbo_schedule(ops, 1, 0) == pytest.approx(17.0)
    # no communication: the two halves' compute back to back, 2 × (2 + 4 + 1 + 1)
    quiet = [op if op[0] != "send" else ("send", op[1], 0.0) for op in ops]
    assert tbo_schedule(quiet, 1, 0) == pytest.approx(16.0)
    # B two stages behind A (decode's delta): A0, A1 run before B0
    assert tbo_schedule(ops, 1, 2) == pytest.approx(_replay(_stages(ops), 2))
    assert tbo_schedule(ops, 1, 2) > tbo_schedule(ops, 1, 0)  # A's stages cannot hide B's dispatch


def test_periodic_extension_equals_the_full_replay():
    ops = [("c", 1.3), ("send", "d", 2.1), Y, ("wait", "d"), ("c", 0.7), ("send", "c", 1.9), Y, ("c", 0.4),
           ("wait", "c"), ("c", 0.2)]
    for layers in (3, 8, 9, 58):
        assert tbo_schedule(ops, layers, 0) == pytest.approx(_replay(_stages(ops * layers), 0), rel=1e-12)
        assert tbo_schedule(ops, layers, 2) == pytest.approx(_replay(_stages(ops * layers), 2), rel=1e-12)


def test_overlap_modes(hw):
    m = load_model("deepseek-v3")
    # EP32 over 4 nodes, 16 prompts of 1,000 tokens per GPU: dispatch and combine cross the NICs
    kw = dict(mode="prefill", num_gpus=32, gpus_per_node=8, tp=1, pp=1, ep=32, sequences=512, seq_len=1000,
              redundant=32)
    off, on, auto = (serve_step(m, hw, two_batch_overlap=t, **kw) for t in ("off", "on", "auto"))
    assert not off.two_batch_overlap and on.two_batch_overlap and off.tbo_layer_ms == 0.0
    assert on.step_ms < off.step_ms and auto.step_ms == on.step_ms and auto.two_batch_overlap
    assert serve_step(m, hw, two_batch_overlap=True, **kw).step_ms == on.step_ms
    # the MoE layers' time is the overlapped schedule; dense layers and the head are the plain step's
    moe_plain = m.num_moe_layers * (off.attention_ms + off.moe_layer_ms)
    assert on.step_ms == pytest.approx(off.step_ms - moe_plain + m.num_moe_layers * on.tbo_layer_ms)
    # no expert parallelism, nothing to hide: overlap only halves the GEMMs; auto keeps the plain step
    one = dict(kw, num_gpus=8, ep=8, sequences=8, seq_len=4096, redundant=0)
    q = load_model("mixtral-8x7b")
    off1, on1, auto1 = (serve_step(q, hw, two_batch_overlap=t, **one) for t in ("off", "on", "auto"))
    assert auto1.step_ms == min(off1.step_ms, on1.step_ms)
    assert auto1.two_batch_overlap == (on1.step_ms < off1.step_ms)
    # one decode sequence per rank cannot split
    d = serve_step(q, hw, mode="decode", num_gpus=8, gpus_per_node=8, tp=1, pp=1, ep=8, sequences=8, seq_len=1024,
                   two_batch_overlap="on")
    assert not d.two_batch_overlap
    with pytest.raises(InputError, match="two_batch_overlap"):
        serve_step(q, hw, two_batch_overlap="sometimes", **one)


def test_small_decode_batches_read_only_the_experts_they_activate(hw):
    q = load_model("qwen3-30b-a3b")  # 128 experts, top-8
    # one token picks 8 of 128: 8 experts active; 10,000 tokens activate them all
    assert active_experts(128, 128, 8, 1) == pytest.approx(8.0)
    assert active_experts(128, 128, 8, 10_000) == pytest.approx(128.0)
    assert active_experts(16, 128, 8, 3) == pytest.approx(16 * (1 - (1 - 8 / 128) ** 3))
    one = serve_step(q, hw, mode="decode", num_gpus=1, gpus_per_node=8, tp=1, pp=1, ep=1, sequences=1, seq_len=4096)
    eight = float(grouped_experts_ms(hw, q.hidden_size, q.expert_intermediate_size, q.expert_dtype,
                                     np.full((1, 8), 1.0), kernel="grouped")[0])
    every = float(grouped_experts_ms(hw, q.hidden_size, q.expert_intermediate_size, q.expert_dtype,
                                     np.full((1, 128), 8 / 128), kernel="grouped")[0])
    # the step's MoE block holds the 8 experts' grouped GEMM, not all 128 experts' weight reads
    p = _pieces(q, hw, mode="decode", seqs=1, seq_len=4096, tokens=1, tp=1, ep=1, etp=1, redundant=0,
                gpus_per_node=8, dispatcher="deepep", kv_dtype="bf16")
    assert p.experts == pytest.approx(eight, rel=1e-9)
    assert eight < one.moe_layer_ms < every


def test_imbalance_prices_the_busiest_gpu_by_hand(hw):
    from planner.cost.serve_step import imbalance_factors, serve_alltoall_ms

    m = load_model("deepseek-v3")
    kw = dict(mode="decode", num_gpus=16, gpus_per_node=8, tp=1, pp=1, ep=16, sequences=16 * 64, seq_len=1024,
              redundant=32)
    pk = dict(mode="decode", seqs=64, seq_len=1024, tokens=64, tp=1, ep=16, etp=1, redundant=32, gpus_per_node=8,
              dispatcher="deepep", kv_dtype="bf16")
    base = serve_step(m, hw, **kw)
    assert serve_step(m, hw, imbalance=1.0, **kw).step_ms == base.step_ms  # the default is uniform routing
    # the all-to-all at twice the mean bytes: each phase is the phase of 128 tokens per GPU, everything else kept
    a2a = serve_step(m, hw, imbalance=(1.0, 2.0), **kw)
    extra = sum(serve_alltoall_ms(hw, m, 128, 16, 1, 8, "deepep", "decode")) - sum(
        serve_alltoall_ms(hw, m, 64, 16, 1, 8, "deepep", "decode"))
    assert a2a.step_ms - base.step_ms == pytest.approx(m.num_moe_layers * extra * (1.0 - hw.comm_overlap))
    # the experts at 1.5 × the mean tokens: the grouped GEMM of the busiest GPU's slots
    e = _pieces(m, hw, imbalance=(1.5, 1.0), **pk).experts
    mean = _pieces(m, hw, **pk).experts
    slots, phys = (256 + 32) // 16, 256 + 32
    M = 8 * 64 * 16 / phys
    assert e == pytest.approx(_experts_ms_by_hand(hw, m, slots, phys, 1.5 * M, 1.5 * 64 * 16))
    assert e > mean
    assert serve_step(m, hw, imbalance=(1.5, 1.0), **kw).step_ms - base.step_ms == pytest.approx(
        m.num_moe_layers * (e - mean))
    # a callable is asked at the tokens each GPU holds: the whole step, and each half under overlap
    asked = []

    def fn(ep, t):
        asked.append((ep, t))
        return 1.0, 1.0

    serve_step(m, hw, imbalance=fn, two_batch_overlap="on", **kw)
    assert (16, 64) in asked and (16, 32) in asked
    assert imbalance_factors(1.2, 16, 64) == (1.2, 1.2)
    with pytest.raises(InputError, match="imbalance"):
        serve_step(m, hw, imbalance=0.9, **kw)


def _experts_ms_by_hand(hw, m, slots, phys, M, group_tokens):
    n = active_experts(slots, phys, m.top_k, group_tokens)
    one, two = (float(grouped_experts_ms(hw, m.hidden_size, m.expert_intermediate_size, m.expert_dtype,
                                         np.full((1, j), slots * M / n), kernel="grouped")[0]) for j in (1, 2))
    return one + (n - 1.0) * (two - one)


def test_deepep_phases_by_hand(hw):
    """Prefill (normal kernels): one copy per remote node; decode (low-latency kernels): one copy per
    selected expert on another GPU. Dispatch moves fp8 plus one fp32 scale per 128 channels when
    the experts run in fp8, combine bf16; other dispatchers bf16 both ways."""
    from planner.cost.comm import nic, nvlink, uniform_remote_fractions
    from planner.cost.serve_step import dispatch_bytes_per_token, serve_alltoall_ms

    m = load_model("deepseek-v3")  # fp8 experts, hidden 7168, top-8 of 256
    assert m.expert_dtype == "fp8" and m.hidden_size == 7168
    assert dispatch_bytes_per_token(m, "deepep") == 7168 + 4 * 56
    assert dispatch_bytes_per_token(m, "pairs") == 2 * 7168
    fr = uniform_remote_fractions(256, 8, 64, 8)
    tokens = 128
    # decode at EP64, 8 GPUs per node: 8 · 7/64 copies over NVLink, 8 · 56/64 over the NIC
    assert fr["pairs_inter"] == pytest.approx(8 * 56 / 64) and fr["pairs_intra"] == pytest.approx(8 * 7 / 64)
    d, c = serve_alltoall_ms(hw, m, tokens, 64, 1, 8, "deepep", "decode")
    want_d = max(nvlink(hw).message_ms(tokens * fr["pairs_intra"] * 7392), nic(hw).message_ms(tokens * 7.0 * 7392))
    want_c = max(nvlink(hw).message_ms(tokens * fr["pairs_intra"] * 14336), nic(hw).message_ms(tokens * 7.0 * 14336))
    assert (d, c) == (pytest.approx(want_d), pytest.approx(want_c))
    # DeepEP's README measures these kernels at 128 tokens, top-8, hidden 7168, EP64 (H800, CX7):
    # dispatch 173 µs, combine 314 µs, every copy over RDMA (before DeepEP #173); the NIC share here
    # is 7 of 8 copies, so the model sits a little under those figures
    assert 0.85 * 0.173 < d < 0.173 and 0.85 * 0.314 < c < 0.314
    # prefill: one bf16 combine copy per remote node, the dispatch at 7392 / 14336 of its bytes
    dp, cp = serve_alltoall_ms(hw, m, 4096, 64, 1, 8, "deepep", "prefill")
    node = fr["node_inter"]
    assert cp == pytest.approx(nic(hw).message_ms(4096 * node * 14336))
    assert dp == pytest.approx(nic(hw).message_ms(4096 * node * 7392))
    # a bf16-expert model dispatches bf16: both phases cost the same
    b = load_model("qwen3-30b-a3b")
    assert b.expert_dtype == "bf16"
    bd, bc = serve_alltoall_ms(hw, b, 256, 8, 1, 8, "deepep", "prefill")
    assert bd == bc > 0
