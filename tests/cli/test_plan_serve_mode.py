"""``plan --mode serve`` / planner.plan_serving: two valid pools that sum to the GPUs, the
serving section in plan.json (round trip, JSON output), launch lines per role, determinism,
and one-line errors naming the flag."""

import json

import pytest

from planner.cli import main
from planner.errors import InputError
from planner.serve_plan import plan_serving
from planner.specs.plan import Plan

ARGS = dict(nodes=1, gpus_per_node=8, prompt_len=1024, output_len=256, ttft_ms=500.0, tpot_ms=30.0, time_limit=5.0)


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def served():
    return plan_serving("olmoe-1b-7b", request_rate=500.0, **ARGS)


def test_two_valid_pools_sum_to_the_gpus(served):
    s = served.serving
    assert s is not None
    pre, dec = s.prefill_plan, served
    assert pre.workload.mode == "prefill" and dec.workload.mode == "decode"
    assert pre.cluster.num_gpus + dec.cluster.num_gpus == s.cluster.num_gpus == 8
    assert s.prefill.gpus == pre.cluster.num_gpus and s.decode.gpus == dec.cluster.num_gpus
    for p, r in ((pre, s.prefill), (dec, s.decode)):
        Plan.model_validate(p.model_dump())  # each pool is a valid plan of its own
        assert p.parallel == r.parallel and p.workload.batch == r.batch
    assert s.goodput_rps == pytest.approx(min(s.prefill.goodput_rps, s.decode.goodput_rps, s.kv_transfer.max_rps))
    assert s.binding in ("prefill", "decode", "kv copy")
    assert s.prefill.ttft_ms <= 500.0 + 1e-6 and s.decode.tpot_ms <= 30.0 + 1e-6
    assert s.colocated.gpus == 8 and s.colocated.tpot_ms <= 30.0 + 1e-6 and s.colocated.ttft_ms <= 500.0 + 1e-6
    assert [(x.prefill_units, x.decode_units) for x in s.splits] == [(p, 8 - p) for p in range(1, 8)]
    assert s.kv_transfer.link == "nvlink"  # both pools on one node


def test_rate_sizing_and_launch_lines(served):
    s = served.serving
    g = s.gpus_needed
    assert g is not None and g.request_rate == 500.0
    assert g.disaggregated_gpus == g.prefill.gpus + g.decode.gpus
    assert g.prefill.copies * min(s.prefill.goodput_rps, 1e12) > 0
    for role, r in (("prefill", s.prefill), ("decode", s.decode)):
        sg, vl = r.launch.sglang, r.launch.vllm
        assert sg[sg.index("--disaggregation-mode") + 1] == role
        assert "--kv-transfer-config" in vl
        assert served.launch == s.decode.launch and s.prefill_plan.launch == s.prefill.launch
    assert "--max-running-requests" in s.decode.launch.sglang and "--max-prefill-tokens" in s.prefill.launch.sglang


def test_plan_json_round_trip_and_old_plans_still_load(served, tmp_path):
    served.save(tmp_path / "plan.json")
    back = Plan.load(tmp_path / "plan.json")
    assert back == served
    old = json.loads(served.to_json())
    del old["serving"]  # a plan written before the field existed
    assert Plan.model_validate(old).serving is None


def test_deterministic(served):
    def figures(p: Plan) -> dict:
        d = p.serving.model_dump(mode="json")
        d.pop("prefill_plan")
        return d

    again = plan_serving("olmoe-1b-7b", request_rate=500.0, **ARGS)
    assert figures(again) == figures(served)  # the pool figures do not depend on the solver's time
    assert again.provenance.input_hash == served.provenance.input_hash
    # with a baseline (no time-limited solver) the placements are the same too
    a, b = (plan_serving("olmoe-1b-7b", baseline="eplb", redundant_experts=8, **ARGS) for _ in range(2))
    assert a.placement == b.placement and a.serving.prefill_plan.placement == b.serving.prefill_plan.placement
    assert figures(a) == figures(b) and a.predicted == b.predicted
    assert a.serving.prefill.launch.sglang[a.serving.prefill.launch.sglang.index("--ep-num-redundant-experts") + 1] == "8"


def test_cli_text_and_json(capsys, tmp_path):
    common = ["plan", "--mode", "serve", "--model", "olmoe-1b-7b", "--prompt-len", "1024", "--output-len", "256",
              "--ttft-ms", "500", "--tpot-ms", "30", "--time-limit", "5", "--prefill-nodes", "2"]
    code, out, err = run(capsys, *common)
    assert code == 0, err
    assert "disaggregated serving on 1 × 8 h100-sxm" in out and "colocated" in out
    assert "prefill sglang: python -m sglang.launch_server" in out and "--disaggregation-mode decode" in out
    code, out, err = run(capsys, *common, "--json", "--out", str(tmp_path))
    assert code == 0, err
    p = Plan.model_validate(json.loads(out))
    assert p.serving.prefill.gpus == 2 and p.serving.decode.gpus == 6 and len(p.serving.splits) == 1
    assert Plan.load(tmp_path / "plan.json") == p


@pytest.mark.parametrize("args, flag, code", [
    (["--mode", "serve", "--tp", "2"], "--tp", 2),
    (["--prefill-nodes", "2"], "--prefill-nodes", 2),
    (["--mode", "decode", "--prefill-tokens", "4096"], "--prefill-tokens", 2),
    (["--mode", "serve", "--prefill-nodes", "5", "--decode-nodes", "4"], "--prefill-nodes", 2),
    (["--mode", "serve", "--gpus-per-node", "1"], "--gpus-per-node", 2),
    (["--mode", "serve", "--prompt-len", "1024", "--ttft-ms", "0.001"], "--ttft-ms", 1),
    (["--mode", "serve", "--dry-run"], "--dry-run", 2),
])
def test_bad_input_is_one_line_naming_the_flag(capsys, args, flag, code):
    got, out, err = run(capsys, "plan", "--model", "olmoe-1b-7b", "--time-limit", "5", *args)
    assert got == code
    lines = [x for x in err.strip().splitlines() if x.startswith(("error:", "infeasible:"))]
    assert len(lines) == 1 and flag in lines[0], err
    assert out == ""


def test_api_plan_points_to_plan_serving():
    import planner

    with pytest.raises(InputError) as e:
        planner.plan("olmoe-1b-7b", mode="serve")
    assert e.value.field == "mode" and "plan_serving" in str(e.value)
    assert planner.plan_serving is plan_serving


def test_deepep_kernels_per_role_follow_the_dispatch():
    p = plan_serving("olmoe-1b-7b", dispatch="nearest", baseline="eplb", redundant_experts=8, **ARGS)
    for r, mode in ((p.serving.prefill, "normal"), (p.serving.decode, "low_latency")):
        sg = r.launch.sglang
        assert sg[sg.index("--moe-a2a-backend") + 1] == "deepep" and sg[sg.index("--deepep-mode") + 1] == mode
    even = plan_serving("olmoe-1b-7b", baseline="eplb", redundant_experts=8, **ARGS)
    assert "--deepep-mode" not in even.serving.decode.launch.sglang  # no DeepEP line: no DeepEP mode
