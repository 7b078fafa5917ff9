"""synth_trace: determinism, shapes, and each routing property it promises."""


import numpy as np
import pytest

from planner.errors import InputError
from planner.traces import synth_trace, trace_stats
from planner.traces.realism import pair_lifts
from planner.traces.synth import (
    _centres,
    _even_latent,
    _latent_preferences,
    _per_expert,
    _structure,
    _topk_desc,
)
from tests.conftest import make_model

SMALL = dict(num_layers=4, num_experts=32, top_k=4)
#: No sequence structure (no per-sequence topics or reuse): isolates the property a test is about.
NOSEQ = dict(topic=0.0, reuse=0.0, repick=0.0)


def tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance of two count vectors' distributions."""
    return 0.5 * float(np.abs(p / p.sum() - q / q.sum()).sum())


def test_deterministic_per_seed():
    a = synth_trace(**SMALL, num_tokens=512, tokens_per_step=128, seed=7)
    b = synth_trace(**SMALL, num_tokens=512, tokens_per_step=128, seed=7)
    c = synth_trace(**SMALL, num_tokens=512, tokens_per_step=128, seed=8)
    assert np.array_equal(a.topk_ids, b.topk_ids)
    assert np.array_equal(a.topk_weights, b.topk_weights)
    assert np.array_equal(a.source_rank, b.source_rank)
    assert not np.array_equal(a.topk_ids, c.topk_ids)


def test_shape_steps_ranks_and_weights():
    t = synth_trace(**SMALL, num_tokens=1000, tokens_per_step=300, num_ranks=3, seed=0)
    assert (t.num_layers, t.num_tokens, t.top_k, t.num_experts) == (4, 1000, 4, 32)
    assert t.num_steps == 4 and np.bincount(t.step).tolist() == [300, 300, 300, 100]
    # tokens of a step come rank by rank, in equal contiguous blocks (the default layout)
    assert np.array_equal(t.source_rank, Trace_default_ranks(t, 3))
    w = t.topk_weights
    assert w.dtype == np.float32 and (w > 0).all()
    assert np.allclose(w.sum(axis=-1), 1.0, atol=1e-5)
    assert (np.diff(w, axis=-1) <= 1e-6).all()  # ids in router order: descending weight
    assert synth_trace(**SMALL, num_tokens=64, weights=False).topk_weights is None


def Trace_default_ranks(t, ranks):
    from planner.traces import Trace

    return Trace(t.topk_ids, t.num_experts, step=t.step).source_ranks(ranks)


def test_model_fills_shape_and_name():
    model = make_model(num_layers=5, first_k_dense=1, dense_intermediate_size=64, num_experts=16, top_k=3)
    t = synth_trace(model, num_tokens=64, tokens_per_step=32)
    assert (t.num_layers, t.num_experts, t.top_k, t.model) == (4, 16, 3, "tiny-moe")
    with pytest.raises(InputError, match="synth: num_experts 8 conflicts with the model's 16"):
        synth_trace(model, num_experts=8)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(num_layers=2, num_experts=8), "synth: give a model or all of num_layers, num_experts and top_k"),
        (dict(**SMALL, affinity=1.5), r"synth: affinity must be in \[0, 1\] \(got 1.5\)"),
        (dict(**SMALL, skew=-1), r"synth: skew must be >= 0 \(got -1\)"),
        (dict(**SMALL, rank_mix=2), r"synth: rank_mix must be in \[0, 1\]"),
        (dict(**SMALL, num_tokens=0), r"synth: num_tokens must be > 0 \(got 0\)"),
        (dict(num_layers=2, num_experts=4, top_k=5), r"synth: top_k \(5\) must be <= num_experts \(4\)"),
        (dict(**SMALL, n_group=5, topk_group=1), r"n_group \(5\) must be > 0 and divide num_experts \(32\)"),
        (dict(**SMALL, n_group=16, topk_group=1), r"top_k \(4\) must be <= topk_group × experts per group \(1 × 2\)"),
        (dict(**SMALL, n_group=8), "n_group and topk_group must be given together"),
    ],
)
def test_bad_parameters(kw, message):
    with pytest.raises(InputError, match=message):
        synth_trace(**kw)


