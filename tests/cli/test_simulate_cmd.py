"""``moe-planner simulate``: replay a trace through a plan file."""

import json

import numpy as np
import pytest

import planner
from planner.cli import main
from planner.traces.steps import workload_steps

TRACE = "planner/data/traces/mixtral-8x7b.npz"


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    p = planner.plan("mixtral-8x7b", ep=4, etp=2, baseline="eplb")
    p.save(d / "plan.json")
    return d / "plan.json"


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _formed(plan_file):
    """The steps the plan's decode batch (found by the search) forms from the trace's sequences."""
    plan = planner.Plan.load(plan_file)
    return workload_steps(planner.load_trace(TRACE), plan.workload, plan.cluster.num_gpus)[0], plan


def test_table(capsys, plan_file):
    code, out, err = run(capsys, "simulate", "--plan", str(plan_file), "--trace", TRACE)
    assert code == 0, err
    assert "moe-planner simulate: mixtral-8x7b on 1 x 8 h100-sxm" in out
    formed, plan = _formed(plan_file)
    assert f"{formed.num_steps} steps, {plan.workload.batch} tokens per step" in out
    assert "all MoE layers per step" in out and "p99" in out and "busiest GPU" in out
    assert len([ln for ln in out.splitlines() if ln.strip() and ln.split()[0].isdigit()]) == 32  # a row per layer


def test_json_figures_match_the_api(capsys, plan_file):
    code, out, err = run(capsys, "simulate", "--plan", str(plan_file), "--trace", TRACE, "--json")
    assert code == 0, err
    s = json.loads(out)
    formed, _ = _formed(plan_file)
    assert s["steps"] == formed.num_steps and len(s["layers"]) == 32
    assert set(s["moe_time_per_step_ms"]) == {"mean", "p50", "p99"}
    lay = s["layers"][0]
    assert len(lay["gpu_tokens"]) == 4  # ep 4
    # each token's 2 choices are counted once per expert-parallel rank that serves them
    assert sum(lay["gpu_tokens"]) == pytest.approx(formed.num_tokens / formed.num_steps * 2)
    assert s["imbalance"] >= 1.0 and s["inter_node_bytes_per_step"] == 0.0
    rep = planner.simulate(planner.Plan.load(plan_file), TRACE)
    assert rep.summary()["moe_time_per_step_ms"]["mean"] == pytest.approx(s["moe_time_per_step_ms"]["mean"])
    assert np.allclose(rep.result.step_ms_S.mean(), s["moe_time_per_step_ms"]["mean"])


def test_relay_option_and_multi_node(capsys, tmp_path):
    p = planner.plan("deepseek-v2-lite", nodes=2, ep=16, redundant_experts=16, baseline="eplb")
    p.save(tmp_path / "plan.json")
    trace = "planner/data/traces/deepseek-v2-lite.npz"
    outs = {}
    for relay in ("first-destination", "same-rank"):
        code, out, err = run(capsys, "simulate", "--plan", str(tmp_path / "plan.json"), "--trace", trace,
                             "--relay", relay, "--json")
        assert code == 0, err
        outs[relay] = json.loads(out)
    a, b = outs["first-destination"], outs["same-rank"]
    # the same inter-node copies; same-rank forwards some over NVLink too
    assert a["inter_node_bytes_per_step"] == pytest.approx(b["inter_node_bytes_per_step"])
    assert b["intra_node_bytes_per_step"] > a["intra_node_bytes_per_step"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plan", "/no/such/plan.json", "--trace", TRACE], "plan.json"),
        (["--trace", TRACE], "Missing option '--plan'"),
        (["--plan", "PLAN", "--trace", TRACE, "--relay", "nope"], "Invalid value for '--relay'"),
        (["--plan", "PLAN", "--trace", "/no/such/trace.npz"], "trace.npz"),
    ],
)
def test_bad_input_exit_2(capsys, plan_file, args, message):
    args = [str(plan_file) if a == "PLAN" else a for a in args]
    code, out, err = run(capsys, "simulate", *args)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_plan_for_another_model_is_refused(capsys, plan_file):
    code, out, err = run(capsys, "simulate", "--plan", str(plan_file), "--trace", "planner/data/traces/qwen3-30b-a3b.npz")
    assert code == 2 and "error:" in err
