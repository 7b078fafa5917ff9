"""Routing imbalance of a serving step (planner/solve/serve_imbalance.py) by hand on tiny cases."""

import numpy as np
import pytest

from planner.errors import InputError
from planner.solve.serve_imbalance import derive, expert_imbalance, imbalance_at, measure
from planner.traces import Trace


def test_measure_two_gpus_by_hand():
    # 2 GPUs on one node, expert e on GPU e; one step of 4 tokens, k = 1: GPU 0 holds tokens 0-1,
    # GPU 1 tokens 2-3; tokens pick experts 0, 0, 0, 1
    ids = np.array([[[0], [0], [0], [1]]])
    r = measure(np.array([[0, 1]]), 1, ids, np.zeros(4, np.int64), np.array([0, 0, 1, 1]), num_experts=2,
                gpus_per_node=2, num_steps=1)
    # expert tokens: GPU 0 receives 3, GPU 1 receives 1: busiest over mean 3 / 2
    assert r.experts == pytest.approx(1.5)
    # copies: only token 2 leaves its GPU (1 -> 0): sends (0, 1), receives (1, 0); mean sent 0.5, busiest 1
    assert r.alltoall == pytest.approx(2.0)
    # the closed form the derivation uses: the same 3 / 2; token 0 twice more (5 of 6 on GPU 0): 5 / 3
    assert expert_imbalance(np.array([[0, 1]]), 1, ids, np.ones((1, 4)), 2) == pytest.approx(1.5)
    assert expert_imbalance(np.array([[0, 1]]), 1, ids, np.array([[3, 1, 1, 1]]), 2) == pytest.approx(5 / 3)
    # a replicated expert's tokens split over its replicas: expert 0 on both GPUs, 3 tokens each way 1.5
    assert expert_imbalance(np.array([[0, 1, 0, 1]]), 2, ids, np.ones((1, 4)), 2) == pytest.approx(1.0)
    # a step holding few of the trace's tokens (the path that bins only them), a null choice among
    # them: 10 tokens, k = 2, token 9 picks nothing at its second slot; the step takes token 0 three
    # times and token 9 once: expert 0 gets 3 (both replicas on GPU 0), expert 1 gets 3 + 1 = 4,
    # expert 2 none (GPU 1 holds experts 1 and 2): GPU 0 3, GPU 1 4, busiest over mean 4 / 3.5
    ids10 = np.array([[[0, 1]] * 9 + [[1, -1]]])
    mult = np.zeros((1, 10))
    mult[0, 0], mult[0, 9] = 3, 1
    assert expert_imbalance(np.array([[0, 0, 1, 2]]), 2, ids10, mult, 3) == pytest.approx(4 / 3.5)
    # balanced routing: both figures are 1
    even = measure(np.array([[0, 1]]), 1, np.array([[[0], [1], [0], [1]]]), np.zeros(4, np.int64),
                   np.array([0, 0, 1, 1]), num_experts=2, gpus_per_node=2, num_steps=1)
    assert (even.experts, even.alltoall) == (pytest.approx(1.0), pytest.approx(1.0))


def test_derive_by_hand_and_deterministic():
    # every token picks expert 0: EPLB puts one expert on each of 2 GPUs, all tokens land on one
    T = 64
    tr = Trace(np.zeros((1, T, 1), np.int64), 2, seq_id=np.arange(T) // 8, pos=np.arange(T) % 8)
    for mode in ("prefill", "decode"):
        r = derive(tr, num_experts=2, n_group=None, ep=2, redundant=0, tokens_per_gpu=4, mode=mode, gpus_per_node=2)
        assert r.experts == pytest.approx(2.0)
    # two spare slots: EPLB gives expert 0 three replicas (expert 1 none spare), two of them on one GPU;
    # the even rule deals a step's 6 tokens 2 per replica: that GPU receives 4 of 6, over the mean 3
    r = derive(tr, num_experts=2, n_group=None, ep=2, redundant=2, tokens_per_gpu=3, mode="decode", gpus_per_node=2)
    assert r.experts == pytest.approx(4 / 3)
    rng = np.random.default_rng(0)
    mixed = Trace(rng.integers(0, 8, size=(2, 256, 1)), 8, seq_id=np.arange(256) // 16, pos=np.arange(256) % 16)
    a, b = (derive(mixed, num_experts=8, n_group=None, ep=4, redundant=0, tokens_per_gpu=8, mode="prefill")
            for _ in range(2))
    assert a == b and a.experts >= 1.0 and a.alltoall >= 1.0
    with pytest.raises(InputError, match="ep"):
        derive(mixed, num_experts=8, n_group=None, ep=3, redundant=0, tokens_per_gpu=8, mode="prefill")


def test_interpolates_between_grid_points():
    from planner.specs.model_io import load_model

    m = load_model("mixtral-8x7b")
    rng = np.random.default_rng(1)
    first = rng.integers(0, 8, size=(m.num_moe_layers, 512, 1))
    ids = np.concatenate([first, (first + rng.integers(1, 8, size=first.shape)) % 8], axis=2)
    tr = Trace(ids, 8,
               seq_id=np.arange(512) // 32, pos=np.arange(512) % 32)
    lo, hi = (imbalance_at(m, 2, 0, t, "decode", 8, tr) for t in (8, 16))
    mid = imbalance_at(m, 2, 0, 2 ** 3.25, "decode", 8, tr)  # a quarter of the way from 8 to 16 in log2
    assert mid[0] == pytest.approx(0.75 * lo[0] + 0.25 * hi[0])
    assert mid[1] == pytest.approx(0.75 * lo[1] + 0.25 * hi[1])
    assert hi[0] >= 1.0 and imbalance_at(m, 1, 0, 8, "decode") == (1.0, 1.0)
