"""Expert FFN compute cost: table interpolation, roofline fallback, grouped experts."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost import compute
from planner.cost.compute import (
    FALLBACK_EFFICIENCY,
    FALLBACK_OVERHEAD_MS,
    RooflineFit,
    expert_ffn_ms,
    grouped_experts_ms,
    roofline_ffn_ms,
    roofline_fit,
)
from planner.errors import InputError
from planner.specs.base import parse
from planner.specs.hardware import HardwareProfile, load_hardware

H100 = load_hardware("h100-sxm")


def tiny_profile(tables: list[dict] | None = None, **over) -> HardwareProfile:
    """A made-up 4-SM chip: 100 TFLOP/s bf16, 500 GB/s HBM (closed-form roofline numbers)."""
    data = {
        "name": "tiny",
        "description": "hand-made test chip",
        "hbm_gib": 1.0,
        "hbm_bandwidth_gbps": 500.0,
        "num_sms": 4,
        "l2_mb": 1.0,
        "peak_tflops": {"bf16": 100.0, "fp8": 200.0},
        "nvlink": {"bandwidth_gbps": 100.0, "latency_us": 10.0, "gpus_per_domain": 8},
        "nic": {"bandwidth_gbps": 10.0, "latency_us": 20.0},
        "pcie": {
            "h2d_pinned": [{"bytes": 1 << 20, "gbps": 10.0}],
            "d2h_pinned": [{"bytes": 1 << 20, "gbps": 10.0}],
            "copy_latency_us": 5.0,
        },
        "expert_ffn_tables": tables or [],
        "measured": {
            "status": "mixed" if tables else "datasheet",
            "device": "tiny",
            "date": "2026-11-23",
            "method": "made up",
            "source": "tests",
        },
    }
    data.update(over)
    return parse(HardwareProfile, data, "tiny.json")


# ---- measured tables -------------------------------------------------------------------------


@pytest.mark.parametrize("hw_name", ["h100-sxm", "h200-sxm"])
def test_interpolation_reproduces_measured_points(hw_name):
    hw = load_hardware(hw_name)
    for t in hw.expert_ffn_tables:
        got = expert_ffn_ms(hw, t.d, t.f, t.dtype, t.tokens)
        envelope = np.maximum.accumulate(t.ffn_ms)
        np.testing.assert_allclose(got, envelope, rtol=1e-12)
        # where the measurement is already monotone, the point itself comes back
        mono = np.asarray(t.ffn_ms) == envelope
        np.testing.assert_allclose(got[mono], np.asarray(t.ffn_ms)[mono], rtol=1e-12)


def test_interpolation_between_points_is_bracketed_and_monotone():
    for t in H100.expert_ffn_tables:
        m = np.arange(1, 3 * t.tokens[-1], 7)
        y = expert_ffn_ms(H100, t.d, t.f, t.dtype, m)
        assert np.all(np.diff(y) >= 0)
        env = np.maximum.accumulate(t.ffn_ms)
        for i in range(len(t.tokens) - 1):
            lo, hi = t.tokens[i], t.tokens[i + 1]
            mid = np.arange(lo, hi + 1)
            ym = expert_ffn_ms(H100, t.d, t.f, t.dtype, mid)
            assert np.all(ym >= env[i] - 1e-15) and np.all(ym <= env[i + 1] + 1e-15)


def test_interpolation_is_log_log():
    table = {"d": 64, "f": 64, "dtype": "bf16", "tokens": [4, 16], "ffn_ms": [1.0, 4.0], "source": "t"}
    hw = tiny_profile([table])
    # log-log between (4, 1) and (16, 4): t = M / 4; below the first point: the first time
    np.testing.assert_allclose(expert_ffn_ms(hw, 64, 64, "bf16", [1, 3, 4, 8, 16]), [1.0, 1.0, 1.0, 2.0, 4.0])
    # beyond the last point: linear from the last time per token
    np.testing.assert_allclose(expert_ffn_ms(hw, 64, 64, "bf16", [32, 160]), [8.0, 40.0])


def test_zero_tokens_cost_nothing():
    t = H100.expert_ffn_tables[0]
    assert expert_ffn_ms(H100, t.d, t.f, "bf16", 0) == 0.0
    np.testing.assert_array_equal(expert_ffn_ms(H100, 1000, 3000, "bf16", [0, 0]), [0.0, 0.0])
    got = expert_ffn_ms(H100, t.d, t.f, "bf16", [[0, 1], [2, 0]])
    assert got.shape == (2, 2) and got[0, 0] == 0 and got[1, 1] == 0 and got[0, 1] > 0


def test_bad_tokens_and_dtype():
    with pytest.raises(InputError, match=r"must be >= 0 \(got -1\)"):
        expert_ffn_ms(H100, 4096, 14336, "bf16", [3, -1])
    with pytest.raises(InputError, match="unknown dtype 'bf8'"):
        expert_ffn_ms(H100, 4096, 14336, "bf8", [3])
    with pytest.raises(InputError, match="no entry for fp8"):
        expert_ffn_ms(load_hardware("a100-sxm-80gb"), 4096, 14336, "fp8", [3])


# ---- roofline fallback -----------------------------------------------------------------------


def test_gemm_quantization_closed_form():
    # 1x1024 @ 1024x2048 on 4 SMs: best tile 64x128 -> 16 tiles = 4 full waves
    assert compute._gemm_flops_q(np.array([1.0]), 2048, 1024, 4)[0] == 4 * 4 * 64 * 128 * 1024 * 2
    # fewer tiles than SMs: tile padding only (2 tiles of 64x128)
    assert compute._gemm_flops_q(np.array([1.0]), 256, 1024, 4)[0] == 2 * 64 * 128 * 1024 * 2
    # M=64, N=640: 5 tiles of 64x128 on 4 SMs -> 2 waves; 128x256 needs 3 tiles (< 4 SMs, no
    # wave penalty); the least wasteful shape wins
    q = compute._gemm_flops_q(np.array([64.0]), 640, 100, 4)[0]
    assert q == min(2 * 4 * 64 * 128 * 100 * 2, 3 * 128 * 256 * 100 * 2)


def test_roofline_weight_bound_at_small_m():
    hw = tiny_profile()
    h = f = 1024
    fit = roofline_fit(hw)
    assert not fit.fitted and fit.efficiency == FALLBACK_EFFICIENCY and fit.overhead_ms == FALLBACK_OVERHEAD_MS
    got = expert_ffn_ms(hw, h, f, "bf16", [1])[0]
    weights_and_act = 3 * h * f * 2 + 1 * (2 * h + 6 * f) * 2  # bytes
    memory_ms = weights_and_act / 500e9 * 1e3  # 0.0126 ms
    compute_ms = (4 * 4 * 64 * 128 * h * 2 + 2 * 4 * 64 * 128 * f * 2) / (100e12 * FALLBACK_EFFICIENCY) * 1e3
    assert compute_ms < memory_ms
    assert got == pytest.approx(memory_ms + FALLBACK_OVERHEAD_MS, rel=1e-12)


def test_roofline_flop_bound_at_large_m():
    hw = tiny_profile()
    h = f = 1024
    m = 65536  # every tile shape divides evenly and the tile counts are multiples of 4 SMs
    got = expert_ffn_ms(hw, h, f, "bf16", [m])[0]
    compute_ms = 6 * m * h * f / (100e12 * FALLBACK_EFFICIENCY) * 1e3  # 6.44 ms
    memory_ms = (3 * h * f * 2 + m * (2 * h + 6 * f) * 2) / 500e9 * 1e3  # 2.16 ms
    assert memory_ms < compute_ms
    assert got == pytest.approx(compute_ms + FALLBACK_OVERHEAD_MS, rel=1e-12)
    # tile quantization: one more token costs a whole extra row of 64-row tiles
    padded_ms = 6 * (m + 64) * h * f / (100e12 * FALLBACK_EFFICIENCY) * 1e3
    assert expert_ffn_ms(hw, h, f, "bf16", [m + 1])[0] == pytest.approx(padded_ms + FALLBACK_OVERHEAD_MS, rel=1e-12)


def test_roofline_fp8_halves_weight_time():
    hw = tiny_profile()
    bf16 = expert_ffn_ms(hw, 1024, 1024, "bf16", [1])[0] - FALLBACK_OVERHEAD_MS
    fp8 = expert_ffn_ms(hw, 1024, 1024, "fp8", [1])[0] - FALLBACK_OVERHEAD_MS
    act = (2 * 1024 + 6 * 1024) * 2 / 500e9 * 1e3
    assert fp8 - act == pytest.approx((bf16 - act) / 2, rel=1e-12)


def test_fit_recovers_known_parameters():
    """Tables generated by the roofline itself with efficiency 0.5 and 0.01 ms overhead."""
    truth = RooflineFit(0.5, 0.01, True, 0, 0.0, 0.0, 0.0)
    base = tiny_profile()
    tokens = [1, 8, 64, 512, 4096, 32768]
    tables = []
    for h, f in [(1024, 1024), (512, 2048), (2048, 256)]:
        ms = roofline_ffn_ms(base, h, f, "bf16", tokens, truth)
        tables.append({"d": h, "f": f, "dtype": "bf16", "tokens": tokens, "ffn_ms": ms.tolist(), "source": "t"})
    fit = roofline_fit(tiny_profile(tables))
    assert fit.fitted and fit.n_points == 18
    assert fit.efficiency == pytest.approx(0.5) and fit.overhead_ms == pytest.approx(0.01)
    assert fit.max_rel_error < 1e-9


@pytest.mark.parametrize("hw_name", ["h100-sxm", "h200-sxm"])
def test_fit_on_shipped_tables(hw_name):
    """The documented accuracy of the roofline against the measured tables (compute.py docstring)."""
    fit = roofline_fit(load_hardware(hw_name))
    assert fit.fitted and fit.n_points == 105
    assert 0.55 <= fit.efficiency <= 0.75
    assert 0.010 <= fit.overhead_ms <= 0.030
    assert fit.mean_rel_error < 0.08 and fit.p90_rel_error < 0.15 and fit.max_rel_error < 0.40


def test_unmeasured_shape_on_h100_uses_roofline():
    assert H100.table_for(5120, 1536, "bf16") is None  # DeepSeek-V2 shape: not measured
    got = expert_ffn_ms(H100, 5120, 1536, "bf16", [1, 16384])
    fit = roofline_fit(H100)
    weights_ms = 3 * 5120 * 1536 * 2 / (H100.hbm_bandwidth_gbps * 1e9) * 1e3
    assert got[0] == pytest.approx(weights_ms + fit.overhead_ms, rel=0.01)
    flops_ms = 6 * 16384 * 5120 * 1536 / (989.4e12 * fit.efficiency) * 1e3
    assert flops_ms + fit.overhead_ms <= got[1] < 1.2 * (flops_ms + fit.overhead_ms)


# ---- grouped experts -------------------------------------------------------------------------


def test_grouped_experts_sum_per_gpu():
    t = H100.expert_ffn_tables[2]
    tokens_GE = np.array([[0, 5, 100], [0, 0, 0], [16384, 1, 0]])
    got = grouped_experts_ms(H100, t.d, t.f, "bf16", tokens_GE)
    assert got.shape == (3,)
    want = [expert_ffn_ms(H100, t.d, t.f, "bf16", row).sum() for row in tokens_GE]
    np.testing.assert_allclose(got, want)
    assert got[1] == 0.0


def test_grouped_experts_needs_2d():
    with pytest.raises(ValueError, match=r"2-D \[G, E_local\]"):
        grouped_experts_ms(H100, 4096, 14336, "bf16", [1, 2, 3])
