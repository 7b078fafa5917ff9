"""The statistics of real routing (planner.traces.realism) on tiny traces worked out by hand,
their unavailable paths, and the real DeepSeek-V2-Lite trace against its published figures."""

import json

import numpy as np
import pytest

from planner.traces import CountsTrace, Trace, load_trace, synth_trace
from planner.traces import realism as R
from planner.traces.stats import SUMMARY_KEYS, summary_statistics, trace_stats
from tests.conftest import real_trace_file


def two_sequences() -> Trace:
    """2 sequences of 3 tokens, E = 4, k = 2, 2 layers; the file interleaves the sequences
    (s0p0, s1p0, s0p1, s1p1, s0p2, s1p2), the stream is s0p0 s0p1 s0p2 s1p0 s1p1 s1p2.

    layer 0:  s0: {0,1} {0,2} {0,1}    s1: {2,3} {2,3} {1,3}
    layer 1:  s0: {1,2} {1,3} {1,2}    s1: {0,3} {0,3} {1,2}
    """
    l0 = {0: [[0, 1], [0, 2], [0, 1]], 1: [[2, 3], [2, 3], [1, 3]]}
    l1 = {0: [[1, 2], [1, 3], [1, 2]], 1: [[0, 3], [0, 3], [1, 2]]}
    seq = np.array([0, 1, 0, 1, 0, 1])
    pos = np.array([0, 0, 1, 1, 2, 2])
    ids = np.array([[layer[s][p] for s, p in zip(seq, pos, strict=True)] for layer in (l0, l1)])
    return Trace(ids, 4, seq_id=seq, pos=pos, model="hand")


def test_stream_puts_each_sequence_together_in_pos_order():
    order, seq, first = R.stream_order(two_sequences())
    assert order.tolist() == [0, 2, 4, 1, 3, 5]
    assert seq.tolist() == [0, 0, 0, 1, 1, 1] and first.tolist() == [0, 0, 0, 3, 3, 3]


def test_batch_skew_by_hand():
    tr = two_sequences()
    order = R.stream_order(tr)[0]
    # B = 3: the two sequences. Layer 0: s0 counts [3, 2, 1, 0], s1 [0, 1, 2, 3]: max 3 over a
    # mean of 3·2/4 = 1.5 -> 2 and 2. Layer 1: s0 [0, 3, 2, 1] -> 2; s1 [2, 1, 1, 2] -> 4/3.
    assert R.batch_skew(tr, 3, order) == pytest.approx([2.0, (2 + 4 / 3) / 2])
    # B = 2 (mean 1): layer 0 {0,1}+{0,2} -> 2; {0,1}+{2,3} -> 1; {2,3}+{1,3} -> 2
    assert R.batch_skew(tr, 2, order)[0] == pytest.approx(5 / 3)
    # B = 4: one batch, the rest (2 tokens) left out: layer 0 expert 0 three times of mean 2
    assert R.batch_skew(tr, 4, order)[0] == pytest.approx(1.5)
    assert np.isnan(R.batch_skew(tr, 7, order)).all()  # no full batch
    # B = T in any order is the whole trace: layer 1 counts [2, 4, 3, 3] -> 4 / 3
    perm = np.random.default_rng(5).permutation(6)
    assert R.batch_skew(tr, 6, perm) == pytest.approx([1.0, 4 / 3])