def test_topk_helper_matches_argsort():
    rng = np.random.default_rng(0)
    score = rng.standard_normal((200, 64)).astype(np.float32) * 5
    score[0, :3] = -np.inf
    ids, val = _topk_desc(score, 6)
    ref = np.argsort(-score, axis=1, kind="stable")[:, :6]
    assert np.array_equal(ids, ref)
    assert np.allclose(val, np.take_along_axis(score, ref, axis=1), rtol=1e-3)


# ---- routing properties ----------------------------------------------------------------------


def test_skew_differs_by_layer():
    kw = dict(num_layers=8, num_experts=64, top_k=4, num_tokens=8192, tokens_per_step=1024, affinity=0.0,
              coactivation=0.0, drift=0.0, rank_mix=0.0, seed=3, **NOSEQ)
    skewed = trace_stats(synth_trace(**kw, skew=1.0))
    flat = trace_stats(synth_trace(**kw, skew=0.0, domain_spread=0.0))
    ent = np.array([row["entropy"] for row in skewed["layers"]])
    flat_ent = np.array([row["entropy"] for row in flat["layers"]])
    assert flat_ent.min() > 0.995  # no skew: near uniform
    assert ent.max() < 0.99
    assert np.ptp(ent) > 10 * np.ptp(flat_ent)  # the exponent differs by layer
    # and which experts are hot differs by layer
    counts = synth_trace(**kw, skew=1.0).counts()
    assert len(set(counts.argmax(axis=1).tolist())) >= 5


def test_layer_exponents_are_the_same_spread_for_every_seed():
    # the exponents are the layers' quantiles of skew · exp(0.35 N(0, 1)), in an order drawn per seed
    def exponents(seed):  # without affinity, the second most popular expert's logpop is -s_l log 2
        st = _structure(np.random.default_rng(seed), 9, 16, 1, 2, 1, 2.0, 0.0, 0.0)
        return -np.sort(st.logpop_LE, axis=1)[:, -2] / np.log(2.0)

    a, b = exponents(0), exponents(1)
    assert not np.allclose(a, b)  # the order differs
    assert np.allclose(np.sort(a), np.sort(b)) and np.median(a) == pytest.approx(2.0)
    assert np.sort(a)[-1] == pytest.approx(2.0 * np.exp(0.35 * 1.5932), rel=1e-4)  # quantile 8.5 / 9: z = 1.5932


def test_latent_preferences_keep_each_clusters_share_of_popularity():
    # latent centres near an isolated cluster would make it hot; the per-cluster offsets keep every
    # cluster's mean softmax share at its share of the layer's popularity
    st = _structure(np.random.default_rng(0), 2, 64, 1, 2, 1, 1.0, 0.0, 0.0)
    off_LE = _even_latent(np.random.default_rng(1), st, 2, 3.0, [2.0, 2.0])
    u_tok, u_seq = (_centres(np.random.default_rng(s), 20000, None, st, 0.0) for s in (2, 3))

    def shares(logit_nE):
        z = np.exp(logit_nE - logit_nE.max(axis=-1, keepdims=True))
        z /= z.sum(axis=-1, keepdims=True)
        return np.bincount(st.cluster_E, weights=z.reshape(-1, 64).mean(axis=0), minlength=st.C)

    for layer in range(2):
        pref = _per_expert(_latent_preferences(u_tok, st, layer, 3.0) + _latent_preferences(u_seq, st, layer, 2.0), st)
        target = shares(st.logpop_LE[layer])
        assert tv(shares(st.logpop_LE[layer] + off_LE[layer] + pref), target) < 0.05  # 0.027
        assert tv(shares(st.logpop_LE[layer] + pref), target) > 0.15  # uncorrected: 0.18-0.19


def test_affinity_raises_cross_layer_predictability():
    kw = dict(**SMALL, num_tokens=4096, tokens_per_step=1024, seed=2)
    none = trace_stats(synth_trace(**kw, affinity=0.0))["summary"]["cross_layer"]
    strong = trace_stats(synth_trace(**kw, affinity=0.8))["summary"]["cross_layer"]
    assert strong["next_top1"] > none["next_top1"] + 0.3
    assert strong["next_mi_bits"] > 2 * none["next_mi_bits"]
    assert none["next_top1"] < none["next_top1_baseline"] + 0.1  # no affinity: popularity only


