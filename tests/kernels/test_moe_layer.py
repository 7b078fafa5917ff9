"""The MoE layer against the naive float64 reference, on CPU, for random shapes and routing rules."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from planner.simulator import choose_slots  # noqa: E402
from tests.conftest import cuda_layer_case, make_model  # noqa: E402

# (hidden D, ffn F, experts E, top_k K, scoring, n_group, topk_group, group_score, shared S, bias, norm, scaling)
CASES = [
    (32, 16, 8, 2, "softmax", None, None, "max", 0, False, True, 1.0),  # Mixtral-like
    (48, 24, 16, 4, "softmax", None, None, "max", 0, False, False, 1.0),  # no renormalisation
    (32, 16, 16, 3, "softmax", 4, 2, "max", 40, False, False, 1.0),  # DeepSeek-V2-like: groups + shared
    (64, 32, 32, 8, "sigmoid", 8, 4, "top2_sum", 32, True, True, 2.5),  # DeepSeek-V3-like
    (16, 8, 12, 1, "sigmoid", None, None, "max", 8, True, True, 1.0),  # top-1, shared
    (40, 8, 6, 6, "softmax", 3, 3, "max", 0, False, True, 1.0),  # every expert chosen
]
IDS = ["mixtral", "no-norm", "v2-groups-shared", "v3-sigmoid-groups", "top1-shared", "k-equals-e"]


def make(ml, case, dtype, seed, T=37):
    D, F, E, K, scoring, ng, tg, gs, S, bias, norm, scale = case
    cfg = ml.MoEConfig(
        hidden=D, ffn=F, num_experts=E, top_k=K, scoring=scoring, n_group=ng, topk_group=tg,
        group_score=gs, shared_ffn=S, norm_topk_prob=norm, routed_scaling=scale,
    )
    gen = torch.Generator().manual_seed(seed)
    w = ml.init_weights(cfg, dtype=dtype, generator=gen, with_bias=bias)
    x = torch.randn(T, D, generator=gen).to(dtype)
    return cfg, w, x


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["loop", "padded"])
def test_float64_layer_equals_reference(ml, case, backend):
    cfg, w, x = make(ml, case, torch.float64, seed=1)
    ref, ref_ids = ml.reference_moe(x, w, cfg)
    ids, _ = ml.route(x, w.router_ED, cfg, w.bias_E)
    assert torch.equal(ids.sort(1).values, ref_ids.sort(1).values)
    out = ml.moe_forward(x, w, cfg, backend=backend)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert rel(out, ref) < 1e-12


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("backend", ["loop", "padded", "grouped"])
@pytest.mark.parametrize("seed", [2, 3])
def test_float32_backends_match_reference(ml, case, backend, seed):
    if backend == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    cfg, w, x = make(ml, case, torch.float32, seed=seed, T=23 + seed)
    ids, _ = ml.route(x, w.router_ED, cfg, w.bias_E)
    ref, _ = ml.reference_moe(x, w, cfg, topk_ids_TK=ids)
    assert rel(ml.moe_forward(x, w, cfg, backend=backend), ref) < 1e-5
    # and the float32 router picks what the float64 one picks on these inputs
    assert torch.equal(ids.sort(1).values, ml.reference_moe(x, w, cfg)[1].sort(1).values)


@pytest.mark.parametrize("case", CASES[:4], ids=IDS[:4])
@pytest.mark.parametrize("backend", ["loop", "grouped"])
def test_bf16_layer_within_bf16_rounding(ml, case, backend):
    if backend == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    cfg, w, x = make(ml, case, torch.bfloat16, seed=4)
    ids, _ = ml.route(x, w.router_ED, cfg, w.bias_E)
    ref, _ = ml.reference_moe(x, w, cfg, topk_ids_TK=ids)
    out = ml.moe_forward(x, w, cfg, backend=backend)
    assert out.dtype == torch.bfloat16
    assert rel(out, ref) < 2e-2


def test_group_limited_routing_stays_inside_the_chosen_groups(ml):
    cfg, w, x = make(ml, CASES[3], torch.float32, seed=5, T=200)
    ids, weights = ml.route(x, w.router_ED, cfg, w.bias_E)
    size = cfg.num_experts // cfg.n_group
    groups_per_token = [len(set((row // size).tolist())) for row in ids]
    assert max(groups_per_token) <= cfg.topk_group
    # weights: unbiased sigmoid scores, renormalised, scaled
    assert torch.allclose(weights.sum(1), torch.full((200,), cfg.routed_scaling))
    assert len({tuple(r.tolist()) for r in ids}) > 1


def test_selection_bias_changes_choice_not_weight_source(ml):
    cfg = ml.MoEConfig(hidden=8, ffn=4, num_experts=4, top_k=1, scoring="sigmoid", norm_topk_prob=False)
    gen = torch.Generator().manual_seed(6)
    w = ml.init_weights(cfg, dtype=torch.float64, generator=gen)
    x = torch.randn(5, 8, generator=gen, dtype=torch.float64)
    w.bias_E = torch.tensor([0.0, 0.0, 10.0, 0.0])
    ids, weights = ml.route(x, w.router_ED, cfg, w.bias_E)
    assert (ids == 2).all()
    assert torch.allclose(weights[:, 0], (x @ w.router_ED.t()).sigmoid()[:, 2])


def test_permute_and_combine_invert_each_other(ml):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(11, 6, generator=gen, dtype=torch.float64)
    ids = torch.stack([torch.randperm(5, generator=gen)[:3] for _ in range(11)])
    wts = torch.rand(11, 3, generator=gen, dtype=torch.float64)
    x_ND, order, counts = ml.permute(x, ids, 5)
    assert counts.tolist() == torch.bincount(ids.reshape(-1), minlength=5).tolist()
    assert torch.equal(ids.reshape(-1)[order], ids.reshape(-1)[order].sort().values)  # sorted by expert
    out = ml.combine(x_ND, order, wts, 11)  # identity experts: out = x · Σ weights
    assert torch.allclose(out, x * wts.sum(1, keepdim=True))


@pytest.mark.parametrize("backend", ["loop", "padded", "grouped"])
def test_experts_with_no_rows(ml, backend):
    if backend == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    gen = torch.Generator().manual_seed(8)
    E, D, F = 5, 16, 8
    w13 = torch.randn(E, 2 * F, D, generator=gen)
    w2 = torch.randn(E, D, F, generator=gen)
    counts = [0, 3, 0, 0, 4]
    x = torch.randn(7, D, generator=gen)
    y = ml.experts_ffn(x, counts, w13, w2, backend)
    want = torch.cat([ml.ffn(x[:3], w13[1], w2[1]), ml.ffn(x[3:], w13[4], w2[4])])
    assert torch.allclose(y, want, atol=1e-5)
    empty = ml.experts_ffn(x[:0], [0] * E, w13, w2, "loop")
    assert empty.shape == (0, D)


@pytest.mark.parametrize("backend", ["loop", "grouped"])
def test_rank_execution_matches_the_full_layer_restricted_to_its_experts(ml, backend):
    if backend == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch has no _grouped_mm")
    cfg, w, x = make(ml, CASES[2], torch.float32, seed=9, T=64)
    ids, _ = ml.route(x, w.router_ED, cfg, w.bias_E)
    x_ND, order, counts = ml.permute(x, ids, cfg.num_experts)
    y_full = ml.experts_ffn(x_ND, counts, w.w13_E2FD, w.w2_EDF, "loop")
    expert_N = ids.reshape(-1)[order]
    local = torch.tensor([2, 5, 11, 14])  # one rank's experts
    mine = torch.isin(expert_N, local)
    counts_L = counts[local]
    y_rank = ml.run_local_experts(x_ND[mine], counts_L, w.w13_E2FD[local], w.w2_EDF[local], backend)
    assert y_rank.shape == (int(counts_L.sum()), cfg.hidden)
    assert torch.allclose(y_rank, y_full[mine], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["even", "local-first"])
def test_sharded_layer_over_a_placement_with_replicas_equals_the_layer(ml, dispatch):
    cfg, w, x = make(ml, CASES[0], torch.float64, seed=10, T=50)
    # 4 ranks × 3 slots: experts 0..7 plus replicas of 0, 1, 2, 3
    p2l = np.array([0, 4, 1, 5, 2, 0, 6, 3, 1, 7, 2, 3])
    ids, weights = ml.route(x, w.router_ED, cfg, w.bias_E)
    src = np.arange(50) * 4 // 50
    slot = choose_slots(ids.numpy(), src, p2l, 3, cfg.num_experts, dispatch)
    out, tokens_RL = ml.sharded_forward(x, w, cfg, p2l, 3, torch.from_numpy(slot), topk=(ids, weights))
    assert rel(out, ml.moe_forward(x, w, cfg, topk=(ids, weights))) < 1e-12
    assert tokens_RL.reshape(-1).tolist() == np.bincount(slot.reshape(-1), minlength=12).tolist()
    assert int(tokens_RL.sum()) == 50 * cfg.top_k
    bad = torch.from_numpy(slot).clone()
    bad[0, 0] = (bad[0, 0] + 1) % 12
    with pytest.raises(ValueError, match="does not hold its expert"):
        ml.sharded_forward(x, w, cfg, p2l, 3, bad, topk=(ids, weights))


def test_config_from_model_spec(ml):
    m = make_model(num_experts=16, top_k=4, n_group=4, topk_group=2, num_shared_experts=2, scoring="sigmoid")
    cfg = ml.MoEConfig.from_model(m)
    assert (cfg.hidden, cfg.ffn, cfg.num_experts, cfg.top_k) == (64, 32, 16, 4)
    assert (cfg.n_group, cfg.topk_group, cfg.group_score, cfg.shared_ffn) == (4, 2, "top2_sum", 64)
    assert ml.MoEConfig.from_model(make_model(), ffn=16).ffn == 16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(top_k=9), "top_k"),
        (dict(n_group=3, topk_group=1), "must divide num_experts"),
        (dict(n_group=4), "given together"),
        (dict(n_group=4, topk_group=5), "topk_group"),
        (dict(n_group=8, topk_group=1, top_k=2), "topk_group × experts per group"),
        (dict(scoring="relu"), "scoring"),
        (dict(shared_ffn=-1), "shared_ffn"),
    ],
)
def test_config_rejects_bad_shapes(ml, kwargs, message):
    base = dict(hidden=8, ffn=4, num_experts=8, top_k=2)
    with pytest.raises(ValueError, match=message):
        ml.MoEConfig(**{**base, **kwargs})


def test_unknown_backend(ml):
    with pytest.raises(ValueError, match="backend must be one of"):
        ml.resolve_backend("cutlass", torch.zeros(1))
    assert ml.resolve_backend("auto", torch.zeros(1)) == "loop"  # CPU float32: the loop fallback


@pytest.mark.gpu
def test_cuda_bf16_grouped_layer_matches_reference(ml):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg, _, wc, x, ids, _, ref = cuda_layer_case(ml, ffn=128)
    out = ml.moe_forward(x.cuda(), wc, cfg, backend="auto", topk=(ids.cuda(), ml.route(x.cuda(), wc.router_ED, cfg)[1]))
    assert ml.resolve_backend("auto", x.cuda()) == "grouped"
    assert rel(out.cpu(), ref) < 2e-2
