"""``moe-planner plan`` with a serving workload stated as users state it (issue 17, part 1)."""

import json

import pytest

from planner.cli import main
from planner.specs.plan import Plan


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("model", ["mixtral-8x7b", "olmoe-1b-7b"])
def test_two_gpus_plan_a_decode_batch(capsys, model):
    # were infeasible at the trace's fixed batch; the search now finds the batch memory allows
    code, out, err = run(capsys, "plan", "--model", model, "--gpus-per-node", "2", "--dry-run", "--json")
    assert code == 0, err
    size = json.loads(out)
    assert size["memory_per_gpu_gib"] <= 79.18 - 4 + 1e-3 and "batch" in size["search"]


def test_batch_concurrency_and_targets_reach_the_plan(capsys):
    code, out, err = run(capsys, "plan", "--model", "olmoe-1b-7b", "--gpus-per-node", "2", "--concurrency", "32",
                         "--prompt-len", "1000", "--output-len", "200", "--kv-dtype", "fp8", "--request-rate", "50",
                         "--baseline", "eplb", "--json")
    assert code == 0, err
    p = Plan.model_validate(json.loads(out))
    w = p.workload
    assert (w.batch, w.prompt_len, w.output_len, w.kv_dtype, w.request_rate) == (32, 1000, 200, "fp8", 50.0)
    assert p.search.chosen.sequences == 32
    assert any(n.startswith("batch 32 as stated") for n in p.search.notes)
    assert any(n.startswith("request rate: the plan sustains") for n in p.search.notes)
    # the placement is scored at the batch: decode steps of 32 sequences (one token each)
    assert any("32 concurrent sequences" in n for n in p.predicted.notes)


def test_latency_target_binds_the_searched_batch(capsys):
    code, out, err = run(capsys, "plan", "--latency-target-ms", "12", "--dry-run", "--json")
    assert code == 0, err  # was infeasible at the trace's 512-token steps
    code, out, err = run(capsys, "plan", "--tpot-ms", "12", "--baseline", "eplb", "--json")
    assert code == 0, err
    p = Plan.model_validate(json.loads(out))
    assert p.predicted.latency_per_token_ms <= 12
    assert any("the 12 ms per-output-token target binds" in n for n in p.search.notes)


def test_infeasible_names_the_flag(capsys):
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--gpus-per-node", "1")
    assert code == 1
    assert "the weights alone need" in err and "--gpus-per-node" in err
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--gpus-per-node", "2", "--batch", "4096")
    assert code == 1 and "--kv-dtype fp8" in err and "--output-len" in err and "--batch" in err
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--gpus-per-node", "2", "--tpot-ms", "0.5")
    assert code == 1 and "--tpot-ms" in err