def test_coactivation_raises_pair_lift():
    kw = dict(num_layers=3, num_experts=64, top_k=8, num_tokens=8192, tokens_per_step=1024, affinity=0.0, skew=0.4, seed=4,
              **NOSEQ)
    none = trace_stats(synth_trace(**kw, coactivation=0.0))["summary"]["coactivation"]
    strong = trace_stats(synth_trace(**kw, coactivation=3.0))["summary"]["coactivation"]
    assert strong["top_pair_lift"] > none["top_pair_lift"] + 1.0
    assert strong["top_pair_share"] > 2 * none["top_pair_share"]
    assert strong["top_pair_share"] > 3 * strong["top_pair_share_uniform"]


def _lift_percentiles(t):
    lifts = np.concatenate(pair_lifts(t))
    return np.percentile(lifts, 50), np.percentile(lifts, 99)


def test_latent_coactivation_pushes_the_median_pair_below_independence():
    # a token's centre favours a neighbourhood of the latent space: pairs of nearby experts are
    # picked together far more than at random, the many distant pairs less
    kw = dict(num_layers=2, num_experts=64, top_k=6, num_tokens=8192, affinity=0.0, skew=0.0, domain_spread=0.0,
              drift=0.0, rank_mix=0.0, cluster_size=1, seed=4, **NOSEQ)
    p50_none, p99_none = _lift_percentiles(synth_trace(**kw, coactivation=0.0))
    p50, p99 = _lift_percentiles(synth_trace(**kw, coactivation=4.0))
    assert 0.75 < p50_none < 0.95 and p99_none < 1.3  # independent picks: (k - 1) E / (k (E - 1)) = 0.85
    assert p50 < 0.75 and p99 > 2.5


def test_topic_geometry_makes_sequences_coactivate():
    # the same topic strength; as latent preferences, the experts a request favours are neighbours
    kw = dict(num_layers=2, num_experts=64, top_k=6, num_tokens=8192, affinity=0.0, coactivation=0.0, skew=0.0,
              domain_spread=0.0, drift=0.0, rank_mix=0.0, topic=3.0, topic_drift=0.0, reuse=0.0, repick=0.0,
              cluster_size=1, seed=4)
    free, geo = (pair_lifts(synth_trace(**kw, topic_geometry=g))[1] for g in (0.0, 1.0))  # layer 1: topic 0.65 · 3
    assert np.percentile(geo, 50) < np.percentile(free, 50) - 0.05  # 0.64 against 0.75
    assert np.percentile(geo, 99) > np.percentile(free, 99) + 0.4  # 3.1 against 2.4


def test_drift_moves_popularity_between_first_and_last_steps():
    kw = dict(**SMALL, num_tokens=16 * 1024, tokens_per_step=1024, rank_mix=0.0, seed=5, **NOSEQ)

    def first_last_tv(drift):
        c = synth_trace(**kw, drift=drift).counts_per_step()  # [S, L, E]
        first, last = c[:2].sum(axis=0), c[-2:].sum(axis=0)
        return np.mean([tv(first[layer], last[layer]) for layer in range(c.shape[1])])

    assert first_last_tv(2.0) > 3 * first_last_tv(0.0)


def test_rank_mix_makes_ranks_differ():
    # short sequences: a rank's step holds many requests, each with its rank's input mix
    kw = dict(**SMALL, num_tokens=8 * 2048, tokens_per_step=2048, num_ranks=4, drift=0.0, seed=6, seq_len=2,
              seq_len_spread=0.0, affinity=0.0, coactivation=0.0, **NOSEQ)

    def rank_tv(rank_mix):
        t = synth_trace(**kw, rank_mix=rank_mix)
        out = []
        for s in range(t.num_steps):
            in_step = t.step == s
            for layer in range(t.num_layers):
                step_counts = np.bincount(t.topk_ids[layer, in_step].ravel(), minlength=t.num_experts)
                for r in range(4):
                    mine = in_step & (t.source_rank == r)
                    c = np.bincount(t.topk_ids[layer, mine].ravel(), minlength=t.num_experts)
                    out.append(tv(c, step_counts))
        return float(np.mean(out))

    assert rank_tv(1.0) > 2 * rank_tv(0.0)


