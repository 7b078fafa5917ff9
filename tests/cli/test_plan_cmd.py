import json

import pytest

from planner.cli import main
from planner.specs.plan import Plan


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_plan_prints_a_table(capsys):
    code, out, err = run(capsys, "plan")
    assert code == 0, err
    assert "moe-planner plan: qwen3-30b-a3b on 1 × 8 h100-sxm (decode)" in out
    assert "ep 8" in out and "16 per GPU" in out
    assert "held-out steps" in out
    assert "MoE layer" in out


def test_json_is_a_valid_plan_and_out_writes_it(tmp_path, capsys):
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--json", "--out", str(tmp_path))
    assert code == 0, err
    plan = Plan.model_validate(json.loads(out))
    assert plan.model.name == "mixtral-8x7b"
    assert plan.parallel.ep == 8 and plan.placement.slots_per_gpu == 1
    assert Plan.load(tmp_path / "plan.json") == plan
    # the solver's placement and the baselines were compared on the planning steps, the best
    # kept, the plan scored on held-out steps
    assert set(plan.solver.candidates) == {"placement-ilp", "contiguous", "round-robin", "eplb"}
    assert plan.solver.objective == min(plan.solver.candidates.values())
    assert plan.solver.bound is not None and 0 <= plan.solver.gap < 1
    assert plan.predicted.evaluated_on.startswith("held-out")


def test_out_refuses_to_overwrite_without_force(tmp_path, capsys):
    assert run(capsys, "plan", "--model", "mixtral-8x7b", "--out", str(tmp_path))[0] == 0
    before = (tmp_path / "plan.json").read_text()
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--seed", "3", "--out", str(tmp_path))
    assert code == 2 and "already exists (pass --force to overwrite)" in err
    assert (tmp_path / "plan.json").read_text() == before
    assert run(capsys, "plan", "--model", "mixtral-8x7b", "--out", str(tmp_path), "--force")[0] == 0


def test_same_seed_same_plan_apart_from_time(capsys):
    import re

    def strip(text):  # byte-level: only the two wall-clock fields may differ
        d = json.loads(text)
        assert d["provenance"]["created"] and d["solver"]["time_s"] >= 0
        text = re.sub(r'"created": "[^"]*"', '"created": ""', text)
        return re.sub(r'"time_s": [0-9.e+-]+', '"time_s": 0', text)

    a = run(capsys, "plan", "--model", "deepseek-v2-lite", "--json", "--seed", "5")[1]
    b = run(capsys, "plan", "--model", "deepseek-v2-lite", "--json", "--seed", "5")[1]
    assert strip(a) == strip(b)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--ep", "3"], 2, "--ep × etp (3 × 1 = 3) must divide the 8 GPUs"),
        (["--model", "nope"], 2, "unknown model 'nope'"),
        (["--hardware", "nope"], 2, "nope"),
        (["--mode", "fly"], 2, "Invalid value for '--mode'"),
        (["--baseline", "contiguous", "--redundant-experts", "8"], 2, "places no redundant experts"),
        (["--mode", "offload", "--gpu-memory-gb", "500"], 2, "exceeds h100-sxm's"),
        (["--mode", "offload"], 2, "gpu_memory_gb is required"),
        (["--time-limit", "0"], 2, "--time-limit must be > 0"),
        (["--trace", "/no/such/trace.npz"], 2, "trace.npz"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, code, message):
    got, out, err = run(capsys, "plan", *args, "--out", str(tmp_path / "o"))
    assert got == code
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_infeasible_names_the_binding_constraint(tmp_path, capsys):
    code, out, err = run(capsys, "plan", "--model", "deepseek-v3", "--out", str(tmp_path / "o"))
    assert code == 1
    assert "GiB per GPU" in err and "h100-sxm has 79.2 GiB" in err
    assert not (tmp_path / "o").exists()


def test_dry_run_solves_nothing(tmp_path, capsys):
    code, out, err = run(capsys, "plan", "--model", "deepseek-v2-lite", "--redundant-experts", "8", "--ep", "8",
                         "--dry-run", "--json", "--out", str(tmp_path / "o"))
    assert code == 0, err
    size = json.loads(out)
    assert size["physical_slots"] == 72 and size["slots_per_gpu"] == 9 and size["moe_layers"] == 26
    assert size["candidates"] == ["eplb"]
    assert not (tmp_path / "o").exists()


def test_schema_command(capsys):
    code, out, _ = run(capsys, "schema", "plan")
    assert code == 0
    s = json.loads(out)
    assert "physical_to_logical" in json.dumps(s) and s["title"] == "Plan"


def test_counts_only_trace_is_planned_with_a_caveat(tmp_path, capsys):
    import numpy as np

    counts = np.random.default_rng(0).integers(0, 50, size=(6, 32, 8))
    f = tmp_path / "logical_count.json"
    f.write_text(json.dumps({"logical_count": counts.tolist()}))
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--trace", str(f), "--json",
                         "--baseline", "eplb", "--redundant-experts", "8")
    assert code == 0, err
    plan = Plan.model_validate(json.loads(out))
    assert plan.provenance.trace == "logical_count.json (counts only)"
    assert any("counts-only trace" in n for n in plan.predicted.notes)
    # EPLB is fed the real counts of the planning steps (the first 4 of 6), not the samples
    assert "planned on the first 4" in plan.predicted.evaluated_on
    from planner.solve.baselines import replicate

    _, want = replicate(counts[:4].sum(0).astype(float), 16)
    got = np.stack([np.bincount(row, minlength=8) for row in plan.placement.physical_to_logical])
    assert (got == want).all()