def test_reuse_and_working_sets_by_hand():
    loc = R.sequence_locality(two_sequences(), windows=(2, 3, 4))
    # layer 0: s0p1 {0,2}∩{0,1} = 1, s0p2 {0,1}∩{0,2} = 1, s1p1 {2,3}∩{2,3} = 2, s1p2 {1,3}∩{2,3} = 1
    # -> 5 of 4·2 choices; layer 1: 1 + 1 + 2 + 0 -> 4 / 8. (The file's neighbours, which are
    # of the other sequence, do not count.)
    assert loc["reuse"] == pytest.approx([5 / 8, 4 / 8])
    # W = 2: windows (p0, p1) of each sequence, p2 left out. Layer 0: {0,1,2} and {2,3}; layer 1:
    # {1,2,3} and {0,3}
    assert loc["working_set_2"] == pytest.approx([2.5, 2.5])
    # W = 3: the whole sequences. Layer 0: {0,1,2}, {1,2,3}; layer 1: {1,2,3}, {0,1,2,3}
    assert loc["working_set_3"] == pytest.approx([3.0, 3.5])
    assert np.isnan(loc["working_set_4"]).all()  # both sequences are shorter than 4


def test_cross_layer_prediction_by_hand():
    tr = two_sequences()
    # fitted on s0: M[e, e'] rows 0: [0, 3, 2, 1], 1: [0, 2, 2, 0], 2: [0, 1, 0, 1], 3: 0; row sums
    # r = [6, 4, 2, 0], column sums c = [0, 6, 4, 2]; lift = M / (r c): row 1 [0, 1/12, 1/8, 0],
    # row 2 [0, 1/12, 0, 1/4]. Tested on s1:
    #   p0, p1: layer 0 {2,3} -> scores row 2 -> guesses 3, then 1; truth {0,3}: top hit, 1 of 2
    #   p2: {1,3} -> row 1 -> guesses 2, then 1; truth {1,2}: top hit, 2 of 2
    # popularity on s0 at layer 1: [0, 3, 2, 1] -> 1, then 2: hits only p2 (1 top, 2 of 2).
    out = R.cross_layer_prediction(tr, fit=tr.seq_id == 0)
    assert out["top1_precision"] == pytest.approx([1.0])
    assert out["set_recall"] == pytest.approx([4 / 6])
    assert out["popularity_precision"] == pytest.approx([1 / 3])
    assert out["popularity_recall"] == pytest.approx([2 / 6])
    # the default halves deal whole sequences: one fits, the other is tested
    fit, test = R._halves(tr, 0)
    assert fit.sum() == 3 and len(set(tr.seq_id[fit])) == 1 and (fit != test).all()
    assert R.cross_layer_prediction(Trace(tr.topk_ids[:1], 4)) is None  # one layer


def test_pair_lift_by_hand_and_threshold():
    # E = 4, k = 2: {0,1} x3, {2,3}, {0,2}, {1,3}, each repeated 10 times: T = 60, c = [40, 40, 20, 20].
    # X = c_i c_j / T: X01 = 26.67, X02 = X03 = X12 = X13 = 13.33, X23 = 6.67 (all >= 5).
    # C01 = 30, C23 = 10, C02 = C13 = 10, C03 = C12 = 0 -> lifts 1.125, 1.5, 0.75, 0.75, 0, 0.
    base = [[0, 1], [1, 0], [0, 1], [2, 3], [0, 2], [1, 3]]
    lifts = R.pair_lifts(Trace(np.array([base * 10]), 4))[0]
    assert sorted(lifts) == pytest.approx([0, 0, 0.75, 0.75, 1.125, 1.5])
    # repeated 5 times: X23 = 10·10/30 = 3.33 < 5, so pair (2, 3) is left out and the max is C01/X01
    lifts = R.pair_lifts(Trace(np.array([base * 5]), 4))[0]
    assert lifts.size == 5 and lifts.max() == pytest.approx(15 / (20 * 20 / 30))
    assert R.pair_lifts(Trace(np.array([[[0], [1]]]), 2))[0].size == 0  # k = 1: no pairs


