"""``static`` dispatch: SGLang's static table, one replica pinned per (EP rank, expert)."""

import numpy as np
import pytest

import planner
from planner.simulator import choose_slots, static_table


def test_own_gpu_then_first_on_node_replica_when_it_narrows_else_a_fair_deal():
    # 2 nodes × 2 GPUs × 2 slots: e0 on slot 0 (GPU0, node 0) and slot 4 (GPU2, node 1); e1 only on slot 2
    p2l = np.array([0, 3, 1, 4, 0, 5, 2, 6])
    pin = static_table(p2l, 2, 7, 2)
    assert pin[:, 0].tolist() == [0, 0, 4, 4]  # own GPU, node 0's replica, own GPU, node 1's replica
    assert pin[:, 1].tolist() == [2, 2, 2, 2]  # the only replica
    # e0 on GPU0 and GPU1 (both node 0): node 1 holds none, so its ranks are dealt one replica each
    p2l2 = np.array([0, 3, 0, 4, 1, 5, 2, 6])
    assert static_table(p2l2, 2, 7, 2)[:, 0].tolist() == [0, 2, 0, 2]
    # three replicas of e0 on node 0, four ranks on node 1: each replica takes one or two of them
    p2l3 = np.array([0, 0, 0, 1, 2, 3, 4, 5])  # e0 on slots 0, 1 (GPU0) and 2 (GPU1)
    pin3 = static_table(p2l3, 2, 6, 2)
    assert pin3[0, 0] == 0 and pin3[1, 0] == 2  # own GPU (first slot there), own GPU
    counts = np.bincount(pin3[2:, 0], minlength=3)
    assert sorted(counts.tolist()) == [0, 1, 1]  # node 1's two ranks on two different replicas


def test_every_token_of_a_rank_goes_to_the_one_pinned_replica():
    # node 1 holds no replica of e0: nearest spreads GPU3's tokens over both, static pins one
    p2l = np.array([0, 3, 0, 4, 1, 5, 2, 6])
    ids = np.zeros((6, 1), dtype=np.int64)
    src = np.full(6, 3)
    near = choose_slots(ids, src, p2l, 2, 7, "nearest", 2)[:, 0]
    static = choose_slots(ids, src, p2l, 2, 7, "static", 2)[:, 0]
    assert sorted(set(near.tolist())) == [0, 2]
    assert len(set(static.tolist())) == 1


def test_a_rank_with_a_local_copy_uses_it_and_shares_are_fair_on_a_real_plan():
    p = planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=16, nodes=2, ep=16)
    phy = np.asarray(p.placement.physical_to_logical)
    S, G, E = p.placement.slots_per_gpu, p.parallel.ep, p.model.num_experts
    for row in phy[:4]:
        pin = static_table(row, S, E, 8)
        assert (row[pin] == np.arange(E)[None, :]).all()  # every pin holds its expert
        for g in range(G):
            local = np.nonzero(pin[g] // S == g)[0]
            mine = set(row[g * S:(g + 1) * S].tolist())
            assert set(local.tolist()) == mine  # exactly the experts rank g holds stay on g


def test_plans_accept_static_dispatch_and_are_deterministic():
    kw = dict(baseline="eplb", redundant_experts=16, nodes=2, ep=16, dispatch="static")
    a = planner.plan("deepseek-v2-lite", **kw)
    b = planner.plan("deepseek-v2-lite", **kw)
    assert a.dispatch == "static"
    assert a.placement == b.placement
    assert a.predicted.moe_time_per_step_ms == b.predicted.moe_time_per_step_ms
    near = planner.plan("deepseek-v2-lite", **{**kw, "dispatch": "nearest"})
    assert near.predicted.moe_time_per_step_ms != pytest.approx(a.predicted.moe_time_per_step_ms, rel=1e-9)
