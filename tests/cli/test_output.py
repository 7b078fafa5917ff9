"""Clean output: results alone on stdout (a solver writing on descriptor 1 cannot corrupt
``--json``), errors under ``--json`` as a JSON object, progress on stderr only, labels that say
what a figure is."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planner.cli import main
from planner.solve import milp
from planner.specs.plan import Plan

BANNER = "Running HiGHS 9.9.9 (fake banner written on descriptor 1)"
#: 16 experts in 4 groups (2 picked per token) on 2 nodes: the node stage solves its MILP
#: (planner.solve.nodes: one block per group, fewer blocks than experts); about a second
GROUPED = {
    "name": "tiny-grouped", "hidden_size": 64, "num_layers": 2, "num_experts": 16, "top_k": 4, "n_group": 4,
    "topk_group": 2, "expert_intermediate_size": 32, "vocab_size": 100,
    "attention": {"kind": "gqa", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
}
MILP_ARGS = ["--nodes", "2", "--gpus-per-node", "2", "--ep", "4"]


@pytest.fixture
def grouped(tmp_path):
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps(GROUPED))
    return str(path)


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_survives_a_solver_writing_on_descriptor_1_in_a_real_process(tmp_path, grouped):
    """The command as a user runs it: stdout is descriptor 1 (a pipe), the MILP solver writes its
    banner there from C (os.write, as HiGHS does) while it solves; stdout must stay one JSON plan."""
    script = textwrap.dedent(f"""
        import os, sys
        import planner.solve.milp as milp
        original = milp.solve_milp
        calls = []

        def noisy(*args, **kwargs):
            calls.append(1)
            os.write(1, b"{BANNER}\\n")  # what a C library does: below sys.stdout
            return original(*args, **kwargs)

        milp.solve_milp = noisy
        from planner.cli import main
        code = main(["plan", "--model", {grouped!r}, *{MILP_ARGS!r}, "--json"])
        os.write(2, f"milp calls {{len(calls)}}\\n".encode())
        sys.exit(code)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert res.returncode == 0, res.stderr
    assert "milp calls 0" not in res.stderr and "milp calls" in res.stderr  # the MILP path ran
    assert BANNER in res.stderr and BANNER not in res.stdout
    plan = Plan.model_validate(json.loads(res.stdout))
    assert "placement-ilp" in plan.solver.candidates and plan.solver.bound is not None
    assert "Running HiGHS" not in res.stdout  # nor the real banner, where HiGHS prints one


