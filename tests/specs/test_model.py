"""ModelSpec: the shipped presets against docs/facts.md §1 and published parameter counts, the derived
numbers against hand computations, the schema's validation rules, and ``load_model``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from planner.errors import InputError
from planner.specs.base import parse
from planner.specs.model import DTYPE_BYTES, AttentionSpec, ModelSpec
from planner.specs.model_io import PRESETS, load_model, load_preset

HF_DIR = Path(__file__).resolve().parents[1] / "data" / "hf"

EXPECTED_PRESETS = [
    "dbrx",
    "deepseek-moe-16b",
    "deepseek-v2",
    "deepseek-v2-lite",
    "deepseek-v3",
    "gpt-oss-120b",
    "gpt-oss-20b",
    "kimi-k2",
    "mixtral-8x22b",
    "mixtral-8x7b",
    "olmoe-1b-7b",
    "qwen1.5-moe-a2.7b",
    "qwen3-235b-a22b",
    "qwen3-30b-a3b",
    "sigma-moe-tiny",
]


def test_presets_are_discovered_from_the_data_folder_sorted():
    assert PRESETS == EXPECTED_PRESETS


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_preset_file_names_its_model_and_cites_a_source(name):
    spec = load_preset(name)
    assert spec.name == name
    path = Path(__file__).resolve().parents[2] / "planner" / "data" / "models" / f"{name}.yaml"
    head = path.read_text(encoding="utf-8").splitlines()[:3]
    assert head[0].startswith("# ")
    assert any("config.json" in line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#"))


# ---- docs/facts.md §1 ---------------------------------------------------------------------------
# Columns: hidden, expert FFN, routed experts, top-k, shared experts, layers, dense layers first,
# MB per expert at bf16 as printed (MB = 1e6 bytes: 3·4096·14336·2 B = 352.3e6 B for Mixtral).
FACTS_TABLE = {
    "mixtral-8x7b": (4096, 14336, 8, 2, 0, 32, 0, "352.3"),
    "mixtral-8x22b": (6144, 16384, 8, 2, 0, 56, 0, "604"),
    "dbrx": (6144, 10752, 16, 4, 0, 40, 0, "396"),
    "deepseek-v2-lite": (2048, 1408, 64, 6, 2, 27, 1, "17.3"),
    "deepseek-v2": (5120, 1536, 160, 6, 2, 60, 1, "47.2"),
    "deepseek-v3": (7168, 2048, 256, 8, 1, 61, 3, "88.1"),
    "kimi-k2": (7168, 2048, 384, 8, 1, 61, 1, "88.1"),
    "qwen1.5-moe-a2.7b": (2048, 1408, 60, 4, 1, 24, 0, "17.3"),
    "qwen3-30b-a3b": (2048, 768, 128, 8, 0, 48, 0, "9.44"),
    "qwen3-235b-a22b": (4096, 1536, 128, 8, 0, 94, 0, "37.7"),
    "olmoe-1b-7b": (2048, 1024, 64, 8, 0, 16, 0, "12.6"),
    "gpt-oss-20b": (2880, 2880, 32, 4, 0, 24, 0, "49.8"),
    "gpt-oss-120b": (2880, 2880, 128, 4, 0, 36, 0, "49.8"),
    # not in docs/facts.md: the shapes cited in their preset files (config.json / technical report)
    "deepseek-moe-16b": (2048, 1408, 64, 6, 2, 28, 1, "17.3"),
    "sigma-moe-tiny": (1536, 768, 96, 1, 0, 56, 0, "7.08"),
}


def _half_unit(printed: str) -> float:
    """Half a unit in the last printed digit: the rounding error of a printed figure."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 0.5 * 10.0**-decimals


