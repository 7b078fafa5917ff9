"""Real Ray (a local ``ray.init(num_cpus=2)``, skipped without the ``ray`` package; .ci/run installs
it in a step of its own): ``sweep --executor ray`` writes the rows the process pool writes, and
the placement's layers solved on Ray workers give the one-process placement."""

from __future__ import annotations

import csv
import io

import pytest

ray = pytest.importorskip("ray")

from planner.sweep import TIMING_COLUMNS, run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def rows_of(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_sweep_on_ray_writes_the_process_pools_rows(local_ray, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("base: {model: mixtral-8x7b, time_limit: 5}\ngrid: {nodes: [1, 2], redundant_experts: [0, 8]}\n")
    pool = run_sweep(spec, tmp_path / "pool", jobs=2, plots=False, progress=False)
    on_ray = run_sweep(spec, tmp_path / "ray", executor="ray", plots=False, progress=False)
    a, b = rows_of(pool.csv_path), rows_of(on_ray.csv_path)
    assert len(a) == 4 and all(r["status"] == "ok" for r in a)
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert {c: v for c, v in x.items() if c not in TIMING_COLUMNS} == {
            c: v for c, v in y.items() if c not in TIMING_COLUMNS}


def test_placement_layers_on_ray_workers_give_the_one_process_placement(local_ray):
    import numpy as np

    import planner
    from planner.api import placement_inputs, prepare
    from planner.ray_map import ray_map
    from planner.solve.placement import solve_placement
    from planner.specs.model_io import load_model

    m = load_model("deepseek-v2-lite")
    tr = planner.synth_trace(m, num_tokens=4 * 4096, tokens_per_step=4096, num_ranks=16, weights=False, seed=0)
    pr = prepare(m, "h100-sxm", nodes=2, gpus_per_node=8, mode="prefill", trace=tr, ep=16, etp=1,
                 redundant_experts=16, train_fraction=0.5, tp=1, pp=1, tokens_per_step=4096)
    inp = placement_inputs(pr, "same-rank")
    one = solve_placement(inp, time_limit=30)
    apart = solve_placement(inp, time_limit=30, map_layers=ray_map(2))
    assert one.status != "time_limit" and apart.status != "time_limit"
    assert one.stages.search.evals > 0  # the per-node local search ran (the part solved apart)
    assert np.array_equal(one.phy2log_LP, apart.phy2log_LP)
    assert (one.objective, one.chosen, one.candidates) == (apart.objective, apart.chosen, apart.candidates)
    assert one.stages.stage1.swaps == apart.stages.stage1.swaps and one.stages.stage1.swaps.swaps > 0
    s1, s2 = one.stages.search, apart.stages.search
    assert (s1.instances, s1.evals, s1.accepted, s1.search_budget_s) == (s2.instances, s2.evals, s2.accepted,
                                                                          s2.search_budget_s)


def test_plan_with_placement_workers_gives_the_one_process_plan(local_ray, capsys):
    import json

    import numpy as np

    import planner
    from planner.cli import main

    kw = dict(model="deepseek-v2-lite", nodes=2, gpus_per_node=8, ep=16, redundant_experts=16, time_limit=30)
    one = planner.plan(**kw)
    apart = planner.plan(**kw, placement_workers=2)
    assert one.solver.status != "time_limit" and apart.solver.status != "time_limit"
    assert np.array_equal(one.placement.physical_to_logical, apart.placement.physical_to_logical)
    assert one.predicted == apart.predicted
    # the CLI flag reaches the solver (same placement written)
    capsys.readouterr()
    code = main(["plan", "--model", "deepseek-v2-lite", "--nodes", "2", "--ep", "16", "--redundant-experts", "16",
                 "--time-limit", "30", "--placement-workers", "2", "--json"])
    assert code == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["placement"]["physical_to_logical"] == np.asarray(one.placement.physical_to_logical).tolist()
