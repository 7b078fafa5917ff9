"""Launch lines ``moe-planner plan`` prints for serving plans (planner.exports.launch)."""

from planner.cli.render import render_launch
from planner.exports.launch import launch_args, launch_notes


def _value(flags, name):
    return flags[flags.index(name) + 1] if name in flags else None


def test_two_node_serving_lines_are_complete(plan_replicas_2n):
    assert plan_replicas_2n.workload.mode != "train" and plan_replicas_2n.cluster.num_nodes == 2
    la = launch_args(plan_replicas_2n)
    assert _value(la.vllm, "--data-parallel-size-local") == "8"
    assert _value(la.vllm, "--data-parallel-address") == "HEAD_NODE_IP"
    assert _value(la.sglang, "--node-rank") == "0"
    assert _value(la.sglang, "--dist-init-addr") == "HEAD_NODE_IP:5000"
    static = launch_args(plan_replicas_2n.model_copy(update={"dispatch": "static"}))
    assert _value(static.sglang, "--ep-dispatch-algorithm") == "static"
    assert _value(static.sglang, "--moe-a2a-backend") == "deepep"
    notes = launch_notes(plan_replicas_2n)
    assert any(n.startswith("vllm: ") and "--headless" in n for n in notes)
    assert any(n.startswith("sglang: ") and "--node-rank" in n for n in notes)
    lines = render_launch(plan_replicas_2n.model_copy(update={"launch": la}))
    assert any("vllm serve MODEL" in ln and "--data-parallel-size-local 8" in ln for ln in lines)
    assert any("note: sglang: run the same line" in ln for ln in lines)


def test_one_node_lines_have_no_node_flags_or_notes(plan_replicas):
    la = launch_args(plan_replicas)
    assert "--data-parallel-address" not in la.vllm and "--dist-init-addr" not in la.sglang
    assert launch_notes(plan_replicas) == []


def test_prefill_per_rank_budget_sets_sglang_chunked_prefill(plan_replicas_2n):
    # SGLang under --enable-dp-attention divides --chunked-prefill-size by dp: the line states the
    # budget the plan's per-rank steps were formed with; whole-prompt steps state none
    w = plan_replicas_2n.workload
    per_rank = plan_replicas_2n.model_copy(update={"workload": w.model_copy(
        update={"mode": "prefill", "tokens_per_step": 4096, "prefill_budget": "per-rank"})})
    assert plan_replicas_2n.parallel.dp > 1
    assert _value(launch_args(per_rank).sglang, "--chunked-prefill-size") == "4096"
    engine = per_rank.model_copy(update={"workload": per_rank.workload.model_copy(update={"prefill_budget": "engine"})})
    assert "--chunked-prefill-size" not in launch_args(engine).sglang
