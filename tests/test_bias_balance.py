"""Auxiliary-loss-free bias balancing (planner.bias_balance): convergence to the known fixed
point, GPU loads under a placement by hand, the fit to a trace's counts, input rules."""

import numpy as np
import pytest

from planner.bias_balance import (
    RouterModel,
    expected_loads,
    fit_router,
    gpu_loads,
    placements_for,
    simulate_bias,
    synthetic_router,
)
from planner.errors import InputError


def test_bias_converges_to_the_known_fixed_point():
    # logits scoring: b = −μ + c makes every expert's logits identically distributed, so equal
    # expected loads; the sign rule must bring the bias there (within its O(γ) band)
    E = 8
    mu = np.linspace(-1.0, 1.0, E)[None, :]
    router = RouterModel(mu, 1.0, "logits", 2, "test")
    res = simulate_bias(router, steps=1500, tokens_per_step=4096, update_rate=0.005, seed=1)
    b = res.bias_LE[0] - res.bias_LE[0].mean()
    assert np.abs(b - (-(mu[0] - mu[0].mean()))).max() < 0.06
    # at the start the hottest expert carries far above its share; at the end only noise remains
    assert res.imbalance_SL[0, 0] > 1.8
    tail = res.imbalance_SL[-200:, 0].mean()
    assert tail < 1.06
    assert np.allclose(res.mean_load_LE[0], 4096 * 2 / E, rtol=0.03)


def test_no_update_keeps_the_router_imbalance():
    router = RouterModel(np.linspace(-1.0, 1.0, 8)[None, :], 1.0, "logits", 2, "test")
    res = simulate_bias(router, steps=50, tokens_per_step=4096, update_rate=0.0)
    assert (res.bias_LE == 0).all()
    assert res.imbalance_SL[-10:, 0].mean() > 1.8
    assert res.notes


def test_larger_rate_balances_sooner_but_noisier():
    router = synthetic_router(2, 16, 2, skew=1.0, noise=1.0, scoring="sigmoid", seed=3)
    slow = simulate_bias(router, steps=600, tokens_per_step=2048, update_rate=0.0005, seed=2).summary()
    fast = simulate_bias(router, steps=600, tokens_per_step=2048, update_rate=0.01, seed=2).summary()
    s, f = slow["series"]["experts"], fast["series"]["experts"]
    assert f["steps_to_steady"] < s["steps_to_steady"]
    assert f["steady_state"] < f["first_step"]


def test_gpu_loads_by_hand():
    # 4 experts on 2 GPUs, expert 0 replicated on both: slots [0, 1 | 0, 2, 3] is not even, so use
    # 6 slots, 3 per GPU: [0, 1, 2 | 0, 3, 3]; loads 8, 2, 1, 4: expert 0 splits 4 + 4,
    # expert 3 splits 2 + 2 on GPU 1
    p2l = np.array([[0, 1, 2, 0, 3, 3]])
    g = gpu_loads(np.array([[8.0, 2.0, 1.0, 4.0]]), p2l, 2)
    assert np.allclose(g, [[4 + 2 + 1, 4 + 2 + 2]])
    with pytest.raises(InputError, match="every expert needs a slot"):
        gpu_loads(np.ones((1, 4)), np.array([[0, 1, 1, 2]]), 2)


def test_fit_router_reproduces_the_trace_shares():
    counts = np.array([[400.0, 200.0, 100.0, 100.0, 50.0, 50.0, 50.0, 50.0]])
    router = fit_router(counts, 2, noise=1.0, scoring="sigmoid", seed=0)
    share = expected_loads(router, np.zeros((1, 8)), seed=5)[0] / 2
    assert np.allclose(share, counts[0] / counts.sum(), atol=0.01)


def test_placement_fitted_to_the_early_skew_loses_balance_later():
    router = synthetic_router(1, 16, 2, skew=1.5, noise=1.0, scoring="sigmoid", seed=4)
    pl = placements_for(router, 4, redundant=4)
    res = simulate_bias(router, steps=800, tokens_per_step=4096, update_rate=0.005, placements=pl, seed=0).summary()
    rep = res["series"]["gpus (eplb on unbalanced loads, +4 replicas)"]
    # planned on the unbalanced loads, it beats contiguous at step 1 ...
    assert rep["first_step"] < res["series"]["gpus (contiguous)"]["first_step"]
    # ... and is worse than at step 1 once the bias has balanced the experts
    assert rep["steady_state"] > rep["first_step"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"steps": 0}, "steps must be > 0"), ({"tokens_per_step": 0}, "tokens_per_step"), ({"update_rate": -1.0}, "update_rate")],
)
def test_bad_input(kwargs, match):
    router = synthetic_router(1, 4, 1)
    base = {"steps": 2, "tokens_per_step": 8, "update_rate": 0.001}
    with pytest.raises(InputError, match=match):
        simulate_bias(router, **{**base, **kwargs})
    with pytest.raises(InputError, match="scoring"):
        synthetic_router(1, 4, 1, scoring="relu")
    with pytest.raises(InputError, match="top_k"):
        synthetic_router(1, 4, 5)


def test_cli_bias_sim_json_from_a_trace(tmp_path, capsys):
    import json

    from planner.cli import main
    from planner.traces import save_trace, synth_trace

    t = tmp_path / "t.npz"
    save_trace(synth_trace(num_layers=2, num_experts=16, top_k=2, num_tokens=2048, seed=1), t)
    code = main(["trace", "bias-sim", "--experts", "16", "--top-k", "2", "--trace", str(t), "--layers", "2",
                 "--steps", "40", "--tokens-per-step", "512", "--gpus", "4", "--redundant", "4", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    assert d["router"].startswith("fitted to a trace's counts") and d["steps"] == 40 and d["layers"] == 2
    assert set(d["series"]) == {"experts", "gpus (contiguous)", "gpus (eplb on unbalanced loads)",
                                "gpus (eplb on unbalanced loads, +4 replicas)"}
    code = main(["trace", "bias-sim", "--top-k", "2"])
    assert code == 2 and "needs --model" in capsys.readouterr().err
