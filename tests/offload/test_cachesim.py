"""Expert-cache simulator and its offline bounds: hand-worked sequences and timelines
(planner.cachesim, planner.cache_bounds)."""

import numpy as np
import pytest

from planner.cache_bounds import access_keys, belady_misses, lru_misses
from planner.cachesim import (
    CacheConfig,
    OffloadTiming,
    PrefetchConfig,
    fit_predictor,
    simulate_cache,
    step_counts,
    step_probs,
)
from planner.errors import InputError

SEQ = [1, 2, 3, 1, 4, 1, 2, 5, 1, 2]


def test_lru_hand_worked():
    # capacity 3: 1m 2m 3m 1h 4m(evict 2) 1h 2m(evict 3) 5m(evict 4) 1h 2h -> 6 misses
    assert lru_misses(SEQ, 3) == 6
    assert lru_misses(SEQ, 0) == 10
    assert lru_misses(SEQ, 5) == 5  # compulsory misses only


def test_belady_hand_worked():
    # capacity 3: 1m 2m 3m 1h 4m(3 never used again) 1h 2h 5m 1h 2h -> 5 misses
    assert belady_misses(SEQ, 3, bypass=False) == 5
    assert belady_misses(SEQ, 3, bypass=True) == 5
    assert belady_misses(SEQ, 3, warm=True) == 2  # the first 3 loads fill an empty cache
    # capacity 1: 1 2 3 1 4 1 2 5 1 2; without bypass every change misses (9 of 10: 1,1 are not adjacent)
    assert belady_misses(SEQ, 1, bypass=False) == 10
    # with bypass, 1 stays cached and the others go through the staging buffer: misses 10 - 3 hits of 1
    assert belady_misses(SEQ, 1, bypass=True) == 7


def test_belady_is_a_lower_bound_on_lru():
    rng = np.random.default_rng(0)
    for _ in range(20):
        keys = rng.zipf(1.5, size=200) % 30
        for cap in (1, 3, 8):
            assert belady_misses(keys, cap) <= lru_misses(keys, cap)


def _timing(c=1.0, k=0.1, pre=0.2, other=0.5, ov=1.0, cpu=None):
    return OffloadTiming(copy_ms=c, ffn_ms_M=np.array([0.0, k]), pre_ms=pre, other_ms=other, overlap=ov,
                         expert_bytes=100.0, cpu_ms_M=None if cpu is None else np.array([0.0, cpu]))


def _two_layers():
    counts = np.zeros((1, 2, 4), np.int32)
    counts[0, 0, [0, 1]] = 1
    counts[0, 1, [2, 3]] = 1
    res = np.zeros((2, 4), bool)
    res[0, 0] = res[1, 2] = True
    return counts, res


def test_stall_hand_computed():
    counts, res = _two_layers()
    cfg = CacheConfig(res, np.zeros(2, np.int64))
    r = simulate_cache(counts, cfg, _timing())
    # layer 0: router at 0.2; expert 1 copied 0.2->1.2; experts run 0.2->0.3 and 1.2->1.3
    # layer 1: router at 1.5; expert 3 copied 1.5->2.5; experts run 1.5->1.6 and 2.5->2.6; + other 0.5
    np.testing.assert_allclose(r.layer_ms_SL, [[1.3, 1.3]])
    np.testing.assert_allclose(r.stall_ms_SL, [[0.9, 0.9]])
    np.testing.assert_allclose(r.step_ms_S, [3.1])
    assert r.demand_SL.tolist() == [[1, 1]] and r.transfers == 2 and r.hit_rate == 0.5
    # imperfect overlap (ov 0.89): each layer pays 0.11 × min(copy busy 1.0, compute 0.4) = 0.044
    r = simulate_cache(counts, cfg, _timing(ov=0.89))
    np.testing.assert_allclose(r.step_ms_S, [3.1 + 2 * 0.044])


def _probs(expert_at_layer1: list[int]) -> np.ndarray:
    p = np.zeros((1, 2, 4), np.float32)
    p[0, 1, expert_at_layer1] = 0.9
    return p