def test_rank_locality_by_hand():
    # sequences A = (0, 0) and B = (1, 1) (E = 4, k = 1), one per rank on 2 ranks, windows of one
    # decode step: step 0 runs A p0 on rank 0 and B p0 on rank 1, step 1 their p1.
    # own top-1: rank 0 keeps expert 0, rank 1 expert 1: both next choices covered -> 1.0.
    # all ranks' top-1 at step 0: experts 0 and 1 tie, the lower id 0 wins: covers rank 0 only.
    tr = Trace(np.array([[[0], [1], [0], [1]]]), 4, seq_id=np.array([0, 1, 0, 1]), pos=np.array([0, 0, 1, 1]))
    assert R.rank_locality(tr, per_rank=1, ranks=2, top=1, window=1) == pytest.approx((1.0, 0.5))
    assert R.rank_locality(tr, per_rank=1, ranks=2, top=1, window=2) == (None, None)  # one window


def test_summary_statistics_keys_and_determinism():
    synth = synth_trace(num_layers=3, num_experts=16, top_k=4, num_tokens=4096, tokens_per_step=256, seed=1)
    t = Trace(synth.topk_ids, 16, step=synth.step)  # without sequences
    s = summary_statistics(t, seed=3)
    assert tuple(s) == SUMMARY_KEYS
    assert s == summary_statistics(t, seed=3)
    json.dumps(s, allow_nan=False)
    assert s["skew_random_16"] > s["skew_random_256"] > s["skew_random_4096"] >= 1
    assert s["skew_random_4096"] == pytest.approx(s["imbalance_whole_mean"], rel=0.05)  # B = T
    assert s["reuse_random"] == s["xlayer_random"] == 0.25
    assert s["lift_p50"] <= s["lift_p99"] <= s["lift_max"]
    # no sequences: what needs them is None
    for key in ("skew_seq_16", "reuse_mean", "working_set_4", "rank_locality_own_1", "rank_locality_all_16"):
        assert s[key] is None


def test_unavailable_reasons():
    counts = CountsTrace(np.array([[[3, 1], [2, 2]]]))
    s = summary_statistics(counts)
    assert s["imbalance_whole_max"] == pytest.approx(1.5) and s["entropy_mean"] is not None
    assert all(s[k] is None for k in SUMMARY_KEYS if not k.startswith(("imbalance", "entropy")))
    why = R.unavailable_reasons(counts)
    assert set(why) == {"skew", "reuse", "working_set", "xlayer", "lift", "rank_locality"}
    assert all("counts-only" in w for w in why.values())
    flat = Trace(np.array([[[0], [1]]]), 2)  # one layer, k = 1, no sequences
    why = R.unavailable_reasons(flat)
    assert why["reuse"] == why["rank_locality"] == R.NO_SEQUENCES
    assert "single MoE layer" in why["xlayer"] and "top_k is 1" in why["lift"]
    assert R.unavailable_reasons(two_sequences()) == {}


def test_trace_stats_carries_the_realism_rows():
    s = trace_stats(two_sequences())
    json.dumps(s, allow_nan=False)
    assert s["num_sequences"] == 2
    assert s["unavailable"] == {"rank_locality": "fewer than 2 windows of 16 decode steps"}  # 3 steps
    assert s["layers"][0]["reuse"] == pytest.approx(5 / 8)
    assert s["layers"][1]["reuse"] == pytest.approx(4 / 8)
    assert s["layers"][0]["skew_seq_16"] is None  # T = 6 < 16
    assert "xlayer_top1_precision" in s["layers"][0] and "xlayer_top1_precision" not in s["layers"][1]
    assert s["summary"]["realism"]["reuse_first_layer"] == pytest.approx(5 / 8)
    assert s["summary"]["realism"]["reuse_last_layer"] == pytest.approx(4 / 8)


