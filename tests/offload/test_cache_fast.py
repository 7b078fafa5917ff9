"""The vectorised replay equals the reference simulator; stack distances equal a plain LRU; the
search on long traces; decode steps from sequences and the by-sequence planning split."""

import itertools
import time

import numpy as np
import pytest

from planner.cache_bounds import lru_misses
from planner.cachesim import CacheConfig, OffloadTiming, PrefetchConfig, simulate_cache, step_counts
from planner.cachesim_fast import replay, replay_fast
from planner.errors import InputError
from planner.offload import decode_split
from planner.solve.cache import BASELINES, baseline_configs, frequency_order, solve_cache
from planner.solve.cache_lru import _tail_counts, stack_distances
from planner.traces import Trace


def _timing(cpu=True):
    # values without exact ties between a CPU expert and a copy (the two replays add in different orders)
    return OffloadTiming(copy_ms=0.3245, ffn_ms_M=np.array([0.0, 0.0237, 0.031, 0.04]), pre_ms=0.0766, other_ms=0.0955,
                         overlap=0.89, expert_bytes=1.0, cpu_ms_M=np.array([0.0, 0.5007, 0.61, 0.7]) if cpu else None)


def _counts(rng, L=3, E=8, k=2, T=120, batch=1):
    ids = np.stack([np.stack([rng.choice(E, k, replace=False) for _ in range(T)]) for _ in range(L)]).astype(np.int32)
    return step_counts(ids, np.arange(T) // batch, E)


@pytest.mark.parametrize("batch", [1, 3])
def test_fast_replay_equals_reference(batch):
    rng = np.random.default_rng(batch)
    for _ in range(6):
        counts = _counts(rng, batch=batch)
        res = rng.random((3, 8)) < 0.25
        dyn = rng.integers(0, 4, 3)
        rf = int(rng.integers(0, counts.shape[0] - 1))
        for pol, cpu in itertools.product(("lru", "lfu"), ("off", "fastest", "all")):
            cfg = CacheConfig(res, dyn, pol, None, cpu)
            a = simulate_cache(counts, cfg, _timing(), record_from=rf, batch=batch)
            f = replay_fast(counts, cfg, _timing(), record_from=rf, batch=batch)
            for n in ("need_SL", "hit_SL", "demand_SL", "cpu_SL", "prefetch_SL"):
                assert (getattr(a, n) == getattr(f, n)).all(), (pol, cpu, n)
            np.testing.assert_allclose(f.layer_ms_SL, a.layer_ms_SL, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(f.compute_ms_SL, a.compute_ms_SL, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(f.step_ms_S, a.step_ms_S, rtol=1e-9)


def test_replay_dispatch_and_prefetch_is_refused_by_the_fast_path():
    rng = np.random.default_rng(5)
    counts = _counts(rng)
    probs = rng.random(counts.shape).astype(np.float32)
    cfg = CacheConfig(np.zeros((3, 8), bool), np.array([1, 2, 1]), "lru", PrefetchConfig(probs, 0.6, 2))
    with pytest.raises(InputError):
        replay_fast(counts, cfg, _timing())
    a = simulate_cache(counts, cfg, _timing())
    b = replay(counts, cfg, _timing())  # falls back to the reference
    assert a.transfers == b.transfers and a.prefetch_SL.sum() > 0


def test_stack_distances_give_lru_misses_of_every_split():
    rng = np.random.default_rng(7)
    S, E = 150, 8
    need = np.zeros((S, E), bool)
    for s in range(S):
        need[s, rng.choice(E, 3, replace=False, p=np.array([8, 6, 5, 4, 3, 2, 1, 1]) / 30)] = True
    order = frequency_order(need[:, None, :].astype(np.int32))[0]
    step, rank, D = stack_distances(need, order)
    C = _tail_counts(S, E, step, rank, D)
    miss = C.sum(axis=1)  # [r, d]
    for r in range(E + 1):
        pinned = set(order[:r].tolist())
        keys = [e for s in range(S) for e in np.flatnonzero(need[s]).tolist() if e not in pinned]  # step, then id
        for d in range(E + 1 - r):
            assert miss[r, d] == (lru_misses(keys, d) if d > 0 else len(keys)), (r, d)


def test_search_on_a_long_trace_subsamples_and_states_its_error():
    rng = np.random.default_rng(11)
    S, L, E = 200_000, 2, 8
    counts = np.zeros((S, L, E), np.int32)
    hot = rng.integers(0, E, size=(S // 500 + 1, L))  # phases: a sequence's favourite expert
    for layer in range(L):
        a = np.repeat(hot[:, layer], 500)[:S]
        b = (a + 1 + rng.integers(0, E - 1, S)) % E
        counts[np.arange(S), layer, a] = 1
        counts[np.arange(S), layer, b] = 1
    t0 = time.perf_counter()
    sol = solve_cache(counts, None, _timing(), slots=6, prefetch_count=0, time_limit=60.0)
    assert time.perf_counter() - t0 < 120
    assert sol.sampled_steps is not None and sol.sampled_steps < S
    assert sol.sample_error is not None and 0 <= sol.sample_error < 0.05
    assert set(BASELINES) <= set(sol.candidates) and not sol.stopped_by_time
    assert sol.candidates[sol.chosen] <= min(sol.candidates[b] for b in BASELINES) + 1e-12


def test_plan_never_worse_than_baselines_with_dynamic_reuse():
    # sequences reuse their experts: the search must find the LRU / CPU side and never lose to a baseline
    rng = np.random.default_rng(2)
    S, L, E = 3000, 3, 16
    counts = np.zeros((S, L, E), np.int32)
    for layer in range(L):
        fav = np.repeat(rng.integers(0, E, S // 50 + 1), 50)[:S]
        for j in range(3):
            counts[np.arange(S), layer, (fav + j * rng.integers(1, 3, S)) % E] = 1
    for slots in (6, 12, 24):
        sol = solve_cache(counts, None, _timing(), slots=slots, prefetch_count=0)
        for name, cfg in baseline_configs(counts, L, E, slots).items():
            assert sol.candidates[sol.chosen] <= simulate_cache(counts, cfg, _timing()).step_ms_S.mean() + 1e-9, name


def _seq_trace():
    # 4 sequences interleaved in the file (as a server log would hold them); seq 7 arrives first
    seq = np.array([7, 7, 2, 7, 2, 5, 5, 9, 9, 9, 5])
    pos = np.array([0, 1, 0, 2, 1, 0, 1, 0, 1, 2, 2])
    ids = (seq * 10 + pos).reshape(1, -1, 1)
    return Trace(ids.astype(np.int32), 128, seq_id=seq, pos=pos)


def test_decode_split_by_sequences_batch_1():
    tr = _seq_trace()
    d, P, how = decode_split(tr, 1, 0.75)
    # arrival order 7, 2, 5, 9; three planned (3 + 2 + 3 tokens), 9 held out (3 tokens); tokens by pos
    assert P == 8 and d.num_tokens == 11 and (d.step == np.arange(11)).all()
    assert (d.topk_ids[0, :, 0] == [70, 71, 72, 20, 21, 50, 51, 52, 90, 91, 92]).all()
    assert "the last 1 of 4" in how


def test_decode_split_by_sequences_batch_2():
    tr = _seq_trace()
    d, P, _ = decode_split(tr, 2, 0.5)
    # planned: 7 and 2 side by side (3 steps), held out: 5 and 9 side by side after them (3 steps)
    assert P == 3 and int(d.step.max()) == 5
    plan_ids = set(d.topk_ids[0, d.step < P, 0].tolist())
    held_ids = set(d.topk_ids[0, d.step >= P, 0].tolist())
    assert plan_ids == {70, 71, 72, 20, 21} and held_ids == {50, 51, 52, 90, 91, 92}
    with pytest.raises(InputError):
        decode_split(tr, 1, 1.5)


def test_decode_split_without_sequences_keeps_steps():
    ids = np.arange(40).reshape(1, 40, 1).astype(np.int32) % 8
    tr = Trace(ids, 8, step=np.repeat(np.arange(4), 10))
    d, P, how = decode_split(tr, 1, 0.75, decode_tokens=8)
    assert d.num_tokens == 8 and P == 6 and "held-out decode steps" in how


def test_real_routing_plan_never_worse_than_baselines_on_planning_steps():
    from planner.offload import prepare_offload, solve_offload
    from planner.specs.hardware import load_hardware
    from planner.specs.model_io import load_model
    from planner.traces import load_trace
    from tests.conftest import real_trace_file

    full = load_trace(real_trace_file("deepseek-v2-lite-chat-puffin-a.npz"))
    keep = full.seq_id < np.unique(full.seq_id)[40]
    tr = Trace(full.topk_ids[:, keep], full.num_experts, seq_id=full.seq_id[keep], pos=full.pos[keep])
    m, hw = load_model("deepseek-v2-lite"), load_hardware("h100-sxm")
    pr = prepare_offload(m, hw, tr, "real", gpu_memory_gb=12, batch=1, seq_len=4096, seed=0, time_limit=60,
                         train_fraction=0.75)
    assert "held-out sequences: the last 10 of 40" in pr.evaluated_on
    p = solve_offload(pr, thresholds=(None,))
    cand = p.solver.candidates
    assert all(b in cand for b in BASELINES)
    assert p.solver.objective <= min(cand[b] for b in BASELINES) + 1e-9


def test_stall_tables_do_not_depend_on_the_chunking(monkeypatch):
    import planner.solve.cache_lru as cl

    rng = np.random.default_rng(4)
    counts = _counts(rng, L=2, E=8, k=3, T=900, batch=2)
    order = frequency_order(counts)
    gs = {"off": cl.miss_stall(counts, _timing(), "off"), "fastest": cl.miss_stall(counts, _timing(), "fastest")}
    whole = cl.hybrid_stall_tables(counts, order, gs)
    monkeypatch.setattr(cl, "CHUNK_ELEMENTS", 1)  # 256 steps per chunk
    parts = cl.hybrid_stall_tables(counts, order, gs)
    for name in gs:
        for a, b in zip(whole[name], parts[name], strict=True):
            np.testing.assert_allclose(a, b)
