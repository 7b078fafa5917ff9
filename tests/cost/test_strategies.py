"""Training strategies (planner/cost/strategies.py) by hand on a tiny model: h 64, 4 MoE layers
of 8 experts (f 128, top-2), MHA 4 × 16, vocabulary 1000, 8 GPUs on one node of a made-up chip
whose links are round numbers. Each strategy's memory and step are computed here from the
formulas of the module docstring with the numbers written out."""

from __future__ import annotations

import math

import pytest

from planner.cost.memory import GIB
from planner.cost.step import (
    GATHER_WINDOW,
    OPTIMIZER_STEP_BYTES,
    REDUCE_WINDOW,
    StepModel,
    alltoall_ms,
)
from planner.cost.strategies import (
    HOST_MEMORY_GBPS,
    Layout,
    experts_ms,
    fsmoe_layer,
    fssdp_layer_comm,
    moe_pieces,
    pipelined_ms,
    price,
    price_deepspeed_moe,
    price_fssdp,
    price_megatron,
)
from planner.errors import InputError
from planner.specs.base import parse
from planner.specs.hardware import HardwareProfile
from planner.specs.model import AttentionSpec, ModelSpec

H, F, E, L, V = 64, 128, 8, 4, 1000
P_E = 3 * H * F  # 24576 parameters per expert
ATT = 4 * H * H  # q, k, v, o: 16384 per layer
ROUTER = H * E  # 512 per layer
NON_EXPERT = 2 * V * H + L * (ATT + ROUTER)  # 128000 + 67584 = 195584
NVL_GBPS, NVL_US = 100.0, 10.0


def tiny_model() -> ModelSpec:
    return ModelSpec(name="tiny", hidden_size=H, num_layers=L, num_experts=E, top_k=2, expert_intermediate_size=F,
                     attention=AttentionSpec(kind="mha", num_heads=4, num_kv_heads=4, head_dim=16), vocab_size=V)


def tiny_hw() -> HardwareProfile:
    return parse(HardwareProfile, {
        "name": "tiny", "description": "hand-made test chip", "hbm_gib": 1.0, "hbm_bandwidth_gbps": 500.0,
        "num_sms": 4, "l2_mb": 1.0, "peak_tflops": {"bf16": 100.0},
        "nvlink": {"bandwidth_gbps": NVL_GBPS, "latency_us": NVL_US, "gpus_per_domain": 8},
        "nic": {"bandwidth_gbps": 10.0, "latency_us": 20.0},
        "pcie": {"h2d_pinned": [{"bytes": 1 << 20, "gbps": 10.0}], "d2h_pinned": [{"bytes": 1 << 20, "gbps": 10.0}],
                 "copy_latency_us": 5.0},
        "measured": {"status": "datasheet", "device": "tiny", "date": "2026-11-23", "method": "made up",
                     "source": "tests"},
    }, "tiny.json")


@pytest.fixture(scope="module")
def sm() -> StepModel:
    return StepModel(tiny_model(), tiny_hw(), 8)


def lay(**over) -> Layout:
    kw = dict(num_gpus=8, tp=1, pp=1, ep=2, global_batch=16, seq_len=256)
    kw.update(over)
    return Layout(**kw)


def ag_ms(nbytes: float, n: int) -> float:
    """All-gather / reduce-scatter over NVLink by hand: α + bytes·(n−1)/n / BW (ms)."""
    return NVL_US * 1e-3 + nbytes * (n - 1) / n / (NVL_GBPS * 1e9) * 1e3


def test_model_counts_by_hand():
    m = tiny_model()
    assert m.expert_params == P_E and m.non_expert_params == NON_EXPERT == 195584


def test_pipelined_by_hand():
    assert pipelined_ms(3.0, 5.0, 1) == 8.0  # serial
    assert pipelined_ms(3.0, 5.0, 2) == 6.5  # 5 + 3/2
    assert pipelined_ms(5.0, 3.0, 4) == 5.75  # 5 + 3/4
    with pytest.raises(InputError):
        pipelined_ms(1.0, 1.0, 0)


