"""Plan evaluator: equals a brute-force sum over slots, splits replicas evenly, checks input."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.compute import expert_ffn_ms
from planner.cost.evaluate import MoeEvaluator, slot_counts
from planner.errors import InputError
from planner.specs.hardware import load_hardware

H100 = load_hardware("h100-sxm")
H, F = 2048, 768  # a measured shape (Qwen3-30B-A3B)


def evaluator(G=4, S=3, n=2, comm=True, T=5000):
    return MoeEvaluator(H100, hidden=H, ffn=F, dtype="bf16", num_gpus=G, slots_per_gpu=S, gpus_per_node=n,
                        max_tokens=T, include_comm=comm)


def test_matches_brute_force():
    rng = np.random.default_rng(1)
    G, S, n, L = 4, 3, 2, 5
    c = rng.integers(0, 3000, (L, G * S))
    ev = evaluator(G, S, n)
    lt = ev.layer_times(c)
    t_LG = expert_ffn_ms(H100, H, F, "bf16", c).reshape(L, G, S).sum(-1)
    np.testing.assert_allclose(lt.compute_ms_LG, t_LG, rtol=1e-12)
    np.testing.assert_allclose(lt.compute_ms_L, t_LG.max(-1), rtol=1e-12)
    # communication by hand: busiest GPU's tokens, a fraction (n−1)/G over NVLink, (G−n)/G over the NIC
    tok = c.reshape(L, G, S).sum(-1).max(-1)
    bpt = H * 2
    t_nvl = H100.nvlink.latency_us * 1e-3 + tok * bpt * (n - 1) / G / (H100.nvlink.bandwidth_gbps * 1e9) * 1e3
    t_nic = H100.nic.latency_us * 1e-3 + tok * bpt * (G - n) / G / (H100.nic.bandwidth_gbps * 1e9) * 1e3
    np.testing.assert_allclose(lt.comm_ms_L, 2 * np.maximum(t_nvl, t_nic), rtol=1e-12)
    assert ev(c) == pytest.approx(lt.total_ms)
    # a batch gives one total per candidate
    batch = np.stack([c, c[::-1]])
    np.testing.assert_allclose(ev(batch), [ev(c), ev(c[::-1])])


def test_one_gpu_has_no_communication_and_more_tokens_never_cost_less():
    ev = evaluator(G=1, S=6, n=8)
    c = np.array([[0, 5, 10, 100, 1000, 0]])
    assert ev.layer_times(c).comm_ms_L[0] == 0.0
    ev4 = evaluator()
    rng = np.random.default_rng(2)
    c = rng.integers(0, 2000, (3, 12))
    base = ev4(c)
    for _ in range(20):
        d = c.copy()
        d[rng.integers(0, 3), rng.integers(0, 12)] += rng.integers(1, 50)
        assert ev4(d) >= base


def test_slot_counts_split_replicas_evenly():
    counts_LE = np.array([[7, 2, 0], [1, 1, 9]])
    p2l = np.array([[0, 1, 0, 2, 0, 1], [2, 0, 2, 1, 2, 2]])
    got = slot_counts(counts_LE, p2l)
    # layer 0: expert 0 has 3 replicas (7 = 3 + 2 + 2), expert 1 two (1 + 1), expert 2 one
    assert got[0].tolist() == [3, 1, 2, 0, 2, 1]
    # layer 1: expert 2 has 4 replicas (9 = 3 + 2 + 2 + 2)
    assert got[1].tolist() == [3, 1, 2, 1, 2, 2]
    np.testing.assert_array_equal(
        np.array([np.bincount(p2l[l], weights=got[l], minlength=3) for l in range(2)]), counts_LE
    )
    with pytest.raises(InputError, match="has no slot for expert 1"):
        slot_counts(np.array([[1, 1]]), np.array([[0, 0]]))


def test_bad_counts():
    ev = evaluator()
    with pytest.raises(InputError, match="P = 4 GPUs × 3 slots"):
        ev(np.zeros((2, 10), dtype=int))
    with pytest.raises(InputError, match="integers"):
        ev(np.zeros((2, 12)))
    with pytest.raises(InputError, match=r"max_tokens=5000"):
        ev(np.full((2, 12), 6000))


def test_grouped_kernel_pays_one_launch_per_gpu():
    from planner.cost.compute import device_fit, grouped_experts_ms

    rng = np.random.default_rng(3)
    G, S, L = 4, 3, 2
    c = rng.integers(0, 3000, (L, G * S))
    c[0, :S] = 0  # GPU 0 idle in layer 0
    ev = MoeEvaluator(H100, hidden=H, ffn=F, dtype="bf16", num_gpus=G, slots_per_gpu=S, gpus_per_node=2,
                      max_tokens=5000, kernel="grouped")
    lt = ev.layer_times(c)
    for l in range(L):
        want = grouped_experts_ms(H100, H, F, "bf16", c[l].reshape(G, S), kernel="grouped")
        np.testing.assert_allclose(lt.compute_ms_LG[l], want, rtol=1e-12)
    assert lt.compute_ms_LG[0, 0] == 0.0
    assert ev(c) == pytest.approx(lt.total_ms)
    # one launch instead of one per expert: below the loop of single-expert FFNs at small counts
    small = np.full((1, G * S), 16)
    assert ev(small) < evaluator()(small)
    c_fixed = device_fit(H100).fixed_ms
    one = grouped_experts_ms(H100, H, F, "bf16", np.array([[16, 0, 0]]), kernel="grouped")[0]
    two = grouped_experts_ms(H100, H, F, "bf16", np.array([[16, 16, 0]]), kernel="grouped")[0]
    assert two - one == pytest.approx(one - c_fixed)
    with pytest.raises(InputError, match="kernel must be one of"):
        MoeEvaluator(H100, hidden=H, ffn=F, dtype="bf16", num_gpus=1, slots_per_gpu=1, gpus_per_node=1,
                     max_tokens=10, kernel="fused")
