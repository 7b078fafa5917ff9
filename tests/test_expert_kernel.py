"""--expert-kernel: placement figures with experts run one after another or as one grouped GEMM
per GPU, the same choice in plan, simulate and validate's prediction."""

import numpy as np
import pytest

import planner
from planner.cost.compute import device_fit, expert_ffn_ms, grouped_experts_ms
from planner.specs.hardware import load_hardware
from planner.validate import predict_rank_ms


@pytest.fixture(scope="module")
def plans():
    kw = dict(baseline="eplb", redundant_experts=8)
    return (planner.plan("deepseek-v2-lite", **kw),
            planner.plan("deepseek-v2-lite", expert_kernel="grouped", **kw))


def test_grouped_pays_the_fixed_cost_once_per_gpu(plans):
    loop, grouped = plans
    assert loop.workload.expert_kernel == "loop" and grouped.workload.expert_kernel == "grouped"
    # same placement (EPLB sees counts only), cheaper compute: 2 slots per GPU share one launch
    assert loop.placement == grouped.placement
    assert grouped.predicted.compute_ms < loop.predicted.compute_ms
    assert grouped.predicted.comm_ms == pytest.approx(loop.predicted.comm_ms)


def test_simulate_uses_the_plans_kernel(plans, tmp_path):
    _, grouped = plans
    path = tmp_path / "plan.json"
    grouped.save(path)
    again = planner.Plan.load(path)
    assert again.workload.expert_kernel == "grouped"
    rep = planner.simulate(again, planner.synth_trace(again.model, num_tokens=2048, seed=3))
    loop_rep = planner.simulate(again.model_copy(update={"workload": again.workload.model_copy(
        update={"expert_kernel": "loop"})}), planner.synth_trace(again.model, num_tokens=2048, seed=3))
    assert rep.summary()["compute_ms"] < loop_rep.summary()["compute_ms"]


def test_validate_prediction_follows_the_kernel():
    hw = load_hardware("h100-sxm")
    tok = np.array([[[[[10, 0, 30]]]]])  # [S, L, X, R, P]: one rank, three slots, one idle
    loop = predict_rank_ms(hw, 2048, 1408, "bf16", tok, "loop")
    grouped = predict_rank_ms(hw, 2048, 1408, "bf16", tok, "grouped")
    assert loop[0, 0, 0, 0] == pytest.approx(float(expert_ffn_ms(hw, 2048, 1408, "bf16", np.array([10, 30])).sum()))
    assert grouped[0, 0, 0, 0] == pytest.approx(float(grouped_experts_ms(hw, 2048, 1408, "bf16", tok[0, 0, 0], "grouped")[0]))
    # one launch instead of two: about one fixed cost less
    assert loop[0, 0, 0, 0] - grouped[0, 0, 0, 0] == pytest.approx(device_fit(hw, "bf16").fixed_ms, rel=0.3)


def test_cli_names_the_kernel(capsys):
    from planner.cli import main

    assert main(["plan", "--model", "deepseek-v2-lite", "--baseline", "eplb", "--expert-kernel", "grouped"]) == 0
    out = capsys.readouterr().out
    assert "expert compute, slowest GPU (grouped)" in out
    assert main(["plan", "--model", "deepseek-v2-lite", "--expert-kernel", "fused"]) == 2
