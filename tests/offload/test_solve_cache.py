"""Cache sizing (planner.solve.cache) and the offload plan (planner.offload)."""

import itertools

import numpy as np
import pytest

import planner
from planner.cachesim import OffloadTiming, simulate_cache, step_counts
from planner.errors import InfeasibleError, InputError
from planner.offload import memory_budget, prepare_offload, solve_offload
from planner.solve.cache import (
    BASELINES,
    allocate,
    baseline_configs,
    even_lru,
    global_topk,
    layer_stall_table,
    solve_cache,
)
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model
from planner.specs.plan import Plan
from planner.traces import synth_trace


def test_allocate_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(10):
        cost = np.sort(rng.random((3, 5)), axis=1)[:, ::-1].copy()  # 3 layers, r = 0..4
        cost[1] += rng.random(5) * 0.3  # not monotone everywhere
        for budget in (0, 3, 7, 12, 20):
            r = allocate(cost, budget)
            assert r.sum() <= budget
            best = min(
                sum(cost[i, c[i]] for i in range(3))
                for c in itertools.product(range(5), repeat=3) if sum(c) <= budget
            )
            assert sum(cost[i, r[i]] for i in range(3)) == pytest.approx(best)


def test_allocate_hand_worked():
    # layer 0 saves 5 with its first slot, layer 1 saves 1: one slot goes to layer 0
    cost = np.array([[5.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    assert allocate(cost, 1).tolist() == [1, 0]
    assert allocate(cost, 2).tolist() == [1, 1]
    assert allocate(cost, 10).tolist() == [1, 1]  # no slot that saves nothing


def test_global_topk_and_even_lru():
    counts = np.zeros((2, 2, 3), np.int32)
    counts[:, 0, 0] = 1
    counts[0, 1, 2] = counts[1, 1, 2] = counts[0, 1, 1] = 1
    top = global_topk(counts, 2)
    assert top.tolist() == [[True, False, False], [False, False, True]]
    lru = even_lru(3, 4, 7)
    assert lru.dynamic_L.tolist() == [3, 2, 2] and lru.slots == 7 and not lru.resident_LE.any()


def _timing():
    return OffloadTiming(copy_ms=1.0, ffn_ms_M=np.array([0.0, 0.1]), pre_ms=0.2, other_ms=0.0, overlap=1.0,
                         expert_bytes=1.0, cpu_ms_M=np.array([0.0, 3.0]))


def test_stall_table_hand_computed():
    # one layer, two steps needing expert 0 then experts 0 and 1; no prefetch
    counts = np.zeros((2, 1, 2), np.int32)
    counts[0, 0, 0] = counts[1, 0, 0] = counts[1, 0, 1] = 1
    f = layer_stall_table(counts, _timing(), np.array([[0, 1]]), None, None)
    # r = 0: step 0 one miss: ready 1.0 + 0.1 - 0.1 = 1.0; step 1 two misses: 2.0 + 0.1 - 0.2 = 1.9
    # r = 1: step 1 one miss: 1.0 + 0.1 - 0.2 = 0.9; r = 2: nothing
    np.testing.assert_allclose(f, [[(1.0 + 1.9) / 2, 0.9 / 2, 0.0]])
    # a CPU expert of 0.5 ms beside the copies: step 0 runs its miss on the CPU (0.5 - 0.1), step 1 both
    # (max(2 · 0.5, ...) = 1.0 beats copy + CPU 1.1): 1.0 - 0.2; with r = 1 step 1's one miss: 0.5 - 0.2
    t = _timing()
    fast = OffloadTiming(t.copy_ms, t.ffn_ms_M, t.pre_ms, t.other_ms, t.overlap, t.expert_bytes, np.array([0.0, 0.5]))
    f = layer_stall_table(counts, fast, np.array([[0, 1]]), None, None, cpu="fastest")
    np.testing.assert_allclose(f, [[(0.4 + 0.8) / 2, 0.3 / 2, 0.0]])


def test_solve_cache_respects_slots_and_is_never_worse_than_a_baseline():
    rng = np.random.default_rng(3)
    ids = (rng.zipf(1.6, size=(3, 200, 2)) % 8).astype(np.int32)
    ids[:, :, 1] = (ids[:, :, 0] + 1 + rng.integers(0, 7, size=(3, 200))) % 8  # distinct top-2
    counts = step_counts(ids, np.arange(200), 8)
    for slots in (3, 9, 15):
        sol = solve_cache(counts, None, _timing(), slots=slots, prefetch_count=0)
        cfg = sol.config
        assert cfg.resident_LE.sum() + cfg.dynamic_L.sum() <= slots
        assert set(BASELINES) <= set(sol.candidates)  # always scored
        # never slower than any baseline on the planning steps, replayed independently here
        for name, base in baseline_configs(counts, 3, 8, slots).items():
            ref = simulate_cache(counts, base, _timing())
            assert sol.candidates[sol.chosen] <= ref.step_ms_S.mean() + 1e-9, name
        assert sol.candidates[sol.chosen] == pytest.approx(simulate_cache(counts, cfg, _timing()).step_ms_S.mean())


@pytest.fixture(scope="module")
def small():
    m = load_model("deepseek-v2-lite")
    hw = load_hardware("h100-sxm")
    tr = synth_trace(m, num_tokens=384, tokens_per_step=384, num_ranks=6, weights=False, seed=0)
    return m, hw, tr


def test_infeasible_budget_names_the_numbers(small):
    m, hw, tr = small
    with pytest.raises(InfeasibleError) as e:
        memory_budget(m, 2.0, 1, 4096)
    assert str(e.value).startswith("gpu_memory_gb 2 ")  # the API names the field, the CLI its flag
    msg = e.value.for_flags()
    assert "--gpu-memory-gb 2" in msg and "non-expert weights 2.44 GiB" in msg and "raise --gpu-memory-gb to at least" in msg
    need = float(msg.rsplit("at least ", 1)[1])
    memory_budget(m, need + 0.01, 1, 4096)  # the figure it names is enough
    with pytest.raises(InputError):
        prepare_offload(m, hw, tr, "t", gpu_memory_gb=500, batch=1, seq_len=4096, seed=0, time_limit=1, train_fraction=0.75)


def test_offload_plan_within_budget(small):
    m, hw, tr = small
    pr = prepare_offload(m, hw, tr, "t", gpu_memory_gb=12, batch=1, seq_len=4096, seed=0, time_limit=10,
                         train_fraction=0.75)
    p = solve_offload(pr, dynamic_choices=(0, 1), thresholds=(None, 0.5))
    c = p.cache
    slots = sum(len(r) for r in c.resident) + sum(c.dynamic_slots) + (c.prefetch.count if c.prefetch else 0)
    assert slots <= pr.budget.slots
    assert (slots + c.staging_slots) * m.expert_bytes <= c.budget_bytes
    assert c.budget_bytes + pr.budget.non_expert + pr.budget.kv_cache + pr.budget.activations <= 12e9 + 1
    assert 0 < c.predicted.hit_rate < 1 and c.predicted.tokens_per_s > 0
    assert p.predicted.tokens_per_s == pytest.approx(c.predicted.tokens_per_s)
    assert c.predicted.belady_transfers_per_step <= c.predicted.transfers_per_step
    assert Plan.model_validate_json(p.to_json()) == p  # the schema accepts its own plan


def test_api_plan_offload(small):
    m, hw, tr = small
    p = planner.plan(m, hw, mode="offload", gpu_memory_gb=40, trace=tr)  # everything fits
    assert all(len(r) == m.num_experts for r in p.cache.resident) and p.cache.predicted.hit_rate == 1.0
    rep = planner.simulate(p, tr)
    s = rep.summary()
    assert s["mode"] == "offload" and s["hit_rate"] == 1.0 and s["transfers"] == 0


def test_cache_search_stops_at_its_time_limit(small):
    m, hw, tr = small
    pr = prepare_offload(m, hw, tr, "t", gpu_memory_gb=12, batch=1, seq_len=4096, seed=0, time_limit=1e-9,
                         train_fraction=0.75)
    p = solve_offload(pr, dynamic_choices=(0, 1), thresholds=(None, 0.5))
    assert p.solver.status == "time_limit"
    assert list(p.solver.candidates) == list(BASELINES)  # only the always-scored baselines ran
    full = solve_offload(pr.__class__(**{**pr.__dict__, "time_limit": 60.0}), dynamic_choices=(0, 1), thresholds=(None, 0.5))
    assert full.solver.status == "heuristic" and len(full.solver.candidates) > 1