def test_facts_table_covers_every_preset():
    assert sorted(FACTS_TABLE) == EXPECTED_PRESETS


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_preset_matches_facts_table(name):
    hidden, ffn, experts, top_k, shared, layers, dense_first, _ = FACTS_TABLE[name]
    s = load_preset(name)
    assert (s.hidden_size, s.expert_intermediate_size, s.num_experts, s.top_k) == (hidden, ffn, experts, top_k)
    assert (s.num_shared_experts, s.num_layers, s.first_k_dense) == (shared, layers, dense_first)
    assert s.num_moe_layers == layers - dense_first
    if dense_first:
        assert s.dense_intermediate_size > 0


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_mb_per_expert_at_bf16_matches_facts(name):
    printed = FACTS_TABLE[name][-1]
    s = load_preset(name)
    mb_bf16 = s.expert_params * DTYPE_BYTES["bf16"] / 1e6
    assert abs(mb_bf16 - float(printed)) <= _half_unit(printed), (mb_bf16, printed)


@pytest.mark.parametrize(
    ("name", "dtype", "printed"),
    [("deepseek-v3", "fp8", "44"), ("gpt-oss-20b", "mxfp4", "13"), ("gpt-oss-120b", "mxfp4", "13.2")],
)
def test_expert_bytes_in_the_shipped_dtype_match_facts(name, dtype, printed):
    s = load_preset(name)
    assert s.expert_dtype == dtype
    assert abs(s.expert_bytes / 1e6 - float(printed)) <= _half_unit(printed)


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_dtypes(name):
    s = load_preset(name)
    expected = {"deepseek-v3": "fp8", "kimi-k2": "fp8", "gpt-oss-20b": "mxfp4", "gpt-oss-120b": "mxfp4"}
    assert s.expert_dtype == expected.get(name, "bf16")
    assert s.weight_dtype == "bf16"
    assert s.tie_embeddings is False


