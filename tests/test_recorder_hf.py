"""RoutingRecorder on real ``transformers`` models of every supported family: tiny configs,
random weights, no hub. The recorded ids must be the ids the model's experts receive and the
recorded weights the weights they multiply by (within 1e-4).

The reference is taken from the model itself, independently of the recorder:

- an experts module called with the routing (``transformers`` 5; DBRX and gpt-oss 4.x): its
  arguments, bound by name from its own ``forward`` signature;
- per-expert MLPs in a ``ModuleList`` (``transformers`` 4.x): each expert's output is replaced by
  a one-hot row at its own index and the shared experts' by zeros, so the block's output row t
  is the model's own combine sum_j w_tj · onehot(e_tj): its nonzero columns are the token's experts
  and their values the weights.

CI runs this module on the pinned ``transformers`` and, in a step of its own, on others
(``.ci/run``); families a version lacks are skipped.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from planner.errors import InputError  # noqa: E402
from planner.recorder import RoutingRecorder  # noqa: E402

E, K, H = 8, 2, 32
_ATTN = dict(vocab_size=64, hidden_size=H, num_attention_heads=4, num_key_value_heads=2)
_MLA = dict(_ATTN, num_key_value_heads=4, num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=16,
            first_k_dense_replace=1, n_routed_experts=E, n_shared_experts=1, num_experts_per_tok=K,
            kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8)
#: family -> (config class, model class, tiny config)
FAMILIES = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(_ATTN, num_hidden_layers=2, intermediate_size=16, num_local_experts=E, num_experts_per_tok=K)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(_ATTN, num_hidden_layers=2, intermediate_size=32, moe_intermediate_size=16,
                       shared_expert_intermediate_size=16, num_experts=E, num_experts_per_tok=K)),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(_ATTN, num_hidden_layers=2, intermediate_size=32, moe_intermediate_size=16, num_experts=E,
                       num_experts_per_tok=K, head_dim=8, norm_topk_prob=True)),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(_MLA, topk_method="greedy", routed_scaling_factor=1.5)),
    "deepseek_v2_grouped": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                            dict(_MLA, topk_method="group_limited_greedy", n_group=4, topk_group=2)),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(_MLA, n_group=4, topk_group=2, routed_scaling_factor=2.5, norm_topk_prob=True)),
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              dict(_ATTN, num_hidden_layers=2, intermediate_size=16, num_experts=E, num_experts_per_tok=K)),
    "dbrx": ("DbrxConfig", "DbrxForCausalLM",
             dict(d_model=H, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=64,
                  attn_config={"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
                  ffn_config={"ffn_hidden_size": H, "moe_num_experts": E, "moe_top_k": K,
                              "moe_normalize_expert_weights": 1.0})),
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM",
                dict(_ATTN, num_hidden_layers=2, intermediate_size=16, num_local_experts=E, num_experts_per_tok=K,
                     head_dim=8)),
}
#: MoE layers of each tiny model (DeepSeek: first_k_dense_replace=1 of 3 layers)
MOE_LAYERS = {f: 2 for f in FAMILIES}


def tiny(family: str):
    """The family's tiny model with random weights (routers and DeepSeek's correction bias
    random too, so that no two experts tie), or skip when the installed transformers lacks it."""
    cfg_cls, model_cls, kw = FAMILIES[family]
    if not hasattr(transformers, cfg_cls) or not hasattr(transformers, model_cls):
        pytest.skip(f"transformers {transformers.__version__} has no {model_cls}")
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, cfg_cls)(**kw)).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-2:-1] and name.split(".")[-2] in ("gate", "router", "layer") and p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 2, dtype=torch.long))
    except Exception as e:  # the installed version's own model does not run this config
        pytest.skip(f"transformers {transformers.__version__} {model_cls} does not run: {type(e).__name__}: {e}")
    return model


_ID_ARGS = ("top_k_index", "router_indices", "top_experts")
_W_ARGS = ("top_k_weights", "routing_weights", "top_weights")


def reference(model) -> tuple[list, list]:
    """Hooks that take each MoE layer's (ids [T, k], weights [T, k]) from the model (module
    docstring); returns the two lists the forward fills and the handles to remove."""
    got: list = []
    handles = []
    for _, block in model.named_modules():
        experts = getattr(block, "experts", None)
        if experts is None or not any(isinstance(getattr(block, a, None), torch.nn.Module) for a in ("gate", "router")):
            continue
        if isinstance(experts, torch.nn.ModuleList):
            handles += _one_hot_hooks(block, experts, got)
        else:
            sig = inspect.signature(experts.forward)

            def pre(mod, args, kwargs, sig=sig):
                a = sig.bind(*args, **kwargs).arguments
                ids = next(a[n] for n in _ID_ARGS if n in a).reshape(-1, K)
                w = next(a[n] for n in _W_ARGS if n in a)
                w = w.reshape(ids.shape[0], -1)
                if w.shape[1] != K:  # gpt-oss 4.x: scores scattered over all experts [T, E]
                    w = w.gather(1, ids.long())
                got.append((ids.long(), w.float()))

            handles.append(experts.register_forward_pre_hook(pre, with_kwargs=True))
    return got, handles


def _one_hot_hooks(block, experts, got):
    handles = []
    for e, ex in enumerate(experts):
        def one_hot(mod, args, out, e=e):
            o = torch.zeros_like(out)
            o[..., e] = 1.0
            return o
        handles.append(ex.register_forward_hook(one_hot))
    for attr in ("shared_experts", "shared_expert"):
        if isinstance(getattr(block, attr, None), torch.nn.Module):
            handles.append(getattr(block, attr).register_forward_hook(lambda m, a, o: torch.zeros_like(o)))

    def combined(mod, args, out):
        y = (out[0] if isinstance(out, tuple) else out).reshape(-1, H)[:, :E].float()
        ids = torch.sort(torch.topk(y, K, dim=-1).indices, dim=-1).values
        assert int((y > 0).sum(-1).max()) <= K  # only the chosen experts contribute
        got.append((ids, y.gather(1, ids)))

    handles.append(block.register_forward_hook(combined))
    return handles


def by_expert(ids: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ids, axis=-1, kind="stable")
    return np.take_along_axis(ids, order, -1), np.take_along_axis(w, order, -1)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_recorded_routing_is_the_models(family, tmp_path):
    model = tiny(family)
    ref, handles = reference(model)
    rec = RoutingRecorder(model, record_weights=True)
    assert rec.num_layers == MOE_LAYERS[family] and rec.num_experts == E
    tokens = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model(tokens)
        model(tokens[:, :4])
    for h in handles:
        h.remove()
    t = rec.trace()
    assert t.topk_ids.shape == (MOE_LAYERS[family], 3 * 7 + 3 * 4, K)
    assert len(ref) == 2 * MOE_LAYERS[family]
    L = MOE_LAYERS[family]
    for layer in range(L):
        want_ids = np.concatenate([ref[s * L + layer][0].numpy() for s in range(2)])
        want_w = np.concatenate([ref[s * L + layer][1].numpy() for s in range(2)])
        ids, w = by_expert(t.topk_ids[layer].astype(np.int64), t.topk_weights[layer])
        want_ids, want_w = by_expert(want_ids, want_w)
        assert np.array_equal(ids, want_ids), (family, layer)
        assert np.allclose(w, want_w, atol=1e-4, rtol=0), (family, layer, np.abs(w - want_w).max())
    assert t.step.tolist() == [0] * 21 + [1] * 12
    back = rec.save(tmp_path / "r.npz")
    assert back.exists()


@pytest.mark.parametrize("family", ["dbrx", "gpt_oss", "deepseek_v2"])
def test_routers_named_router_and_gateless_blocks_are_found(family):
    model = tiny(family)
    rec = RoutingRecorder(model)
    # every MoE block is hooked where its routing can be seen: DBRX and gpt-oss name theirs
    # `router`; DeepSeek-V2 on transformers 5.0-5.10 never calls its `gate` (F.linear on its weight)
    assert rec.num_layers == MOE_LAYERS[family]
    with torch.no_grad():
        model(torch.ones(1, 3, dtype=torch.long))
    assert rec.trace().topk_ids.shape == (MOE_LAYERS[family], 3, K)


def test_top_k_is_never_a_configs_generation_default():
    model = tiny("deepseek_v2")
    model.config.top_k = 50  # transformers 4.x configs carry the generation default top_k = 50
    rec = RoutingRecorder(model)
    assert {h.top_k for h in rec.hooks} == {K}


def test_a_model_whose_routing_no_hook_sees_fails_at_the_first_forward():
    model = tiny("mixtral")
    rec = RoutingRecorder(model)
    for h in rec.hooks:  # as if the blocks computed their routing without calling the hooked module
        h.handle.remove()
    with pytest.raises(InputError, match="none of its 2 hooked MoE layers"):
        with torch.no_grad():
            model(torch.ones(1, 3, dtype=torch.long))
