"""planner.validate: which tokens each rank gets (as the simulator), which steps, how errors are summarised.

Most of these need no torch: dispatch and prediction are numpy."""

import numpy as np
import pytest

from planner.api import plan, prepare, solve
from planner.errors import InputError
from planner.score import simulate_stage
from planner.traces import save_trace, synth_trace
from planner.validate import (
    error_pct,
    plan_trace,
    predict_rank_ms,
    rank_slot_tokens,
    spread,
    summarize,
)
from tests.conftest import make_model


@pytest.mark.parametrize(
    "opts",
    [
        dict(),  # ep 8, one group
        dict(ep=4),  # two expert-data-parallel groups of 4 ranks
        dict(ep=4, redundant_experts=4, baseline="eplb", dispatch="local-first"),  # replicas
        dict(ep=4, etp=2, baseline="round-robin"),  # expert tensor parallelism
        dict(nodes=2, gpus_per_node=4, redundant_experts=8, dispatch="nearest"),  # replicas across nodes
    ],
)
def test_rank_tokens_reproduce_the_simulators_compute(opts):
    pr = prepare(make_model(), **opts)
    p = solve(pr)
    tr, label, which = plan_trace(p, None)
    assert label.startswith("synthetic(") and "held-out" in which
    assert tr.num_steps == pr.eval_trace.num_steps and np.array_equal(tr.step, pr.eval_trace.step)
    tok = rank_slot_tokens(p, tr)
    S, L, X, R, P = tok.shape
    par = p.parallel
    assert (L, X, R, P) == (3, 8 // (par.ep * par.etp), par.ep, p.placement.slots_per_gpu)
    per_step = np.bincount(tr.step_index, minlength=S) * tr.top_k
    assert (tok.sum(axis=(2, 3, 4)) == per_step[:, None]).all()
    m = p.model
    pred = predict_rank_ms(pr.hardware, m.hidden_size, m.expert_intermediate_size // par.etp, m.expert_dtype, tok)
    sim = simulate_stage(
        np.asarray(p.placement.physical_to_logical), tr, m, pr.hardware, p.cluster, par, p.dispatch
    )
    assert np.allclose(pred.max(axis=(2, 3)), sim.compute_ms_SL)
    assert np.array_equal(tok.sum(-1).sum(2), sim.gpu_tokens_SLG)
    assert pred.max(axis=(2, 3)).mean() == pytest.approx(p.predicted.compute_ms)


def test_a_foreign_trace_is_evaluated_on_all_its_steps(tmp_path):
    m = make_model()
    p = plan(m)
    path = tmp_path / "other.npz"
    save_trace(synth_trace(m, num_tokens=600, tokens_per_step=200, seed=3, sequences=False), path)
    tr, label, which = plan_trace(p, path)
    assert label == "other.npz" and tr.num_steps == 3 and "all 3 steps" in which


def test_the_plans_own_trace_file_gives_its_held_out_steps(tmp_path):
    m = make_model()
    path = tmp_path / "mine.npz"
    save_trace(synth_trace(m, num_tokens=1600, tokens_per_step=200, seed=4, sequences=False), path)
    p = plan(m, trace=str(path))
    with pytest.raises(InputError, match="pass `trace` FILE") as e:
        plan_trace(p, None)
    assert e.value.for_flags().endswith("pass --trace FILE")
    tr, _, which = plan_trace(p, path)
    assert tr.num_steps == 2 and list(tr.steps) == [6, 7] and "last 2 of 8" in which


def test_a_trace_with_sequences_gets_the_plans_steps_back(tmp_path):
    m = make_model()
    path = tmp_path / "seq.npz"
    save_trace(synth_trace(m, num_tokens=1600, seed=4), path)
    p = plan(m, trace=str(path), batch=64)
    assert any(n.startswith("steps formed from the trace's") for n in p.predicted.notes)
    tr, _, which = plan_trace(p, path)
    S = int(p.predicted.evaluated_on.split(" of ")[1].split(" ")[0].rstrip(")"))
    held = int(p.predicted.evaluated_on.split("the last ")[1].split(" ")[0])
    assert tr.num_steps == held and f"last {held} of {S}" in which
    assert np.bincount(tr.step_index).max() <= 64  # decode steps of 64 concurrent sequences


def test_a_trace_of_another_model_is_refused(tmp_path):
    p = plan(make_model())
    path = tmp_path / "wide.npz"
    save_trace(synth_trace(make_model(num_experts=16), num_tokens=400, tokens_per_step=200), path)
    with pytest.raises(InputError, match="16 experts per layer but model tiny-moe has 8"):
        plan_trace(p, path)


def test_spread_and_errors():
    assert spread(10, None) == list(range(10))
    assert spread(10, 3) == [0, 4, 9] or spread(10, 3) == [0, 5, 9]
    assert spread(4, 9) == [0, 1, 2, 3]
    assert error_pct(1.1, 1.0) == pytest.approx(10.0)
    assert error_pct(0.0, 0.0) is None
    s = summarize([(1.1, 1.0), (0.8, 1.0), (0.0, 0.0)])
    assert s["n"] == 2 and s["mape_pct"] == pytest.approx(15.0) and s["mean_error_pct"] == pytest.approx(-5.0)
    assert summarize([])["mape_pct"] is None


def test_validate_on_cpu_with_a_cap_and_a_budget():
    pytest.importorskip("torch")
    from planner.validate import TimingOptions, validate

    p = plan(make_model())
    fast = TimingOptions(warmup=0, reps=1, runs=1)
    rep = validate(p, device="cpu", steps=1, layers=2, max_tokens=5, backends=("loop", "padded"), timing=fast)
    assert rep["evaluated"]["layers"] == [0, 2] and rep["evaluated"]["complete"]
    assert all(r["max_slot_tokens"] <= 5 for r in rep["ranks"])
    assert len(rep["ranks"]) == 2 * 8 and len(rep["straggler"]) == 2
    assert set(rep["summary"]) == {"loop", "padded"}
    assert any("--max-tokens 5" in n for n in rep["notes"])
    assert all(c["rel_err_vs_float64"] < 2e-2 for c in rep["checks"])
    cut = validate(p, device="cpu", steps=2, backends=("loop",), timing=fast, budget_s=1e-9)
    assert cut["evaluated"]["pairs_measured"] == 1 and not cut["evaluated"]["complete"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(device="tpu"), "--device must be"),
        (dict(steps=0), "--steps must be > 0"),
        (dict(backends=("cutlass",)), "--backend must be one of"),
        (dict(budget_s=-1.0), "--budget-s must be > 0"),
    ],
)
def test_bad_options(kwargs, message):
    from planner.validate import validate

    with pytest.raises(InputError) as info:
        validate(plan(make_model()), **kwargs)
    assert message in info.value.for_flags()  # the library names the field; the CLI shows its flag


def test_the_planner_and_its_cli_do_not_import_torch():
    import subprocess
    import sys

    code = "import sys, planner, planner.cli, planner.validate; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