def test_expert_groups_and_scoring():
    v3, v2, lite, kimi = (load_preset(n) for n in ("deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "kimi-k2"))
    assert (v3.n_group, v3.topk_group, v3.experts_per_group, v3.scoring) == (8, 4, 32, "sigmoid")
    assert (v2.n_group, v2.topk_group, v2.experts_per_group, v2.scoring) == (8, 3, 20, "softmax")
    # V2-Lite's config has n_group 1 / topk_group 1 with topk_method greedy: no group limit.
    assert (lite.n_group, lite.topk_group, lite.scoring) == (None, None, "softmax")
    assert (kimi.n_group, kimi.topk_group, kimi.scoring) == (None, None, "sigmoid")
    for name in PRESETS:
        if name not in ("deepseek-v3", "deepseek-v2"):
            assert load_preset(name).n_group is None, name
        if name not in ("deepseek-v3", "kimi-k2"):
            assert load_preset(name).scoring == "softmax", name


def test_shared_experts():
    q = load_preset("qwen1.5-moe-a2.7b")
    assert (q.num_shared_experts, q.shared_ffn_size) == (1, 5632)
    v3 = load_preset("deepseek-v3")
    assert v3.shared_ffn_size == 2048  # one shared expert as wide as a routed one
    assert load_preset("deepseek-v2").shared_ffn_size == 2 * 1536


# Attention and vocabulary from docs/facts.md §1: (heads, kv heads, head_dim, vocab or None).
FACTS_ATTENTION = {
    "mixtral-8x7b": (32, 8, 128, 32000),
    "qwen3-30b-a3b": (32, 4, 128, 151936),
    "qwen3-235b-a22b": (64, 4, 128, None),
    "olmoe-1b-7b": (16, 16, 128, 50304),
    "gpt-oss-120b": (64, 8, 64, 201088),
}


@pytest.mark.parametrize("name", sorted(FACTS_ATTENTION))
def test_attention_matches_facts(name):
    heads, kv, head_dim, vocab = FACTS_ATTENTION[name]
    s = load_preset(name)
    assert (s.attention.num_heads, s.attention.num_kv_heads, s.attention.head_dim) == (heads, kv, head_dim)
    assert s.attention.kind == ("mha" if kv == heads else "gqa")
    if vocab is not None:
        assert s.vocab_size == vocab


def test_deepseek_v3_mla_matches_facts():
    a = load_preset("deepseek-v3").attention
    assert (a.kind, a.num_heads, a.q_lora_rank, a.kv_lora_rank) == ("mla", 128, 1536, 512)
    assert (a.qk_rope_head_dim, a.qk_nope_head_dim, a.v_head_dim, a.head_dim) == (64, 128, 128, 192)
    assert load_preset("deepseek-v3").vocab_size == 129280
    for name in ("deepseek-v2", "deepseek-v2-lite", "kimi-k2"):
        assert load_preset(name).attention.kind == "mla"
    assert load_preset("deepseek-v2-lite").attention.q_lora_rank is None


# ---- published parameter counts ------------------------------------------------------------
# (total, active, convention of the active figure, source). Figures are as published, in
# billions. Tolerance: half a unit in the last published digit (publishers round), plus 0.5%
# for weights a ModelSpec leaves out (norms, attention/expert biases, gpt-oss attention sinks,
# Qwen1.5's shared-expert gate vector): all well under 0.5% of any of these models.
# Active-figure conventions ("non-vocab": neither embedding nor head; Sigma-MoE-Tiny's 0.5B is met
# only so): "with" counts the input embedding, "without" leaves it out (a
# lookup, not a matmul), "unstated": the publisher does not say, so the figure must lie between
# the two counts (widened by the tolerance). Totals count both embedding and head; DeepSeek-V3's
# 671B excludes its MTP module (11.5B more), as does the preset.
PUBLISHED = {
    "mixtral-8x7b": ("46.7", "12.9", "with", "Mistral AI, Mixtral of experts: 46.7B total, 12.9B per token"),
    "mixtral-8x22b": ("141", "39", "unstated", "Mistral AI, Mixtral 8x22B: 141B total, 39B active"),
    "dbrx": ("132", "36", "unstated", "Databricks, Introducing DBRX: 132B total, 36B active"),
    "deepseek-v2-lite": ("15.7", "2.4", "unstated", "DeepSeek-V2 paper: V2-Lite 15.7B total, 2.4B activated"),
    "deepseek-v2": ("236", "21", "unstated", "DeepSeek-V2 paper: 236B total, 21B activated"),
    "deepseek-v3": ("671", "37", "with", "DeepSeek-V3 report / README_WEIGHTS.md: 671B main model, 37B activated"),
    "kimi-k2": ("1.0e3", "32", "unstated", "Moonshot AI model card: 1T total, 32B activated"),
    "qwen1.5-moe-a2.7b": ("14.3", "2.7", "with", "Qwen1.5-MoE model card: 14.3B total, 2.7B activated"),
    "qwen3-30b-a3b": ("30.5", "3.3", "with", "Qwen3 model card: 30.5B total, 3.3B activated"),
    "qwen3-235b-a22b": ("235", "22", "with", "Qwen3 model card: 235B total, 22B activated"),
    "olmoe-1b-7b": ("6.9", "1.3", "with", "OLMoE paper: 6.9B total, 1.3B active"),
    "gpt-oss-20b": ("20.9", "3.6", "without", "gpt-oss model card: 20.9B total, 3.6B active"),
    "gpt-oss-120b": ("116.8", "5.1", "without", "gpt-oss model card: 116.8B total, 5.1B active"),
    "deepseek-moe-16b": ("16.4", "2.8", "unstated", "DeepSeekMoE paper (arXiv 2401.06066): 16.4B total, 2.8B activated"),
    "sigma-moe-tiny": ("20", "0.5", "non-vocab", "Sigma-MoE-Tiny report (arXiv 2512.16248): 20B total, 0.5B activated"),
}


def _tolerance_b(printed: str) -> float:
    value = float(printed)
    mantissa = printed.split("e")[0]
    exponent = int(printed.split("e")[1]) if "e" in printed else 0
    return _half_unit(mantissa) * 10.0**exponent + 0.005 * value


def test_published_figures_cover_every_preset():
    assert sorted(PUBLISHED) == EXPECTED_PRESETS


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_total_params_match_published(name):
    total, _, _, source = PUBLISHED[name]
    got = load_preset(name).total_params / 1e9
    assert abs(got - float(total)) <= _tolerance_b(total), f"{got:.2f}B vs {source}"


@pytest.mark.parametrize("name", EXPECTED_PRESETS)
def test_active_params_match_published(name):
    _, active, convention, source = PUBLISHED[name]
    s = load_preset(name)
    with_emb = s.active_params / 1e9
    without_emb = (s.active_params - s.vocab_size * s.hidden_size) / 1e9
    tol = _tolerance_b(active)
    published = float(active)
    if convention == "with":
        assert abs(with_emb - published) <= tol, f"{with_emb:.2f}B vs {source}"
    elif convention == "without":
        assert abs(without_emb - published) <= tol, f"{without_emb:.2f}B vs {source}"
    elif convention == "non-vocab":  # neither the input embedding nor the output head
        non_vocab = without_emb - s.vocab_size * s.hidden_size / 1e9
        assert abs(non_vocab - published) <= tol, f"{non_vocab:.2f}B vs {source}"
    else:
        assert without_emb - tol <= published <= with_emb + tol, (without_emb, with_emb, source)


def test_deepseek_v3_total_would_miss_if_mtp_were_counted():
    # The MTP module adds 11.5B unique parameters (README_WEIGHTS.md): the 671B check above
    # distinguishes the two, so the preset's convention is pinned.
    total = load_preset("deepseek-v3").total_params / 1e9
    assert abs(total + 11.5 - 671) > _tolerance_b("671")


# ---- derived numbers by hand ---------------------------------------------------------------


def _tiny(**over) -> ModelSpec:
    fields: dict = dict(
        name="tiny",
        hidden_size=4,
        num_layers=3,
        first_k_dense=1,
        dense_intermediate_size=8,
        num_experts=4,
        top_k=2,
        expert_intermediate_size=2,
        num_shared_experts=1,
        attention=AttentionSpec(kind="mha", num_heads=2, num_kv_heads=2, head_dim=2),
        vocab_size=10,
    )
    fields.update(over)
    return ModelSpec(**fields)


def test_derived_numbers_of_a_tiny_model_by_hand():
    s = _tiny()
    assert s.moe_layer_indices == [1, 2]
    assert (s.num_moe_layers, s.num_dense_layers) == (2, 1)
    assert s.expert_params == 3 * 4 * 2 == 24
    assert s.expert_bytes == 48
    assert s.routed_expert_params == 2 * 4 * 24
    # attention per layer: q 4·2·2 + k,v 2·4·2·2 + o 2·2·4 = 64, three layers
    assert s.attention_params == 3 * 64
    assert s.embedding_params == 2 * 10 * 4
    # embeddings 80 + attention 192 + shared 2·(3·4·2) + routers 2·(4·4) + dense FFN 3·4·8
    assert s.non_expert_params == 80 + 192 + 48 + 32 + 96 == 448
    assert s.total_params == 448 + 192 == 640
    assert s.active_params == 448 + 2 * 2 * 24 == 544
    assert s.non_expert_bytes == 2 * 448
    assert _tiny(tie_embeddings=True).total_params == 640 - 40
    assert _tiny(expert_dtype="fp8").expert_bytes == 24
    assert _tiny(expert_dtype="mxfp4").expert_bytes == pytest.approx(24 * 4.25 / 8)


def test_layer_patterns():
    s = _tiny(num_layers=8, first_k_dense=2, moe_layer_freq=3)
    assert s.moe_layer_indices == [2, 5]
    s = _tiny(num_layers=6, first_k_dense=0, dense_intermediate_size=8, extra_dense_layers=(0, 4))
    assert s.moe_layer_indices == [1, 2, 3, 5]
    assert s.num_dense_layers == 2
    assert load_preset("deepseek-v3").moe_layer_indices == list(range(3, 61))


def test_mla_attention_params_by_hand():
    # DeepSeek-V3: q_a 7168·1536, q_b 1536·128·192, kv_a 7168·(512+64), kv_b 512·128·(128+128),
    # o 128·128·7168.
    expected = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    assert expected == 187_105_280
    assert load_preset("deepseek-v3").attention.params_per_layer(7168) == expected
    # V2-Lite has no query compression: q = 2048·16·192.
    lite = load_preset("deepseek-v2-lite").attention
    assert lite.params_per_layer(2048) == 2048 * 16 * 192 + 2048 * 576 + 512 * 16 * 256 + 16 * 128 * 2048


def test_kv_cache_bytes_per_token():
    # docs/facts.md §6: 2·kv_heads·head_dim·bytes per layer; MLA (kv_lora_rank + qk_rope_head_dim)·bytes.
    assert load_preset("mixtral-8x7b").attention.kv_bytes_per_token_per_layer(2.0) == 2 * 8 * 128 * 2
    assert load_preset("deepseek-v3").attention.kv_bytes_per_token_per_layer(2.0) == (512 + 64) * 2


# ---- schema validation ---------------------------------------------------------------------


def _spec_dict(**over) -> dict:
    d = _tiny().model_dump(mode="json")
    d.update(over)
    return d


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"hidden_size": -5}, "hidden_size: Input should be greater than 0 (got -5)"),
        ({"expert_intermediate_size": 0}, "expert_intermediate_size: Input should be greater than 0"),
        ({"top_k": 5}, "top_k (5) must be <= num_experts (4)"),
        ({"num_experts": 6, "n_group": 4, "topk_group": 2}, "n_group (4) must divide num_experts (6)"),
        ({"n_group": 2, "topk_group": 3}, "topk_group (3) must be <= n_group (2)"),
        ({"n_group": 4, "topk_group": 1}, "top_k (2) must be <= topk_group × experts per group (1 × 1)"),
        ({"n_group": 2}, "n_group and topk_group must be given together"),
        ({"first_k_dense": 3}, "first_k_dense (3) must be < num_layers (3)"),
        ({"num_layers": 4097}, "num_layers: Input should be less than or equal to 4096 (got 4097)"),
        ({"dense_intermediate_size": 0}, "dense_intermediate_size must be > 0: the model has 1 dense layer(s)"),
        ({"first_k_dense": 0, "moe_layer_freq": 2, "dense_intermediate_size": 0}, "dense_intermediate_size must be > 0"),
        ({"extra_dense_layers": [3]}, "extra_dense_layers must be layer indices in [0, 3) (got 3)"),
        ({"extra_dense_layers": [1, 1]}, "extra_dense_layers must not repeat a layer index"),
        ({"extra_dense_layers": [1, 2]}, "the model needs at least one MoE layer"),
        ({"num_shared_experts": 0, "shared_expert_intermediate_size": 8}, "num_shared_experts must be > 0"),
        ({"hidden_size": "4096"}, "hidden_size: Input should be a valid integer (got '4096')"),
        ({"num_experts": [8]}, "num_experts: Input should be a valid integer"),
        ({"top_k": None}, "top_k: Input should be a valid integer (got None)"),
        ({"num_layers": 3.0}, "num_layers: Input should be a valid integer (got 3.0)"),
        ({"top_k": True}, "top_k: Input should be a valid integer (got True)"),
        ({"extra_dense_layers": ["1"]}, "extra_dense_layers[0]: Input should be a valid integer (got '1')"),
        ({"tie_embeddings": "yes"}, "tie_embeddings: Input should be a valid boolean (got 'yes')"),
        ({"expert_dtype": "int3"}, "expert_dtype: Input should be"),
        ({"scoring": "relu"}, "scoring: Input should be 'softmax' or 'sigmoid'"),
        ({"experts": 8}, "unknown field 'experts'"),
    ],
)
def test_invalid_specs_give_one_line_input_errors(over, needle):
    with pytest.raises(InputError) as e:
        parse(ModelSpec, _spec_dict(**over), "spec.yaml")
    msg = str(e.value)
    assert msg.startswith("spec.yaml: ")
    assert needle in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("attention", "needle"),
    [
        ({"kind": "gqa", "num_heads": 6, "num_kv_heads": 4, "head_dim": 8}, "num_heads (6) must be a multiple of num_kv_heads (4)"),
        ({"kind": "mha", "num_heads": 8, "num_kv_heads": 2, "head_dim": 8}, "num_kv_heads (2) must equal num_heads (8) when kind is 'mha'"),
        ({"kind": "mla", "num_heads": 8, "num_kv_heads": 8, "head_dim": 192}, "kv_lora_rank is required when kind is 'mla'"),
        (
            {"kind": "mla", "num_heads": 8, "num_kv_heads": 8, "head_dim": 128, "kv_lora_rank": 512,
             "qk_rope_head_dim": 64, "qk_nope_head_dim": 128, "v_head_dim": 128},
            "head_dim (128) must equal qk_nope_head_dim + qk_rope_head_dim (128 + 64)",
        ),
        ({"kind": "gqa", "num_heads": 8, "num_kv_heads": 2, "head_dim": -1}, "attention.head_dim: Input should be greater than 0"),
    ],
)
def test_invalid_attention(attention, needle):
    with pytest.raises(InputError) as e:
        parse(ModelSpec, _spec_dict(attention=attention), "spec.yaml")
    assert needle in str(e.value)


