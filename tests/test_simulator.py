"""Simulator on hand-worked cases. Expert time is replaced by a linear stand-in (0.01 ms per
token) so compute figures can be checked by hand; communication uses the real alpha-beta model."""

from types import SimpleNamespace

import numpy as np
import pytest

import planner.simulator as sim_mod
from planner.cost.comm import dispatch_traffic
from planner.simulator import choose_slots, simulate_placement

HW = SimpleNamespace(
    nvlink=SimpleNamespace(bandwidth_gbps=100.0, latency_us=10.0),
    nic=SimpleNamespace(bandwidth_gbps=10.0, latency_us=20.0),
    comm_overlap=0.0,
)


@pytest.fixture(autouse=True)
def linear_expert_time(monkeypatch):
    monkeypatch.setattr(sim_mod, "expert_ffn_ms", lambda hw, h, f, dt, tok: 0.01 * np.asarray(tok, float))


def run(p2l, ids, src, slots, gpus_per_node, dispatch="even", hidden=500, relay=None):
    ids = np.asarray(ids)[None]  # one layer
    steps = np.zeros(ids.shape[1], dtype=int)
    return simulate_placement(
        np.asarray([p2l]), slots, ids, steps, np.asarray(src), hw=HW, hidden=hidden, ffn=8,
        dtype="bf16", num_experts=max(p2l) + 1, gpus_per_node=gpus_per_node, dispatch=dispatch, relay=relay,
    )


def test_one_node_two_gpus_by_hand():
    # GPU0 holds e0,e1; GPU1 holds e2,e3. Tokens t0,t1 start on GPU0, t2,t3 on GPU1.
    # t0 {e0,e1}: local. t1 {e0,e2}: one copy 0->1. t2 {e2,e3}: local. t3 {e1,e3}: one copy 1->0.
    r = run([0, 1, 2, 3], [[0, 1], [0, 2], [2, 3], [1, 3]], [0, 0, 1, 1], slots=2, gpus_per_node=2)
    assert r.gpu_tokens_SLG[0, 0].tolist() == [4, 4]
    assert r.imbalance_SL[0, 0] == 1.0
    assert r.compute_ms_SL[0, 0] == pytest.approx(0.04)
    # one token (500 × 2 bytes = 1000 B) each way, dispatch + combine
    assert r.intra_bytes_SL[0, 0] == 2 * 2 * 1000
    assert r.inter_bytes_SL[0, 0] == 0
    t_link = 10e-3 + 1000 / 100e9 * 1e3
    assert r.comm_ms_SL[0, 0] == pytest.approx(2 * t_link)


def test_inter_node_copy_counted_once_per_node():
    # 4 GPUs, 2 per node, one slot each. One token on GPU0 picks e2 (GPU2) and e3 (GPU3), both on node 1:
    # one inter-node copy (DeepEP sends once per destination node).
    # same-rank (default, DeepEP): GPU2 (local rank 0, like the source) takes it and forwards it to
    # GPU3 over NVLink; dispatch + combine -> 2 × 1000 B on each link, the NIC dominates
    r = run([0, 1, 2, 3], [[2, 3]], [0], slots=1, gpus_per_node=2)
    assert r.inter_bytes_SL[0, 0] == 2 * 1000
    assert r.intra_bytes_SL[0, 0] == 2 * 1000
    assert r.comm_ms_SL[0, 0] == pytest.approx(2 * (20e-3 + 1000 / 10e9 * 1e3))
    # first-destination: GPU2 takes it and forwarding is not counted
    r = run([0, 1, 2, 3], [[2, 3]], [0], slots=1, gpus_per_node=2, relay="first-destination")
    assert (r.intra_bytes_SL[0, 0], r.inter_bytes_SL[0, 0]) == (0, 2000)
    # picking e1 (GPU1, same node) and e2 (GPU2 = the relay): one NVLink copy and one NIC copy
    r = run([0, 1, 2, 3], [[1, 2]], [0], slots=1, gpus_per_node=2)
    assert (r.intra_bytes_SL[0, 0], r.inter_bytes_SL[0, 0]) == (2000, 2000)