def test_json_survives_a_solver_writing_on_descriptor_1_in_process(capfd, monkeypatch, grouped):
    """The same under pytest's descriptor capture: the banner lands on stderr, stdout parses."""
    import planner.solve.milp as milp

    original = milp.solve_milp
    calls = []

    def noisy(*args, **kwargs):
        calls.append(1)
        os.write(1, (BANNER + "\n").encode())
        return original(*args, **kwargs)

    monkeypatch.setattr(milp, "solve_milp", noisy)
    code = main(["plan", "--model", grouped, *MILP_ARGS, "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    assert calls, "the MILP did not run"
    assert BANNER in err and BANNER not in out
    Plan.model_validate(json.loads(out))
    os.write(1, b"after\n")  # descriptor 1 is stdout again once the command returns
    assert capfd.readouterr().out == "after\n"


@pytest.mark.parametrize(
    "args, code, want",
    [
        (["--nodes", "0"], 2, {"error": "--nodes must be > 0 (got 0)", "kind": "input", "field": "nodes",
                               "flag": "--nodes"}),
        (["--mode", "fly"], 2, {"kind": "usage", "field": "mode", "flag": "--mode"}),
        (["--model", "nope"], 2, {"kind": "input"}),
        (["--model", "deepseek-v3"], 1, {"kind": "infeasible"}),
    ],
)
def test_errors_under_json_are_a_json_object_on_stdout(capsys, args, code, want):
    got, out, err = run(capsys, "plan", *args, "--json")
    assert got == code
    obj = json.loads(out)  # the whole of stdout is one object
    assert set(obj) >= {"error", "kind"} and obj["error"]
    assert {k: obj[k] for k in want} == want
    assert obj["error"] in err  # the one-line message on stderr says the same
    # without --json stdout stays empty
    got, out, _ = run(capsys, "plan", *args)
    assert got == code and out == ""


def test_progress_goes_to_stderr_only(capsys):
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--json", "--progress")
    assert code == 0, err
    Plan.model_validate(json.loads(out))  # stdout: the plan alone
    lines = [ln for ln in err.splitlines() if ln.startswith("plan [")]
    stages = [ln.split("] ", 1)[1].rsplit("  ", 1)[0] for ln in lines]
    assert stages == ["loading inputs", "parallelism search", "placement solver", "scoring on held-out steps"]
    assert lines[0].startswith("plan [1/4]") and lines[-1].startswith("plan [4/4]")
    # stderr is not a terminal here: no progress unless asked for
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--json")
    assert code == 0 and "plan [" not in err and "plan [" not in out


def test_a_library_milp_solve_prints_nothing_on_stdout():
    """HiGHS's banner (written on descriptor 1 by the first solver a process makes) is swallowed:
    a trainer calling the planner gets no stray output."""
    script = (
        "import pulp\n"
        "from planner.solve import milp\n"
        "prob = pulp.LpProblem('x', pulp.LpMinimize)\n"
        "x = milp.variable(prob, 'x', 0, 3, 'Integer')\n"
        "prob += x\n"
        "prob += x >= 1\n"
        "x.setInitialValue(2)\n"
        "status, bound = milp.solve_milp(prob, 5.0)\n"
        "assert status == 'optimal' and x.varValue == 1, (status, x.varValue)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    assert res.stdout == "", res.stdout
    if milp.milp_solver_name() == "HiGHS":  # the banner went nowhere, not to stderr either
        assert "Running HiGHS" not in res.stderr


def test_library_is_silent_and_the_reporter_renders_a_bar_on_a_terminal():
    from planner.progress import StderrProgress, reporting, stage

    stage("nobody listens")  # no reporter installed: a no-op
    seen = []
    with reporting(seen.append):
        stage("a")
        with reporting(None):
            stage("silenced")
        stage("b", 1, 2)
    stage("after")
    assert [(e.stage, e.done, e.total) for e in seen] == [("a", None, None), ("b", 1, 2)]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    with reporting(StderrProgress("plan", stages=2, stream=tty)):
        stage("one")
        stage("two")
    text = tty.getvalue()
    assert text.startswith("\rplan [1/2] one") and "\rplan [2/2] two" in text and text.endswith("\n")
    assert text.count("\n") == 1  # redrawn in place, one line ended at the close

    def broken(_ev):
        raise OSError("stderr closed")

    with reporting(broken):
        stage("still fine")  # a broken progress stream never fails the work


def test_prefill_prints_a_step_and_a_time_to_first_token_not_ms_per_token(capsys):
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--mode", "prefill", "--seq-len", "1024")
    assert code == 0, err
    assert "ms/token" not in out
    assert "time to first token" in out and "whole prefill step (step-time model)" in out
    code, out, err = run(capsys, "plan", "--model", "mixtral-8x7b", "--mode", "decode")
    assert code == 0, err
    assert "ms/token" not in out and "ms per output token" in out and "whole decode step" in out


def test_offload_plan_shows_a_stall_not_dispatch(tmp_path):
    """An offload plan rendered: compute and stall, no imbalance, dispatch or NVLink lines."""
    from planner.cli.plan_cmd import render_plan

    plan = _offload_plan(tmp_path)
    text = render_plan(plan)
    assert "stall (expert copies, CPU experts)" in text and "compute (attention, router, FFNs)" in text
    assert "in pinned host memory, cached on the GPU" in text
    for wrong in ("dispatch + combine", "load imbalance", "NVLink", "per GPU; dispatch"):
        assert wrong not in text, wrong
    assert f"{plan.predicted.comm_ms:.4f} ms" in text  # the stall is the plan's comm_ms figure


def _offload_plan(tmp_path) -> Plan:
    """A decode plan given an offload plan's cache by hand (a real offload solve takes tens of
    seconds): the render reads only that ``cache`` is set and the figures."""
    from planner.specs.plan import CachePlan

    code = main(["plan", "--model", "mixtral-8x7b", "--baseline", "contiguous", "--out", str(tmp_path)])
    assert code == 0
    p = Plan.load(tmp_path / "plan.json")
    layers = p.model.num_moe_layers
    cache = CachePlan(budget_bytes=2**30, resident=[[0]] * layers, dynamic_slots=[0] * layers)
    return p.model_copy(update={"cache": cache})


def test_offload_progress_on_stderr_only(capsys, tmp_path, ds_trace_file):
    code, out, err = run(capsys, "offload-curve", "--model", "deepseek-v2-lite", "--trace", ds_trace_file,
                         "--budgets", "8,40", "--out", tmp_path, "--json", "--progress")
    assert code == 0, err
    assert [r["gpu_memory_gb"] for r in json.loads(out)] == [8, 40]  # stdout: the rows alone
    lines = [ln.rsplit("  ", 1)[0] for ln in err.splitlines() if ln.startswith("offload-curve [")]
    assert lines == ["offload-curve [0/2] budget 8 GB", "offload-curve [1/2] budget 40 GB",
                     "offload-curve [2/2] writing the curve"]
    code, out, err = run(capsys, "plan", "--mode", "offload", "--model", "deepseek-v2-lite", "--gpu-memory-gb", "10",
                         "--trace", ds_trace_file, "--json", "--progress")
    assert code == 0, err
    Plan.model_validate(json.loads(out))
    stages = [ln.split("] ", 1)[1].rsplit("  ", 1)[0] for ln in err.splitlines() if ln.startswith("plan [")]
    assert stages[:2] == ["loading inputs", "expert-cache search (offload)"]
    # inside the search, each candidate replayed (planner.solve.cache)
    assert len(stages) > 2 and all(x.startswith("offload search: ") for x in stages[2:])
