"""Megatron-core: arguments, and the permutation of expert weights and router rows.

The permutation test routes tokens through a tiny MoE layer built from a state dict (router
top-k softmax, SwiGLU experts) before and after :func:`apply_permutation`: every token's output
is the same, and new expert ``inv[e]`` computes what logical expert ``e`` computed.
"""

import json
import re

import numpy as np
import pytest

from planner.errors import InputError
from planner.exports import export, import_placement, megatron
from planner.exports._common import phy2log_of
from tests.conftest import make_model

H, F, E, K = 6, 4, 8, 2


def _state_dict(layers, grouped=False, seed=0, bias=True):
    rng = np.random.default_rng(seed)
    sd = {"embedding.word_embeddings.weight": rng.normal(size=(10, H))}
    for layer in layers:
        pre = f"decoder.layers.{layer}.mlp"
        sd[f"{pre}.router.weight"] = rng.normal(size=(E, H))
        if bias:
            sd[f"{pre}.router.expert_bias"] = rng.normal(size=E)
        for e in range(E):
            fc1, fc2 = rng.normal(size=(2 * F, H)), rng.normal(size=(H, F))
            if grouped:
                sd[f"{pre}.experts.linear_fc1.weight{e}"], sd[f"{pre}.experts.linear_fc2.weight{e}"] = fc1, fc2
            else:
                sd[f"{pre}.experts.local_experts.{e}.linear_fc1.weight"] = fc1
                sd[f"{pre}.experts.local_experts.{e}.linear_fc2.weight"] = fc2
    return sd


def _expert(sd, layer, e, x_TH, grouped):
    pre = f"decoder.layers.{layer}.mlp.experts"
    if grouped:
        w1, w2 = sd[f"{pre}.linear_fc1.weight{e}"], sd[f"{pre}.linear_fc2.weight{e}"]
    else:
        w1, w2 = sd[f"{pre}.local_experts.{e}.linear_fc1.weight"], sd[f"{pre}.local_experts.{e}.linear_fc2.weight"]
    gate_up = x_TH @ np.asarray(w1).T
    g, u = gate_up[:, :F], gate_up[:, F:]
    return (g / (1 + np.exp(-g)) * u) @ np.asarray(w2).T


def _moe(sd, layer, x_TH, grouped):
    """Top-k routing (selection on logits + expert_bias, weights softmax of the logits)."""
    pre = f"decoder.layers.{layer}.mlp.router"
    logits = x_TH @ np.asarray(sd[f"{pre}.weight"]).T
    select = logits + np.asarray(sd.get(f"{pre}.expert_bias", np.zeros(E)))
    top = np.argsort(-select, axis=1, kind="stable")[:, :K]
    w = np.exp(np.take_along_axis(logits, top, 1))
    w /= w.sum(1, keepdims=True)
    out = np.zeros_like(x_TH)
    for t in range(x_TH.shape[0]):
        for j in range(K):
            out[t] += w[t, j] * _expert(sd, layer, int(top[t, j]), x_TH[t : t + 1], grouped)[0]
    return out


@pytest.mark.parametrize("grouped", [False, True])
def test_permutation_keeps_every_tokens_output(grouped):
    layers = [1, 2]  # decoder layer 0 is dense
    sd = _state_dict(layers, grouped)
    rng = np.random.default_rng(1)
    perm = np.stack([rng.permutation(E) for _ in layers])
    new = megatron.apply_permutation(sd, perm)
    x = rng.normal(size=(32, H))
    inv = megatron.invert_permutation(perm)
    for i, layer in enumerate(layers):
        assert np.allclose(_moe(new, layer, x, grouped), _moe(sd, layer, x, grouped))
        for e in range(E):  # logical expert e now lives at index inv[e] and computes the same
            assert np.allclose(_expert(new, layer, int(inv[i, e]), x, grouped), _expert(sd, layer, e, x, grouped))
        # and the contiguous layout: EP rank r of 4 holds new experts 2r, 2r+1 = old perm[2r], perm[2r+1]
        assert np.array_equal(new[f"decoder.layers.{layer}.mlp.router.weight"][2:4], sd[f"decoder.layers.{layer}.mlp.router.weight"][perm[i, 2:4]])
    assert new["embedding.word_embeddings.weight"] is sd["embedding.word_embeddings.weight"]
    assert not np.array_equal(new["decoder.layers.1.mlp.router.weight"], sd["decoder.layers.1.mlp.router.weight"])


