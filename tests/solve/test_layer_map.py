"""Stages 1b-4 solved one task per layer (planner.solve.layer_map) through an in-process map: the
placement, its objective and the search statistics are the one-process solve's. (tests/test_ray.py
does the same on Ray workers.)"""

from __future__ import annotations

import numpy as np

import planner
from planner.api import placement_inputs, prepare
from planner.solve.layer_map import splits
from planner.solve.placement import solve_placement
from planner.specs.model_io import load_model


def in_order(fn, items):
    return [fn(dict(x)) for x in items]


def test_layers_solved_apart_give_the_one_process_placement():
    m = load_model("deepseek-v2-lite")
    tr = planner.synth_trace(m, num_tokens=2 * 4096, tokens_per_step=4096, num_ranks=16, weights=False, seed=1)
    pr = prepare(m, "h100-sxm", nodes=2, gpus_per_node=8, mode="prefill", trace=tr, ep=16, etp=1,
                 redundant_experts=16, train_fraction=0.5, tp=1, pp=1, tokens_per_step=4096)
    inp = placement_inputs(pr, "same-rank")
    assert splits(in_order, inp, 2) and not splits(None, inp, 2)
    one = solve_placement(inp, time_limit=30)
    apart = solve_placement(inp, time_limit=30, map_layers=in_order)
    assert one.status != "time_limit" and one.stages.search.evals > 0
    assert np.array_equal(one.phy2log_LP, apart.phy2log_LP)
    assert (one.objective, one.chosen, one.candidates) == (apart.objective, apart.chosen, apart.candidates)
    assert one.stages.stage1.swaps == apart.stages.stage1.swaps and one.stages.stage1.swaps.swaps > 0
    a, b = one.stages.search, apart.stages.search
    assert (a.instances, a.evals, a.accepted) == (b.instances, b.evals, b.accepted)


def test_small_problems_are_not_split():
    m = load_model("mixtral-8x7b")
    tr = planner.synth_trace(m, num_tokens=2048, tokens_per_step=1024, num_ranks=4, weights=False, seed=0)
    pr = prepare(m, "h100-sxm", nodes=1, gpus_per_node=4, mode="prefill", trace=tr, ep=4, etp=1,
                 train_fraction=0.5, tp=1, pp=1, tokens_per_step=1024)
    inp = placement_inputs(pr, "same-rank")
    assert not splits(in_order, inp, 1)  # 8 experts on 4 GPUs: stage 3 enumerates every assignment
    called = []
    res = solve_placement(inp, time_limit=30, map_layers=lambda fn, items: called.append(1) or in_order(fn, items))
    assert called == [] and np.array_equal(res.phy2log_LP, solve_placement(inp, time_limit=30).phy2log_LP)
