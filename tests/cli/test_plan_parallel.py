"""`moe-planner plan` with the parallelism search: figures, alternatives, launch arguments, errors."""

import json
import re

from planner.cli import main
from planner.specs.plan import Plan


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_plan_fills_figures_search_and_megatron_args(capsys):
    code, out, err = run(
        capsys, "plan", "--model", "mixtral-8x7b", "--nodes", "8", "--mode", "train", "--global-batch", "256",
        "--tp", "1", "--ep", "8", "--pp", "4", "--vpp", "8", "--cp", "1", "--micro-batch", "1", "--time-limit", "5", "--json",
    )
    assert code == 0, err
    plan = Plan.model_validate(json.loads(out))
    par, pred, s = plan.parallel, plan.predicted, plan.search
    assert (par.tp, par.ep, par.pp, par.vpp, par.cp, par.dp) == (1, 8, 4, 8, 1, 16)
    assert s is not None and {"tp", "ep", "pp", "vpp", "cp", "micro_batch"} <= set(s.fixed)
    assert s.chosen.micro_batch == 1 and s.chosen.global_batch == 256
    # tokens/s is the step's tokens over the step; TFLOP/s within 15% of the published 468
    assert abs(pred.tokens_per_s - 256 * 4096 / (pred.step_time_ms / 1e3)) < 1e-6 * pred.tokens_per_s
    assert abs(pred.tflops_per_gpu / 468 - 1) < 0.15
    # memory is the full training memory, its parts sum to it
    parts = pred.memory_breakdown_gib
    assert parts["gradients"] > 0 and parts["optimizer"] > 0 and parts["activations"] > 0
    assert abs(sum(parts.values()) - pred.memory_per_gpu_gib) < 1e-6
    argv = plan.launch.megatron
    for flag, val in (("--tensor-model-parallel-size", "1"), ("--pipeline-model-parallel-size", "4"),
                      ("--expert-model-parallel-size", "8"), ("--num-layers-per-virtual-pipeline-stage", "1"),
                      ("--micro-batch-size", "1"), ("--moe-token-dispatcher-type", "alltoall")):
        assert argv[argv.index(flag) + 1] == val
    assert "--moe-grouped-gemm" in argv and "--use-distributed-optimizer" in argv
    # `moe-planner export --to megatron` writes the same arguments as the plan's launch line
    from planner.exports import megatron

    assert megatron.args(plan) == argv


def test_default_plan_prints_search_and_serving_flags(capsys):
    code, out, err = run(capsys, "plan")
    assert code == 0, err
    assert "parallelism search:" in out and "ranked by throughput" in out
    assert "vllm: vllm serve MODEL --enable-expert-parallel --tensor-parallel-size 1 --data-parallel-size 8" in out
    assert "--ep-size 8" in out and "--enable-dp-attention" in out
    assert "memory per GPU:" in out and "kv_cache" in out


def test_rule_broken_by_a_fixed_degree_exits_2(capsys):
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--nodes", "2", "--mode", "train", "--ep", "3")
    assert code == 2
    assert "must divide the 16 GPUs of a pipeline stage" in err
    # a fixed EP × ETP spanning nodes is honoured (issue 19), with a note saying how it is priced
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--nodes", "2", "--mode", "train", "--ep", "8",
                         "--etp", "2", "--time-limit", "5")
    assert code == 0, err
    assert "ep × etp (8 × 2 = 16) as fixed spans 2 nodes" in out


def test_infeasible_training_exits_1_with_numbers(capsys):
    code, out, err = run(capsys, "plan", "--model", "deepseek-v3", "--mode", "train", "--global-batch", "64")
    assert code == 1
    assert "GiB per GPU" in err and "has 75.2" in err


def test_train_plan_prints_the_strategies_what_if(capsys, tmp_path):
    """`--strategies` adds one row per training strategy; Megatron's row is the search's own step."""
    code, out, err = run(
        capsys, "plan", "--model", "mixtral-8x7b", "--nodes", "8", "--mode", "train", "--global-batch", "256",
        "--tp", "1", "--ep", "8", "--pp", "4", "--vpp", "8", "--cp", "1", "--micro-batch", "1", "--time-limit", "5",
        "--strategies", "--out", str(tmp_path / "p"),
    )
    assert code == 0, err
    table = out.split("training strategies (what-if on the chosen layout", 1)[1].splitlines()[2:]
    rows = {re.split(r"\s{2,}", ln.strip())[0]: ln.split() for ln in table if ln.rstrip().endswith((" yes", " no"))}
    assert {k.split(" ")[0].rstrip(":") for k in rows} == {"megatron", "fsmoe", "fssdp", "deepspeed-moe"}
    chosen = re.search(r"\* dp 16 tp 1 pp 4 ep 8 .*?: ([0-9.]+) ms/step", out)
    assert chosen is not None
    assert float(rows["megatron (search's choice)"][-4]) == float(chosen.group(1))