def test_torch_state_dict():
    torch = pytest.importorskip("torch")
    sd_np = _state_dict([0], bias=True)
    sd = {k: torch.tensor(v) for k, v in sd_np.items()}
    perm = np.array([[3, 1, 0, 2, 7, 6, 5, 4]])
    new = megatron.apply_permutation(sd, perm)
    assert isinstance(new["decoder.layers.0.mlp.router.weight"], torch.Tensor)
    assert torch.equal(new["decoder.layers.0.mlp.router.expert_bias"], sd["decoder.layers.0.mlp.router.expert_bias"][[3, 1, 0, 2, 7, 6, 5, 4]])
    assert new["decoder.layers.0.mlp.experts.local_experts.0.linear_fc1.weight"] is sd["decoder.layers.0.mlp.experts.local_experts.3.linear_fc1.weight"]
    x = np.random.default_rng(2).normal(size=(16, H))
    back = {k: v.numpy() for k, v in new.items()}
    assert np.allclose(_moe(back, 0, x, False), _moe(sd_np, 0, x, False))


def test_key_prefix_layer_indices_and_custom_templates():
    sd = {f"module.{k}": v for k, v in _state_dict([3, 7], bias=False).items()}
    perm = np.array([np.roll(np.arange(E), 1), np.arange(E)])
    new = megatron.apply_permutation(sd, perm, layer_indices=[3, 7])
    k = "module.decoder.layers.3.mlp.experts.local_experts.{}.linear_fc2.weight"
    assert new[k.format(0)] is sd[k.format(E - 1)]
    # a custom naming (an HF-style checkpoint)
    hf = {f"model.layers.0.mlp.experts.{e}.w1": np.full(2, e) for e in range(E)}
    hf["model.layers.0.mlp.gate.weight"] = np.arange(E)[:, None] * np.ones((1, 3))
    out = megatron.apply_permutation(
        hf, perm[:1], expert_keys=["model.layers.{layer}.mlp.experts.{expert}.w1"],
        router_keys=["model.layers.{layer}.mlp.gate.weight"],
    )
    assert [int(out[f"model.layers.0.mlp.experts.{e}.w1"][0]) for e in range(E)] == [7, 0, 1, 2, 3, 4, 5, 6]
    assert out["model.layers.0.mlp.gate.weight"][:, 0].tolist() == [7, 0, 1, 2, 3, 4, 5, 6]


def test_only_some_layers_of_a_pipeline_stage():
    sd = _state_dict([2])  # a stage holding decoder layer 2 of MoE layers 1, 2, 3
    perm = np.stack([np.arange(E), np.arange(E)[::-1], np.arange(E)])
    new = megatron.apply_permutation(sd, perm, layer_indices=[1, 2, 3])
    assert new["decoder.layers.2.mlp.router.expert_bias"].tolist() == sd["decoder.layers.2.mlp.router.expert_bias"][::-1].tolist()


@pytest.mark.parametrize(
    "mutate, kwargs, message",
    [
        (lambda sd: sd.pop("decoder.layers.1.mlp.experts.local_experts.5.linear_fc1.weight"), {},
         "matches experts 0..7 (7), the permutation has 8: merge the EP shards"),
        (lambda sd: None, {"perm": np.array([[0, 0, 1, 2, 3, 4, 5, 6], list(range(8))])},
         "perm_LE[0] is not a permutation of 0..7"),
        (lambda sd: None, {"perm": np.tile(np.arange(8), (3, 1))}, "state dict has 2 MoE layers"),
        (lambda sd: None, {"layer_indices": [1, 5]}, "state dict has MoE layer 2, which layer_indices does not list"),
        (lambda sd: sd.update({"decoder.layers.1.mlp.router.weight": np.zeros((4, H))}), {},
         "decoder.layers.1.mlp.router.weight: dim 0 has 4 rows, the permutation has 8 experts"),
    ],
)
def test_bad_inputs_are_one_clear_line(mutate, kwargs, message):
    sd = _state_dict([1, 2])
    mutate(sd)
    perm = kwargs.pop("perm", np.tile(np.arange(E), (2, 1)))
    with pytest.raises(InputError, match=re.escape(message)):
        megatron.apply_permutation(sd, perm, **kwargs)
    with pytest.raises(InputError, match="no key matching"):
        megatron.apply_permutation({"a": np.zeros(2)}, np.tile(np.arange(E), (2, 1)))


