"""Placement solver: exact optima worked out by hand, the swap tables against a full evaluation,
the stage-1 MILP, validity, determinism, the time limit, migration and infeasibility.

Hand cases use a linear expert time ``f(n) = 0.01·n`` ms (0 for no token) and links fast enough
that communication is negligible unless a case says otherwise, so the optimum is a
load-balancing (or co-location) argument one can check on paper.
"""

import re

import numpy as np
import pytest

import planner
from planner.cost.comm import dispatch_copies, dispatch_traffic
from planner.errors import InfeasibleError, InputError
from planner.simulator import choose_slots
from planner.solve import milp
from planner.solve.gpus import build_node_search, fixed_nic_SG, layer_items
from planner.solve.gpusearch import NodeProblem
from planner.solve.nodeswap import node_copies
from planner.solve.placement import (
    NodeSearch,
    PlacementCost,
    PlacementInputs,
    check_problem,
    lower_bound,
    milp_solver_name,
    planning_objective,
    solve_placement,
    stage1_layer,
)
from planner.solve.problem import search_sample


def linear_cost(nvlink_gbps=1e9, nvlink_us=0.0, nic_gbps=1e9, nic_us=0.0, expert_bytes=1e6):
    return PlacementCost(
        ffn_ms=lambda n: 0.01 * np.asarray(n, dtype=float), token_bytes=1000.0,
        nvlink_gbps=nvlink_gbps, nvlink_latency_us=nvlink_us, nic_gbps=nic_gbps, nic_latency_us=nic_us,
        expert_bytes=expert_bytes,
    )


def inputs(ids_LTk, src_T, *, num_experts, num_gpus, slots, gpus_per_node=None, cost=None, step_T=None, **kw):
    ids = np.asarray(ids_LTk)
    T = ids.shape[1]
    step = np.zeros(T, dtype=np.int64) if step_T is None else np.asarray(step_T)
    return PlacementInputs(
        ids_LTk=ids, step_T=step, src_T=np.asarray(src_T), tok_index_T=np.arange(T), num_steps=int(step.max()) + 1,
        num_experts=num_experts, num_gpus=num_gpus, gpus_per_node=gpus_per_node or num_gpus, slots_per_gpu=slots,
        cost=cost or linear_cost(), **kw,
    )


def gpu_sets(row, slots):
    return [sorted(row[i:i + slots]) for i in range(0, len(row), slots)]


# ---- exact optima by hand ---------------------------------------------------------------------


def test_four_experts_two_gpus_balance():
    # top-1 loads per step: e0 4, e1 3, e2 2, e3 1 (10 tokens). Two GPUs of two slots: the
    # balanced split is {e0, e3} | {e1, e2} = 5 | 5 tokens -> 0.05 ms per layer; any other split
    # puts >= 6 on one GPU.
    ids = np.array([0] * 4 + [1] * 3 + [2] * 2 + [3])[None, :, None]
    res = solve_placement(inputs(ids, np.zeros(10, int), num_experts=4, num_gpus=2, slots=2))
    sets = gpu_sets(res.phy2log_LP[0].tolist(), 2)
    assert sorted(sets) == [[0, 3], [1, 2]]
    assert res.objective == pytest.approx(0.05)
    assert res.status == "optimal" and res.bound == res.objective and res.gap == 0.0


def test_coactivated_pairs_share_a_gpu():
    # top-2: four tokens on GPU0 pick {e0, e1}, four on GPU1 pick {e2, e3}. Every split has 8
    # pairs per GPU (0.08 ms of compute); only {e0, e1} on GPU0 and {e2, e3} on GPU1 sends
    # nothing, any other placement pays NVLink latency + bytes. The optimum is that one.
    ids = np.array([[0, 1]] * 4 + [[2, 3]] * 4)[None]
    src = np.array([0] * 4 + [1] * 4)
    cost = linear_cost(nvlink_gbps=1.0, nvlink_us=10.0)
    res = solve_placement(inputs(ids, src, num_experts=4, num_gpus=2, slots=2, cost=cost))
    assert gpu_sets(res.phy2log_LP[0].tolist(), 2) == [[0, 1], [2, 3]]
    assert res.objective == pytest.approx(0.08)
    assert res.status == "optimal"


