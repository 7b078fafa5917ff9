"""Per-expert precision ILP (planner.solve.precision): the optimum by hand on a 2-layer case, the
replay against the cache simulator, the input rules."""

import numpy as np
import pytest

from planner.cachesim import CacheConfig, OffloadTiming
from planner.cachesim_fast import replay_fast
from planner.errors import InputError
from planner.solve.precision import (
    PrecisionSpec,
    expert_stats,
    parse_precisions,
    replay_precision,
    solve_ilp,
    solve_precision,
)

PARAMS = 1e9  # one expert: 2 GB in bf16, 0.515625 GB in int4


def timing(k: float, c: float, nbytes: float, cpu: float | None = None, b: int = 1) -> OffloadTiming:
    ffn = np.r_[0.0, np.full(b, k)]
    cpu_m = None if cpu is None else np.r_[0.0, np.full(b, cpu)]
    return OffloadTiming(copy_ms=c, ffn_ms_M=ffn, pre_ms=0.0, other_ms=0.0, overlap=1.0, expert_bytes=nbytes, cpu_ms_M=cpu_m)


def two_layer_counts() -> np.ndarray:
    """4 decode steps, 2 layers, 2 experts, top-1: layer 0 needs expert 0 in 3 steps, expert 1 in 1;
    layer 1 each expert in 2."""
    c = np.zeros((4, 2, 2), np.int64)
    c[[0, 1, 2], 0, 0] = 1
    c[3, 0, 1] = 1
    c[[0, 1], 1, 0] = 1
    c[[2, 3], 1, 1] = 1
    return c


def hand_case(max_cost):
    spec = PrecisionSpec({"bf16": 0.0, "int4": 1.0}, "bf16", max_cost)
    tims = [timing(1.0, 10.0, 2e9), timing(0.5, 2.6, 0.515625e9)]
    stats = expert_stats(two_layer_counts(), tims)
    return solve_ilp(stats, tims, spec, 2.2e9, PARAMS)


def test_stats_by_hand():
    st = expert_stats(two_layer_counts(), [timing(1.0, 10.0, 2e9)])
    assert np.allclose(st.f, [[0.75, 0.25], [0.5, 0.5]])
    assert np.allclose(st.w, [[3 / 8, 1 / 8], [2 / 8, 2 / 8]])
    assert np.allclose(st.T[0], st.f)  # K = 1 ms at one token


def test_ilp_optimum_by_hand_without_cap():
    # every expert int4 and resident: 4 × 0.516 GB = 2.06 GB <= 2.2; time Σ f·0.5 = 1.0 ms, cost 1
    a = hand_case(None)
    assert a.status == "optimal"
    assert a.resident_LE.all() and (a.precision_LE == 1).all()
    assert a.objective_ms == pytest.approx(1.0)
    assert a.accuracy_cost == pytest.approx(1.0)
    assert a.resident_bytes == pytest.approx(4 * 0.515625e9)


def test_ilp_optimum_by_hand_with_cap():
    # cap 0.25: int4 on experts of token share <= 0.25 in all. Enumerated by hand (see the module's
    # options): layer-0 expert 0 resident in bf16 (0.75), one layer-1 expert offloaded in int4
    # (0.5·(0.5 + 2.6) = 1.55), the other two offloaded in bf16 (0.25·11 + 0.5·11 = 8.25): 10.55 ms.
    # Next best: no int4 at all, 14.5 ms; layer-0 expert 1 in int4 instead, 12.525 ms.
    a = hand_case(0.25)
    assert a.objective_ms == pytest.approx(10.55)
    assert a.accuracy_cost == pytest.approx(0.25)
    assert a.resident_LE[0, 0] and a.precision_LE[0, 0] == 0 and a.resident_LE.sum() == 1
    assert sorted(a.precision_LE[1].tolist()) == [0, 1] and a.precision_LE[0, 1] == 0


def test_ilp_zero_cap_keeps_native():
    a = hand_case(0.0)
    assert (a.precision_LE == 0).all()
    assert a.objective_ms == pytest.approx(14.5)


