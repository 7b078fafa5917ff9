"""benchmarks/kernels.py: the roofline by hand, and no figures without a GPU."""

import importlib.util
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def bk():
    spec = importlib.util.spec_from_file_location("bench_kernels", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_roofline_by_hand(bk):
    # d 4, f 2, 8 experts, top-2, 10 tokens, 3 active experts, bf16
    # bytes = 2·(3·3·4·2 + 8·4) + 2·2·10·4 = 208 + 160; flops = 2·10·2·3·4·2 + 2·10·4·8 = 960 + 640
    r = bk.roofline(d=4, f=2, E=8, K=2, S=0, T=10, active=3, hbm_gbps=1.0, peak_tflops=1e-9)
    assert r["bytes"] == 368 and r["flops"] == 1600
    assert r["memory_ms"] == pytest.approx(368e-6) and r["compute_ms"] == pytest.approx(1600.0)
    assert r["bound"] == "compute" and r["roofline_ms"] == pytest.approx(1600.0)
    # a shared FFN of width 2 adds its weights once and its flops for every token
    s = bk.roofline(d=4, f=2, E=8, K=2, S=2, T=10, active=3, hbm_gbps=1.0, peak_tflops=1.0)
    assert s["bytes"] == 368 + 2 * 3 * 4 * 2 and s["flops"] == 1600 + 2 * 10 * 3 * 4 * 2
    assert s["bound"] == "memory"


def test_every_facts_model_is_a_preset(bk):
    from planner.specs.model_io import load_model

    assert len(bk.MODELS) == 13
    assert {load_model(m).name for m in bk.MODELS} == set(bk.MODELS)


def test_without_a_gpu_it_says_so_and_writes_nothing(bk, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    out = tmp_path / "k.json"
    assert bk.main(["--out", str(out)]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out and not out.exists()


def test_cpu_smoke_runs_the_whole_path(bk, tmp_path, capsys):
    """--cpu-smoke: the GPU code path on the CPU with a tiny model (checks the script, not figures)."""
    pytest.importorskip("torch")
    import json

    from tests.conftest import make_model

    spec = tmp_path / "tiny.json"
    spec.write_text(make_model(num_shared_experts=1).model_dump_json())
    out = tmp_path / "k.json"
    assert bk.main(["--cpu-smoke", "--models", str(spec), "--tokens", "32", "--backends", "grouped,loop",
                    "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("\n") == 3 and ("(compute)" in table or "(memory)" in table)
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    assert res["smoke_test_not_figures"] and row["T"] == 32 and row["S"] == 32 and 1 <= row["active_experts"] <= 8
    assert row["grouped_rel_err_vs_loop"] < 2e-2 and row["loop_rel_err_vs_loop"] == 0.0
    assert row["grouped_pct_roofline"] == pytest.approx(100 * row["roofline_ms"] / row["grouped_ms"])