def test_hot_expert_gets_the_redundant_slot():
    # loads 6, 1, 1 on 2 GPUs × 2 slots (one redundant slot): e0 gets the replica (3 + 3), and
    # {e0, e1} | {e0, e2} gives 4 | 4 tokens -> 0.04 ms; without the replica the best is 6 | 2.
    ids = np.array([0] * 6 + [1, 2])[None, :, None]
    res = solve_placement(inputs(ids, np.zeros(8, int), num_experts=3, num_gpus=2, slots=2))
    row = res.phy2log_LP[0].tolist()
    assert sorted(row) == [0, 0, 1, 2]
    assert gpu_sets(row, 2) in ([[0, 1], [0, 2]], [[0, 2], [0, 1]])
    assert res.objective == pytest.approx(0.04)
    assert res.bound <= res.objective + 1e-12


def test_lower_bound_is_below_every_placement():
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(8, 2, replace=False) for _ in range(64)])[None]
    inp = inputs(ids, rng.integers(0, 4, 64), num_experts=8, num_gpus=4, slots=2,
                 cost=linear_cost(nvlink_gbps=1.0, nvlink_us=10.0))
    lb = lower_bound(inp)
    for _ in range(20):
        p2l = rng.permutation(8)[None]
        assert lb <= planning_objective(p2l, inp) + 1e-12


# ---- the search's tables against a full evaluation ---------------------------------------------


def _item_rows(rng, n, nl, K):
    """``n`` rows of 2..K distinct sorted item ids out of ``nl``, padded with ``nl``."""
    sig = np.full((n, K), nl)
    for i in range(n):
        m = rng.integers(2, min(K, nl) + 1)
        sig[i, :m] = np.sort(rng.choice(nl, m, replace=False))
    return sig


@pytest.mark.parametrize("seed", range(6))
def test_swap_tables_match_full_evaluation(seed):
    rng = np.random.default_rng(seed)
    cost = linear_cost(nvlink_gbps=100.0, nvlink_us=10.0, nic_gbps=10.0, nic_us=20.0)
    g, S, nS, K = int(rng.integers(2, 5)), int(rng.integers(1, 4)), 3, 4
    nl, nT = g * S, int(rng.choice([1, nS]))

    def rows(n):
        return _item_rows(rng, n, nl, K)

    problem = NodeProblem(
        gpu_I=rng.permutation(np.repeat(np.arange(g), S)), gpus=g, compute_ms_IS=rng.random((nl, nS)),
        tokens_IS=rng.random((nl, nS)), remote_single_IT=rng.random((nl, nT)), remote_rows_RK=rows(20),
        remote_step_R=rng.integers(0, nT, 20), remote_weight_R=rng.random(20),
        intra_single_IgT=rng.random((nl, g, nT)), intra_rows_RK=rows(15), intra_src_R=rng.integers(0, g, 15),
        intra_step_R=rng.integers(0, nT, 15), intra_weight_R=rng.random(15), fixed_nic_Tg=rng.random((nT, g)),
    )
    ns = NodeSearch(problem, cost)
    for pstar in range(g):
        A = np.nonzero(ns.gpos == pstar)[0]
        B = np.nonzero(ns.gpos != pstar)[0]
        recv, isend, irecv = ns._swap_tables(pstar, A, B)
        for i, a in enumerate(A):
            for j, b in enumerate(B):
                gp = ns.gpos.copy()
                gp[a], gp[b] = gp[b], gp[a]
                full = ns._state(gp[None])
                np.testing.assert_allclose(recv[i, j], full[2][0], atol=1e-9)
                np.testing.assert_allclose(isend[i, j], full[3][0], atol=1e-9)
                np.testing.assert_allclose(irecv[i, j], full[4][0], atol=1e-9)
        val, a, b = ns._swap_eval(pstar)
        if np.isfinite(val):
            gp = ns.gpos.copy()
            gp[a], gp[b] = gp[b], gp[a]
            assert ns.evaluate(gp[None])[0][0] == pytest.approx(val)