def test_prefetch_hit_hand_computed():
    counts, res = _two_layers()
    cfg = CacheConfig(res, np.zeros(2, np.int64), prefetch=PrefetchConfig(_probs([3]), 0.5, 1))
    r = simulate_cache(counts, cfg, _timing())
    # expert 3 of layer 1 is queued after layer 0's demand copy: 1.2->2.2, started before layer 1's
    # router (1.5); layer 1 runs expert 2 at 1.5->1.6 and expert 3 at 2.2->2.3; step 2.3 + 0.5
    np.testing.assert_allclose(r.step_ms_S, [2.8])
    assert r.demand_SL.tolist() == [[1, 0]] and r.prefetch_SL.tolist() == [[0, 1]]
    assert r.prefetch_accuracy == 1.0 and r.hit_rate == 0.75


def test_wrong_prefetch_delays_demand_and_unstarted_ones_are_cancelled():
    counts, res = _two_layers()
    # predicts expert 1 (wrong, started at 1.2 < 1.5) then expert 0 (queued at 2.2 > 1.5: cancelled)
    p = np.zeros((1, 2, 4), np.float32)
    p[0, 1, 1], p[0, 1, 0] = 0.9, 0.8
    cfg = CacheConfig(res, np.zeros(2, np.int64), prefetch=PrefetchConfig(p, 0.5, 2))
    r = simulate_cache(counts, cfg, _timing())
    # the demand copy of expert 3 waits for the wrong copy: 2.2->3.2, runs 3.2->3.3; step 3.8
    np.testing.assert_allclose(r.step_ms_S, [3.8])
    assert r.prefetch_SL.tolist() == [[0, 1]] and r.prefetch_accuracy == 0.0 and r.transfers == 3


def test_cpu_execution_when_faster():
    counts, res = _two_layers()
    cfg = CacheConfig(res, np.zeros(2, np.int64), cpu="fastest")
    r = simulate_cache(counts, cfg, _timing(cpu=0.5))
    # layer 0: CPU 0.2->0.7 beats copy+run 1.3; layer 1 (router 0.9): CPU 0.9->1.4 beats 2.0; step 1.4 + 0.5
    np.testing.assert_allclose(r.step_ms_S, [1.9])
    assert r.cpu_SL.tolist() == [[1, 1]] and r.transfers == 0 and r.hit_rate == 0.5
    slow = simulate_cache(counts, cfg, _timing(cpu=5.0))  # the copy wins: same as without a CPU
    np.testing.assert_allclose(slow.step_ms_S, [3.1])
    with pytest.raises(InputError):
        simulate_cache(counts, cfg, _timing())


def test_lru_dynamic_slots_follow_lru_misses():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, size=(1, 40, 1)).astype(np.int32)  # one layer, one token per step
    counts = step_counts(ids, np.arange(40), 6)
    cfg = CacheConfig(np.zeros((1, 6), bool), np.array([3]))
    r = simulate_cache(counts, cfg, _timing())
    assert r.demand_SL.sum() == lru_misses(ids[0, :, 0], 3)


def test_budget_never_exceeded_by_dynamic_caches():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 8, size=(2, 60, 2)).astype(np.int32)
    counts = step_counts(ids, np.arange(60) // 2, 8)
    res = np.zeros((2, 8), bool)
    res[:, :2] = True
    cfg = CacheConfig(res, np.array([1, 2]), "lfu")
    r = simulate_cache(counts, cfg, _timing())
    # every needed expert is a hit, a demand copy (the only way in) or none else
    assert (r.hit_SL + r.demand_SL == r.need_SL).all()
    assert cfg.slots == 2 * 2 + 3


def test_access_keys_and_predictor():
    ids = np.array([[[0], [1], [0]], [[2], [3], [2]]], np.int32)  # L=2, T=3, k=1
    counts = step_counts(ids, np.arange(3), 4)
    assert access_keys(counts).tolist() == [0, 6, 1, 7, 0, 6]  # (step, layer, expert) -> layer·4 + expert
    pred = fit_predictor(ids, 4)
    assert pred.q_LEE[0, 0, 2] == 1.0 and pred.q_LEE[0, 1, 3] == 1.0 and pred.q_LEE[0, 0, 3] == 0.0
    p = step_probs(pred, ids, np.arange(3), 4)
    assert p.shape == (3, 2, 4) and (p[:, 0] == 0).all()
    assert p[0, 1, 2] > 0.9 and p[0, 1, 3] < 0.1
