"""``moe-planner plan --mode offload``, ``simulate`` and ``offload-curve`` end to end."""

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from planner.cli import main
from planner.specs.plan import Plan


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_offload_end_to_end(capsys, tmp_path, ds_trace_file):
    args = ["plan", "--mode", "offload", "--model", "deepseek-v2-lite", "--gpu-memory-gb", "10",
            "--trace", str(ds_trace_file), "--out", str(tmp_path)]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "(offload)" in out and "cache " in out and "hit rate" in out and "tokens/s" in out
    p = Plan.load(tmp_path / "plan.json")
    assert p.workload.mode == "offload" and p.cluster.num_gpus == 1 and p.cache is not None
    assert len(p.cache.resident) == p.model.num_moe_layers == 26
    assert p.cache.predicted.tokens_per_s == pytest.approx(p.predicted.tokens_per_s)
    assert 0 < p.cache.predicted.hit_rate < 1
    code, out, err = run(capsys, "check", "--plan", str(tmp_path / "plan.json"))
    assert code == 0 and "OK" in out, out + err
    # the plan replays through the cache simulator
    code, out, err = run(capsys, "simulate", "--plan", str(tmp_path / "plan.json"), "--trace", str(ds_trace_file), "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["mode"] == "offload" and 0 < s["hit_rate"] < 1 and len(s["hit_rate_per_layer"]) == 26
    code, out, err = run(capsys, "simulate", "--plan", str(tmp_path / "plan.json"), "--trace", str(ds_trace_file))
    assert code == 0 and "hit rate" in out


def test_plan_offload_infeasible_and_bad_input(capsys, ds_trace_file):
    code, out, err = run(capsys, "plan", "--mode", "offload", "--model", "deepseek-v2-lite", "--gpu-memory-gb", "1",
                         "--trace", str(ds_trace_file))
    assert code == 1 and "infeasible:" in err and "non-expert weights" in err and "GiB" in err
    code, out, err = run(capsys, "plan", "--mode", "offload", "--model", "deepseek-v2-lite", "--trace", str(ds_trace_file))
    assert code == 2 and "gpu_memory_gb" in err


def test_offload_curve(capsys, tmp_path, ds_trace_file):
    code, out, err = run(capsys, "offload-curve", "--model", "deepseek-v2-lite", "--trace", str(ds_trace_file),
                         "--budgets", "1,8,40", "--out", str(tmp_path))
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "sizing.csv")))
    assert [r["feasible"] for r in rows] == ["False", "True", "True"]
    assert float(rows[2]["hit_rate"]) == 1.0 and float(rows[1]["hit_rate"]) < 1.0
    assert float(rows[2]["tokens_per_s"]) > float(rows[1]["tokens_per_s"])
    assert (tmp_path / "sizing.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(shutil.which("moe-planner") is None, reason="console script not installed")
def test_offload_example(tmp_path):
    ex = Path(__file__).resolve().parents[2] / "examples" / "offload.sh"
    r = subprocess.run(["bash", str(ex), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "sizing.png").is_file()
    assert "moe-planner validate (offload)" in r.stdout and "measured equals predicted" in r.stdout
