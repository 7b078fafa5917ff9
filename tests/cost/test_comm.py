"""Communication: traffic matrices (DeepEP de-duplication), alpha-beta times, collectives."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.cost.comm import (
    Link,
    collective_ms,
    dispatch_traffic,
    exposed_alltoall_ms,
    exposed_ms,
    group_link,
    p2p_ms,
    uniform_remote_fractions,
)
from planner.errors import InputError
from planner.specs.hardware import load_hardware

H100 = load_hardware("h100-sxm")


def test_uniform_routing_moves_n_minus_1_over_n():
    """k = 1, one expert per GPU, each GPU's tokens spread evenly over all experts: every GPU
    sends and receives T·(G−1)/G tokens (the all-to-all volume)."""
    G, T = 4, 8  # T tokens start on each GPU
    src = np.repeat(np.arange(G), T)
    slot = (np.arange(G * T) % G)[:, None]  # token i picks expert i mod G (slot = expert)
    for disp in ("pairs", "gpu", "deepep"):
        tr = dispatch_traffic(slot, src, slots_per_gpu=1, num_gpus=G, gpus_per_node=G, bytes_per_token=10.0, dispatcher=disp)
        np.testing.assert_allclose(tr.nvlink_GG.sum(1), T * (G - 1) / G * 10)
        np.testing.assert_allclose(tr.nvlink_GG.sum(0), T * (G - 1) / G * 10)
        assert tr.rdma_GG.sum() == 0
        assert np.all(np.diag(tr.nvlink_GG) == 0)
    fr = uniform_remote_fractions(num_experts=16, top_k=3, num_gpus=8, gpus_per_node=4)
    assert fr["pairs_intra"] + fr["pairs_inter"] == pytest.approx(3 * 7 / 8)
    assert fr["pairs_inter"] / (fr["pairs_intra"] + fr["pairs_inter"]) == pytest.approx((8 - 4) / 7)


def test_one_gpu_moves_nothing():
    slot = np.array([[0, 1], [1, 2]])
    tr = dispatch_traffic(slot, [0, 0], slots_per_gpu=4, num_gpus=1, gpus_per_node=8, bytes_per_token=7.0)
    assert tr.total_bytes == 0 and tr.time_ms(H100) == 0.0
    assert collective_ms("all_reduce", 1e9, 1, group_link(H100, 1, 8)) == 0.0
    fr = uniform_remote_fractions(8, 2, 1, 8)
    assert all(v == 0 for v in fr.values())


def test_deepep_counts_once_per_node_and_forwards_over_nvlink():
    # 2 nodes × 2 GPUs, 1 slot per GPU. Token on GPU 0 picks experts on GPUs 2 and 3 (node 1).
    slot = np.array([[2, 3]])
    kw = dict(slots_per_gpu=1, num_gpus=4, gpus_per_node=2, bytes_per_token=100.0)
    dee = dispatch_traffic(slot, [0], dispatcher="deepep", **kw)
    # one RDMA copy to GPU 2 (local rank 0 of node 1), forwarded 2 -> 3 over NVLink
    assert dee.rdma_GG[0, 2] == 100 and dee.rdma_GG.sum() == 100
    assert dee.nvlink_GG[2, 3] == 100 and dee.nvlink_GG.sum() == 100
    gpu = dispatch_traffic(slot, [0], dispatcher="gpu", **kw)
    assert gpu.rdma_GG[0, 2] == 100 and gpu.rdma_GG[0, 3] == 100 and gpu.nvlink_GG.sum() == 0
    # two choices on one GPU: pairs send twice, the others once
    slot2 = np.array([[1, 1]])
    kw2 = dict(slots_per_gpu=2, num_gpus=2, gpus_per_node=2, bytes_per_token=1.0)
    assert dispatch_traffic(slot2 // 1, [0], dispatcher="pairs", **kw2).total_bytes == 0  # slot 1 is on GPU 0
    slot3 = np.array([[2, 3]])  # both on GPU 1
    assert dispatch_traffic(slot3, [0], dispatcher="pairs", **kw2).total_bytes == 2
    assert dispatch_traffic(slot3, [0], dispatcher="gpu", **kw2).total_bytes == 1
    assert dispatch_traffic(slot3, [0], dispatcher="deepep", **kw2).total_bytes == 1


def test_uniform_fractions_match_sampled_routing():
    rng = np.random.default_rng(0)
    E, k, G, n, T = 32, 4, 8, 4, 4000
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k]  # k distinct experts, uniform
    src = rng.integers(0, G, T)
    fr = uniform_remote_fractions(E, k, G, n)
    for disp, intra_key, inter_key in (("pairs", "pairs_intra", "pairs_inter"), ("gpu", "gpu_intra", "gpu_inter")):
        tr = dispatch_traffic(ids, src, slots_per_gpu=E // G, num_gpus=G, gpus_per_node=n, bytes_per_token=1.0, dispatcher=disp)
        assert tr.nvlink_GG.sum() / T == pytest.approx(fr[intra_key], rel=0.05)
        assert tr.rdma_GG.sum() / T == pytest.approx(fr[inter_key], rel=0.05)
    tr = dispatch_traffic(ids, src, slots_per_gpu=E // G, num_gpus=G, gpus_per_node=n, bytes_per_token=1.0)
    assert tr.rdma_GG.sum() / T == pytest.approx(fr["node_inter"], rel=0.05)
    # closed form of P(a GPU gets at least one of k): 1 - C(E-e, k)/C(E, k)
    e = E // G
    hit = 1 - math.comb(E - e, k) / math.comb(E, k)
    assert fr["gpu_intra"] == pytest.approx((n - 1) * hit)


def test_alpha_beta_time_by_hand():
    send = np.array([1e9, 0.0])
    recv = np.array([0.0, 2e9])
    # 10 µs + 2e9 B / 100 GB/s = 0.01 + 20 ms
    assert Link(100.0, 10.0).phase_ms(send, recv) == pytest.approx(20.01)
    assert Link(100.0, 10.0).phase_ms(np.zeros(3), np.zeros(3)) == 0.0
    t = exposed_alltoall_ms(Link(100.0, 10.0), Link(10.0, 20.0), send, recv, np.zeros(2), np.zeros(2), 0.25)
    assert t == pytest.approx(2 * 20.01 * 0.75)


def test_collectives_bus_bandwidth_factors():
    link = Link(bandwidth_gbps=100.0, latency_us=10.0)
    n, b = 8, 1e9
    assert collective_ms("all_reduce", b, n, link) == pytest.approx(0.01 + b * 2 * 7 / 8 / 100e9 * 1e3)
    for kind in ("all_gather", "reduce_scatter", "all_to_all"):
        assert collective_ms(kind, b, n, link) == pytest.approx(0.01 + b * 7 / 8 / 100e9 * 1e3)
    assert p2p_ms(b, link) == pytest.approx(0.01 + 10.0)
    assert collective_ms("all_reduce", 0, n, link) == 0.0
    np.testing.assert_allclose(exposed_ms([2.0, 4.0], 0.5), [1.0, 2.0])
    with pytest.raises(InputError, match="collective must be one of"):
        collective_ms("broadcast", b, n, link)
    with pytest.raises(InputError, match="overlap must be in"):
        exposed_ms(1.0, 1.5)


def test_group_link_nvlink_inside_a_node():
    assert group_link(H100, 8, 8).bandwidth_gbps == H100.nvlink.bandwidth_gbps
    assert group_link(H100, 16, 8).bandwidth_gbps == H100.nic.bandwidth_gbps
    assert group_link(H100, 4, 8, stride=2).bandwidth_gbps == H100.nvlink.bandwidth_gbps
    assert group_link(H100, 4, 8, stride=4).bandwidth_gbps == H100.nic.bandwidth_gbps


def test_bad_traffic_input():
    with pytest.raises(InputError, match="dispatcher must be one of"):
        dispatch_traffic([[0]], [0], slots_per_gpu=1, num_gpus=1, gpus_per_node=1, bytes_per_token=1, dispatcher="x")
    with pytest.raises(InputError, match=r"slots must be in \[0, 2\)"):
        dispatch_traffic([[5]], [0], slots_per_gpu=1, num_gpus=2, gpus_per_node=2, bytes_per_token=1)
    with pytest.raises(InputError, match=r"slot_Tk must be \[T, k\]"):
        dispatch_traffic([0, 1], [0], slots_per_gpu=1, num_gpus=2, gpus_per_node=2, bytes_per_token=1)