def test_every_field_has_a_description():
    for schema in (ModelSpec, AttentionSpec):
        for name, field in schema.model_fields.items():
            assert field.description, f"{schema.__name__}.{name}"


# ---- load_model ----------------------------------------------------------------------------


def test_load_model_preset_names():
    assert load_model("deepseek-v3") is load_preset("deepseek-v3")
    assert load_model("Mixtral-8x7B") == load_preset("mixtral-8x7b")


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(InputError) as e:
        load_model("foo")
    msg = str(e.value)
    assert msg.startswith("unknown model 'foo'; known presets: ")
    for name in PRESETS:
        assert name in msg
    assert "did you mean" not in msg
    with pytest.raises(InputError, match="did you mean 'mixtral-8x7b'"):
        load_model("mixtral-8x7")
    with pytest.raises(InputError, match="unknown model"):
        load_preset("mixtral")


def test_load_model_spec_files_round_trip(tmp_path):
    spec = load_preset("deepseek-v3")
    as_yaml = tmp_path / "v3.yaml"
    as_yaml.write_text(yaml.safe_dump(spec.model_dump(mode="json")), encoding="utf-8")
    as_yml = tmp_path / "v3.yml"
    as_yml.write_text(as_yaml.read_text(encoding="utf-8"), encoding="utf-8")
    as_json = tmp_path / "v3.json"
    as_json.write_text(spec.model_dump_json(), encoding="utf-8")
    for p in (as_yaml, as_yml, as_json):
        assert load_model(str(p)) == spec