def test_arguments_for_the_plans_degrees(plan_perm, plan_replicas):
    r = export(plan_perm, "megatron")
    a = r.flags
    for flag, value in [
        ("--tensor-model-parallel-size", "1"), ("--pipeline-model-parallel-size", "1"),
        ("--expert-model-parallel-size", "8"), ("--expert-tensor-parallel-size", "1"),
        ("--num-experts", "64"), ("--moe-router-topk", "6"), ("--moe-ffn-hidden-size", "1408"),
        ("--moe-layer-freq", "([0]*1+[1]*26)"), ("--moe-token-dispatcher-type", "alltoall"),
    ]:
        assert a[a.index(flag) + 1] == value, flag
    assert "--moe-grouped-gemm" in a
    assert "--num-layers-per-virtual-pipeline-stage" not in a and "--sequence-parallel" not in a
    assert r.payload["permutation"]["decoder_layers"] == list(range(1, 27))
    assert r.payload["permutation"]["perm"] == plan_perm.placement.physical_to_logical
    # with replicas: arguments, no permutation, a note saying why
    rr = export(plan_replicas, "megatron")
    assert rr.payload["permutation"] is None
    assert "8 redundant slots" in rr.notes[0]


def test_vpp_tp_and_cp_arguments(plan_perm):
    par = plan_perm.parallel.model_copy(update={"tp": 2, "dp": 1, "pp": 2, "vpp": 3, "ep": 4, "cp": 2})
    model = plan_perm.model.model_copy(update={"num_layers": 24})
    plan = plan_perm.model_construct(**{**dict(plan_perm), "parallel": par, "model": model})
    a = megatron.args(plan)
    assert a[a.index("--num-layers-per-virtual-pipeline-stage") + 1] == "4"  # 24 / (2 × 3)
    assert "--sequence-parallel" in a
    assert a[a.index("--tensor-model-parallel-size") + 1] == "2"
    assert a[a.index("--expert-model-parallel-size") + 1] == "4"
    assert a[a.index("--context-parallel-size") + 1] == "2"


def test_group_limited_routing_note():
    model = make_model(num_experts=8, top_k=2, n_group=4, topk_group=2)
    keeps_groups = np.array([[2, 3, 0, 1, 6, 7, 4, 5]])  # groups {0,1},{2,3},… move as wholes
    assert megatron.group_notes(model, keeps_groups) == []
    mixes = np.array([[1, 2, 0, 3, 4, 5, 6, 7]])
    (note,) = megatron.group_notes(model, mixes)
    assert "moves experts across groups in 1 of 1 MoE layers" in note


@pytest.mark.parametrize("suffix", [".json", ".txt"])
def test_file_round_trip_and_text_layout(plan_perm_2n, tmp_path, suffix):
    out = tmp_path / f"megatron{suffix}"
    export(plan_perm_2n, "megatron", out)
    imp = import_placement(out, "megatron", model="deepseek-v2-lite")
    assert np.array_equal(imp.phy2log_LP, phy2log_of(plan_perm_2n)) and imp.slots_per_gpu == 4
    text = out.read_text()
    if suffix == ".json":
        assert json.loads(text)["args"][:2] == ["--tensor-model-parallel-size", "1"]
    else:
        lines = text.splitlines()
        assert "--expert-model-parallel-size 16" in lines
        assert "--moe-layer-freq '([0]*1+[1]*26)'" in lines
        perm_lines = [ln for ln in lines if ln.startswith("# perm ")]
        assert len(perm_lines) == 26 and perm_lines[0].startswith("# perm 0 1: ")
    with pytest.raises(InputError, match="--expert-model-parallel-size is 16, ep given is 8"):
        import_placement(out, "megatron", ep=8)
