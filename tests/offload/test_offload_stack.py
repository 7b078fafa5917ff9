"""The offloaded stack executor (kernels/offload_stack.py) on CPU with its simulated clock: the same
hits, copies and step times as the cache simulator, the same outputs as an all-resident stack."""


import numpy as np
import pytest

torch = pytest.importorskip("torch")

from planner.cachesim import (  # noqa: E402
    CacheConfig,
    OffloadTiming,
    PrefetchConfig,
    fit_predictor,
    prefetch_lists,
    simulate_cache,
    step_counts,
    step_probs,
)
from tests.conftest import kernel_module  # noqa: E402

L, E, K, T = 3, 6, 2, 30


@pytest.fixture(scope="module")
def stack():
    return kernel_module("offload_stack")


def _trace():
    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.choice(E, K, replace=False, p=np.array([8, 5, 3, 2, 1, 1]) / 20) for _ in range(T)])
                    for _ in range(L)]).astype(np.int32)
    return ids, np.arange(T) // 2  # two tokens per step


@pytest.mark.parametrize("cpu", ["off", "fastest"])
@pytest.mark.parametrize("prefetch", [False, True])
def test_simulated_clock_matches_the_simulator(stack, cpu, prefetch):
    ids, step = _trace()
    res = np.zeros((L, E), bool)
    res[:, 0] = True
    dyn = np.array([1, 0, 2])
    ffn_ms, cpu_ms = np.array([0.0, 0.1, 0.15]), np.array([0.0, 0.6, 0.7])
    timing = OffloadTiming(copy_ms=0.5, ffn_ms_M=ffn_ms, pre_ms=0.05, other_ms=0.2, overlap=0.89, expert_bytes=1.0,
                           cpu_ms_M=cpu_ms)
    counts = step_counts(ids, step, E)
    pf = None
    if prefetch:
        probs = step_probs(fit_predictor(ids, E), ids, step, E)
        pf = PrefetchConfig(probs, 0.3, 2)
    sim = simulate_cache(counts, CacheConfig(res, dyn, "lru", pf, cpu), timing, record_from=3, batch=2)
    st = stack.StackTiming(copy_ms=0.5, ffn_ms_M=ffn_ms, pre_ms=0.05, other_ms=0.2, overlap=0.89, cpu_ms_M=cpu_ms)
    out, y = stack.run_offloaded_stack(
        ids, step, res, dyn, hidden=16, ffn_width=8, prefetch_SL=prefetch_lists(pf.prob_SLE, 0.3) if pf else None,
        prefetch_count=2, cpu=cpu, timing=st, record_from=3, return_output=True,
    )
    assert out.steps == sim.step_ms_S.size
    assert out.demand == sim.demand_SL.sum() and out.cpu == sim.cpu_SL.sum()
    assert out.prefetch == sim.prefetch_SL.sum() and out.prefetch_used == sim.prefetch_used_SL.sum()
    assert out.hit_rate == pytest.approx(sim.hit_rate)
    np.testing.assert_allclose(out.step_ms, sim.step_ms_S, rtol=1e-9)
    assert out.tokens_per_s == pytest.approx(sim.tokens_per_s)
    # budget: resident + dynamic + staging (K · 2 tokens) + prefetch buffers
    assert out.max_live_buffers <= res.sum() + dyn.sum() + 2 * K + 2
    # where an expert ran does not change the numbers
    full, y_ref = stack.run_offloaded_stack(ids, step, np.ones((L, E), bool), np.zeros(L, int), hidden=16, ffn_width=8,
                                            timing=st, return_output=True)
    assert full.hit_rate == 1.0 and full.demand == 0
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_validate_offload_plan_on_cpu(capsys, tmp_path):
    from planner.cli import main
    from planner.specs.model_io import load_model
    from planner.traces import save_trace, synth_trace

    tr = synth_trace(load_model("deepseek-v2-lite"), num_tokens=512, tokens_per_step=256, num_ranks=4, weights=False, seed=1)
    save_trace(tr, tmp_path / "t.npz")
    assert main(["plan", "--mode", "offload", "--model", "deepseek-v2-lite", "--gpu-memory-gb", "9",
                 "--trace", str(tmp_path / "t.npz"), "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    code = main(["validate", "--plan", str(tmp_path / "plan.json"), "--trace", str(tmp_path / "t.npz"), "--device", "cpu",
                 "--steps", "20", "--layers", "6", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    import json

    r = json.loads(out)
    assert r["mode"] == "offload" and r["evaluated"]["steps"] == 20 and r["evaluated"]["layers"] == 6
    assert r["error_pct"]["tokens_per_s"] == pytest.approx(0.0, abs=1e-9)  # simulated clock: same rules
    assert r["measured"]["hit_rate"] == pytest.approx(r["predicted"]["hit_rate"])
    assert r["expert_buffers"]["peak"] <= r["expert_buffers"]["plan_slots"]
