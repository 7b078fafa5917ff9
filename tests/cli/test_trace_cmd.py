"""moe-planner trace synth|convert|stats through planner.cli.main."""

import json

import numpy as np

from planner.cli import main
from planner.traces import CountsTrace, Trace, load_trace


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_synth_with_preset_model(tmp_path, capsys):
    out = tmp_path / "t.npz"
    code, stdout, err = run(capsys, "trace", "synth", "--model", "mixtral-8x7b", "--tokens", 1024,
                            "--tokens-per-step", 256, "--ranks", 4, "--seed", 3, "--out", out)
    assert code == 0, err
    assert f"wrote {out}" in stdout and "32 MoE layers × 1024 tokens × top-2 of 8 experts, 4 steps, 4 ranks" in stdout
    t = load_trace(out)
    assert isinstance(t, Trace) and t.model == "mixtral-8x7b" and t.num_steps == 4
    assert t.source_rank.max() == 3 and t.topk_weights is not None


def test_synth_shape_flags_json_and_properties(tmp_path, capsys):
    out = tmp_path / "t.npz"
    code, stdout, err = run(capsys, "trace", "synth", "--layers", 3, "--experts", 16, "--top-k", 4,
                            "--tokens", 512, "--skew", 0, "--affinity", 0.9, "--coactivation", 0,
                            "--drift", 0, "--rank-mix", 0, "--no-weights", "--json", "--out", out)
    assert code == 0, err
    d = json.loads(stdout)
    assert d["num_layers"] == 3 and d["num_experts"] == 16 and d["top_k"] == 4 and d["has_weights"] is False
    assert d["bytes"] == out.stat().st_size and d["seed"] == 0
    # same flags, same seed: the same trace
    again = tmp_path / "u.npz"
    assert run(capsys, "trace", "synth", "--layers", 3, "--experts", 16, "--top-k", 4, "--tokens", 512,
               "--skew", 0, "--affinity", 0.9, "--coactivation", 0, "--drift", 0, "--rank-mix", 0,
               "--no-weights", "--out", again)[0] == 0
    assert np.array_equal(load_trace(out).topk_ids, load_trace(again).topk_ids)


def test_synth_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "t.npz"
    args = ["trace", "synth", "--layers", 2, "--experts", 8, "--top-k", 2, "--tokens", 64, "--out", out]
    assert run(capsys, *args)[0] == 0
    before = out.read_bytes()
    code, stdout, err = run(capsys, *args[:-2], "--seed", 9, "--out", out)
    assert code == 2 and err.strip() == f"error: {out}: already exists (pass --force to overwrite)"
    assert out.read_bytes() == before
    assert run(capsys, *args[:-2], "--seed", 9, "--out", out, "--force")[0] == 0
    assert out.read_bytes() != before


def test_synth_bad_input_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "trace", "synth", "--layers", 2, "--out", tmp_path / "t.npz")
    assert code == 2 and err.strip() == "error: trace synth: give --model, or all of --layers, --experts and --top-k"
    code, _, err = run(capsys, "trace", "synth", "--layers", 2, "--experts", 8, "--top-k", 2,
                       "--affinity", 2, "--out", tmp_path / "t.npz")
    assert code == 2 and err.strip() == "error: synth: affinity must be in [0, 1] (got 2.0)"
    code, _, err = run(capsys, "trace", "synth", "--layers", 2, "--experts", 8, "--top-k", 2, "--out", tmp_path / "t.json")
    assert code == 2 and "traces are written as .npz" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "trace", "synth", "--model", "no-such-model", "--out", tmp_path / "t.npz")
    assert code == 2 and "unknown model 'no-such-model'" in err
    assert not (tmp_path / "t.npz").exists()


