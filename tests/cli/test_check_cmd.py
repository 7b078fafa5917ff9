"""``moe-planner check`` and ``planner.check.check_plan``: every problem listed, exit 0 / 1 / 2."""

import json

import pytest

import planner
from planner.check import check_plan
from planner.cli import main
from planner.errors import InputError
from planner.specs.hardware import load_hardware


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def plan():
    return planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=8, ep=8)


@pytest.fixture
def raw(plan):
    return json.loads(plan.to_json())


def _write(tmp_path, data, name="plan.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data))
    return p


def test_a_planner_made_plan_is_clean(plan, tmp_path, capsys):
    assert check_plan(plan) == []
    plan.save(tmp_path / "plan.json")
    assert check_plan(tmp_path / "plan.json") == []
    code, out, err = run(capsys, "check", "--plan", str(tmp_path / "plan.json"))
    assert (code, out.strip()) == (0, f"{tmp_path / 'plan.json'}: OK"), err


def test_every_problem_is_listed_not_just_the_first(raw, tmp_path, capsys):
    p2l = raw["placement"]["physical_to_logical"]
    p2l[3][5] = 99  # out of range, and the expert it replaced goes missing
    dup = max(i for i, e in enumerate(p2l[4]) if p2l[4].count(e) > 1)
    p2l[4] = p2l[4][:dup] + p2l[4][dup + 1 :]  # one slot short (a replica's: no expert goes missing)
    p2l.pop()  # one MoE layer short
    raw["parallel"]["dp"] = 4  # degrees no longer multiply to the GPUs
    raw["predicted"]["per_layer"][2]["total_ms"] += 1.0
    raw["predicted"]["memory_per_gpu_gib"] = 1.0
    problems = check_plan(raw)
    assert problems[0] == "parallel: dp × tp × pp × cp (4 × 1 × 1 × 1 = 4) must equal the cluster's GPUs (1 × 8 = 8)"
    assert "placement.physical_to_logical has 25 layers, model deepseek-v2-lite has 26 MoE layers" in problems
    assert "placement.physical_to_logical[3] holds expert id(s) 99, ids must be in [0, 64)" in problems
    assert any(p.startswith("placement.physical_to_logical[3] misses expert(s) ") for p in problems)
    assert any(p.startswith("placement.physical_to_logical[4] has 71 slots, ep × slots_per_gpu is 72, not a multiple of ep 8") for p in problems)
    assert any(p.startswith("predicted.moe_time_per_step_ms is ") for p in problems)
    assert any(p.startswith("predicted.per_layer[2].total_ms is ") for p in problems)
    assert any(p.startswith("predicted.memory_per_gpu_gib is 1 GiB, its breakdown sums to") for p in problems)
    assert len(problems) == 8
    path = _write(tmp_path, raw)
    # Plan.load stops at the first of them
    with pytest.raises(InputError, match=r"^plan.json: .*parallel: dp × tp × pp × cp \(4 × 1 × 1 × 1 = 4\) must equal the cluster's GPUs \(1 × 8 = 8\)$"):
        planner.Plan.load(path)

    code, out, err = run(capsys, "check", "--plan", str(path))
    assert code == 1
    assert out.splitlines() == problems
    assert "8 problem(s) found" in err
    code, out, _ = run(capsys, "check", "--plan", str(path), "--json")
    assert code == 1
    assert json.loads(out) == {"plan": str(path), "ok": False, "problems": problems}


def test_a_plan_checked_against_another_model(plan, tmp_path, capsys):
    problems = check_plan(plan, model="qwen3-30b-a3b")
    assert problems[0] == "model: plan is for deepseek-v2-lite (26 MoE layers), model given (qwen3-30b-a3b) has 48"
    assert problems[1] == "model: plan is for deepseek-v2-lite (64 experts per layer), model given (qwen3-30b-a3b) has 128"
    assert len(problems) == 3  # one line per mismatch, not one per layer
    assert check_plan(plan, model="deepseek-v2-lite") == []
    plan.save(tmp_path / "plan.json")
    code, out, _ = run(capsys, "check", "--plan", str(tmp_path / "plan.json"), "--model", "qwen3-30b-a3b")
    assert code == 1 and out.splitlines()[0] == problems[0]


def test_same_shape_other_model_checks_the_rows_against_the_model_given(plan):
    other = plan.model.model_copy(update={"name": "v2-lite-wide", "hidden_size": 4096})
    model_line, memory_line = check_plan(plan, model=other)
    assert model_line == "model: the plan's model deepseek-v2-lite differs from the model given (v2-lite-wide) in hidden_size (2048 vs 4096)"
    # the predicted memory was computed for the plan's model; the wider model needs twice the weights
    assert memory_line == "predicted.memory_breakdown_gib['weights'] is 6.213 GiB, the placement's weights are 12.32 GiB per GPU"


def test_memory_against_the_hardware_profile(plan):
    h100 = load_hardware("h100-sxm")
    tiny = h100.model_copy(update={"hbm_gib": 4.0, "hbm_usable_gib": 4.0})
    (line,) = check_plan(plan, hardware=tiny)
    assert line.startswith("memory: weights need 6.2 GiB per GPU (9 expert slots × 26 MoE layers per stage")
    assert line.endswith(f"{h100.name} has 4.0 GiB")


def test_unknown_hardware_in_the_plan_is_a_problem_not_a_crash(raw):
    raw["cluster"]["hardware"] = "tpu-v9"
    (line,) = check_plan(raw)
    assert line.startswith("cluster.hardware: hardware: unknown profile 'tpu-v9'") and line.endswith("memory not checked")


def test_predicted_figures_must_fit_the_placement(raw):
    pred = raw["predicted"]
    pred["per_layer"] = pred["per_layer"][:-1]
    pred["per_layer"][0]["layer"] = 7
    pred["per_layer"][1]["imbalance"] = 9.5  # over ep = 8
    pred["inter_node_bytes_per_step"] = 1e6  # one node: nothing crosses nodes
    pred["moe_time_p50_ms"] = pred["moe_time_p99_ms"] * 2
    problems = check_plan(raw)
    assert "predicted.per_layer has 25 layers, model deepseek-v2-lite has 26 MoE layers" in problems
    assert "predicted.per_layer[0].layer is 7, expected 0 (entries in MoE-layer order; 1 out of place)" in problems
    assert "predicted.per_layer[1].imbalance is 9.5, max/mean over 8 EP ranks lies in [1, 8]" in problems
    assert any(p.startswith("predicted.inter_node_bytes_per_step is 1e+06, but each EP group (ep × etp = 8 GPUs)") for p in problems)
    assert any(p.startswith("predicted.moe_time_p50_ms") for p in problems)


def test_cache_and_degrees(raw):
    raw["parallel"].update(etp=3, vpp=2)
    raw["workload"]["mode"] = "offload"
    raw["workload"]["gpu_memory_gb"] = 10.0
    problems = check_plan(raw)
    assert ("parallel: ep × etp (8 × 3 = 24) must divide the 8 GPUs of a pipeline stage (the experts of a stage "
            "shard over its GPUs: Megatron's expert-data-parallel rule)") in problems
    # (27 layers need not divide by pp × vpp: Megatron runs uneven layouts; vpp without pp it cannot)
    assert "parallel: vpp 2 needs pp > 1" in problems
    assert "parallel: etp (3) must divide the expert FFN width (1408)" in problems
    assert "cache: workload.mode is 'offload' but the plan has no cache" in problems
    raw["cache"] = {"budget_bytes": 10, "resident": [[0, 0, 70]] * 26, "dynamic_slots": [1] * 25}
    problems = check_plan(raw)
    assert "cache.dynamic_slots has 25 layers, model deepseek-v2-lite has 26 MoE layers" in problems
    assert "cache.resident[0] holds expert id(s) 70, ids must be in [0, 64)" in problems
    assert "cache.resident[0] pins an expert twice" in problems


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["placement"].pop("slots_per_gpu"), "plan.json: placement.slots_per_gpu is required"),
        (lambda d: d["parallel"].update(ep=0), "plan.json: parallel.ep: Input should be greater than 0 (got 0)"),
        (lambda d: d.update(extra=1), "plan.json: unknown field 'extra'"),
        (lambda d: d.update(schema_version="9"), "plan.json: schema_version must be '1' (got '9')"),
        (lambda d: d["placement"]["physical_to_logical"][0].__setitem__(0, "x"), "plan.json: placement.physical_to_logical[0][0]"),
    ],
)
def test_malformed_fields_exit_2_with_one_line(raw, tmp_path, capsys, edit, message):
    edit(raw)
    path = _write(tmp_path, raw)
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        check_plan(path)
    code, out, err = run(capsys, "check", "--plan", str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_unreadable_files_exit_2(tmp_path, capsys):
    (tmp_path / "broken.json").write_text("{")
    code, _, err = run(capsys, "check", "--plan", str(tmp_path / "broken.json"))
    assert code == 2 and err.startswith("error: broken.json: invalid JSON at line 1")
    code, _, err = run(capsys, "check", "--plan", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json: no such file" in err
    code, _, err = run(capsys, "check", "--plan", str(tmp_path / "broken.json"), "--model", "no-such-model")
    assert code == 2
