"""The examples run (on CPU, in seconds) and do what they say."""

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_plan_api_example(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["plan_api.py", str(tmp_path)])
    runpy.run_path(str(EXAMPLES / "plan_api.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "deepseek-v2-lite: ep 16, 5 slots per GPU" in out
    assert (tmp_path / "plan.json").is_file()


@pytest.mark.skipif(shutil.which("moe-planner") is None, reason="console script not installed")
def test_plan_cli_example(tmp_path):
    r = subprocess.run(["bash", str(EXAMPLES / "plan_cli.sh"), str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "plan.json").is_file() and (tmp_path / "olmoe.npz").is_file()
    assert "moe-planner plan: qwen3-30b-a3b" in r.stdout
