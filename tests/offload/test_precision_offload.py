"""``plan --mode offload --expert-precisions``: a precision per expert under the budget, end to end
(plan file, check, simulate) and the input rules."""

import json

import pytest

import planner
from planner.cli import main
from planner.errors import InputError
from planner.offload import cache_memory_problems
from planner.resolve import resolve_hardware
from planner.specs.model import DTYPE_BYTES
from planner.specs.plan import Plan


@pytest.fixture(scope="module")
def mixed_plan(ds_trace_file):
    return planner.plan("deepseek-v2-lite", mode="offload", gpu_memory_gb=8.0, trace=str(ds_trace_file),
                        expert_precisions="int4=2.0", max_accuracy_cost=1.0, time_limit=30.0)


def test_mixed_plan_fields_and_budget(mixed_plan):
    p, m = mixed_plan, mixed_plan.model
    c = p.cache
    assert p.solver.name == "precision-ilp" and p.solver.status == "optimal"
    assert len(c.expert_precision) == m.num_moe_layers and all(len(r) == m.num_experts for r in c.expert_precision)
    kinds = {x for r in c.expert_precision for x in r}
    assert kinds == {"bf16", "int4"}
    assert 0 < c.accuracy_cost <= 1.0 + 1e-9
    assert any("experts in bf16" in n and "(cap 1)" in n for n in p.predicted.notes)
    resident = sum(m.expert_params * DTYPE_BYTES[c.expert_precision[i][e]] for i, r in enumerate(c.resident) for e in r)
    assert resident + c.staging_slots * m.expert_bytes <= c.budget_bytes
    # the resident set would not fit in bf16: check must price each expert in its own precision
    slots = sum(len(r) for r in c.resident) + c.staging_slots
    assert slots * m.expert_bytes > c.budget_bytes
    assert cache_memory_problems(c, m, resolve_hardware(p.cluster.hardware)) == []


def test_mixed_plan_round_trip_and_simulate(mixed_plan, ds_trace_file, tmp_path):
    path = tmp_path / "plan.json"
    mixed_plan.save(path)
    back = Plan.load(path)
    assert back.cache.expert_precision == mixed_plan.cache.expert_precision
    rep = planner.simulate(back, str(ds_trace_file))
    assert rep.summary()["tokens_per_s"] == pytest.approx(mixed_plan.cache.predicted.tokens_per_s)
    assert main(["check", "--plan", str(path)]) == 0


def test_int4_beats_bf16_at_equal_memory_and_zero_cap_keeps_bf16(mixed_plan, ds_trace_file):
    zero = planner.plan("deepseek-v2-lite", mode="offload", gpu_memory_gb=8.0, trace=str(ds_trace_file),
                        expert_precisions="int4=2.0", max_accuracy_cost=0.0, time_limit=30.0)
    assert {x for r in zero.cache.expert_precision for x in r} == {"bf16"} and zero.cache.accuracy_cost == 0.0
    assert mixed_plan.cache.predicted.tokens_per_s > zero.cache.predicted.tokens_per_s


def test_rules(ds_trace_file, capsys):
    with pytest.raises(InputError, match="mode offload only"):
        planner.plan("deepseek-v2-lite", mode="decode", expert_precisions="int4=1")
    code = main(["plan", "--mode", "offload", "--model", "deepseek-v2-lite", "--gpu-memory-gb", "8", "--trace",
                 str(ds_trace_file), "--expert-precisions", "int4", "--dry-run", "--json"])
    out, _ = capsys.readouterr()
    assert code == 2
    err = json.loads(out)
    assert "int4 needs its accuracy cost" in err["error"] and err["flag"] == "--expert-precisions"
