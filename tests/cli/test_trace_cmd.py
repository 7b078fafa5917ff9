"""moe-planner trace synth|convert|stats|compare through planner.cli.main."""

import json

import numpy as np

from planner.cli import main
from planner.traces import CountsTrace, Trace, load_trace, save_trace, synth_trace


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


def _hand_file(path, second_layer_last=(1, 2)):
    """2 sequences of 3 tokens (E = 4, k = 2, 2 layers), interleaved in the file, as in
    tests/traces/test_realism.py: reuse 5/8 at layer 0 and 4/8 at layer 1 (the last token of
    sequence 1 at layer 1 is ``second_layer_last``)."""
    l0 = {0: [[0, 1], [0, 2], [0, 1]], 1: [[2, 3], [2, 3], [1, 3]]}
    l1 = {0: [[1, 2], [1, 3], [1, 2]], 1: [[0, 3], [0, 3], list(second_layer_last)]}
    seq, pos = np.array([0, 1, 0, 1, 0, 1]), np.array([0, 0, 1, 1, 2, 2])
    ids = np.array([[layer[q][p] for q, p in zip(seq, pos, strict=True)] for layer in (l0, l1)])
    save_trace(Trace(ids, 4, seq_id=seq, pos=pos), path)
    return path


def test_stats_table_for_a_token_trace(tmp_path, capsys):
    f = _hand_file(tmp_path / "t.npz")
    code, stdout, err = run(capsys, "trace", "stats", f)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "t.npz: 2 MoE layers × 6 tokens × top-2 of 4 experts, 1 step, 2 sequences"
    # columns no layer has are left out: batches of 16 and windows of 16 exceed the 6 tokens, and
    # every pair's expected count is below 5
    assert lines[1].split() == ["layer", "imbalance", "step-imb", "entropy", "reuse", "xl-top1", "xl-recall"]
    assert lines[2].split()[0] == "0" and lines[2].split()[4] == "0.625"
    assert lines[3].split()[4] == "0.500" and lines[3].split()[5:] == ["-", "-"]  # no layer after the last
    assert ("experts reused from the previous token of the sequence: mean 56.2%, first layer 62.5%, "
            "last 50.0%, max 62.5% (random 50.0%)") in lines
    assert any(ln.startswith("layer l+1 guessed from layer l (held-out half): top guess right") for ln in lines)
    code, stdout, _ = run(capsys, "trace", "stats", f, "--json")
    s = json.loads(stdout)
    assert s["num_sequences"] == 2 and s["layers"][1]["reuse"] == 0.5
    assert s["summary"]["realism"]["reuse_first_layer"] == 0.625


def test_stats_without_sequences_says_what_is_unavailable(tmp_path, capsys):
    t = synth_trace(num_layers=3, num_experts=16, top_k=4, num_tokens=512, seed=0)
    f = tmp_path / "flat.npz"
    save_trace(Trace(t.topk_ids, 16, step=t.step), f)  # the same routing without seq_id / pos
    code, stdout, err = run(capsys, "trace", "stats", f)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "flat.npz: 3 MoE layers × 512 tokens × top-4 of 16 experts, 1 step"
    assert lines[1].split() == ["layer", "imbalance", "step-imb", "entropy", "skew-r16", "xl-top1", "xl-recall",
                                "lift-p99"]
    assert [ln.split()[0] for ln in lines[2:5]] == ["0", "1", "2"]
    assert any(ln.startswith("  in a batch of 16 / 256 / 4096 random tokens: ") and ln.endswith(" / -") for ln in lines)
    why = "(the trace has no seq_id: sequences are needed)"
    for what in ("reuse", "working set", "rank locality", "contiguous-batch skew"):
        assert f"{what}: unavailable {why}" in lines
    assert any(ln.startswith("cross-layer (in-sample): next-layer expert predicted") for ln in lines)
    assert any(ln.startswith("co-activation: top 16 pairs by lift") for ln in lines)


def test_compare_two_tiny_files(tmp_path, capsys):
    a = _hand_file(tmp_path / "a.npz")
    b = _hand_file(tmp_path / "b.npz", second_layer_last=(0, 3))  # layer 1 reuse 6/8 instead of 4/8
    code, stdout, err = run(capsys, "trace", "compare", a, b)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0] == "A = a.npz: 2 MoE layers × 6 tokens × top-2 of 4 experts, 1 step, 2 sequences"
    assert lines[1].startswith("B = b.npz: ")
    assert lines[2].split() == ["statistic", "A", "B", "B/A"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in lines[3:]}
    assert rows["reuse_first_layer"] == ["0.6250", "0.6250", "1.000"]
    assert rows["reuse_last_layer"] == ["0.5000", "0.7500", "1.500"]
    assert rows["skew_seq_16"] == ["-", "-", "-"]  # 6 tokens: no batch of 16
    code, stdout, err = run(capsys, "trace", "compare", a, b, "--json")
    assert code == 0, err
    d = json.loads(stdout)
    assert d["a"]["file"] == str(a) and d["b"]["num_sequences"] == 2
    assert d["a"]["statistics"]["reuse_last_layer"] == 0.5 and d["b"]["statistics"]["reuse_last_layer"] == 0.75
    assert d["ratio"]["reuse_last_layer"] == 1.5 and d["ratio"]["skew_seq_16"] is None


def test_compare_counts_and_bad_input(tmp_path, capsys):
    a = _hand_file(tmp_path / "a.npz")
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"logical_count": [[[2, 1, 1, 2], [1, 1, 3, 1]]]}))
    code, stdout, err = run(capsys, "trace", "compare", a, c)
    assert code == 0, err
    rows = {ln.split()[0]: ln.split()[1:] for ln in stdout.splitlines()[3:]}
    # counts per layer [2, 1, 1, 2] -> 2 / 1.5 and [1, 1, 3, 1] -> 3 / 1.5: the max is 2
    assert rows["imbalance_whole_max"][1] == "2.0000" and rows["reuse_mean"][1:] == ["-", "-"]
    code, _, err = run(capsys, "trace", "compare", a, tmp_path / "missing.npz")
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "trace", "compare", a, a, "--model", "mixtral-8x7b")
    assert code == 2 and err.strip() == "error: a.npz: trace has 2 MoE layers but model mixtral-8x7b has 32"


def test_convert_keeps_sequences(tmp_path, capsys):
    src = _hand_file(tmp_path / "in.npz")
    out = tmp_path / "out.npz"
    code, stdout, err = run(capsys, "trace", "convert", src, "--out", out)
    assert code == 0, err
    assert stdout.strip().endswith("1 step, 2 sequences")
    back, orig = load_trace(out), load_trace(src)
    assert back.seq_id.tolist() == orig.seq_id.tolist() == [0, 1, 0, 1, 0, 1]
    assert back.pos.tolist() == orig.pos.tolist() and np.array_equal(back.topk_ids, orig.topk_ids)
    code, stdout, _ = run(capsys, "trace", "convert", src, "--out", tmp_path / "j.npz", "--json")
    assert json.loads(stdout)["num_sequences"] == 2


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