def test_megatron_imbalance_by_hand(sm):
    base, skew = price_megatron(sm, lay()), price_megatron(sm, lay(), imbalance=1.5)
    p = moe_pieces(sm, lay(), sm.train_step(num_gpus=8, tp=1, pp=1, ep=2, global_batch=16, seq_len=256))
    assert p.moe_layers == 4 and p.window == 2.0  # 16 / (8 · 1) micro-batches, pp 1
    # Δ per MoE layer = 0.5 · (3e + 2·a2a), on 4 layers, 2 micro-batches
    assert skew.step_ms - base.step_ms == pytest.approx(2 * 4 * 0.5 * (3 * p.experts + 2 * p.a2a), rel=1e-12)
    assert skew.memory == base.memory
    with pytest.raises(InputError, match="imbalance"):
        price_megatron(sm, lay(), imbalance=0.5)


def test_fsmoe_step_by_hand():
    # 4 GPUs per node, EP 8 over two nodes, 16384-token sequences: the all-to-all crosses the
    # NIC and is long enough for chunks to pay
    sm = StepModel(tiny_model(), tiny_hw(), 4)
    lo = lay(ep=8, seq_len=16384, global_batch=8)
    st = sm.train_step(num_gpus=8, tp=1, pp=1, ep=8, global_batch=8, seq_len=16384)
    p = moe_pieces(sm, lo, st)
    save, rf, rb = fsmoe_layer(sm, lo, p.tokens)
    assert (rf, rb) == (2, 2)
    # two chunks: D = 2 × the all-to-all of half the tokens, E = 2 × the experts on half
    d = 2 * 2 * alltoall_ms(sm.hw, sm.model, p.tokens / 2, 8, 1, 4, "pairs")
    e = 2 * experts_ms(sm, lo, p.tokens / 2)
    want = (p.a2a + p.experts - (max(d, e) + min(d, e) / 2)) + (p.a2a + 2 * p.experts - (max(d, 2 * e) + min(d, 2 * e) / 2))
    assert save == pytest.approx(want, rel=1e-12) and save > 0
    # step: 1 micro-batch × 4 layers shorter, Megatron's exposed sync re-taken on the shorter stage
    stage = st.stage_ms - 4 * save
    red, gat = st.parts["dp_reduce_ms"], st.parts["dp_gather_ms"]
    sync = max(0.0, red - REDUCE_WINDOW * stage) + max(0.0, gat - GATHER_WINDOW * stage)
    fs, base = price("fsmoe", sm, lo), price("megatron", sm, lo)
    assert fs.step_ms == pytest.approx(st.step_ms - 4 * save - st.dp_exposed_ms + sync, rel=1e-12)
    assert fs.step_ms < base.step_ms and fs.memory == base.memory


def test_fsmoe_without_ep_changes_nothing(sm):
    assert price("fsmoe", sm, lay(ep=1)).step_ms == pytest.approx(price("megatron", sm, lay(ep=1)).step_ms)
    assert price("fsmoe", sm, lay()).step_ms <= price("megatron", sm, lay()).step_ms  # r = 1 is a choice


def test_fssdp_collectives_and_memory_by_hand(sm):
    # ep 2: a GPU computes 4 experts per layer = 98304 parameters, gathered in bf16 over 8 GPUs,
    # gradients reduce-scattered in fp32
    g_f, g_b = fssdp_layer_comm(sm, lay())
    assert g_f == pytest.approx(ag_ms(2 * 4 * P_E, 8), rel=1e-9)
    assert g_b == pytest.approx(ag_ms(2 * 4 * P_E, 8) + ag_ms(4 * 4 * P_E, 8), rel=1e-9)
    base, fs = price_megatron(sm, lay()), price_fssdp(sm, lay(), per_micro_batch=True)
    mp = 4 * P_E * L  # 393216 expert parameters on a GPU under EP 2
    shard = mp * 2 / 8  # 98304: the stage's 8 · 4 · 24576 experts over 8 GPUs
    per_layer = 4 * P_E  # 98304
    assert fs.memory.weights - base.memory.weights == pytest.approx(2 * (shard + 2 * per_layer - mp))  # -196608
    assert fs.memory.gradients - base.memory.gradients == pytest.approx(4 * (shard + per_layer - mp))
    assert fs.memory.optimizer == base.memory.optimizer  # already sharded over the 4-GPU expert-DP × 2
    assert fs.memory.activations == base.memory.activations


