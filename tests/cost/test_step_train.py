"""Training step: the training dtype (not the checkpoint's), fp8 GEMMs and casts, MTP, and the
small-expert overheads (issue 19)."""

import pytest

from planner.cost.layers import dispatcher_sync_ms, fp8_cast_ms, permute_ms, router_ms
from planner.cost.step import StepModel, model_flops_per_step
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model

KW = dict(num_gpus=64, tp=1, pp=4, ep=8, vpp=1, micro_batch=1, global_batch=256, seq_len=4096)


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def test_bf16_training_prices_experts_in_bf16_whatever_the_checkpoint(hw):
    # issue 19: the step model priced the experts in the serving expert_dtype (fp8 here)
    m = load_model("mixtral-8x7b")
    fp8_ckpt = m.model_copy(update={"expert_dtype": "fp8"})
    a = StepModel(m, hw, 8).train_step(**KW)
    b = StepModel(fp8_ckpt, hw, 8).train_step(**KW)
    assert a.step_ms == pytest.approx(b.step_ms)


def test_fp8_training_uses_fp8_gemms_and_pays_casts(hw):
    m = load_model("mixtral-8x7b")
    bf = StepModel(m, hw, 8, "bf16")
    f8 = StepModel(m, hw, 8, "fp8")
    assert f8.train_step(**KW).parts["moe_compute_fwd_ms"] < bf.train_step(**KW).parts["moe_compute_fwd_ms"]
    att, moe, dense = f8._casts(1, 1, 4096.0)
    # by hand: T·(h + N_att) elements for attention; k·T·(2h + 3f) for the routed experts
    h, f, k = 4096, 14336, 2
    n_att = m.attention.params_per_layer(h) / h
    assert att == pytest.approx(fp8_cast_ms(hw, 4096 * (h + n_att)))
    assert moe == pytest.approx(fp8_cast_ms(hw, k * 4096 * (2 * h + 3 * f)))
    assert dense == 0.0 and bf._casts(1, 1, 4096.0) == (0.0, 0.0, 0.0)
    with pytest.raises(Exception, match="train_dtype must be one of"):
        StepModel(m, hw, 8, "fp4")


def test_overhead_terms_monotone_in_tokens_and_experts(hw):
    m = load_model("qwen3-30b-a3b")
    more = m.model_copy(update={"num_experts": 256})
    for fn in (router_ms, permute_ms):
        ts = [fn(hw, m, t) for t in (1, 64, 1024, 16384)]
        assert ts == sorted(ts) and ts[0] > 0
    assert router_ms(hw, more, 4096) > router_ms(hw, m, 4096)
    assert [fp8_cast_ms(hw, n) for n in (0, 1e3, 1e6)] == sorted(fp8_cast_ms(hw, n) for n in (0, 1e3, 1e6))
    # the dispatcher's host sync: the PCIe copy latency plus one kernel issue, per forward
    assert dispatcher_sync_ms(hw) == pytest.approx((hw.pcie.copy_latency_us + 60.5 / 5) * 1e-3)
    assert dispatcher_sync_ms(hw, 3) > dispatcher_sync_ms(hw, 1)


def test_mtp_costs_a_layer_and_counts_in_the_flops(hw):
    d = load_model("deepseek-v3")
    no = d.model_copy(update={"mtp_layers": 0})
    assert model_flops_per_step(d, 64, 4096) > model_flops_per_step(no, 64, 4096)
    kw = dict(num_gpus=1024, tp=1, pp=16, ep=64, vpp=1, micro_batch=1, global_batch=1024, seq_len=4096)
    with_mtp = StepModel(d, hw, 8).train_step(**kw, pp_first=4, pp_last=1)
    without = StepModel(no, hw, 8).train_step(**kw, pp_first=4, pp_last=1)
    # the last rank (1 layer) is not the slowest either way: the MTP layer does not move the step
    assert with_mtp.stage_ms == pytest.approx(without.stage_ms)
    ranks = StepModel(d, hw, 8).train_step(**kw, pp_first=4, pp_last=1)
    assert ranks.tflops_per_gpu > without.tflops_per_gpu  # more model FLOPs in the same time
