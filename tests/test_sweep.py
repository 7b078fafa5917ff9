"""moe-planner sweep: spec validation, resumption, failures recorded, deterministic CSV, plots."""

from __future__ import annotations

import csv
import io
import sys
import types

import pytest

from planner.cli import main
from planner.errors import InputError
from planner.specs.sweep import check_spec_file, plan_options
from planner.sweep import TIMING_COLUMNS, Task, combination_key, run_combination, run_sweep
from planner.sweep_plots import pareto_front

FAST = "base: {model: mixtral-8x7b, baseline: eplb}\n"


def write(tmp_path, text, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def rows_of(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def cli(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---- spec validation -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid: {epp: [1, 2]}\n", "grid.epp: unknown plan option 'epp'; did you mean"),
        ("grid: {gpus-per-node: [4]}\n", "did you mean gpus_per_node"),
        ("base: {flux: 3}\ngrid: {ep: [8]}\n", "base.flux: unknown plan option 'flux' (options: a2a_overlap, baseline,"),
        ("grid: {nodes: []}\n", "grid.nodes: the list of values is empty"),
        ("grid: {}\n", "grid: must name at least one option"),
        ("base: {model: olmoe-1b-7b}\n", "grid is required"),
        ("grid: {nodes: 2}\n", "grid.nodes: Input should be a valid list"),
        ("grid: {nodes: [1, two]}\n", "grid.nodes[1]: nodes must be an integer (got 'two')"),
        ("grid: {nodes: [1, true]}\n", "grid.nodes[1]: nodes must be an integer (got True)"),
        ("grid: {time_limit: [1, .nan]}\n", "time_limit must be a finite number"),
        ("grid: {baseline: [eplb, best]}\n", "baseline must be one of contiguous, round-robin, eplb (got 'best')"),
        ("grid: {nodes: [null]}\n", "grid.nodes[0]: nodes may not be null"),
        ("grid: {nodes: [1, 2, 1]}\n", "grid.nodes[2]: value 1 is repeated"),
        ("base: {nodes: 2}\ngrid: {nodes: [1]}\n", "grid.nodes: also set in base"),
        ("grid: {nodes: [1]}\nextra: 1\n", "unknown field 'extra'"),
        ("grid: {nodes: [1\n", "invalid YAML at line 2"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_bad_specs_exit_2_with_one_line_naming_file_and_field(tmp_path, capsys, text, message):
    p = write(tmp_path, text, "my-sweep.yaml")
    with pytest.raises(InputError) as e:
        check_spec_file(p)
    assert message in str(e.value) and "my-sweep.yaml" in str(e.value)
    rc, out, err = cli(["sweep", str(p), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: my-sweep.yaml:") and message in lines[0]
    assert not (tmp_path / "o").exists()


def test_missing_spec_file(tmp_path, capsys):
    rc, _, err = cli(["sweep", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "none.yaml: no such file" in err


def test_options_are_the_plan_options():
    opts = plan_options()
    for name in ("model", "hardware", "nodes", "gpus_per_node", "ep", "redundant_experts", "time_limit",
                 "baseline", "dispatch", "trace", "previous", "train_fraction", "migration_weight"):
        assert name in opts, name
    for flag in ("out_dir", "force", "dry_run", "as_json", "out", "json"):
        assert flag not in opts
    assert opts["baseline"][1] == ("contiguous", "round-robin", "eplb")


def test_combinations_in_grid_order(tmp_path):
    sp = check_spec_file(write(tmp_path, "grid: {nodes: [1, 2], baseline: [null, eplb]}\n"))
    assert sp.size == 4
    assert sp.combinations() == [
        {"nodes": 1, "baseline": None}, {"nodes": 1, "baseline": "eplb"},
        {"nodes": 2, "baseline": None}, {"nodes": 2, "baseline": "eplb"},
    ]


def test_unquoted_on_off_are_the_words_not_booleans(tmp_path):
    # YAML 1.1 reads on / off as booleans; for options whose choices are on / off they are the words
    sp = check_spec_file(write(tmp_path, "base: {mode: train, two_batch_overlap: null}\n"
                                         "grid: {a2a_overlap: [off, on, auto]}\n"))
    assert [c["a2a_overlap"] for c in sp.combinations()] == ["off", "on", "auto"]
    sp = check_spec_file(write(tmp_path, "base: {mode: decode, two_batch_overlap: on}\ngrid: {nodes: [1]}\n"))
    assert sp.base["two_batch_overlap"] == "on"
    # a boolean option keeps its boolean
    sp = check_spec_file(write(tmp_path, "grid: {cross_node: [off, on]}\n"))
    assert [c["cross_node"] for c in sp.combinations()] == [False, True]


# ---- running -------------------------------------------------------------------------------


def fake_runner(calls):
    def run(todo):
        for t in todo:
            calls.append(t.combo)
            yield {"index": t.index, "key": t.key, **t.combo, "status": "ok", "moe_time_per_step_ms": 1.0 + t.index}
    return run


def test_resumption_skips_rows_already_in_the_csv(tmp_path):
    spec = write(tmp_path, FAST + "grid: {nodes: [1, 2]}\n")
    calls = []
    r1 = run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False)
    assert r1.ran == 2 and calls == [{"nodes": 1}, {"nodes": 2}]
    calls.clear()
    r2 = run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False)
    assert r2.ran == 0 and r2.skipped == 2 and calls == []
    # a value added to the grid: only the new combination is planned, rows stay in grid order
    spec.write_text(FAST + "grid: {nodes: [1, 4, 2]}\n")
    r3 = run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False)
    assert calls == [{"nodes": 4}] and r3.skipped == 2
    rows = rows_of(tmp_path / "out" / "results.csv")
    assert [r["nodes"] for r in rows] == ["1", "4", "2"] and [r["index"] for r in rows] == ["0", "1", "2"]
    # --restart plans everything again
    calls.clear()
    run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False, restart=True)
    assert len(calls) == 3


def test_rows_of_another_spec_stop_the_run_unless_restart(tmp_path):
    spec = write(tmp_path, FAST + "grid: {nodes: [1, 2]}\n")
    run_sweep(spec, tmp_path / "out", runner=fake_runner([]), plots=False, progress=False)
    spec.write_text("base: {model: olmoe-1b-7b}\ngrid: {nodes: [1, 2]}\n")
    with pytest.raises(InputError, match="2 of its 2 rows are not combinations of this spec"):
        run_sweep(spec, tmp_path / "out", runner=fake_runner([]), plots=False, progress=False)


def test_retry_failed_plans_failed_rows_again(tmp_path):
    spec = write(tmp_path, FAST + "grid: {nodes: [1, 2]}\n")

    def failing(todo):
        for t in todo:
            yield {"index": t.index, "key": t.key, **t.combo, "status": "error" if t.combo["nodes"] == 2 else "ok"}

    run_sweep(spec, tmp_path / "out", runner=failing, plots=False, progress=False)
    calls = []
    run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False)
    assert calls == []
    run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False, retry_failed=True)
    assert calls == [{"nodes": 2}]


def test_interrupted_sweep_keeps_finished_rows(tmp_path):
    spec = write(tmp_path, FAST + "grid: {nodes: [1, 2, 4]}\n")

    def interrupted(todo):
        yield from fake_runner([])(todo[:1])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "out", runner=interrupted, plots=False, progress=False)
    rows = rows_of(tmp_path / "out" / "results.csv")
    assert [r["nodes"] for r in rows] == ["1"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    calls = []
    run_sweep(spec, tmp_path / "out", runner=fake_runner(calls), plots=False, progress=False)
    assert calls == [{"nodes": 2}, {"nodes": 4}]


def test_a_failing_combination_is_recorded_not_fatal(tmp_path, capsys):
    spec = write(tmp_path, "base: {model: mixtral-8x7b, baseline: eplb}\ngrid: {ep: [4, 3, 8]}\n")
    rc, out, _ = cli(["sweep", str(spec), "--out", str(tmp_path / "out"), "--jobs", "1", "--no-plots"], capsys)
    assert rc == 0, out
    rows = rows_of(tmp_path / "out" / "results.csv")
    assert [r["status"] for r in rows] == ["ok", "input_error", "ok"]
    assert "must divide the 8 GPUs" in rows[1]["error"] and rows[1]["moe_time_per_step_ms"] == ""
    assert rows[0]["ep"] == "4" and rows[2]["ep"] == "8" and rows[0]["gpus"] == "8"
    assert float(rows[2]["moe_time_per_step_ms"]) > 0 and float(rows[2]["imbalance"]) >= 1
    assert "3 combinations (3 planned, 0 kept from before, 1 failed)" in out


def test_infeasible_combination_is_recorded(tmp_path):
    row = run_combination(Task(0, "k", {"nodes": 1}, {"model": "deepseek-v3", "nodes": 1, "baseline": "eplb"}))
    assert row["status"] == "infeasible" and "GiB per GPU" in row["error"]


def test_csv_is_deterministic_apart_from_timings(tmp_path):
    spec = write(tmp_path, "base: {model: mixtral-8x7b, time_limit: 5}\ngrid: {nodes: [1, 2], baseline: [null, eplb]}\n")
    a = run_sweep(spec, tmp_path / "a", jobs=1, plots=False, progress=False)
    b = run_sweep(spec, tmp_path / "b", jobs=2, plots=False, progress=False)
    ra, rb = rows_of(a.csv_path), rows_of(b.csv_path)
    assert len(ra) == 4 and all(r["status"] == "ok" for r in ra)
    for x, y in zip(ra, rb, strict=True):
        for col in x:
            if col not in TIMING_COLUMNS:
                assert x[col] == y[col], col
    assert ra[0]["key"] == combination_key({"model": "mixtral-8x7b", "time_limit": 5, "nodes": 1, "baseline": None})


def test_plots_fit_the_grid(tmp_path):
    spec = write(tmp_path, "name: t\n" + FAST + "grid: {nodes: [1, 2], redundant_experts: [0, 8]}\n")
    r = run_sweep(spec, tmp_path / "out", jobs=1, progress=False)
    names = sorted(p.name for p in r.plots)
    # a throughput plot only when the plans predict tokens_per_s (the parallelism search adds it)
    # and an imbalance plot when the chosen EP differs between rows
    tps = any(row.get("tokens_per_s") is not None for row in r.rows)
    eps = {row["ep"] for row in r.rows}
    assert names == sorted(["pareto_gpus_throughput.png", "step_time_vs_gpus.png", "step_time_vs_redundant_experts.png"]
                           + (["throughput_vs_gpus.png"] if tps else []) + (["imbalance_vs_ep.png"] if len(eps) > 1 else []))
    for p in r.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_by_hand():
    pts = [(8, 100.0), (8, 90.0), (16, 150.0), (16, 80.0), (32, 140.0), (64, 300.0)]
    assert pareto_front(pts) == [(8, 100.0), (16, 150.0), (64, 300.0)]


def test_progress_lines_on_stderr(tmp_path, capsys):
    spec = write(tmp_path, FAST + "grid: {nodes: [1, 2]}\n")
    rc, _, err = cli(["sweep", str(spec), "--out", str(tmp_path / "o"), "--jobs", "1", "--no-plots"], capsys)
    assert rc == 0
    assert "sweep 1/2 nodes=1: ok" in err and "sweep 2/2 nodes=2: ok" in err


# ---- ray -----------------------------------------------------------------------------------


def test_ray_executor_without_ray_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    spec = write(tmp_path, FAST + "grid: {nodes: [1]}\n")
    rc, _, err = cli(["sweep", str(spec), "--out", str(tmp_path / "o"), "--executor", "ray"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "pip install 'moe-planner[ray]'" in err


def test_ray_executor_with_a_stand_in_ray(tmp_path, monkeypatch):
    """A stand-in for the ray module (tasks run eagerly): the sweep uses remote/wait/get."""
    used = []

    class Ref:
        def __init__(self, value):
            self.value = value

    def remote(fn):
        used.append("remote")
        return types.SimpleNamespace(remote=lambda *a: Ref(fn(*a)))

    def wait(refs, num_returns=1):
        used.append("wait")
        return refs[:num_returns], refs[num_returns:]

    fake = types.SimpleNamespace(is_initialized=lambda: True, init=lambda **k: None, remote=remote, wait=wait,
                                 get=lambda ref: ref.value)
    monkeypatch.setitem(sys.modules, "ray", fake)
    spec = write(tmp_path, FAST + "grid: {nodes: [1, 2]}\n")
    r = run_sweep(spec, tmp_path / "o", executor="ray", plots=False, progress=False)
    assert [row["status"] for row in r.rows] == ["ok", "ok"] and "wait" in used


def test_relative_trace_path_is_read_next_to_the_spec(tmp_path):
    import planner

    folder = tmp_path / "specs"
    folder.mkdir()
    model = planner.load_model("mixtral-8x7b")
    planner.save_trace(planner.synth_trace(model, num_tokens=2048, tokens_per_step=256, seed=3, sequences=False), folder / "t.npz")
    spec = write(folder, "base: {model: mixtral-8x7b, baseline: eplb, trace: t.npz}\ngrid: {seed: [0]}\n")
    r = run_sweep(spec, tmp_path / "out", jobs=1, plots=False, progress=False)
    assert r.rows[0]["status"] == "ok", r.rows[0].get("error")
    assert r.rows[0]["tokens_per_step"] == 256.0


def test_plots_degrade_when_figures_are_missing_and_draw_cache_sizing(tmp_path):
    """Rows as the CSV holds them: no tokens_per_s (no throughput plot, the Pareto front uses the
    MoE-layer throughput), offload rows with a hit-rate column (cache sizing curve)."""
    from planner.specs.sweep import SweepSpec
    from planner.sweep_plots import plot_sweep

    spec = SweepSpec(grid={"gpu_memory_gb": [10, 20, 40], "nodes": [1, 2]}, base={"mode": "offload"})
    rows = []
    for i, (mem, nodes) in enumerate([(m, n) for m in (10, 20, 40) for n in (1, 2)]):
        rows.append({"index": str(i), "key": str(i), "gpu_memory_gb": str(mem), "nodes": str(nodes), "status": "ok",
                     "mode": "offload", "gpus": str(8 * nodes), "ep": "8", "imbalance": "1.1",
                     "moe_time_per_step_ms": str(10.0 / mem), "moe_tokens_per_s": str(1000.0 * mem * nodes),
                     "tokens_per_s": "", "cache_hit_rate": str(mem / 50)})
    rows.append({"index": "6", "key": "x", "status": "error", "gpu_memory_gb": "80", "nodes": "1"})
    names = sorted(p.name for p in plot_sweep(rows, spec, tmp_path))
    assert names == ["cache_sizing.png", "pareto_gpus_throughput.png", "step_time_vs_gpus.png"]