def test_real_deepseek_v2_lite_against_published_figures():
    """Figures of the traces README ("Statistics of real routing") on the whole Puffin trace;
    tolerances cover the definitions' documented differences (module docstring)."""
    tr = load_trace(real_trace_file("deepseek-v2-lite-chat-puffin-a.npz"))
    s = summary_statistics(tr)
    assert s["imbalance_whole_min"] == pytest.approx(1.34, abs=0.05)
    assert s["imbalance_whole_max"] == pytest.approx(2.65, abs=0.05)
    for key, fig in (("skew_random", (3.27, 1.91, 1.80)), ("skew_seq", (5.44, 3.50, 2.26))):
        for b, f in zip((16, 256, 4096), fig, strict=True):
            assert s[f"{key}_{b}"] == pytest.approx(f, rel=0.03), key
    assert s["reuse_first_layer"] == pytest.approx(0.14, abs=0.01)
    assert s["reuse_last_layer"] == pytest.approx(0.21, abs=0.015)
    assert 0.28 <= s["reuse_max"] <= 0.35 and s["reuse_random"] == pytest.approx(0.094, abs=0.001)
    assert 16 <= s["working_set_4"] <= 20 and 36 <= s["working_set_16"] <= 46 and 55 <= s["working_set_64"] <= 62
    assert 0.64 <= s["xlayer_top1_precision"] <= 0.79 and 0.41 <= s["xlayer_set_recall"] <= 0.53
    assert 0.12 <= s["xlayer_popularity_recall"] <= 0.17
    assert s["lift_p50"] == pytest.approx(0.6, abs=0.05) and s["lift_p99"] == pytest.approx(4, abs=0.3)
    assert 8 <= s["lift_max"] <= 11
    own = [s[f"rank_locality_own_{n}"] for n in (1, 4, 16)]
    every = [s[f"rank_locality_all_{n}"] for n in (1, 4, 16)]
    assert own == pytest.approx([0.42, 0.36, 0.34], abs=0.015)
    assert every == pytest.approx([0.35, 0.34, 0.34], abs=0.015)
    assert own[0] - every[0] > 0.05 and abs(own[2] - every[2]) < 0.02  # locality fades with more sequences


def test_too_little_to_measure_is_unavailable_with_a_reason():
    one = Trace(np.array([[[0, 1], [1, 2]], [[2, 3], [0, 3]]]), 4, seq_id=np.array([5, 5]), pos=np.array([0, 1]))
    s = trace_stats(one)
    assert s["unavailable"]["xlayer"] == "the trace has one sequence: none is left to test the fitted table on"
    assert s["unavailable"]["rank_locality"] == "fewer than 2 windows of 16 decode steps"
    assert s["summary"]["realism"]["xlayer_top1_precision"] is None
    assert s["summary"]["realism"]["reuse_first_layer"] == pytest.approx(0.5)  # {1,2} after {0,1}


def test_many_experts_are_counted_in_chunks_with_the_same_result():
    """E = 65536: batches and rank windows are counted a few at a time; a plain loop agrees."""
    rng = np.random.default_rng(4)
    E, T = 1 << 16, 400
    ids = rng.integers(0, 8, size=(1, T, 1)) * 8191  # 8 distinct experts spread over the range
    seq, pos = np.repeat([0, 1], T // 2), np.tile(np.arange(T // 2), 2)
    tr = Trace(ids, E, seq_id=seq, pos=pos)
    order = np.arange(T)
    want = np.mean([np.bincount(ids[0, b: b + 4, 0] // 8191).max() / (4 / E) for b in range(0, T, 4)])
    assert R.batch_skew(tr, 4, order)[0] == pytest.approx(want)  # 100 batches, chunks of 64
    # 2 ranks of 1 sequence, windows of 1 step, top-1: the own guess is the rank's previous token,
    # the all-ranks guess the lower of the two previous experts
    a, b = ids[0, : T // 2, 0], ids[0, T // 2:, 0]
    own = ((a[1:] == a[:-1]).sum() + (b[1:] == b[:-1]).sum()) / (T - 2)
    low = np.minimum(a[:-1], b[:-1])
    every = ((a[1:] == low).sum() + (b[1:] == low).sum()) / (T - 2)
    assert R.rank_locality(tr, per_rank=1, ranks=2, top=1, window=1) == pytest.approx((own, every))