def test_load_model_hf_config_json_and_folder(tmp_path):
    folder = tmp_path / "Qwen3-30B-A3B"
    folder.mkdir()
    (folder / "config.json").write_text((HF_DIR / "qwen3-30b-a3b.json").read_text(encoding="utf-8"), encoding="utf-8")
    from_file = load_model(str(folder / "config.json"))
    from_folder = load_model(str(folder))
    assert from_file == from_folder
    assert from_file.name == "Qwen3-30B-A3B"
    assert from_file.model_copy(update={"name": "qwen3-30b-a3b"}) == load_preset("qwen3-30b-a3b")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: str(d / "missing.json"), "missing.json: no such file"),
        (lambda d: str(d / "missing.yaml"), "missing.yaml: no such file"),
        (lambda d: str(d / "sub" / "model"), "no such file"),
        (lambda d: str(d), "a folder without config.json"),
        (lambda d: _write(d / "notes.txt", "hello"), "unsupported file type '.txt'"),
        (lambda d: _write(d / "bad.json", "{not json"), "bad.json: invalid JSON at line 1"),
        (lambda d: _write(d / "list.yaml", "- 1\n- 2\n"), "list.yaml: expected a mapping of fields at the top level"),
        (lambda d: _write(d / "spec.yaml", "name: x\n"), "hidden_size is required"),
        (lambda d: _write(d / "hf.json", json.dumps({"model_type": "llama", "hidden_size": 8})), "model_type 'llama' is not supported"),
        (lambda d: "", "expected a preset name or a file path"),
    ],
)
def test_load_model_bad_inputs(tmp_path, make, needle):
    arg = make(tmp_path)
    with pytest.raises(InputError) as e:
        load_model(arg)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def _write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_presets_are_immutable_and_shared():
    s = load_preset("olmoe-1b-7b")
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError on frozen models
        s.top_k = 3  # type: ignore[misc]
    assert load_preset("olmoe-1b-7b").top_k == 8
    assert math.isclose(s.expert_bytes, 3 * 2048 * 1024 * 2)