def test_even_dispatch_spreads_over_replicas():
    # e0 has replicas on GPU0 (slot 0) and GPU1 (slot 2); 4 tokens top-1 all pick e0.
    # pair (t, j=0) goes to replica t mod 2: tokens 0,2 -> slot 0, tokens 1,3 -> slot 2.
    slot = choose_slots(np.array([[0], [0], [0], [0]]), np.zeros(4, int), np.array([0, 1, 0, 2]), 2, 3, "even")
    assert slot[:, 0].tolist() == [0, 2, 0, 2]
    r = run([0, 1, 0, 2], [[0], [0], [0], [0]], [0, 0, 1, 1], slots=2, gpus_per_node=2)
    assert r.gpu_tokens_SLG[0, 0].tolist() == [2, 2]


def test_local_first_uses_own_replica():
    # same placement, tokens on GPU1 use the replica on GPU1, tokens on GPU0 the one on GPU0
    slot = choose_slots(np.array([[0], [0], [0], [0]]), np.array([0, 0, 1, 1]), np.array([0, 1, 0, 2]), 2, 3, "local-first")
    assert slot[:, 0].tolist() == [0, 0, 2, 2]
    r = run([0, 1, 0, 2], [[0], [0], [0], [0]], [0, 0, 1, 1], slots=2, gpus_per_node=2, dispatch="local-first")
    assert r.intra_bytes_SL[0, 0] == 0 and r.comm_ms_SL[0, 0] == 0


def test_imbalance_and_straggler():
    # all 4 tokens pick e0 on GPU0: GPU0 4 tokens, GPU1 0 -> max/mean = 2, compute = 0.04 ms
    r = run([0, 1], [[0], [0], [0], [0]], [0, 0, 1, 1], slots=1, gpus_per_node=2)
    assert r.imbalance_SL[0, 0] == 2.0
    assert r.compute_ms_SL[0, 0] == pytest.approx(0.04)


def test_steps_are_separate():
    ids = np.array([[[0], [1], [0], [0]]])
    r = simulate_placement(
        np.array([[0, 1]]), 1, ids, np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), hw=HW, hidden=500,
        ffn=8, dtype="bf16", num_experts=2, gpus_per_node=2,
    )
    assert r.gpu_tokens_SLG[:, 0].tolist() == [[1, 1], [2, 0]]
    assert r.tokens_S.tolist() == [2, 2]
    assert r.step_ms_S.shape == (2,)


def test_grouped_kernel_pays_the_launch_once_per_gpu(monkeypatch):
    # grouped: each expert's share is D(M) - c (stand-in 0.01·M), plus c = 0.5 ms once per GPU
    # that has a token. GPU0 holds e0,e1 (4 tokens over both), GPU1 holds e2,e3 (e3 idle).
    monkeypatch.setattr(sim_mod, "grouped_model_ms", lambda hw, h, f, dt, tok: 0.01 * np.asarray(tok, float))
    monkeypatch.setattr(sim_mod, "device_fit", lambda hw, dt: SimpleNamespace(fixed_ms=0.5))
    ids = np.asarray([[0], [1], [0], [1], [2]])[None]
    src = np.zeros(5, dtype=int)

    def go(kernel):
        return simulate_placement(
            np.asarray([[0, 1, 2, 3]]), 2, ids, np.zeros(5, int), src, hw=HW, hidden=500, ffn=8,
            dtype="bf16", num_experts=4, gpus_per_node=2, kernel=kernel,
        )

    assert go("grouped").compute_ms_SL[0, 0] == pytest.approx(0.5 + 0.04)  # GPU0: one launch, 4 tokens
    assert go("loop").compute_ms_SL[0, 0] == pytest.approx(0.04)  # the linear stand-in has no fixed cost
    with pytest.raises(Exception, match="kernel must be one of loop, grouped"):
        go("fused")


