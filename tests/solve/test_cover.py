"""Node expert sets that keep whole tokens on their node under nearest dispatch (planner.solve.cover)."""

import itertools

import numpy as np

from planner.simulator import simulate_arrays
from planner.solve.baselines import eplb
from planner.solve.cover import cover_row, cover_sets, covered, node_gains, rank_load, start_sets
from planner.solve.placement import PlacementCost, PlacementInputs, solve_placement
from planner.solve.scoring import SOLVER

COST = PlacementCost(ffn_ms=lambda n: np.where(np.asarray(n) > 0, 0.02 + 2e-5 * np.asarray(n, float), 0.0),
                     token_bytes=2048 * 2, nvlink_gbps=370.0, nvlink_latency_us=10.0, nic_gbps=48.0,
                     nic_latency_us=20.0)


def test_gain_equals_recount():
    # G[x, y] is exactly the change in whole-on-node tokens when x leaves the set and y joins
    rng = np.random.default_rng(0)
    E, k = 12, 3
    ids = np.stack([rng.choice(E, k, replace=False) for _ in range(300)])
    has = np.zeros(E, bool)
    has[rng.choice(E, 7, replace=False)] = True
    w = rng.uniform(0.5, 2.0, 300)
    g = node_gains(ids, w, has)
    base = (w * has[ids].all(1)).sum()
    for x in np.flatnonzero(has):
        for y in np.flatnonzero(~has):
            h = has.copy()
            h[x], h[y] = False, True
            assert np.isclose(g[x, y], (w * h[ids].all(1)).sum() - base)
    assert np.isneginf(g[~has]).all() and np.isneginf(g[:, has]).all()


def test_co_activated_pairs_end_up_on_one_node():
    # 2 nodes of 5 slots, 8 experts; every token picks one of the pairs {0,1} {2,3} {4,5} {6,7}.
    # Starting from interleaved sets (each node one whole pair), at most 2 pairs fit a node: the
    # search keeps 1.5× as many tokens whole on their node, to within 5% of the best pair of sets
    # (brute force), and ends where no single replace or exchange helps (a local optimum).
    rng = np.random.default_rng(1)
    T = 800
    pair = rng.integers(0, 4, T)
    ids = np.stack([2 * pair, 2 * pair + 1], axis=1)
    src = rng.integers(0, 2, T)
    node_E = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    w_NE = np.stack([np.bincount(ids[src == v].ravel(), minlength=8) for v in range(2)]).astype(float)
    start = start_sets(node_E, w_NE, 5)
    assert start.sum(1).tolist() == [5, 5]
    before = covered(ids, src, start).mean()
    has, moves = cover_sets(ids, src, np.ones(T), start, max_rounds=20)
    assert moves > 0 and before < 0.35
    sets = [np.isin(np.arange(8), c) for c in itertools.combinations(range(8), 5)]
    best = max(covered(ids, src, np.stack([a, b])).sum() for a in sets for b in sets if (a | b).all())
    got = covered(ids, src, has).sum()
    assert got >= 0.95 * best and best > 0.45 * T and got >= 1.5 * before * T
    for u, v in ((0, 1), (1, 0)):
        for x in np.flatnonzero(has[u]):
            for y in np.flatnonzero(~has[u]):
                h = has.copy()
                h[u, x], h[u, y] = False, True
                if h.any(0).all():  # a replace
                    assert covered(ids, src, h).sum() <= got
                if has[v, y] and not has[v, x]:  # an exchange
                    h[v, y], h[v, x] = False, True
                    assert covered(ids, src, h).sum() <= got
    assert has.sum(1).tolist() == [5, 5] and has.any(0).all()  # sizes kept, every expert held
    for v in range(2):  # a node holds whole pairs
        held = np.flatnonzero(has[v])
        assert sum(has[v, 2 * p] and has[v, 2 * p + 1] for p in range(4)) == 2, held


