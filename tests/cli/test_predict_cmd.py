"""``moe-planner predict``: one expert, a whole MoE layer, JSON, and one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.cost.compute import expert_ffn_ms
from planner.specs.hardware import load_hardware


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_one_expert_json_matches_the_cost_model(capsys):
    code, out, err = run(capsys, "predict", "--model", "mixtral-8x7b", "--hardware", "h100", "--tokens-per-expert", "300", "--json")
    assert code == 0, err
    d = json.loads(out)
    want = float(expert_ffn_ms(load_hardware("h100-sxm"), 4096, 14336, "bf16", 300))
    assert d["expert_ffn_ms"] == pytest.approx(want)
    assert d["source"] == "measured table" and "moe_layer_ms" not in d
    assert (d["hidden"], d["ffn"], d["dtype"]) == (4096, 14336, "bf16")


def test_whole_layer(capsys):
    code, out, err = run(capsys, "predict", "--model", "deepseek-v3", "--tokens", "65536", "--ep", "64", "--json")
    assert code == 0, err
    d = json.loads(out)
    layer = d["moe_layer"]
    assert d["tokens_per_expert"] == 65536 * 8 / 256 and layer["experts_per_gpu"] == 4
    assert d["moe_layer_ms"] == pytest.approx(layer["moe_layer_ms"])
    assert layer["comm_ms"] > 0 and layer["compute_ms"] > 0 and layer["rdma_bytes_per_gpu"] > 0
    assert d["dtype"] == "fp8" and d["source"] == "measured table"  # the project measured V3 experts in fp8
    code, out, err = run(capsys, "predict", "--model", "mixtral-8x7b", "--tokens-per-expert", "64", "--tokens", "4096", "--ep", "8")
    assert code == 0, err
    assert "measured table" in out and "dispatch + combine (deepep)" in out and "MoE layer" in out


@pytest.mark.parametrize(
    "args,msg",
    [
        ((), "needs --tokens-per-expert"),
        (("--tokens-per-expert", "-3"), "--tokens-per-expert must be >= 0 (got -3)"),
        (("--tokens", "100", "--ep", "3"), "--ep (3) must divide the model's 128 routed experts"),
        (("--tokens-per-expert", "4", "--ep", "2"), "--ep (2) needs --tokens"),
        (("--tokens-per-expert", "4", "--hardware", "tpu"), "unknown profile 'tpu'"),
        (("--tokens-per-expert", "4", "--dtype", "fp8", "--hardware", "a100"), "no entry for fp8"),
        (("--tokens-per-expert", "4", "--dtype", "bf8"), "--dtype must be one of"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, msg):
    code, out, err = run(capsys, "predict", "--model", "qwen3-30b-a3b", *args)
    assert code == 2
    assert msg in err and err.count("\n") == 1 and out == ""
