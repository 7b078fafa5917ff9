"""Timing helpers on CPU (and on CUDA when there is a GPU)."""

import pytest

torch = pytest.importorskip("torch")


def test_cpu_bench_is_min_of_run_medians(timing):
    calls = []
    res = timing.bench(lambda: calls.append(1), "cpu", warmup=2, reps=5, runs=3)
    assert len(calls) == 1 + 3 * (2 + 5)
    assert len(res.run_medians_ms) == 3 and res.ms == min(res.run_medians_ms) and res.ms >= 0
    assert res.lead_cycles == 0


def test_copies_and_rotation(timing):
    assert timing.n_copies(10, 0) == 1
    assert timing.n_copies(100, 50) == 2
    assert timing.n_copies(100, 1000) == 10
    rot = timing.Rotator(["a", "b", "c"])
    assert [rot.next() for _ in range(5)] == ["a", "b", "c", "a", "b"]


@pytest.mark.parametrize("backend", ["loop", "grouped", "padded"])
def test_rank_bench_on_cpu(timing, backend):
    if backend == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    rb = timing.RankBench(4, 32, 16, device="cpu", dtype=torch.float32, max_rows=10)
    assert rb.copies == 1 and rb.weight_bytes == 3 * 4 * 32 * 16 * 4
    assert rb.check([3, 0, 5, 2], backend) < 1e-5
    res = rb.measure([3, 0, 5, 2], backend, warmup=1, reps=2, runs=2)
    assert res.ms > 0 and len(res.run_medians_ms) == 2
    assert rb.measure([0, 0, 0, 0], backend).ms == 0.0  # an idle rank runs nothing
    rb.measure([20, 0, 0, 1], backend, warmup=0, reps=1, runs=1)  # more rows than max_rows: regrows
    assert rb.x_ND.shape[0] == 21


def test_method_text_names_the_statistic(timing):
    txt = timing.method("cpu", warmup=1, reps=2, runs=3, lead=True, rotate_bytes=0)
    assert "median" in txt and "minimum over 3 runs" in txt
    assert timing.device_name("cpu").startswith("cpu")


@pytest.mark.gpu
def test_cuda_rank_bench(timing):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    rb = timing.RankBench(8, 512, 256, device="cuda", max_rows=256, rotate_bytes=64 * 2**20)
    assert rb.copies >= 2
    for backend in ("grouped", "loop"):
        assert rb.check([16] * 8, backend) < 2e-2
        res = rb.measure([32] * 8, backend, warmup=2, reps=5, runs=2)
        assert res.ms > 0 and res.lead_cycles > 0 and res.host_ms is not None
