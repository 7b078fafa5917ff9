"""``moe-planner export``: files, printed flags, --json, --force, and bad input (exit 2)."""

import json

import numpy as np
import pytest

import planner
from planner.cli import main


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    planner.plan("deepseek-v2-lite", baseline="eplb", redundant_experts=8, ep=8).save(d / "plan.json")
    return d / "plan.json"


def test_sglang_export_prints_the_flags_to_pass(capsys, plan_file, tmp_path):
    out = tmp_path / "loc.json"
    code, stdout, err = run(capsys, "export", "--plan", str(plan_file), "--to", "sglang", "--out", str(out))
    assert code == 0, err
    assert f"--init-expert-location {out} --ep-size 8 --ep-num-redundant-experts 8" in stdout
    assert "physical_to_logical_map [27, 72]" in stdout
    assert f"wrote {out}" in err
    assert np.asarray(json.loads(out.read_text())["physical_to_logical_map"]).shape == (27, 72)


def test_json_output(capsys, plan_file, tmp_path):
    out = tmp_path / "state.npz"
    code, stdout, err = run(capsys, "export", "--plan", str(plan_file), "--to", "vllm", "--out", str(out), "--json")
    assert code == 0, err
    d = json.loads(stdout)
    assert d["to"] == "vllm" and d["path"] == str(out)
    assert d["shapes"] == {"physical_to_logical_map": [26, 72]}
    assert d["flags"][-2:] == ["--eplb-config", '{"num_redundant_experts": 8}']
    assert d["command_line"].endswith("--eplb-config '{\"num_redundant_experts\": 8}'")
    assert np.load(out).files == ["physical_to_logical_map"]


def test_out_refuses_to_overwrite_without_force(capsys, plan_file, tmp_path):
    out = tmp_path / "map.json"
    out.write_text("old")
    code, _, err = run(capsys, "export", "--plan", str(plan_file), "--to", "vllm-ascend", "--out", str(out))
    assert code == 2 and "already exists (pass --force to overwrite)" in err
    assert out.read_text() == "old"
    code, _, err = run(capsys, "export", "--plan", str(plan_file), "--to", "vllm-ascend", "--out", str(out), "--force")
    assert code == 0, err
    assert json.loads(out.read_text())["moe_layer_count"] == 26


@pytest.mark.parametrize(
    "args, message",
    [
        (["--to", "eplb", "--out", "x.csv"], "error: x.csv: --to eplb writes .pt or .npz files (got '.csv')"),
        (["--to", "trtllm", "--out", "x.json"], "error: Invalid value for '--to'"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(capsys, plan_file, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "export", "--plan", str(plan_file), *args)
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_broken_plan_exits_2_naming_file_and_field(capsys, plan_file, tmp_path):
    d = json.loads(plan_file.read_text())
    d["placement"]["physical_to_logical"][2][0] = 64
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    code, _, err = run(capsys, "export", "--plan", str(bad), "--to", "sglang", "--out", str(tmp_path / "o.json"))
    assert code == 2
    assert err.startswith("error: bad.json: ") and "physical_to_logical[2] holds expert 64" in err
    assert not (tmp_path / "o.json").exists()
    code, _, err = run(capsys, "export", "--plan", str(tmp_path / "none.json"), "--to", "sglang", "--out", str(tmp_path / "o.json"))
    assert code == 2 and "none.json: no such file" in err


def test_megatron_text_export(capsys, tmp_path):
    planner.plan("mixtral-8x7b", baseline="round-robin").save(tmp_path / "plan.json")
    out = tmp_path / "args.txt"
    code, stdout, err = run(capsys, "export", "--plan", str(tmp_path / "plan.json"), "--to", "megatron", "--out", str(out))
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert "--expert-model-parallel-size 8" in lines and "--num-experts 8" in lines
    # round-robin with 8 experts on 8 ranks is one expert per rank: the identity, no move needed
    assert any("contiguous one: the checkpoint needs no permutation" in ln for ln in lines)
    assert sum(ln.startswith("# perm ") for ln in lines) == 32
