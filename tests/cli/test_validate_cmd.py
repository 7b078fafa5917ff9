"""``moe-planner validate`` end to end on CPU with a tiny model spec, and its one-line errors."""

import json
import sys

import pytest
import yaml

from planner.cli import main

TINY = {
    "name": "tiny-moe",
    "hidden_size": 64,
    "num_layers": 3,
    "num_experts": 8,
    "top_k": 2,
    "expert_intermediate_size": 32,
    "num_shared_experts": 1,
    "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
    "vocab_size": 100,
}
FAST = ["--device", "cpu", "--steps", "1", "--warmup", "0", "--reps", "2", "--runs", "1"]


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def plan_file(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    # --ep 8: one expert per rank (the search alone would replicate this tiny model on every GPU)
    code, _, err = run(capsys, "plan", "--model", spec, "--ep", "8", "--out", tmp_path / "p")
    assert code == 0, err
    return tmp_path / "p" / "plan.json"


def test_validate_end_to_end_on_cpu(plan_file, tmp_path, capsys):
    pytest.importorskip("torch")
    out_file = tmp_path / "report.json"
    code, out, err = run(capsys, "validate", "--plan", plan_file, *FAST, "--backend", "loop",
                         "--backend", "grouped", "--json", "--out", out_file)
    assert code == 0, err
    rep = json.loads(out)
    assert json.loads(out_file.read_text()) == rep
    assert rep["device"]["device_kind"] == "cpu" and rep["device"]["device"].startswith("cpu")
    assert rep["device"]["torch"] and rep["device"]["date_utc"]
    assert "--backend loop --backend grouped" in rep["device"]["command_line"]
    assert rep["plan"]["model"] == "tiny-moe" and rep["plan"]["hardware"] == "h100-sxm"
    assert "held-out" in rep["evaluated"]["which"] and len(rep["evaluated"]["steps"]) == 1
    assert rep["evaluated"]["layers"] == [0, 1, 2] and rep["evaluated"]["complete"]
    assert len(rep["ranks"]) == 3 * 8 and len(rep["straggler"]) == 3
    row = rep["ranks"][0]
    assert row["predicted_ms"] > 0 and set(row["measured_ms"]) == {"loop", "grouped"}
    assert set(row["error_pct"]) == {"loop", "grouped"}
    for b in ("loop", "grouped"):
        sm = rep["summary"][b]
        assert sm["ranks"]["n"] > 0 and sm["ranks"]["mape_pct"] >= 0
        assert sm["straggler"]["n"] == 3 and sm["sum"]["measured_ms"] > 0
    assert rep["shape"] == {"hidden": 64, "ffn": 32, "etp": 1, "slots_per_rank": 1,
                            "dtype_executed": "bf16", "dtype_plan": "bf16"}
    assert any("CPU" in n for n in rep["notes"])


def test_validate_prints_a_table(plan_file, capsys):
    pytest.importorskip("torch")
    code, out, err = run(capsys, "validate", "--plan", plan_file, *FAST, "--layers", "1", "--max-tokens", "4")
    assert code == 0, err
    assert "moe-planner validate: tiny-moe" in out and "MAPE ranks" in out and "straggler" in out
    assert "capped at --max-tokens 4" in out
    assert "step" in err  # progress on stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be > 0"),
        (["--layers", "-1"], "--layers must be > 0"),
        (["--reps", "0"], "--reps and --runs must be >= 1"),
    ],
)
def test_bad_options_exit_2_with_one_line(plan_file, capsys, extra, message):
    pytest.importorskip("torch")
    code, out, err = run(capsys, "validate", "--plan", plan_file, "--device", "cpu", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_missing_plan_file(tmp_path, capsys):
    code, _, err = run(capsys, "validate", "--plan", tmp_path / "nope.json", "--device", "cpu")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_out_is_not_overwritten_without_force(plan_file, tmp_path, capsys):
    target = tmp_path / "r.json"
    target.write_text("keep")
    code, _, err = run(capsys, "validate", "--plan", plan_file, "--device", "cpu", "--out", target)
    assert code == 2 and "already exists" in err and target.read_text() == "keep"


def test_without_torch_it_says_how_to_install(plan_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    code, _, err = run(capsys, "validate", "--plan", plan_file, "--device", "cpu")
    assert code == 2 and "pip install 'moe-planner[torch]'" in err


def test_cuda_without_a_gpu(plan_file, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code, _, err = run(capsys, "validate", "--plan", plan_file, "--device", "cuda")
    assert code == 2 and "torch sees no CUDA device" in err


def test_a_plan_from_an_unknown_trace_needs_trace(tmp_path, capsys, plan_file):
    pytest.importorskip("torch")
    data = json.loads(plan_file.read_text())
    data["provenance"]["trace"] = "recorded.npz"
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    code, _, err = run(capsys, "validate", "--plan", other, "--device", "cpu")
    assert code == 2 and "pass --trace FILE" in err


@pytest.mark.gpu
def test_validate_on_cuda(plan_file, capsys):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    code, out, err = run(capsys, "validate", "--plan", plan_file, "--device", "cuda", "--steps", "1",
                         "--reps", "3", "--runs", "1", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["backends"] == {"auto": "grouped"} and rep["device"]["device_kind"] == "cuda"


def test_an_unavailable_backend_exits_2_with_one_line(plan_file, capsys, monkeypatch):
    pytest.importorskip("torch")
    import importlib

    layer = importlib.import_module("planner_kernels.moe_layer")
    monkeypatch.setattr(layer, "triton_unavailable", lambda x: "triton does not import (test)")
    code, _, err = run(capsys, "validate", "--plan", plan_file, *FAST, "--backend", "triton")
    assert code == 2 and "--backend: backend 'triton' is unavailable: triton does not import (test)" in err
    assert len(err.strip().splitlines()) == 1