def _node_problem(rng, g, S, nS=2, K=4, n_rows=30):
    nl, nT = g * S, 1

    def rows(n):
        return _item_rows(rng, n, nl, K)

    return NodeProblem(
        gpu_I=rng.permutation(np.repeat(np.arange(g), S)), gpus=g, compute_ms_IS=rng.random((nl, nS)),
        tokens_IS=rng.random((nl, nS)), remote_single_IT=rng.random((nl, nT)), remote_rows_RK=rows(n_rows),
        remote_step_R=np.zeros(n_rows, dtype=int), remote_weight_R=rng.random(n_rows),
        intra_single_IgT=rng.random((nl, g, nT)), intra_rows_RK=rows(n_rows), intra_src_R=rng.integers(0, g, n_rows),
        intra_step_R=np.zeros(n_rows, dtype=int), intra_weight_R=rng.random(n_rows), fixed_nic_Tg=rng.random((nT, g)),
    )


def test_position_pass_tries_every_pair_up_to_16_gpus_then_the_costliest_with_all():
    from planner.solve.gpusearch import MAX_POSITION_PAIRS

    cost = linear_cost(nvlink_gbps=100.0, nvlink_us=10.0, nic_gbps=10.0, nic_us=20.0)
    rng = np.random.default_rng(0)
    for g in (2, 8, 16):
        ns = NodeSearch(_node_problem(rng, g, 2), cost)
        assert ns.position_pairs() == [(p, q) for p in range(g) for q in range(p + 1, g)]
    ns = NodeSearch(_node_problem(rng, 72, 1), cost)
    pairs = ns.position_pairs()
    top = ns._position_order()[:MAX_POSITION_PAIRS // 71]  # one GPU: 71 pairs
    assert len(pairs) == len(set(pairs)) <= MAX_POSITION_PAIRS
    assert pairs == sorted((min(p, q), max(p, q)) for p in top for q in range(72) if q != p)
    # the pass takes the best of those swaps when it improves, scored by the full evaluation
    before = ns.value
    cand = []
    for p, q in pairs:
        gp = ns.gpos.copy()
        gp[ns.gpos == p], gp[ns.gpos == q] = q, p
        cand.append(gp)
    best = float(np.min(ns._feasible(*ns.evaluate(np.array(cand)))))
    moved = ns.position_pass()
    assert moved == (best < before) and (ns.value == pytest.approx(best) if moved else ns.value == before)


# ---- stage 1 --------------------------------------------------------------------------------------


def test_stage1_milp_keeps_coactivated_blocks_together():
    # 4 equal blocks on 2 nodes; 10 tokens pick both 0 and 1, 10 both 2 and 3, 1 both 0 and 2:
    # {0, 1} | {2, 3} splits one token's pair, any other split at least ten.
    assert milp_solver_name() == "HiGHS"
    node_B, status, obj, bound = stage1_layer(
        np.ones(4), np.ones(4, dtype=int), np.array([[0, 1], [2, 3], [0, 2]]), np.array([10.0, 10.0, 1.0]),
        2, np.array([0, 1, 0, 1]), lam_node=1.0, lam_copy=1.0, mig_BN=None, time_limit=10.0,
    )
    assert node_B[0] == node_B[1] != node_B[2] == node_B[3]
    assert status == "optimal" and obj == pytest.approx(2.0 + 1.0)


def _stage1_case():
    return stage1_layer(
        np.ones(4), np.ones(4, dtype=int), np.array([[0, 1], [2, 3], [0, 2]]), np.array([10.0, 10.0, 1.0]),
        2, np.array([0, 1, 0, 1]), lam_node=1.0, lam_copy=1.0, mig_BN=None, time_limit=10.0,
    )


def test_failing_highs_falls_back_to_cbc_with_a_warning(monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("simulated HiGHS crash")

    monkeypatch.setattr(milp, "_solve_highs", broken)
    with caplog.at_level("WARNING", logger="planner.solve.milp"):
        node_B, status, obj, _ = _stage1_case()
    assert "HiGHS failed (RuntimeError: simulated HiGHS crash); falling back to CBC" in caplog.text
    assert node_B[0] == node_B[1] != node_B[2] == node_B[3]  # CBC found the same optimum
    assert status == "optimal" and obj == pytest.approx(3.0)


def test_failing_solver_binaries_keep_the_warm_start_and_the_time_limit(monkeypatch, caplog):
    import pulp

    monkeypatch.setattr(milp, "_solve_highs", lambda *a, **k: (_ for _ in ()).throw(OSError("highs gone")))
    real_cbc = pulp.PULP_CBC_CMD
    # a CBC "binary" that does not exist: PuLP raises PulpSolverError when it tries to run it
    monkeypatch.setattr(pulp, "PULP_CBC_CMD", lambda **kw: real_cbc(path="/nonexistent/cbc", **kw))
    with caplog.at_level("WARNING", logger="planner.solve.milp"):
        node_B, status, obj, bound = _stage1_case()
        assert "CBC failed" in caplog.text
        assert status == "none" and obj is None  # stage 1 keeps the warm start it was given
        np.testing.assert_array_equal(node_B, [0, 1, 0, 1])
        # a whole plan still comes out valid, within its limit, on a two-node problem with MILPs
        calls = []
        real_milp = milp.solve_milp
        monkeypatch.setattr(milp, "solve_milp", lambda *a, **k: calls.append(1) or real_milp(*a, **k))
        p = planner.plan("deepseek-v3", nodes=2, ep=16, time_limit=6)
        assert p.solver.time_s <= 6  # the solver's own clock (loading and scoring come on top)
    assert len(calls) > 0  # stage 1 ran its MILPs, each failing over to the warm start
    _check_valid(p)
    assert p.solver.objective <= p.solver.candidates["eplb"]


# ---- validity, determinism, time limit -----------------------------------------------------------


def _check_valid(plan):
    m, pl = plan.model, plan.placement
    p2l = np.asarray(pl.physical_to_logical)
    assert p2l.shape == (m.num_moe_layers, plan.parallel.ep * pl.slots_per_gpu)
    for row in p2l:
        assert np.bincount(row, minlength=m.num_experts).min() >= 1


@pytest.mark.parametrize(
    "model, kw",
    [
        ("mixtral-8x7b", {"ep": 4, "etp": 2}),
        ("deepseek-v2-lite", {"nodes": 2, "redundant_experts": 16}),
        ("deepseek-v2-lite", {"nodes": 2, "redundant_experts": 16, "dispatch": "local-first"}),
        ("deepseek-v2-lite", {"nodes": 2, "redundant_experts": 16, "dispatch": "nearest"}),
    ],
)
def test_plans_are_valid_and_never_worse_than_eplb(model, kw):
    p = planner.plan(model, **kw)
    _check_valid(p)
    s = p.solver
    assert s.name == "placement-ilp" and s.status in ("optimal", "feasible")
    assert s.objective == min(s.candidates.values()) and s.objective <= s.candidates["eplb"]
    assert s.bound is not None and s.bound <= s.objective and 0 <= s.gap < 1


def _medium_inputs(seed=0, **kw):
    rng = np.random.default_rng(seed)
    L, T, E, k = 3, 600, 16, 4
    pop = rng.random(E) ** 2 + 0.05
    ids = np.stack([[rng.choice(E, k, replace=False, p=pop / pop.sum()) for _ in range(T)] for _ in range(L)])
    cost = linear_cost(nvlink_gbps=50.0, nvlink_us=10.0, nic_gbps=5.0, nic_us=20.0)
    return inputs(ids, rng.integers(0, 8, T), num_experts=E, num_gpus=8, slots=3, gpus_per_node=4,
                  cost=cost, step_T=np.arange(T) // 150, **kw)


def test_same_inputs_same_placement():
    a = solve_placement(_medium_inputs())
    b = solve_placement(_medium_inputs())
    assert np.array_equal(a.phy2log_LP, b.phy2log_LP) and a.objective == b.objective
    assert a.status == "feasible" and a.stages.search.accepted > 0


def test_time_limit_is_respected():
    # an effectively unbounded search budget: only the time limit can stop it
    res = solve_placement(_medium_inputs(relay="first-destination"), time_limit=0.5, search_evals=10**6)
    assert res.time_s <= 0.5
    assert res.status in ("time_limit", "feasible")


def test_plan_respects_time_limit():
    p = planner.plan("deepseek-v2-lite", nodes=2, redundant_experts=16, time_limit=1.0)
    assert p.solver.time_s <= 1.0
    _check_valid(p)


# ---- migration -------------------------------------------------------------------------------------


def test_migration_weight_keeps_the_previous_placement():
    inp = _medium_inputs()
    first = solve_placement(inp)
    prev = np.roll(first.phy2log_LP, 3, axis=1)  # a valid but different placement in service
    stay = solve_placement(inp, previous_LP=prev, migration_weight=1e6)
    assert np.array_equal(stay.phy2log_LP, prev) and stay.chosen == "previous"
    free = solve_placement(inp, previous_LP=prev, migration_weight=0.0)
    assert free.objective <= stay.candidates["previous"]


def test_previous_plan_through_the_api(tmp_path):
    p = planner.plan("mixtral-8x7b", ep=4, etp=2)
    p.save(tmp_path / "plan.json")
    again = planner.plan("mixtral-8x7b", ep=4, etp=2, previous=tmp_path / "plan.json", migration_weight=1e6)
    assert again.placement == p.placement
    with pytest.raises(InputError, match=r"previous placement has shape \[32, 8\].*needs \[32, 12\]"):
        planner.plan("mixtral-8x7b", ep=4, etp=2, redundant_experts=4, previous=tmp_path / "plan.json")


# ---- infeasible and bad input ------------------------------------------------------------------------


def test_more_experts_than_slots_is_explained():
    with pytest.raises(InfeasibleError, match=r"8 experts need at least 8 physical slots but there are 6 "
                                               r"\(3 EP ranks × 2 slots\).*add 2 slots"):
        check_problem(8, 6, 3, 8)
    ids = np.zeros((1, 4, 1), dtype=int)
    with pytest.raises(InfeasibleError, match="8 experts need"):
        solve_placement(inputs(ids, np.zeros(4, int), num_experts=8, num_gpus=3, slots=2))


def test_bad_previous_and_weight():
    inp = _medium_inputs()
    with pytest.raises(InputError, match=r"previous placement has shape"):
        solve_placement(inp, previous_LP=np.zeros((3, 5), dtype=int))
    with pytest.raises(InputError, match="migration_weight must be >= 0"):
        solve_placement(inp, previous_LP=solve_placement(inp).phy2log_LP, migration_weight=-1)


def test_groups_stay_node_aligned_with_the_milp():
    # 4 routing groups of 4 experts on 2 nodes × 2 GPUs: the stage-1 MILP places whole groups
    from planner.traces import synth_trace

    tr = synth_trace(num_layers=2, num_experts=16, top_k=4, n_group=4, topk_group=2, num_tokens=1024,
                     tokens_per_step=256, num_ranks=4, seed=1)
    inp = PlacementInputs(
        ids_LTk=tr.topk_ids, step_T=tr.step_index, src_T=tr.source_rank, tok_index_T=np.arange(1024), num_steps=4,
        num_experts=16, num_gpus=4, gpus_per_node=2, slots_per_gpu=5,
        cost=linear_cost(nvlink_gbps=50.0, nvlink_us=10.0, nic_gbps=5.0, nic_us=20.0), n_group=4, topk_group=2,
    )
    res = solve_placement(inp)
    assert res.stages.stage1.layers_solved == 2 and res.stages.stage1.blocks == "groups"
    for row in res.phy2log_LP:
        for node in (row[:10], row[10:]):
            groups = set(int(e) // 4 for e in node)
            assert len(groups) == 2 and set(node.tolist()) == {e for g in groups for e in range(4 * g, 4 * g + 4)}


def test_rank_locality_puts_a_group_on_the_node_its_tokens_come_from():
    # 8 experts in 2 routing groups of 4 (top-2 inside one group), 2 nodes × 2 GPUs × 2 slots.
    # Tokens from node 0's ranks pick only group 1's experts, node 1's only group 0's: equal
    # loads either way, so only locality decides — group 1 on node 0 needs no inter-node copy.
    rng = np.random.default_rng(0)
    T = 400
    src = np.repeat(np.arange(4), T // 4)
    ids = np.empty((1, T, 2), dtype=np.int64)
    for t in range(T):
        group = 1 if src[t] < 2 else 0
        ids[0, t] = 4 * group + rng.choice(4, 2, replace=False)
    cost = linear_cost(nvlink_gbps=50.0, nvlink_us=1.0, nic_gbps=5.0, nic_us=5.0)
    inp = inputs(ids, src, num_experts=8, num_gpus=4, slots=2, gpus_per_node=2, cost=cost,
                 step_T=np.arange(T) // 100, n_group=2, topk_group=1)
    res = solve_placement(inp)
    node0 = set(res.phy2log_LP[0, :4].tolist())
    assert node0 == {4, 5, 6, 7}
    assert res.stages.stage1.layers_solved == 1
    assert res.objective < res.candidates["eplb"]


def test_slow_scoring_keeps_eplb_rather_than_overrun_the_limit():
    import time

    def slow(p2l):  # a scorer that takes 0.3 s: after EPLB's there is no time for another
        time.sleep(0.3)
        return 1.0

    res = solve_placement(_medium_inputs(), time_limit=0.5, evaluate=slow)
    assert list(res.candidates) == ["eplb"] and res.chosen == "eplb" and res.status == "time_limit"
    assert all(np.bincount(row, minlength=16).min() >= 1 for row in res.phy2log_LP)  # a valid placement


def test_plan_says_when_the_limit_left_the_solver_unscored(monkeypatch):
    """The API path of the case above: the plan keeps EPLB's placement and says why (it used to
    look up the unscored candidate's figure and fail)."""
    import time

    import planner.api as api

    real = api.solve_placement

    def with_slow_scoring(inp, **kw):
        objective = kw["evaluate"]

        def slow(p2l):
            time.sleep(0.6)
            return objective(p2l)

        return real(inp, **{**kw, "time_limit": 1.0, "evaluate": slow})

    monkeypatch.setattr(api, "solve_placement", with_slow_scoring)
    p = planner.plan("deepseek-v2-lite", nodes=2, redundant_experts=16, time_limit=1.0)
    assert p.solver.status == "time_limit" and list(p.solver.candidates) == ["eplb"]
    assert any(n.startswith("the time limit (1 s) ran out before the solver's own placement") for n in p.predicted.notes)
    _check_valid(p)


def test_a_note_when_redundant_slots_cost_more_than_they_balance():
    # DeepSeek-V2-Lite decode on 2 × 8 GPUs: ~256 tokens per step per GPU, so an expert's GEMM
    # reads its weights for a handful of rows and 16 replicas cost more reads than they balance
    p = planner.plan("deepseek-v2-lite", nodes=2, redundant_experts=16)
    note = [n for n in p.predicted.notes if n.startswith("without redundant slots")]
    assert len(note) == 1 and "consider --redundant-experts 0" in note[0]
    with_r, without = (float(x) for x in re.findall(r"predict ([\d.]+) ms .* against ([\d.]+) ms", note[0])[0][::-1])
    assert without < with_r
    # no replicas asked: nothing to compare
    p0 = planner.plan("deepseek-v2-lite", nodes=2)
    assert not any(n.startswith("without redundant slots") for n in p0.predicted.notes)


# ---- the search's traffic against the simulator's rule ----------------------------------------------


@pytest.mark.parametrize("relay", ["same-rank", "first-destination"])
def test_search_traffic_agrees_with_the_dispatch_rule(relay):
    """Stage 1b's copies, the fixed inter-node copies and every node's NodeSearch tables against
    planner.cost.comm's traffic kernel (the simulator's rule) on a small random instance."""
    rng = np.random.default_rng(7)
    G, gpn, S, E, k, T = 8, 4, 2, 12, 3, 300
    # node-aligned: experts 0-5 on node 0, 6-11 on node 1, two replicas more on each node
    node0 = rng.permutation(np.concatenate([np.arange(6), rng.integers(0, 6, 2)]))
    node1 = rng.permutation(np.concatenate([np.arange(6, 12), rng.integers(6, 12, 2)]))
    row = np.concatenate([node0, node1])
    ids = np.stack([rng.choice(E, k, replace=False) for _ in range(T)])
    src = rng.integers(0, G, T)
    slot_Tk = choose_slots(ids, src, row, S, E, "even")
    nvl, net = dispatch_copies(slot_Tk // S, src, num_gpus=G, gpus_per_node=gpn, relay=relay)
    nvl_send, nvl_recv = np.bincount(nvl.src_C, minlength=G), np.bincount(nvl.dst_C, minlength=G)
    net_send, net_recv = np.bincount(net.src_C, minlength=G), np.bincount(net.dst_C, minlength=G)
    if relay == "same-rank":  # the kernel's matrices are what the simulator charges
        tr = dispatch_traffic(slot_Tk, src, slots_per_gpu=S, num_gpus=G, gpus_per_node=gpn, bytes_per_token=1.0)
        np.testing.assert_array_equal(tr.nvlink_GG.sum(1), nvl_send)
        np.testing.assert_array_equal(tr.rdma_GG.sum(0), net_recv)
    # stage 1b counts one copy per distinct remote node of a token
    node_E = np.repeat([0, 1], 6)
    assert node_copies(ids, src // gpn, node_E) == len(net.src_C)
    inp = inputs(ids[None], src, num_experts=E, num_gpus=G, slots=S, gpus_per_node=gpn, relay=relay)
    lay = layer_items([node0, node1], [np.arange(8) // S, 4 + np.arange(8) // S], ids, np.arange(T), E)
    np.testing.assert_array_equal(lay.item_Tk, slot_Tk)  # the search's replica rule is the simulator's
    xfix = fixed_nic_SG(lay, search_sample(inp), inp, 2)[0]
    np.testing.assert_array_equal(xfix, np.maximum(net_send, net_recv) if relay == "same-rank" else net_send)
    zeros = np.zeros((1, G * S))
    for v in range(2):
        ns, _ = build_node_search(lay, v, inp, np.zeros(T, dtype=np.int64), src, 1, zeros, zeros, np.zeros((1, G)),
                                  True, None, 0.02, keep_nvlink=True)
        gpus = slice(v * gpn, (v + 1) * gpn)
        np.testing.assert_allclose(ns.isend[0], nvl_send[gpus])
        np.testing.assert_allclose(ns.irecv[0], nvl_recv[gpus])
        if relay == "first-destination":  # the NIC receive is the node's own decision
            np.testing.assert_allclose(ns.recv[0], net_recv[gpus])
