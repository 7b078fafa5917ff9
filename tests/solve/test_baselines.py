"""Baselines on small cases worked out by hand (see comments)."""

import numpy as np
import pytest

from planner.errors import InputError
from planner.solve.baselines import (
    balanced_packing,
    contiguous,
    eplb,
    logical_maps,
    replicate,
    round_robin,
)

# loads of 8 experts; sorted: e0 90, e4 50, e5 50, e1 10, e2 10, e3 10, e6 5, e7 5
W = np.array([[90, 10, 10, 10, 50, 50, 5, 5]], dtype=float)


def test_contiguous_and_round_robin():
    assert contiguous(2, 8, 4).tolist() == [[0, 1, 2, 3, 4, 5, 6, 7]] * 2
    # round-robin: rank g holds g and g+4 -> slots [0,4 | 1,5 | 2,6 | 3,7]
    assert round_robin(1, 8, 4).tolist() == [[0, 4, 1, 5, 2, 6, 3, 7]]


def test_ep_must_divide_experts():
    with pytest.raises(InputError, match=r"ep \(3\) must divide the physical expert slots \(8\)"):
        contiguous(1, 8, 3)
    with pytest.raises(InputError, match="ep"):
        round_robin(1, 8, 3)


def test_balanced_packing_by_hand():
    # heaviest first onto the lightest pack with room, 2 items per pack:
    # 90->p0, 50->p1, 50->p2, 10(e1)->p3, 10(e2)->p3 (full), 10(e3)->p1 (tie 50/50: lower index),
    # 5(e6)->p2, 5(e7)->p0
    pack, rank = balanced_packing(W, 4)
    assert pack.tolist() == [[0, 3, 3, 1, 1, 2, 2, 0]]
    assert rank.tolist() == [[0, 0, 1, 1, 0, 0, 1, 1]]


def test_eplb_global_without_replicas():
    # GPU0 {e0, e7}, GPU1 {e4, e3}, GPU2 {e5, e6}, GPU3 {e1, e2} (from the packing above)
    assert eplb(W, 8, 1, 1, 4).tolist() == [[0, 7, 4, 3, 5, 6, 1, 2]]


def test_eplb_global_with_replicas():
    # 4 replicas added one at a time to the largest load per replica:
    # e0 90 -> 2 copies (45), e4 50 -> 2 (25), e5 50 -> 2 (25), e0 45 -> 3 copies (30)
    p2l = eplb(W, 12, 1, 1, 4)
    _, logcnt = logical_maps(p2l, 8)
    assert logcnt.tolist() == [[3, 1, 1, 1, 2, 2, 1, 1]]
    loads = W[0] / logcnt[0]
    per_gpu = loads[p2l[0]].reshape(4, 3).sum(1)
    # replicas by decreasing load (ties by slot): e0 30,30,30; e4 25; e5 25; e4' 25; e5' 25;
    # e1,e2,e3 10; e6,e7 5. Greedy: G0 30, G1 30, G2 30, G3 25, e5->G3 50, e4'->G0 55,
    # e5'->G1 55, e1->G2 40, e2->G2 50 (full), e3->G3 60 (full), e6->G0 60, e7->G1 60.
    assert per_gpu.tolist() == [60.0, 60.0, 50.0, 60.0]


def test_eplb_hierarchical_by_hand():
    # 4 groups of 2 experts, 2 nodes, 4 GPUs, 12 slots.
    # group loads: g0 {0,1} 100, g1 {2,3} 20, g2 {4,5} 100, g3 {6,7} 10
    # nodes: g0->n0, g2->n1, g1->n0 (tie, lower index), g3->n1
    # node 0 (experts 0-3, 6 slots): e0 gets 2 replicas (90 -> 45 -> 30)
    #   GPUs: 30->G0, 30->G1, 30->G0 (60), e1 10->G1, e2 10->G1 (full), e3 10->G0 => [0,0,3 | 0,1,2]
    # node 1 (experts 4-7): e4 and e5 get one replica each (25 each)
    #   order 4,5,4',5',6,7: G2 4, G3 5, G2 4', G3 5', G2 6, G3 7 => [4,4,6 | 5,5,7]
    assert eplb(W, 12, 4, 2, 4).tolist() == [[0, 0, 3, 0, 1, 2, 4, 4, 6, 5, 5, 7]]


def test_eplb_falls_back_to_global_when_groups_do_not_divide_nodes():
    assert eplb(W, 8, 3, 2, 4).tolist() == eplb(W, 8, 1, 1, 4).tolist()


def test_replicate_counts_and_order():
    p2l, cnt = replicate(np.array([[6.0, 3.0, 1.0]]), 5)
    # 6 -> 2 copies (3), then tie 3 vs 3: lower index e0 -> 3 copies
    assert p2l.tolist() == [[0, 1, 2, 0, 0]]
    assert cnt.tolist() == [[3, 1, 1]]


def test_logical_maps_layout():
    p2l = np.array([[0, 1, 0, 2]])
    log2phy, logcnt = logical_maps(p2l, 3)
    assert logcnt.tolist() == [[2, 1, 1]]
    assert log2phy.tolist() == [[[0, 2], [1, -1], [3, -1]]]


def test_eplb_every_expert_placed_on_random_loads():
    rng = np.random.default_rng(0)
    w = rng.zipf(1.5, size=(5, 64)).astype(float)
    for groups, nodes, gpus, phys in [(8, 2, 16, 80), (1, 1, 8, 72), (8, 4, 32, 96)]:
        p2l = eplb(w, phys, groups, nodes, gpus)
        assert p2l.shape == (5, phys)
        for row in p2l:
            assert set(row.tolist()) == set(range(64))
        if nodes > 1 and groups % nodes == 0:
            # hierarchical: each node's slots hold whole groups of 8 consecutive experts
            per_node = p2l.reshape(5, nodes, phys // nodes)
            for l in range(5):
                for n in range(nodes):
                    grp = set((per_node[l, n] // 8).tolist())
                    assert len(grp) == groups // nodes


def test_eplb_balances_better_than_contiguous():
    rng = np.random.default_rng(1)
    w = rng.zipf(1.3, size=(10, 64)).astype(float)
    cont = np.take_along_axis(w, contiguous(10, 64, 8), axis=1).reshape(10, 8, 8).sum(-1).max(1)
    p2l = eplb(w, 64, 1, 1, 8)
    mine = np.take_along_axis(w, p2l, axis=1).reshape(10, 8, 8).sum(-1).max(1)
    assert (mine <= cont).all() and mine.sum() < cont.sum()