@pytest.mark.parametrize("cpu", ["off", "fastest"])
@pytest.mark.parametrize("batch", [1, 3])
def test_replay_uniform_equals_cache_simulator(cpu, batch):
    rng = np.random.default_rng(batch)
    S, L, E = 40, 3, 8
    counts = np.zeros((S, L, E), np.int64)
    for s in range(S):
        for layer in range(L):
            for _ in range(batch):
                counts[s, layer, rng.choice(E, 2, replace=False)] += 1
    t = OffloadTiming(copy_ms=0.7, ffn_ms_M=np.array([0.0, 0.1, 0.13, 0.15, 0.2, 0.22, 0.25]), pre_ms=0.3, other_ms=1.0,
                      overlap=0.89, expert_bytes=1e7, cpu_ms_M=np.array([0.0, 0.5, 0.6, 0.8, 1.0, 1.1, 1.2]))
    res = rng.random((L, E)) < 0.4
    ref = replay_fast(counts, CacheConfig(res, np.zeros(L, np.int64), "lru", None, cpu), t, record_from=5, batch=batch)
    got = replay_precision(counts, res, np.zeros((L, E), np.int64), [t], cpu, record_from=5, batch=batch)
    assert np.allclose(got.layer_ms_SL, ref.layer_ms_SL)
    assert np.array_equal(got.demand_SL, ref.demand_SL) and np.array_equal(got.cpu_SL, ref.cpu_SL)
    assert got.tokens_per_s == pytest.approx(ref.tokens_per_s)


def test_replay_mixed_by_hand():
    # one layer, experts 0 (bf16, copy 10, K 1) and 1 (int4, copy 2, K 0.5) both missed at one step:
    # copies end at 10 and 12; t = max(1.5, 10 + 1.5, 12 + 0.5) = 12.5
    counts = np.array([[[1, 1]]])
    tims = [timing(1.0, 10.0, 2e9), timing(0.5, 2.0, 5e8)]
    got = replay_precision(counts, np.zeros((1, 2), bool), np.array([[0, 1]]), tims)
    assert got.layer_ms_SL[0, 0] == pytest.approx(12.5)
    assert got.summary()["bytes_per_step"] == pytest.approx(2.5e9)


def test_solve_precision_keeps_the_faster_cpu_mode():
    tims = [timing(1.0, 10.0, 2e9, cpu=3.0), timing(0.5, 2.6, 0.515625e9, cpu=1.0)]
    spec = PrecisionSpec({"bf16": 0.0, "int4": 1.0}, "bf16", 0.25)
    sol = solve_precision(two_layer_counts(), tims, spec, 2.2e9, PARAMS)
    assert set(sol.candidates) == {"precision-ilp(cpu=off)", "precision-ilp(cpu=fastest)"}
    assert sol.candidates[sol.chosen] == min(sol.candidates.values())
    assert sol.candidates["precision-ilp(cpu=fastest)"] < sol.candidates["precision-ilp(cpu=off)"]


def test_parse_rules():
    assert parse_precisions(None, "bf16") is None
    s = parse_precisions("fp8=0.1, int4=2.88", "bf16", 1.0)
    assert s.costs == {"bf16": 0.0, "fp8": 0.1, "int4": 2.88} and s.max_cost == 1.0
    with pytest.raises(InputError, match="int4 needs its accuracy cost"):
        parse_precisions("int4", "bf16")
    with pytest.raises(InputError, match="wider than"):
        parse_precisions("bf16", "fp8")
    with pytest.raises(InputError, match="not one of"):
        parse_precisions("int3=1", "bf16")
    with pytest.raises(InputError, match="max_accuracy_cost needs"):
        parse_precisions(None, "bf16", 1.0)
    with pytest.raises(InputError, match=">= 0"):
        parse_precisions("int4=-1", "bf16")


def test_stats_histogram_path_equals_direct_means():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 4, size=(30, 2, 5))
    t = OffloadTiming(copy_ms=1.0, ffn_ms_M=np.array([0.0, 0.1, 0.15, 0.3]), pre_ms=0.0, other_ms=0.0, overlap=1.0,
                      expert_bytes=1.0, cpu_ms_M=np.array([0.0, 1.0, 1.5, 2.5]))
    st = expert_stats(counts, [t])
    assert np.allclose(st.T[0], t.ffn_ms_M[counts].mean(axis=0))
    assert np.allclose(st.U[0], t.cpu_ms_M[counts].mean(axis=0))
    assert np.allclose(st.f, (counts > 0).mean(axis=0)) and np.isclose(st.w.sum(), 1.0)
