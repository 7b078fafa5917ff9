"""One local expert: every backend takes the plain dense FFN path (no grouped GEMM)."""

import pytest

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("backend", ["loop", "padded", "grouped", "auto"])
def test_one_expert_is_a_dense_ffn(ml, backend, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    D, F, N = 24, 16, 13
    x = torch.randn(N, D, generator=gen, dtype=torch.float64)
    w13 = torch.randn(1, 2 * F, D, generator=gen, dtype=torch.float64)
    w2 = torch.randn(1, D, F, generator=gen, dtype=torch.float64)

    def forbidden(*a, **k):
        raise AssertionError("a single expert must not run the grouped kernel")

    monkeypatch.setattr(torch, "_grouped_mm", forbidden, raising=False)
    y = ml.experts_ffn(x, [N], w13, w2, backend)
    # by hand: SiLU(x Wg^T) * (x Wu^T) then W2^T
    g = x @ w13[0, :F].t()
    u = x @ w13[0, F:].t()
    want = (g * torch.sigmoid(g) * u) @ w2[0].t()
    assert torch.allclose(y, want, rtol=0, atol=1e-12)
    assert ml.experts_ffn(x[:0], [0], w13, w2, backend).shape == (0, D)
    y_t = ml.experts_ffn(x, torch.tensor([N]), w13, w2, backend)  # counts as a tensor too
    assert torch.allclose(y_t, want, rtol=0, atol=1e-12)


def test_one_expert_rank_inside_the_sharded_layer(ml):
    """Eight experts on eight ranks (Mixtral at EP 8): each rank's single slot runs dense and the
    sharded layer still equals the unsharded one."""
    import numpy as np

    cfg = ml.MoEConfig(hidden=32, ffn=16, num_experts=8, top_k=2)
    gen = torch.Generator().manual_seed(3)
    w = ml.init_weights(cfg, dtype=torch.float64, generator=gen)
    x = torch.randn(40, 32, generator=gen, dtype=torch.float64)
    ids, wts = ml.route(x, w.router_ED, cfg)
    out, tokens_RL = ml.sharded_forward(x, w, cfg, np.arange(8), 1, ids, topk=(ids, wts), backend="padded")
    ref = ml.moe_forward(x, w, cfg, topk=(ids, wts), backend="loop")
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    assert tokens_RL.shape == (8, 1) and int(tokens_RL.sum()) == 80