def test_convert_sglang_json_and_stats(tmp_path, capsys):
    src = tmp_path / "expert_distribution.json"
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 100, size=(3, 27, 64))
    counts[:, 0] = 0  # DeepSeek-V2-Lite: layer 0 is dense
    src.write_text(json.dumps({"logical_count": counts.tolist()}))
    out = tmp_path / "c.npz"
    code, stdout, err = run(capsys, "trace", "convert", src, "--model", "deepseek-v2-lite", "--out", out)
    assert code == 0, err
    assert "counts-only, 26 MoE layers × 64 experts, 3 steps" in stdout
    t = load_trace(out)
    assert isinstance(t, CountsTrace) and t.model == "deepseek-v2-lite"
    assert np.array_equal(t.counts_per_step(), counts[:, 1:])

    code, stdout, err = run(capsys, "trace", "stats", out)
    assert code == 0, err
    assert "counts-only" in stdout and "imbalance" in stdout
    assert "cross-layer: unavailable (counts-only trace" in stdout
    assert "co-activation: unavailable" in stdout
    code, stdout, err = run(capsys, "trace", "stats", out, "--json")
    s = json.loads(stdout)
    assert s["kind"] == "counts" and s["summary"]["cross_layer"] is None and len(s["layers"]) == 26


def test_convert_refuses_overwrite_and_reports_bad_input(tmp_path, capsys):
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"logical_count": [[1, 2], [3, 4]]}))
    out = tmp_path / "c.npz"
    out.write_bytes(b"keep")
    code, _, err = run(capsys, "trace", "convert", src, "--out", out)
    assert code == 2 and "already exists" in err and out.read_bytes() == b"keep"
    code, _, err = run(capsys, "trace", "convert", tmp_path / "missing.json", "--out", tmp_path / "d.npz")
    assert code == 2 and "no such file" in err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"logical_count": [[1, -1]]}))
    code, _, err = run(capsys, "trace", "convert", bad, "--out", tmp_path / "d.npz")
    assert code == 2 and err.strip() == "error: bad.json: logical_count must be >= 0 (found -1)"


def test_stats_table_for_a_token_trace(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert run(capsys, "trace", "synth", "--layers", 3, "--experts", 16, "--top-k", 4, "--tokens", 512,
               "--out", out)[0] == 0
    code, stdout, err = run(capsys, "trace", "stats", out)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("t.npz: 3 MoE layers × 512 tokens × top-4 of 16 experts")
    assert lines[1].split() == ["layer", "imbalance", "step-imb", "entropy", "next-top1", "mi-bits", "pair-lift"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["0", "1", "2"]
    assert any(ln.startswith("cross-layer: next-layer expert predicted") for ln in lines)
    assert any(ln.startswith("co-activation: top 16 pairs by lift") for ln in lines)
    code, stdout, _ = run(capsys, "trace", "stats", out, "--json")
    s = json.loads(stdout)
    assert s["num_tokens"] == 512 and s["summary"]["cross_layer"]["next_top1"] > 0


def test_stats_checks_model_and_reports_corrupt_files(tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert run(capsys, "trace", "synth", "--layers", 3, "--experts", 8, "--top-k", 2, "--tokens", 64, "--out", out)[0] == 0
    code, _, err = run(capsys, "trace", "stats", out, "--model", "mixtral-8x7b")
    assert code == 2 and err.strip() == "error: t.npz: trace has 3 MoE layers but model mixtral-8x7b has 32"
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"garbage")
    code, _, err = run(capsys, "trace", "stats", broken)
    assert code == 2 and err.startswith("error: broken.npz: not a readable .npz file") and len(err.splitlines()) == 1


def test_convert_npz_round_trip_and_shipped_stats(tmp_path, capsys):
    from planner.traces import default_trace_path

    src = default_trace_path("mixtral-8x7b")
    out = tmp_path / "copy.npz"
    assert run(capsys, "trace", "convert", src, "--model", "mixtral-8x7b", "--out", out)[0] == 0
    assert np.array_equal(load_trace(out).topk_ids, load_trace(src).topk_ids)
    code, stdout, err = run(capsys, "trace", "stats", src)
    assert code == 0, err
    assert "model mixtral-8x7b" in stdout