def test_dry_run_reports_infeasible_weights(tmp_path, capsys):
    code, out, err = run(capsys, "plan", "--model", "deepseek-v3", "--dry-run")
    assert code == 1
    # the parallelism search finds no layout that fits: the closest one's memory, with its weights
    assert "GiB per GPU (weights" in err and "h100-sxm has 79.2 GiB" in err
    code, out, err = run(capsys, "plan", "--model", "deepseek-v2-lite", "--dry-run", "--json")
    assert code == 0, err
    size = json.loads(out)
    assert size["gpu_memory_gib"] == pytest.approx(79.18, abs=0.01)
    assert 0 < size["weights_per_gpu_gib"] < size["gpu_memory_gib"]


def test_plan_options_are_the_flags_prepare_and_solve_keywords():
    """PlanOptions lists every option once: the plan command's flags, and prepare's and solve's
    keywords with the same defaults."""
    import inspect

    import click

    from planner.api import prepare, solve
    from planner.cli.plan_cmd import plan as plan_cmd
    from planner.specs.options import PlanOptions, flag_info

    fields = PlanOptions.model_fields
    keywords = {
        name: p.default
        for fn in (prepare, solve) for name, p in inspect.signature(fn).parameters.items() if name != "problem"
    }
    assert set(keywords) == set(fields)
    for name, default in keywords.items():
        assert fields[name].default == default, name
    flags = {p.name: p for p in plan_cmd.params if isinstance(p, click.Option)}
    for name, f in fields.items():
        if not flag_info(name)["flag"]:
            assert name not in flags, name
            continue
        opt = flags[name]
        assert opt.opts == ["--" + name.replace("_", "-"), *flag_info(name)["aliases"]], name
        assert opt.default == f.default and opt.help == f.description
    assert set(flags) - set(fields) == {"out_dir", "force", "dry_run", "as_json", "show_progress",
                                        "show_strategies"}  # output-only flags: not plan options


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nodez": 2}, "unknown plan option 'nodez'; did you mean nodes"),
        ({"nodes": "2"}, "nodes must be an integer (got '2')"),
        ({"dispatch": "far"}, "dispatch must be one of even, local-first, nearest, static (got 'far')"),
        ({"cross_node": 1}, "cross_node must be true or false (got 1)"),
        ({"seed": None}, "seed may not be null"),
    ],
)
def test_plan_keywords_are_checked_against_plan_options(kwargs, message):
    import re

    import planner
    from planner.errors import InputError

    with pytest.raises(InputError, match=re.escape(message)):
        planner.plan("mixtral-8x7b", **kwargs)


def test_training_dry_run_prices_weights_in_the_training_dtype(capsys):
    """DeepSeek-V3 ships fp8 experts for serving; a bf16 training run holds them in bf16."""
    from planner.cost.memory import GIB, train_weight_bytes, weights_per_gpu_bytes
    from planner.specs.model_io import load_model

    code, out, err = run(capsys, "plan", "--model", "deepseek-v3", "--nodes", "128", "--mode", "train",
                         "--dry-run", "--json")
    assert code == 0, err
    size = json.loads(out)
    m, par = load_model("deepseek-v3"), size["parallel"]
    args = (m, size["slots_per_gpu"], par["tp"], par["pp"], par["etp"])
    assert size["weights_per_gpu_gib"] == round(train_weight_bytes(*args) / GIB, 3)
    # the experts' bytes double (fp8 → bf16); the rest is bf16 either way
    experts_fp8 = size["slots_per_gpu"] * m.expert_bytes * -(-m.num_moe_layers // par["pp"]) / par["etp"]
    assert train_weight_bytes(*args) - weights_per_gpu_bytes(*args) == pytest.approx(experts_fp8)


def test_two_batch_overlap_flag_reaches_the_sglang_line(capsys):
    """``--two-batch-overlap on`` prices the decode step with it and the SGLang line asks for it;
    the default (off in decode) does not; ``--routing`` in train mode exits 2 (bad input) naming the flag."""
    args = ("plan", "--model", "deepseek-v2-lite", "--batch", "512", "--time-limit", "5", "--json")
    code, out, err = run(capsys, *args, "--two-batch-overlap", "on")
    assert code == 0, err
    plan = Plan.model_validate_json(out)
    assert plan.search.chosen.two_batch_overlap is True
    assert "--enable-two-batch-overlap" in plan.launch.sglang
    code, out, err = run(capsys, *args)
    assert code == 0, err
    plan = Plan.model_validate_json(out)
    assert plan.search.chosen.two_batch_overlap is False
    assert "--enable-two-batch-overlap" not in plan.launch.sglang
    code, out, err = run(capsys, "plan", "--mode", "train", "--routing", "eplb")
    assert code == 2 and "--routing prices serving steps" in err  # bad input: exit 2
