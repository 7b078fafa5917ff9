"""Expert FFN compute cost: measured-table curves, device model, unmeasured shapes, grouped experts.

No test asserts a timing of real hardware beyond what the profile's own tables say: the checks
are closed forms on made-up chips, exactness at measured points, monotonicity and bracketing."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost import compute
from planner.cost.compute import (
    FALLBACK_FIT,
    STREAM_EFFICIENCY,
    DeviceFit,
    device_fit,
    device_model_ms,
    expert_ffn_ms,
    ffn_curve,
    fit_shape,
    gemm_flops_q,
    grouped_experts_ms,
    table_curve,
)
from planner.errors import InputError
from planner.specs.base import parse
from planner.specs.hardware import ExpertFfnTable, HardwareProfile, load_hardware

H100 = load_hardware("h100-sxm")


def tiny_profile(tables: list[dict] | None = None, **over) -> HardwareProfile:
    """A made-up 4-SM chip: 100 TFLOP/s bf16, 500 GB/s HBM (closed-form numbers)."""
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


def table(d, f, tokens, ms, dtype="bf16") -> dict:
    return {"d": d, "f": f, "dtype": dtype, "tokens": list(tokens), "ffn_ms": [float(x) for x in ms], "source": "t"}


# ---- measured tables -------------------------------------------------------------------------


@pytest.mark.parametrize("hw_name", ["h100-sxm", "h200-sxm"])
def test_curve_passes_through_measured_points(hw_name):
    hw = load_hardware(hw_name)
    for t in hw.expert_ffn_tables:
        got = expert_ffn_ms(hw, t.d, t.f, t.dtype, t.tokens)
        envelope = np.maximum.accumulate(t.ffn_ms)
        np.testing.assert_allclose(got, envelope, rtol=1e-9)


@pytest.mark.parametrize("hw_name", ["h100-sxm", "h200-sxm"])
def test_more_tokens_never_cost_less(hw_name):
    hw = load_hardware(hw_name)
    shapes = [(t.d, t.f, t.dtype) for t in hw.expert_ffn_tables] + [(5120, 1536, "bf16"), (7168, 2048, "fp8")]
    m = np.concatenate([np.arange(0, 600), np.linspace(600, 40000, 3001)])
    for d, f, dt in shapes:
        y = expert_ffn_ms(hw, d, f, dt, m)
        assert np.all(np.diff(y) >= 0), (d, f, dt)
        assert y[0] == 0 and np.all(y[1:] > 0)


def test_between_points_is_bracketed_by_neighbours():
    for t in H100.expert_ffn_tables:
        env = np.maximum.accumulate(t.ffn_ms)
        for i in range(len(t.tokens) - 1):
            mid = np.arange(t.tokens[i], t.tokens[i + 1] + 1)
            y = expert_ffn_ms(H100, t.d, t.f, t.dtype, mid)
            assert np.all(y >= env[i] * (1 - 1e-12)) and np.all(y <= env[i + 1] * (1 + 1e-12))


def test_exact_on_a_table_that_is_its_own_soft_roofline():
    """Points of b(M) = c0 + sqrt(tw² + (kM)²): the fit finds the knee, so between the points the
    curve follows b itself (plain log-log interpolation would not)."""
    c0, tw, k = 0.01, 0.02, 1e-5
    tokens = [2**i for i in range(15)]
    ms = [c0 + np.hypot(tw, k * m) for m in tokens]
    hw = tiny_profile([table(64, 64, tokens, ms)])
    m = np.array([3, 100, 777, 3000, 12000])
    want = c0 + np.hypot(tw, k * m)
    np.testing.assert_allclose(expert_ffn_ms(hw, 64, 64, "bf16", m), want, rtol=2e-3)
    fit = fit_shape(tokens, ms)
    assert fit.c0_ms == pytest.approx(c0, rel=0.05) and fit.k_ms_per_token == pytest.approx(k, rel=0.01)


def test_below_first_and_beyond_last_point():
    tb = table(64, 64, [4, 16, 64, 256], [1.0, 1.5, 2.0, 4.0])
    curve = table_curve(ExpertFfnTable(**tb))
    np.testing.assert_allclose(curve([1, 2, 0.5]), [1.0, 1.0, 1.0])  # below: the first time
    np.testing.assert_allclose(curve([512, 2560]), [8.0, 40.0])  # beyond: linear per token
    assert curve.m_max == 256 and curve.source == "table"


def test_two_point_table_is_log_log():
    hw = tiny_profile([table(64, 64, [4, 16], [1.0, 4.0])])
    np.testing.assert_allclose(expert_ffn_ms(hw, 64, 64, "bf16", [1, 3, 4, 8, 16, 32]), [1, 1, 1, 2, 4, 8])


def test_zero_tokens_and_shapes():
    t = H100.expert_ffn_tables[0]
    assert expert_ffn_ms(H100, t.d, t.f, "bf16", 0) == 0.0
    np.testing.assert_array_equal(expert_ffn_ms(H100, 1000, 3000, "bf16", [0, 0]), [0.0, 0.0])
    got = expert_ffn_ms(H100, t.d, t.f, "bf16", [[0, 1], [2, 0]])
    assert got.shape == (2, 2) and got[0, 0] == 0 and got[1, 1] == 0 and got[0, 1] > 0
    # integer fast path and float path agree
    ints = np.array([0, 1, 5, 300, 16384])
    np.testing.assert_allclose(expert_ffn_ms(H100, t.d, t.f, "bf16", ints), expert_ffn_ms(H100, t.d, t.f, "bf16", ints.astype(float)))


def test_bad_input():
    with pytest.raises(InputError, match=r"must be >= 0 \(got -1\)"):
        expert_ffn_ms(H100, 4096, 14336, "bf16", [3, -1])
    with pytest.raises(InputError, match="unknown dtype 'bf8'"):
        expert_ffn_ms(H100, 4096, 14336, "bf8", [3])
    with pytest.raises(InputError, match="no entry for fp8"):
        expert_ffn_ms(load_hardware("a100-sxm-80gb"), 4096, 14336, "fp8", [3])
    with pytest.raises(InputError, match=r"hidden and ffn must be > 0"):
        expert_ffn_ms(H100, 0, 14336, "bf16", [3])
    with pytest.raises(InputError, match="finite"):
        expert_ffn_ms(H100, 4096, 14336, "bf16", [np.nan])


# ---- quantized FLOPs and the device model ----------------------------------------------------


def test_gemm_quantization_closed_form():
    # 1x1024 @ 1024x2048 on 4 SMs: best tile 64x128 -> 16 tiles = 4 full waves
    assert gemm_flops_q(np.array([1.0]), 2048, 1024, 4)[0] == 4 * 4 * 64 * 128 * 1024 * 2
    # fewer tiles than SMs: tile padding only (2 tiles of 64x128)
    assert gemm_flops_q(np.array([1.0]), 256, 1024, 4)[0] == 2 * 64 * 128 * 1024 * 2
    # M=64, N=640: 5 tiles of 64x128 on 4 SMs -> 2 waves; 128x256 needs 3 tiles (< 4 SMs)
    q = gemm_flops_q(np.array([64.0]), 640, 100, 4)[0]
    assert q == min(2 * 4 * 64 * 128 * 100 * 2, 3 * 128 * 256 * 100 * 2)
    # divisible sizes: exactly 2·M·N·K
    assert gemm_flops_q(np.array([4096.0]), 4096, 512, 4)[0] == 2 * 4096 * 4096 * 512


def test_device_model_closed_form_without_tables():
    hw = tiny_profile()
    fit = device_fit(hw)
    assert fit == FALLBACK_FIT and not fit.fitted
    h = f = 1024
    p = fit.softmax_p
    tw = np.array([2 * f * h * 2, h * f * 2]) / 500e9 * 1e3 / fit.stream_eff
    # M = 16384 (the curve's grid end): every tile shape divides evenly and the tile counts are
    # multiples of 4 SMs
    m = 16384
    tc = np.array([2 * m * 2 * f * h, 2 * m * h * f]) / 100e12 * 1e3 / fit.compute_eff
    act = 5 * 2.0 * m * f / 500e9 * 1e3
    want = fit.fixed_ms + ((tw**p + tc**p) ** (1 / p)).sum() + fit.act_coef * act
    assert device_model_ms(hw, h, f, "bf16", [m])[0] == pytest.approx(want, rel=1e-12)
    # a profile without tables: the curve is the device model itself
    assert ffn_curve(hw, h, f, "bf16").source == "model"
    assert expert_ffn_ms(hw, h, f, "bf16", [m])[0] == pytest.approx(want, rel=1e-12)


def test_fp8_streams_half_the_weight_bytes():
    hw = tiny_profile()
    tw, _, _ = compute._device_parts(hw, 1024, 1024, "bf16", np.array([1.0]))
    tw8, _, _ = compute._device_parts(hw, 1024, 1024, "fp8", np.array([1.0]))
    tw4, _, _ = compute._device_parts(hw, 1024, 1024, "mxfp4", np.array([1.0]))
    np.testing.assert_allclose(tw8, tw / 2)
    np.testing.assert_allclose(tw4, tw * 4.25 / 16)


def test_device_fit_recovers_known_constants():
    """Tables generated by the device model itself: the fit finds its constants again."""
    truth = DeviceFit(0.5, 2.0, 0.01, 1.5, STREAM_EFFICIENCY, True, 0, 0, 0.0)
    base = tiny_profile()
    tokens = [1, 8, 64, 512, 4096, 32768]
    tables = []
    for h, f in [(1024, 1024), (512, 2048), (2048, 256), (768, 768)]:
        ms = compute._device_eval(truth, *compute._device_parts(base, h, f, "bf16", np.array(tokens, float)))
        tables.append(table(h, f, tokens, ms))
    fit = device_fit(tiny_profile(tables))
    assert fit.fitted and fit.n_points == 24 and fit.n_tables == 4
    assert fit.compute_eff == pytest.approx(0.5) and fit.softmax_p == 2.0
    assert fit.fixed_ms == pytest.approx(0.01, rel=1e-6) and fit.act_coef == pytest.approx(1.5, rel=1e-6)
    assert fit.mean_rel_error < 1e-9


def test_unmeasured_shape_is_device_model_times_neighbour_residuals():
    """If every measured table is the device model × 1.1, an unmeasured shape is too."""
    truth = DeviceFit(0.6, 3.0, 0.005, 1.0, STREAM_EFFICIENCY, True, 0, 0, 0.0)
    base = tiny_profile()
    tokens = [1, 4, 16, 64, 256, 1024, 4096]
    tables = []
    for h, f in [(1024, 1024), (512, 2048), (2048, 512)]:
        ms = 1.1 * compute._device_eval(truth, *compute._device_parts(base, h, f, "bf16", np.array(tokens, float)))
        tables.append(table(h, f, tokens, ms))
    hw = tiny_profile(tables)
    assert ffn_curve(hw, 1024, 768, "bf16").source == "transfer"
    m = np.array([1.0, 10, 100, 1000, 4000])
    got = expert_ffn_ms(hw, 1024, 768, "bf16", m)
    want = 1.1 * compute._device_eval(truth, *compute._device_parts(base, 1024, 768, "bf16", m))
    np.testing.assert_allclose(got, want, rtol=0.05)


def test_unmeasured_h100_shape_between_its_neighbours():
    # an unmeasured 5120 x 1792 expert sits between Qwen3-235B (4096 x 1536) and DeepSeek-V3 (7168 x 2048)
    assert H100.table_for(5120, 1792, "bf16") is None
    m = np.array([1.0, 64, 1024, 16384])
    got = expert_ffn_ms(H100, 5120, 1792, "bf16", m)
    lo = expert_ffn_ms(H100, 4096, 1536, "bf16", m)
    hi = expert_ffn_ms(H100, 7168, 2048, "bf16", m)
    assert np.all(lo < got) and np.all(got < hi)


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
    with pytest.raises(InputError, match=r"2-D \[G, E_local\]"):
        grouped_experts_ms(H100, 4096, 14336, "bf16", [1, 2, 3])


def test_pchip_residual_is_monotone_and_exact_at_the_points():
    from planner.cost.compute import _residual_pchip

    m_pts = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 64.0])
    rho = np.array([0.0, 0.1, 0.1, 0.5, 2.0, 2.1])  # non-decreasing with a flat step
    np.testing.assert_allclose(_residual_pchip(m_pts, rho, m_pts), rho, atol=1e-12)
    grid = np.geomspace(0.5, 100.0, 2000)
    r = _residual_pchip(m_pts, rho, grid)
    assert (np.diff(r) >= -1e-12).all()  # no overshoot: monotone data, monotone interpolant
    assert np.allclose(r[(grid > 2) & (grid < 4)], 0.1)  # flat stays flat (a linear spline would too)
    assert r[0] == 0.0 and r[-1] == pytest.approx(2.1)  # flat outside the points