def test_fssdp_step_by_hand(sm):
    st = sm.train_step(num_gpus=8, tp=1, pp=1, ep=2, global_batch=16, seq_len=256)
    lt = sm.layer_times(tp=1, cp=1, b=1, s=256, ep=2, etp=1)
    hide = lt.attn_compute + lt.moe_compute
    g_f, g_b = ag_ms(2 * 4 * P_E, 8), ag_ms(2 * 4 * P_E, 8) + ag_ms(4 * 4 * P_E, 8)
    delta = max(0.0, g_f - hide) + max(0.0, g_b - 2 * hide)
    stage = st.stage_ms + 4 * delta
    # only the non-expert parameters keep a data-parallel sync (8 GPUs, fp32 grads, bf16 weights)
    sync = max(0.0, ag_ms(4 * NON_EXPERT, 8) - REDUCE_WINDOW * stage) + max(0.0, ag_ms(2 * NON_EXPERT, 8)
                                                                           - GATHER_WINDOW * stage)
    want = st.step_ms + 2 * 4 * delta - st.dp_exposed_ms + sync
    assert price_fssdp(sm, lay(), per_micro_batch=True).step_ms == pytest.approx(want, rel=1e-9)


def test_fssdp_once_per_step_by_hand(sm):
    """Hecate's default: gathered once per step before the first micro-batch, gradients
    reduce-scattered once after the last; the materialized experts stay beside the shard."""
    st = sm.train_step(num_gpus=8, tp=1, pp=1, ep=2, global_batch=16, seq_len=256)
    lt = sm.layer_times(tp=1, cp=1, b=1, s=256, ep=2, etp=1)
    hide = lt.attn_compute + lt.moe_compute
    once = 4 * (max(0.0, ag_ms(2 * 4 * P_E, 8) - hide) + max(0.0, ag_ms(4 * 4 * P_E, 8) - 2 * hide))
    sync = max(0.0, ag_ms(4 * NON_EXPERT, 8) - REDUCE_WINDOW * st.stage_ms) + max(
        0.0, ag_ms(2 * NON_EXPERT, 8) - GATHER_WINDOW * st.stage_ms)
    fs, mb = price_fssdp(sm, lay()), price_fssdp(sm, lay(), per_micro_batch=True)
    assert fs.step_ms == pytest.approx(st.step_ms + once - st.dp_exposed_ms + sync, rel=1e-9)
    assert fs.step_ms <= mb.step_ms  # one gather per step never costs more than one per micro-batch
    base = price_megatron(sm, lay())
    shard = 4 * P_E * L * 2 / 8
    assert fs.memory.weights - base.memory.weights == pytest.approx(2 * shard)
    assert fs.memory.gradients == base.memory.gradients and fs.memory.optimizer == base.memory.optimizer


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_deepspeed_memory_by_hand(sm, zero):
    ds = price_deepspeed_moe(sm, lay(), zero_stage=zero)
    dense, exp = NON_EXPERT, 4 * P_E * L  # tp 1: all the dense part; EP 2: 4 experts × 4 layers
    dp, edp = 8, 4
    w = 2 * (dense + exp) if zero < 3 else 2 * (dense / dp + exp / edp) + 2 * 2 * (dense / L + exp / L)
    g = 2 * (dense + exp) if zero < 2 else 2 * (dense / dp + exp / edp)
    o = 12 * (dense / dp + exp / edp)
    assert ds.memory.weights == pytest.approx(w)
    assert ds.memory.gradients == pytest.approx(g)
    assert ds.memory.optimizer == pytest.approx(o)
    assert ds.memory.total / GIB == pytest.approx(ds.memory.total_gib)