def test_group_limited_routing():
    model = make_model(num_layers=3, num_experts=64, top_k=6, n_group=8, topk_group=2)
    t = synth_trace(model, num_tokens=2048, tokens_per_step=512, seed=0)
    groups = t.topk_ids // 8  # 8 experts per group
    used = np.array([[len(set(row)) for row in layer] for layer in groups.tolist()])
    assert used.max() <= 2
    free = synth_trace(num_layers=3, num_experts=64, top_k=6, num_tokens=2048, seed=0) .topk_ids // 8
    assert max(len(set(row)) for row in free[0].tolist()) > 2  # without the limit tokens spread wider


def _rank_step_profile(tr, rank, step):
    sel = (tr.source_rank == rank) & (tr.step == step)
    return np.bincount(tr.topk_ids[0][sel].ravel(), minlength=tr.num_experts).astype(float)


def test_sticky_ranks_keep_their_mix_across_steps():
    kw = dict(num_layers=1, num_experts=32, top_k=2, num_tokens=64_000, tokens_per_step=16_000, num_ranks=4,
              rank_mix=1.0, skew=0.0, drift=0.0, affinity=0.0, coactivation=0.0, weights=False, seed=3, model_name="t",
              seq_len=2, seq_len_spread=0.0, **NOSEQ)  # short requests: a rank's step holds many

    def corr(tr):  # mean over ranks of the correlation of a rank's expert counts in steps 0 and 3
        return np.mean([np.corrcoef(_rank_step_profile(tr, r, 0), _rank_step_profile(tr, r, 3))[0, 1] for r in range(4)])

    fresh, sticky = synth_trace(**kw), synth_trace(sticky_ranks=True, **kw)
    assert corr(sticky) > 0.9 > corr(fresh) + 0.2
    grouped = synth_trace(sticky_ranks=True, rank_groups=2, **kw)  # ranks 0-1 and 2-3 share a mix
    same = np.corrcoef(_rank_step_profile(grouped, 0, 0), _rank_step_profile(grouped, 1, 0))[0, 1]
    other = np.corrcoef(_rank_step_profile(grouped, 0, 0), _rank_step_profile(grouped, 2, 0))[0, 1]
    assert same > 0.9 > other + 0.2
    with pytest.raises(InputError, match="rank_groups must be > 0 and divide num_ranks 4"):
        synth_trace(rank_groups=3, **kw)


# ---- sequences -------------------------------------------------------------------------------


def test_sequences_present_and_valid():
    t = synth_trace(**SMALL, num_tokens=5000, tokens_per_step=512, num_ranks=4, seq_len=20, seed=2)
    assert t.has_sequences
    sid, pos = t.seq_id, t.pos
    # sequences arrive one after the other: ids non-decreasing, positions count up from 0
    assert (np.diff(sid) >= 0).all() and sid[0] == 0 and np.array_equal(np.unique(sid), np.arange(sid[-1] + 1))
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    lens = np.diff(np.r_[starts, len(sid)])
    assert np.array_equal(pos, np.arange(len(sid)) - np.repeat(starts, lens))
    assert lens[:-1].min() >= 2  # the last one may be cut to fit num_tokens
    assert 14 <= np.median(lens) <= 28  # log-normal around seq_len = 20
    # steps of tokens_per_step tokens, each dealt to the ranks in contiguous blocks
    assert np.bincount(t.step).tolist() == [512] * 9 + [392]
    assert np.array_equal(t.source_rank, Trace_default_ranks(t, 4))


def test_sequences_deterministic_and_lengths_follow_parameters():
    a = synth_trace(**SMALL, num_tokens=4096, seq_len=8, seq_len_spread=0.0, seed=5)
    b = synth_trace(**SMALL, num_tokens=4096, seq_len=8, seq_len_spread=0.0, seed=5)
    assert np.array_equal(a.seq_id, b.seq_id) and np.array_equal(a.pos, b.pos)
    assert np.array_equal(a.topk_ids, b.topk_ids)
    assert set(np.bincount(a.seq_id)[:-1].tolist()) == {8}  # no spread: every sequence 8 tokens
    long = synth_trace(**SMALL, num_tokens=4096, seq_len=200, seed=5)
    assert long.seq_id.max() < a.seq_id.max() / 5


def _realism(t):
    from planner.traces.stats import summary_statistics

    return summary_statistics(t, seed=0)