def test_nearest_uses_own_gpu_then_own_node_then_any_replica():
    # 2 nodes × 2 GPUs × 2 slots: e0 on GPU0 (slot 0) and GPU2 (slot 4, node 1), e1 only on GPU1.
    p2l = np.array([0, 3, 1, 4, 0, 5, 2, 6])
    ids = np.array([[0], [0], [0], [0], [1]])
    src = np.array([0, 1, 2, 3, 3])
    slot = choose_slots(ids, src, p2l, 2, 7, "nearest", 2)
    # own GPU (0), own node (GPU1 -> slot 0), own GPU (GPU2 -> 4), own node (GPU3 -> 4), the only e1
    assert slot[:, 0].tolist() == [0, 0, 4, 4, 2]
    # without nodes, the replica on the same node is not preferred: GPU1's token spreads evenly
    assert choose_slots(ids, src, p2l, 2, 7, "local-first")[:, 0].tolist() == [0, 4, 4, 4, 2]
    # two replicas on the token's node, none on its GPU: spread over those two
    p2l2 = np.array([0, 3, 0, 4, 1, 5, 2, 6])
    s2 = choose_slots(np.zeros((4, 1), int), np.array([1, 1, 1, 1]), p2l2, 2, 7, "nearest", 2)
    assert s2[:, 0].tolist() == [2, 2, 2, 2]  # GPU1 holds slot 2 itself
    s3 = choose_slots(np.zeros((4, 1), int), np.array([3, 3, 3, 3]), p2l2, 2, 7, "nearest", 2)
    assert sorted(set(s3[:, 0].tolist())) == [0, 2]  # node 1 holds none: even over both


def test_nearest_replica_on_the_token_node_saves_its_inter_node_copy():
    # e0 homed on node 0 (GPU0) with a replica on node 1 (GPU2): a token from GPU3 picking e0
    # stays on node 1 under nearest (NVLink only), crosses the network under even.
    p2l = np.array([0, 1, 2, 3, 0, 4, 5, 6])
    ids = np.array([[0], [0]])
    near = run(p2l.tolist(), ids.tolist(), [3, 3], slots=2, gpus_per_node=2, dispatch="nearest")
    even = run(p2l.tolist(), ids.tolist(), [3, 3], slots=2, gpus_per_node=2, dispatch="even")
    assert near.inter_bytes_SL[0, 0] == 0 and near.intra_bytes_SL[0, 0] > 0
    assert even.inter_bytes_SL[0, 0] > 0


@pytest.mark.parametrize("gpus_per_node", [1, 2, 4])
def test_traffic_is_the_comm_kernel(gpus_per_node):
    # the simulator's bytes and time are those of planner.cost.comm.dispatch_traffic (DeepEP) for
    # the slots it chose
    rng = np.random.default_rng(3)
    p2l = list(rng.permutation(8)) + [0, 5, 7, 2, 1, 3, 4, 6]  # 16 slots, every expert twice
    ids = np.stack([rng.choice(8, 3, replace=False) for _ in range(40)])
    src = rng.integers(0, 8, 40)
    r = run(p2l, ids, src, slots=2, gpus_per_node=gpus_per_node)
    slot = choose_slots(ids, src, np.asarray(p2l), 2, 8, "even", gpus_per_node)
    t = dispatch_traffic(slot, src, slots_per_gpu=2, num_gpus=8, gpus_per_node=gpus_per_node,
                         bytes_per_token=1000.0)
    assert r.intra_bytes_SL[0, 0] == 2 * t.nvlink_GG.sum()
    assert r.inter_bytes_SL[0, 0] == 2 * t.rdma_GG.sum()
    assert r.comm_ms_SL[0, 0] == t.time_ms(HW)