def test_deepspeed_step_by_hand(sm):
    st = sm.train_step(num_gpus=8, tp=1, pp=1, ep=2, global_batch=16, seq_len=256)
    dense, exp = NON_EXPERT, 4 * P_E * L
    # ZeRO-2: reduce-scatter of 2-byte gradients and all-gather of 2-byte weights, dense over 8
    # GPUs, experts over their 4 expert-data-parallel GPUs (stride 2), all exposed
    sync = ag_ms(2 * dense, 8) * 2 + ag_ms(2 * exp, 4) * 2
    z2 = price_deepspeed_moe(sm, lay(), zero_stage=2)
    assert z2.step_ms == pytest.approx(st.step_ms - st.dp_exposed_ms + sync, rel=1e-9)
    # ZeRO-1: an all-reduce (2·(n−1)/n) instead of the reduce-scatter
    ar = NVL_US * 1e-3 + 2 * dense * 2 * 7 / 8 / (NVL_GBPS * 1e6) + NVL_US * 1e-3 + 2 * exp * 2 * 3 / 4 / (NVL_GBPS * 1e6)
    z1 = price_deepspeed_moe(sm, lay(), zero_stage=1)
    assert z1.step_ms == pytest.approx(st.step_ms - st.dp_exposed_ms + ar + ag_ms(2 * dense, 8) + ag_ms(2 * exp, 4),
                                       rel=1e-9)
    # offload: no GPU optimizer step; 2-byte gradients down (hidden behind the last backward),
    # 2-byte weights up over PCIe, host Adam at 200 GB/s / 8 GPUs. The profile's one point (1 MiB
    # at 10 GB/s, 5 µs fixed cost included) gives 5 µs + bytes × (0.1048576 − 0.005) ms / MiB
    shard = dense / 8 + exp / 4
    per_byte = (2**20 / 10e6 - 5e-3) / 2**20
    up = down = 5e-3 + 2 * shard * per_byte
    host = OPTIMIZER_STEP_BYTES * shard / (HOST_MEMORY_GBPS / 8 * 1e9) * 1e3
    off = price_deepspeed_moe(sm, lay(), zero_stage=2, offload=True)
    want = z2.step_ms - st.optimizer_ms + max(0.0, down - REDUCE_WINDOW * st.stage_ms) + host + up
    assert off.step_ms == pytest.approx(want, rel=1e-6)
    assert off.memory.optimizer == 0.0 and off.memory.weights == z2.memory.weights


def test_deepspeed_folds_the_pipeline(sm):
    ds = price_deepspeed_moe(sm, lay(pp=2))
    assert ds.layout.pp == 1 and ds.layout.dp == 8
    with pytest.raises(InputError, match="zero_stage"):
        price_deepspeed_moe(sm, lay(), zero_stage=4)
    with pytest.raises(InputError, match="strategy"):
        price("gshard", sm, lay())


def test_tflops_follow_the_step(sm):
    for name in ("megatron", "fsmoe", "fssdp", "deepspeed-moe"):
        p = price(name, sm, lay())
        st = sm.train_step(num_gpus=8, tp=1, pp=1, ep=2, global_batch=16, seq_len=256)
        assert p.tflops_per_gpu == pytest.approx(st.model_flops / (p.step_ms * 1e-3) / 8 / 1e12)
        assert math.isfinite(p.step_ms) and p.assumptions


def test_what_if_rows_on_a_given_layout():
    from planner.solve.candidates import Candidate
    from planner.solve.strategies import WHAT_IFS, what_if
    from planner.specs.cluster import ClusterSpec

    hw = tiny_hw()
    best = Candidate(mode="train", dp=4, tp=1, pp=2, ep=2, micro_batch=1)
    cl = ClusterSpec(hardware="h100-sxm", num_nodes=1, gpus_per_node=8)
    rows = what_if(tiny_model(), hw, cl, seq_len=256, global_batch=16, best=best)
    assert [r.label for r in rows] == [w[0] for w in WHAT_IFS]
    sm = StepModel(tiny_model(), hw, 8)
    assert rows[0].step_ms == pytest.approx(price("megatron", sm, lay(pp=2)).step_ms)
    assert rows[0].layout.startswith("dp4 tp1 pp2 ep2") and rows[3].layout.startswith("dp8 tp1 pp1 ep2")
    assert all(r.fits == (r.memory_gib * GIB <= hw.hbm_bytes - 4 * GIB) for r in rows)