def test_reuse_and_topic_give_sequences_their_experts():
    kw = dict(num_layers=3, num_experts=64, top_k=6, num_tokens=8192, tokens_per_step=1024, seq_len=64,
              seq_len_spread=0.5, skew=0.0, domain_spread=0.0, affinity=0.0, coactivation=0.0, seed=1)
    none = _realism(synth_trace(**kw, **NOSEQ))
    reuse = _realism(synth_trace(**kw, topic=0.0, reuse=2.0, repick=0.0))
    repick = _realism(synth_trace(**kw, topic=0.0, reuse=0.0, repick=0.3))
    topic = _realism(synth_trace(**kw, topic=2.0, reuse=0.0, repick=0.0))
    # without sequence structure a token reuses its predecessor's experts about as often as chance
    assert abs(none["reuse_mean"] - none["reuse_random"]) < 0.05
    assert reuse["reuse_mean"] > none["reuse_mean"] + 0.05
    assert reuse["working_set_4"] < none["working_set_4"] - 1
    assert repick["reuse_mean"] > none["reuse_mean"] + 0.1  # ~0.3 of a neighbour's experts, by depth
    assert repick["working_set_4"] < none["working_set_4"] - 1
    # a sequence's topic makes its consecutive tokens more skewed than random ones
    assert none["skew_seq_16"] < 1.1 * none["skew_random_16"]
    assert topic["skew_seq_16"] > 1.3 * topic["skew_random_16"]
    assert topic["skew_seq_256"] > 1.3 * topic["skew_random_256"]


def test_topic_drift_widens_a_sequence_working_set():
    kw = dict(num_layers=3, num_experts=64, top_k=6, num_tokens=8192, seq_len=1000, seq_len_spread=0.0,
              topic=2.0, reuse=0.0, repick=0.0, affinity=0.0, coactivation=0.0, seed=3)
    still = synth_trace(**kw, topic_drift=0.0).topk_ids
    moving = synth_trace(**kw, topic_drift=4.0).topk_ids

    def first_last_tv(ids):  # mean TV between a sequence's first and last 256 tokens' expert counts
        out = []
        for s in range(8):
            a = ids[:, s * 1000 : s * 1000 + 256].reshape(3, -1)
            b = ids[:, s * 1000 + 744 : (s + 1) * 1000].reshape(3, -1)
            out += [tv(np.bincount(a[layer], minlength=64), np.bincount(b[layer], minlength=64)) for layer in range(3)]
        return float(np.mean(out))

    assert first_last_tv(moving) > first_last_tv(still) + 0.1


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(seq_len=1), r"synth: seq_len must be >= 2 \(got 1\)"),
        (dict(seq_len_spread=4), r"synth: seq_len_spread must be in \[0, 3\] \(got 4\)"),
        (dict(topic=-0.5), r"synth: topic must be >= 0 \(got -0.5\)"),
        (dict(topic_drift=float("nan")), r"synth: topic_drift must be >= 0 \(got nan\)"),
        (dict(reuse=-1), r"synth: reuse must be >= 0 \(got -1\)"),
        (dict(reuse_span=0.5), r"synth: reuse_span must be >= 1 \(got 0.5\)"),
        (dict(reuse="x"), r"synth: reuse must be a number \(got 'x'\)"),
        (dict(repick=1.5), r"synth: repick must be in \[0, 1\] \(got 1.5\)"),
        (dict(topic_geometry=-0.1), r"synth: topic_geometry must be in \[0, 1\] \(got -0.1\)"),
    ],
)
def test_bad_sequence_parameters(kw, message):
    with pytest.raises(InputError, match=message):
        synth_trace(**SMALL, num_tokens=64, **kw)


def test_sequences_false_keeps_routing_and_drops_ids():
    a = synth_trace(**SMALL, num_tokens=300, seed=4)
    b = synth_trace(**SMALL, num_tokens=300, seed=4, sequences=False)
    assert a.has_sequences and not b.has_sequences and b.pos is None
    assert np.array_equal(a.topk_ids, b.topk_ids) and np.array_equal(a.step, b.step)


@pytest.mark.parametrize("num_tokens", [2, 3, 64, 65])
def test_odd_last_token_repicks_from_its_left_neighbour_only(num_tokens):
    # a trace ending on an odd position: its last token has no right neighbour
    t = synth_trace(**SMALL, num_tokens=num_tokens, seq_len=1000, repick=1.0, seed=0)
    assert t.topk_ids.min() >= 0 and t.topk_ids.max() < 32
