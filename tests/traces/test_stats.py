"""trace_stats on tiny traces whose answers are worked out by hand."""

import json
import math

import numpy as np
import pytest

from planner.traces import CountsTrace, Trace, synth_trace, trace_stats


def two_layer_trace() -> Trace:
    """T=4 tokens, k=1, E=2; two steps of 2 tokens.

    layer 0: 0 0 0 1    layer 1: 1 1 0 0
    """
    ids = np.array([[[0], [0], [0], [1]], [[1], [1], [0], [0]]])
    return Trace(ids, 2, tokens_per_step=2, model="hand")


def test_imbalance_and_entropy_by_hand():
    s = trace_stats(two_layer_trace())
    l0, l1 = s["layers"]
    # layer 0 counts [3, 1]: max/mean = 3/2; entropy of (3/4, 1/4) in units of log 2
    assert l0["imbalance"] == pytest.approx(1.5)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert l0["entropy"] == pytest.approx(h)  # 0.8113
    assert l1["imbalance"] == pytest.approx(1.0) and l1["entropy"] == pytest.approx(1.0)
    # per step: layer 0 has [2, 0] then [1, 1] -> (2 + 1) / 2; layer 1 has [0, 2] then [2, 0] -> 2
    assert l0["step_imbalance"] == pytest.approx(1.5)
    assert l1["step_imbalance"] == pytest.approx(2.0)
    sm = s["summary"]
    assert sm["imbalance_mean"] == pytest.approx(1.25) and sm["imbalance_max"] == pytest.approx(1.5)
    assert sm["entropy_min"] == pytest.approx(h)
    assert (s["num_tokens"], s["num_steps"], s["top_k"], s["model"], s["kind"]) == (4, 2, 1, "hand", "tokens")


def test_cross_layer_by_hand():
    s = trace_stats(two_layer_trace())
    l0 = s["layers"][0]
    # transitions 0->1, 0->1, 0->0, 1->0: succ(0) = 1, succ(1) = 0; token 2 is the one miss
    assert l0["next_top1"] == pytest.approx(0.75)
    assert l0["next_top1_baseline"] == pytest.approx(0.5)  # most popular at layer 1: 2 of 4 tokens
    p = np.array([[0.25, 0.5], [0.25, 0.0]])
    mi = sum(
        p[i, j] * math.log2(p[i, j] / (p[i].sum() * p[:, j].sum())) for i in range(2) for j in range(2) if p[i, j]
    )
    assert l0["next_mi_bits"] == pytest.approx(mi)  # 0.3113
    assert "next_top1" not in s["layers"][1]  # no layer after the last
    assert s["summary"]["cross_layer"]["next_top1"] == pytest.approx(0.75)
    # top-1: no pairs of experts
    assert s["summary"]["coactivation"] is None
    assert "top_k is 1" in s["unavailable"]["coactivation"]


def test_coactivation_by_hand():
    # E=4, k=2: {0,1} x3, {2,3}, {0,2}, {1,3}; counts c = [4, 4, 2, 2]
    ids = np.array([[[0, 1], [1, 0], [0, 1], [2, 3], [0, 2], [1, 3]]])
    s = trace_stats(Trace(ids, 4))
    # expected pairs X_ij ∝ c_i c_j scaled to the 6 pairs made (sum of products 52):
    # lift01 = 3·52/(16·6), lift23 = 1·52/(4·6), lift02 = lift13 = 1·52/(8·6); lift03 = lift12 = 0
    lifts = [3 * 52 / 96, 52 / 24, 52 / 48, 52 / 48]
    row = s["layers"][0]
    assert row["top_pair_lift"] == pytest.approx(sum(lifts) / 4)  # the 4 (= E) highest
    assert row["top_pair_share"] == pytest.approx(1.0)
    co = s["summary"]["coactivation"]
    assert co["top_pairs"] == 4 and co["top_pair_share_uniform"] == pytest.approx(4 / 6)
    assert s["unavailable"]["cross_layer"] == s["unavailable"]["xlayer"] == "the trace has a single MoE layer"
    assert "coactivation" not in s["unavailable"] and "lift" not in s["unavailable"]
    assert "seq_id" in s["unavailable"]["reuse"]  # no sequences


def test_counts_only_reports_imbalance_and_entropy_only():
    c = np.array([[[3, 1], [2, 2]], [[1, 1], [0, 4]]])  # [S=2, L=2, E=2]
    s = trace_stats(CountsTrace(c, model="m"))
    assert s["kind"] == "counts" and s["top_k"] is None and s["num_tokens"] is None
    l0, l1 = s["layers"]
    assert l0["imbalance"] == pytest.approx(4 / 3)  # totals [4, 2]
    assert l1["imbalance"] == pytest.approx(1.5)  # totals [2, 6]
    assert l0["step_imbalance"] == pytest.approx((1.5 + 1.0) / 2)
    assert l1["step_imbalance"] == pytest.approx((1.0 + 2.0) / 2)
    assert s["summary"]["cross_layer"] is None and s["summary"]["coactivation"] is None
    assert set(s["unavailable"]) == {"cross_layer", "coactivation", "skew", "reuse", "working_set", "xlayer",
                                     "lift", "rank_locality"}
    assert s["summary"]["realism"]["imbalance_whole_max"] == pytest.approx(1.5)
    assert s["summary"]["realism"]["skew_random_16"] is None
    assert "counts-only" in s["unavailable"]["cross_layer"]


def test_empty_layer_in_counts_is_none_not_nan():
    s = trace_stats(CountsTrace(np.array([[[0, 0], [1, 3]]])))
    assert s["layers"][0]["imbalance"] is None and s["layers"][0]["entropy"] is None
    json.dumps(s, allow_nan=False)


def test_stats_are_json_ready():
    t = synth_trace(num_layers=3, num_experts=16, top_k=4, num_tokens=256, tokens_per_step=64, seed=0)
    s = trace_stats(t)
    json.dumps(s, allow_nan=False)
    assert s["num_ranks"] == 8 and len(s["layers"]) == 3


def test_group_limit_excess_by_hand():
    from planner.traces.stats import group_limit_excess

    # 8 experts in 4 groups of 2, topk_group 2: token 0 uses groups {0, 1}, token 1 {0, 1, 2}
    ids = np.array([[[0, 1, 2], [0, 2, 4]]])
    tr = Trace(ids, 8, tokens_per_step=2, model="hand")
    assert group_limit_excess(tr, 4, 2) == 0.5
    assert group_limit_excess(tr, 4, 3) == 0.0
    assert group_limit_excess(tr, None, None) == 0.0  # no groups: nothing to break
    grouped = synth_trace(num_layers=2, num_experts=64, top_k=6, n_group=8, topk_group=3, num_tokens=512, seed=0)
    assert group_limit_excess(grouped, 8, 3) == 0.0
    free = synth_trace(num_layers=2, num_experts=64, top_k=6, num_tokens=512, seed=0)
    assert group_limit_excess(free, 8, 3) > 0.3