def test_cover_sets_keeps_every_expert_on_random_instances():
    rng = np.random.default_rng(2)
    for N, E, spn in ((2, 16, 10), (4, 16, 6), (3, 12, 5)):
        ids = np.stack([rng.choice(E, 3, replace=False) for _ in range(500)])
        src = rng.integers(0, N, 500)
        node_E = np.repeat(np.arange(N), E // N)
        w_NE = np.stack([np.bincount(ids[src == v].ravel(), minlength=E) for v in range(N)]).astype(float)
        start = start_sets(node_E, w_NE, spn)
        has, _ = cover_sets(ids, src, rank_load(np.zeros(500, int), src), start, max_rounds=50)
        assert has.sum(1).tolist() == [spn] * N and has.any(0).all()
        assert covered(ids, src, has).mean() >= covered(ids, src, start).mean()
        row = cover_row(has, w_NE, spn, 1 if spn % 2 else 2)
        for v in range(N):  # node v holds its set, each expert once
            assert sorted(row[v * spn:(v + 1) * spn].tolist()) == np.flatnonzero(has[v]).tolist()


def test_rank_load_counts_tokens_of_each_step_and_gpu():
    assert rank_load(np.array([0, 0, 0, 1, 1]), np.array([3, 3, 1, 3, 0])).tolist() == [2, 2, 1, 1, 1]


def _pairs_trace(seed, T, E, n_pairs_hot):
    """Tokens of 4 GPUs (2 nodes) picking co-activated pairs of experts (top-2), a few pairs hot."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(E)  # pairs (perm[2i], perm[2i+1]): not aligned with any contiguous split
    p = np.where(rng.random(T) < 0.6, rng.integers(0, n_pairs_hot, T), rng.integers(0, E // 2, T))
    return np.stack([perm[2 * p], perm[2 * p + 1]], axis=1), rng.integers(0, 4, T)


def test_solver_cuts_inter_node_copies_of_co_activated_pairs_under_nearest():
    """Planted co-activation, a slow network (the time is the inter-node copies): under nearest
    dispatch the solver keeps whole pairs on a node (planning and held-out tokens alike), so
    held-out inter-node bytes fall well below EPLB's."""
    E, T = 16, 4000
    cost = PlacementCost(ffn_ms=COST.ffn_ms, token_bytes=2048 * 2, nvlink_gbps=370.0, nvlink_latency_us=10.0,
                         nic_gbps=4.0, nic_latency_us=20.0)
    ids, src = _pairs_trace(3, 2 * T, E, 3)
    step = np.arange(2 * T) // 500
    plan = slice(0, T)
    inp = PlacementInputs(ids_LTk=ids[None, plan], step_T=step[plan], src_T=src[plan], tok_index_T=np.arange(T),
                          num_steps=8, num_experts=E, num_gpus=4, gpus_per_node=2, slots_per_gpu=5, cost=cost,
                          dispatch="nearest")
    res = solve_placement(inp, time_limit=30)
    assert res.candidates[SOLVER] <= res.candidates["eplb"] and res.chosen == SOLVER
    ho = slice(T, 2 * T)

    def inter_bytes(p2l):
        sim = simulate_arrays(p2l, 5, ids[None, ho], step[ho] - 8, src[ho], ffn_ms=cost.ffn_ms, comm_ms=cost.comm_ms,
                              token_bytes=cost.token_bytes, num_experts=E, gpus_per_node=2, dispatch="nearest",
                              num_steps=8)
        return sim.inter_bytes_SL.sum()

    w = np.bincount(ids[plan].ravel(), minlength=E)[None].astype(float)
    assert inter_bytes(res.phy2log_LP) < 0.8 * inter_bytes(eplb(w, 20, 1, 2, 4))


def test_gains_when_no_token_is_whole_or_one_short():
    # every token misses two experts of the node: no gain anywhere, and the matrix is float
    has = np.array([True, True, False, False, False, False])
    g = node_gains(np.array([[2, 3], [4, 5]]), np.ones(2), has)
    assert g.dtype == np.float64 and np.all(g[np.ix_(has, ~has)] == 0)
