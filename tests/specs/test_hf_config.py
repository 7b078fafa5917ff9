"""Hugging Face config.json import: every family against its preset, layer and routing rules
against the HF modeling code's own rules, and one-line errors that name the HF field.

The fixtures in ``tests/data/hf/`` are written from the fields of the published config.json
files (see ``tests/data/hf/README.md``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.errors import InputError
from planner.specs.hf_config import HF_MODEL_TYPES, from_hf_config
from planner.specs.model import ModelSpec
from planner.specs.model_io import PRESETS, load_model, load_preset

HF_DIR = Path(__file__).resolve().parents[1] / "data" / "hf"

# preset -> model_type of its published config.json
FIXTURES = {
    "dbrx": "dbrx",
    "deepseek-v2": "deepseek_v2",
    "deepseek-v2-lite": "deepseek_v2",
    "deepseek-moe-16b": "deepseek",
    "deepseek-v3": "deepseek_v3",
    "gpt-oss-120b": "gpt_oss",
    "gpt-oss-20b": "gpt_oss",
    "kimi-k2": "kimi_k2",
    "mixtral-8x22b": "mixtral",
    "mixtral-8x7b": "mixtral",
    "olmoe-1b-7b": "olmoe",
    "qwen1.5-moe-a2.7b": "qwen2_moe",
    "qwen3-235b-a22b": "qwen3_moe",
    "qwen3-30b-a3b": "qwen3_moe",
}
#: Presets without a fixture here, with the reason.
NO_FIXTURE = {
    "sigma-moe-tiny": "no published config.json found (the preset cites the technical report)",
}


def hf(name: str) -> dict:
    return json.loads((HF_DIR / f"{name}.json").read_text(encoding="utf-8"))


def imp(cfg: dict, name: str = "m") -> ModelSpec:
    return from_hf_config(cfg, "config.json", name=name)


def err(cfg: dict) -> str:
    with pytest.raises(InputError) as e:
        imp(cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("config.json: ")
    return msg


def test_there_is_a_fixture_for_every_preset_and_every_model_type():
    assert sorted([*FIXTURES, *NO_FIXTURE]) == PRESETS
    assert sorted(p.stem for p in HF_DIR.glob("*.json")) == sorted(FIXTURES)
    assert set(FIXTURES.values()) == set(HF_MODEL_TYPES)
    for name, model_type in FIXTURES.items():
        assert hf(name)["model_type"] == model_type


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_imported_config_equals_the_preset(name):
    # Every field, derived numbers included: the preset and the published config agree.
    spec = load_model(str(HF_DIR / f"{name}.json"))
    preset = load_preset(name)
    assert spec.name == name  # named after the file
    assert spec == preset
    assert spec.total_params == preset.total_params
    assert spec.moe_layer_indices == preset.moe_layer_indices


def test_family_names():
    assert imp(hf("kimi-k2")).family == "deepseek_v3"  # Kimi-K2 is a DeepSeek-V3 architecture
    assert imp(hf("qwen1.5-moe-a2.7b")).family == "qwen2_moe"
    assert imp(hf("dbrx")).family == "dbrx"


def test_default_names():
    cfg = hf("olmoe-1b-7b")
    assert from_hf_config(cfg, "models/OLMoE-1B-7B-0924/config.json").name == "OLMoE-1B-7B-0924"
    assert from_hf_config(cfg, "config.json").name == "hf-olmoe"
    assert from_hf_config(cfg, "olmoe.json").name == "olmoe"
    assert from_hf_config(cfg, "config.json", name="mine").name == "mine"


# ---- layer patterns: the planner's indices equal the HF modeling code's rule -----------------


@pytest.mark.parametrize(("first_k", "freq", "layers"), [(0, 1, 5), (1, 1, 27), (3, 1, 61), (1, 2, 9), (3, 2, 10), (2, 3, 11), (0, 4, 9)])
def test_deepseek_layer_pattern(first_k, freq, layers):
    cfg = hf("deepseek-v2-lite")
    cfg.update(first_k_dense_replace=first_k, moe_layer_freq=freq, num_hidden_layers=layers)
    spec = imp(cfg)
    # DeepseekV2DecoderLayer: MoE iff layer_idx >= first_k_dense_replace and layer_idx % moe_layer_freq == 0
    expected = [i for i in range(layers) if i >= first_k and i % freq == 0]
    assert spec.moe_layer_indices == expected
    assert spec.dense_intermediate_size == (10944 if len(expected) < layers else 0)


@pytest.mark.parametrize(("step", "mlp_only", "layers"), [(1, [], 4), (1, [0, 3], 6), (2, [], 8), (2, [1, 2, 5], 8), (3, [8], 9)])
def test_qwen_layer_pattern(step, mlp_only, layers):
    cfg = hf("qwen3-30b-a3b")
    cfg.update(decoder_sparse_step=step, mlp_only_layers=mlp_only, num_hidden_layers=layers)
    spec = imp(cfg)
    # Qwen3MoeDecoderLayer: sparse iff layer_idx not in mlp_only_layers and (layer_idx + 1) % step == 0
    expected = [i for i in range(layers) if i not in mlp_only and (i + 1) % step == 0]
    assert spec.moe_layer_indices == expected
    assert spec.num_dense_layers == layers - len(expected)
    assert spec.dense_intermediate_size == (6144 if spec.num_dense_layers else 0)


def test_qwen_dense_layers_need_intermediate_size():
    cfg = hf("qwen3-30b-a3b")
    cfg["mlp_only_layers"] = [0]
    del cfg["intermediate_size"]
    assert err(cfg) == "config.json: intermediate_size is required for model_type qwen3_moe"
    cfg["mlp_only_layers"] = [0, 1, 2]
    cfg["num_hidden_layers"] = 3
    assert "leave no MoE layer" in err(cfg)


def test_qwen3_ignores_shared_expert_fields_and_qwen2_reads_them():
    cfg = hf("qwen3-30b-a3b")
    cfg["shared_expert_intermediate_size"] = 0  # present (as 0) in some Qwen3 MoE configs
    assert imp(cfg).num_shared_experts == 0
    q2 = hf("qwen1.5-moe-a2.7b")
    q2["shared_expert_intermediate_size"] = 0
    assert imp(q2).num_shared_experts == 0
    assert imp(hf("qwen1.5-moe-a2.7b")).shared_ffn_size == 5632


# ---- routing -------------------------------------------------------------------------------


def test_deepseek_v2_groups_only_with_group_limited_greedy():
    cfg = hf("deepseek-v2")
    assert (imp(cfg).n_group, imp(cfg).topk_group) == (8, 3)
    cfg["topk_method"] = "greedy"  # DeepSeek-V2's greedy router ignores n_group
    assert (imp(cfg).n_group, imp(cfg).topk_group) == (None, None)
    del cfg["topk_method"]  # the config class default is the greedy router
    assert imp(cfg).n_group is None


def test_deepseek_v3_scoring_default_is_sigmoid_and_v2_softmax():
    v3 = hf("deepseek-v3")
    del v3["scoring_func"]
    assert imp(v3).scoring == "sigmoid"
    v2 = hf("deepseek-v2")
    del v2["scoring_func"]
    assert imp(v2).scoring == "softmax"


def test_q_lora_rank_null_or_zero_means_no_query_compression():
    cfg = hf("deepseek-v2-lite")
    assert imp(cfg).attention.q_lora_rank is None
    cfg["q_lora_rank"] = 0
    assert imp(cfg).attention.q_lora_rank is None
    cfg["q_lora_rank"] = -1
    assert err(cfg) == "config.json: q_lora_rank must be >= 0 (got -1)"


def test_one_group_means_no_groups():
    cfg = hf("deepseek-v3")
    cfg.update(n_group=1, topk_group=1)
    assert imp(cfg).n_group is None
    cfg.update(n_group=None, topk_group=None)
    assert imp(cfg).n_group is None


def test_gpt_oss_top_k_field_names():
    cfg = hf("gpt-oss-20b")
    del cfg["experts_per_token"]
    assert imp(cfg).top_k == 4
    cfg = hf("gpt-oss-20b")
    del cfg["num_experts_per_tok"]
    assert imp(cfg).top_k == 4
    del cfg["experts_per_token"]
    assert err(cfg) == "config.json: experts_per_token (or num_experts_per_tok) is required for model_type gpt_oss"
    cfg = hf("gpt-oss-20b")
    cfg["num_experts_per_tok"] = 2
    assert err(cfg) == "config.json: experts_per_token (4) and num_experts_per_tok (2) must agree"


# ---- dtypes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "expected"), [("torch_dtype", "bfloat16", "bf16"), ("torch_dtype", "float16", "fp16"), ("torch_dtype", "float32", "bf16"), ("dtype", "float16", "fp16")])
def test_weight_dtype(key, value, expected):
    cfg = hf("mixtral-8x7b")
    del cfg["torch_dtype"]
    cfg[key] = value
    spec = imp(cfg)
    assert (spec.weight_dtype, spec.expert_dtype) == (expected, expected)


def test_missing_dtype_is_bf16():
    cfg = hf("mixtral-8x7b")
    del cfg["torch_dtype"]
    assert imp(cfg).weight_dtype == "bf16"


def test_quantization_methods():
    cfg = hf("deepseek-v2-lite")
    cfg["quantization_config"] = {"bits": 4, "group_size": 128, "quant_method": "gptq"}
    spec = imp(cfg)
    assert (spec.weight_dtype, spec.expert_dtype) == ("bf16", "int4")
    cfg["quantization_config"] = {"bits": 4, "quant_method": "awq", "version": "gemm"}
    assert imp(cfg).expert_dtype == "int4"
    cfg["quantization_config"] = {"bits": 8, "quant_method": "gptq"}
    assert err(cfg) == (
        "config.json: quantization_config.bits must be 4 for quant_method gptq (got 8); other widths are not supported"
    )
    cfg["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    assert "quantization_config.quant_method 'bitsandbytes' is not supported (supported: fp8, mxfp4, 4-bit gptq/awq)" in err(cfg)
    cfg["quantization_config"] = "fp8"
    assert err(cfg) == "config.json: quantization_config must be a mapping of fields (got 'fp8')"
    cfg["quantization_config"] = {"bits": 4}
    assert err(cfg) == "config.json: quantization_config.quant_method is required for model_type deepseek_v2"
    cfg["quantization_config"] = None
    assert imp(cfg).expert_dtype == "bf16"


def test_unknown_torch_dtype():
    cfg = hf("olmoe-1b-7b")
    cfg["torch_dtype"] = "int8"
    assert err(cfg) == "config.json: torch_dtype must be one of bfloat16, float16, float32 (got 'int8')"


# ---- validation: messages name the HF field ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("qwen3-30b-a3b", {"moe_intermediate_size": -5}, "config.json: moe_intermediate_size must be > 0 (got -5)"),
        ("qwen3-30b-a3b", {"moe_intermediate_size": "768"}, "config.json: moe_intermediate_size must be an integer (got '768')"),
        ("qwen3-30b-a3b", {"moe_intermediate_size": [768]}, "config.json: moe_intermediate_size must be an integer (got a list)"),
        ("qwen3-30b-a3b", {"moe_intermediate_size": None}, "config.json: moe_intermediate_size must be an integer (got null)"),
        ("qwen3-30b-a3b", {"moe_intermediate_size": True}, "config.json: moe_intermediate_size must be an integer (got true)"),
        ("qwen3-30b-a3b", {"moe_intermediate_size": 768.5}, "config.json: moe_intermediate_size must be an integer (got 768.5)"),
        ("qwen3-30b-a3b", {"moe_intermediate_size": {"a": 1}}, "config.json: moe_intermediate_size must be an integer (got a dict)"),
        ("mixtral-8x7b", {"intermediate_size": -5}, "config.json: intermediate_size must be > 0 (got -5)"),
        ("mixtral-8x7b", {"num_experts_per_tok": 9}, "config.json: num_experts_per_tok (9) must be <= num_local_experts (8)"),
        ("olmoe-1b-7b", {"num_experts_per_tok": 65}, "config.json: num_experts_per_tok (65) must be <= num_experts (64)"),
        ("mixtral-8x7b", {"num_attention_heads": 30}, "config.json: num_attention_heads (30) must be a multiple of num_key_value_heads (8)"),
        ("olmoe-1b-7b", {"num_attention_heads": 15, "num_key_value_heads": 15}, "config.json: hidden_size (2048) must be divisible by num_attention_heads (15) when head_dim is not given"),
        ("mixtral-8x7b", {"tie_word_embeddings": "no"}, "config.json: tie_word_embeddings must be true or false (got 'no')"),
        ("mixtral-8x7b", {"vocab_size": 0}, "config.json: vocab_size must be > 0 (got 0)"),
        ("deepseek-v3", {"n_group": 7}, "config.json: n_group (7) must divide n_routed_experts (256)"),
        ("deepseek-v3", {"topk_group": 9}, "config.json: topk_group (9) must be <= n_group (8)"),
        ("deepseek-v3", {"num_experts_per_tok": 40, "topk_group": 1}, "config.json: num_experts_per_tok (40) must be <= topk_group × experts per group (1 × 32)"),
        ("deepseek-v3", {"topk_group": None}, "config.json: topk_group must be an integer (got null)"),
        ("deepseek-v3", {"first_k_dense_replace": 61}, "config.json: first_k_dense_replace (61) and moe_layer_freq (1) leave no MoE layer among num_hidden_layers (61)"),
        ("deepseek-v3", {"first_k_dense_replace": -1}, "config.json: first_k_dense_replace must be >= 0 (got -1)"),
        ("deepseek-v3", {"n_shared_experts": -1}, "config.json: n_shared_experts must be >= 0 (got -1)"),
        ("deepseek-v3", {"scoring_func": "relu"}, "config.json: scoring_func must be one of softmax, sigmoid (got 'relu')"),
        ("deepseek-v3", {"kv_lora_rank": 0}, "config.json: kv_lora_rank must be > 0 (got 0)"),
        ("deepseek-v3", {"q_lora_rank": "1536"}, "config.json: q_lora_rank must be an integer (got '1536')"),
        ("deepseek-v3", {"n_routed_experts": None}, "config.json: n_routed_experts must be an integer (got null)"),
        ("qwen3-30b-a3b", {"mlp_only_layers": "0,1"}, "config.json: mlp_only_layers must be a list of layer indices (got '0,1')"),
        ("qwen3-30b-a3b", {"mlp_only_layers": [48]}, "config.json: mlp_only_layers[0] must be a layer index < num_hidden_layers (48) (got 48)"),
        ("qwen3-30b-a3b", {"mlp_only_layers": [1, -2]}, "config.json: mlp_only_layers[1] must be >= 0 (got -2)"),
        ("qwen3-30b-a3b", {"decoder_sparse_step": 0}, "config.json: decoder_sparse_step must be > 0 (got 0)"),
        ("dbrx", {"ffn_config": [1]}, "config.json: ffn_config must be a mapping of fields (got a list)"),
        ("dbrx", {"n_heads": 47}, "config.json: n_heads (47) must be a multiple of attn_config.kv_n_heads (8)"),
        ("gpt-oss-120b", {"num_local_experts": 3}, "config.json: experts_per_token (4) must be <= num_local_experts (3)"),
        ("gpt-oss-120b", {"head_dim": 0}, "config.json: head_dim must be > 0 (got 0)"),
        ("olmoe-1b-7b", {"num_hidden_layers": 10**12}, "config.json: num_hidden_layers must be <= 4096 (got 1000000000000)"),
        ("dbrx", {"n_layers": 5000}, "config.json: n_layers must be <= 4096 (got 5000)"),
    ],
)
def test_bad_values_name_the_hf_field(name, change, expected):
    cfg = hf(name)
    cfg.update(change)
    assert err(cfg) == expected


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("qwen3-30b-a3b", "moe_intermediate_size"),
        ("qwen3-30b-a3b", "num_experts"),
        ("qwen1.5-moe-a2.7b", "num_experts_per_tok"),
        ("mixtral-8x7b", "num_local_experts"),
        ("mixtral-8x7b", "hidden_size"),
        ("olmoe-1b-7b", "vocab_size"),
        ("deepseek-v3", "n_routed_experts"),
        ("deepseek-v3", "kv_lora_rank"),
        ("deepseek-v3", "v_head_dim"),
        ("deepseek-v2-lite", "intermediate_size"),
        ("kimi-k2", "moe_intermediate_size"),
        ("gpt-oss-20b", "num_local_experts"),
        ("dbrx", "d_model"),
        ("dbrx", "n_layers"),
    ],
)
def test_missing_fields(name, field):
    cfg = hf(name)
    del cfg[field]
    assert err(cfg) == f"config.json: {field} is required for model_type {cfg['model_type']}"


def test_dbrx_nested_fields():
    cfg = hf("dbrx")
    del cfg["ffn_config"]["moe_num_experts"]
    assert err(cfg) == "config.json: ffn_config.moe_num_experts is required for model_type dbrx"
    cfg = hf("dbrx")
    cfg["ffn_config"]["moe_top_k"] = 0
    assert err(cfg) == "config.json: ffn_config.moe_top_k must be > 0 (got 0)"
    cfg["ffn_config"]["moe_top_k"] = 17
    assert err(cfg) == "config.json: ffn_config.moe_top_k (17) must be <= ffn_config.moe_num_experts (16)"
    cfg = hf("dbrx")
    del cfg["attn_config"]
    assert err(cfg) == "config.json: attn_config is required for model_type dbrx"
    cfg = hf("dbrx")
    del cfg["attn_config"]["kv_n_heads"]  # DbrxAttentionConfig defaults to 1 KV head
    assert (imp(cfg).attention.kind, imp(cfg).attention.num_kv_heads) == ("gqa", 1)
    cfg = hf("mixtral-8x7b")
    del cfg["num_key_value_heads"]  # HF convention: as many KV heads as query heads
    assert (imp(cfg).attention.kind, imp(cfg).attention.num_kv_heads) == ("mha", 32)


def test_model_type_errors():
    cfg = hf("mixtral-8x7b")
    cfg["model_type"] = "llama"
    msg = err(cfg)
    assert msg.startswith("config.json: model_type 'llama' is not supported (supported: ")
    for t in HF_MODEL_TYPES:
        assert t in msg
    del cfg["model_type"]
    assert err(cfg).startswith("config.json: model_type is required (supported: dbrx, deepseek, deepseek_v2, ")
    cfg["model_type"] = 3
    assert "model_type 3 is not supported" in err(cfg)
    with pytest.raises(InputError, match="expected a mapping of fields, got list"):
        from_hf_config([1, 2], "config.json")  # type: ignore[arg-type]


def test_errors_name_the_file_given_to_load_model(tmp_path):
    cfg = hf("qwen3-30b-a3b")
    cfg["moe_intermediate_size"] = -5
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(InputError) as e:
        load_model(str(path))
    assert str(e.value) == f"{path}: moe_intermediate_size must be > 0 (got -5)"


def test_integral_floats_are_accepted():
    cfg = hf("mixtral-8x7b")
    cfg["hidden_size"] = 4096.0
    assert imp(cfg).hidden_size == 4096


# ---- robustness: any junk value is an InputError or a valid spec, never a crash --------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=5),
    st.integers(min_value=10**12, max_value=10**13),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(min_value=-2, max_value=70), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(FIXTURES)), data=st.data())
def test_junk_values_never_crash(name, data):
    cfg = copy.deepcopy(hf(name))
    keys = sorted(cfg)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        key = data.draw(st.sampled_from(keys))
        if key == "model_type":
            continue
        if data.draw(st.booleans()) and isinstance(cfg.get(key), dict) and cfg[key]:
            sub = data.draw(st.sampled_from(sorted(cfg[key])))
            cfg[key][sub] = data.draw(JUNK)
        elif data.draw(st.integers(0, 9)) == 0:
            cfg.pop(key, None)
        else:
            cfg[key] = data.draw(JUNK)
    try:
        spec = imp(cfg)
    except InputError as e:
        msg = str(e)
        assert msg.startswith("config.json: ") and "\n" not in msg
        # the message names a HF field of this config, never a planner-internal field name
        for internal in ("expert_intermediate_size", "num_layers", "top_k ", "first_k_dense ", "extra_dense_layers"):
            assert internal not in msg, msg
    else:
        assert isinstance(spec, ModelSpec)


def test_qwen3_num_local_experts_as_transformers_5_saves_it():
    # transformers 5's Qwen3MoeConfig.save_pretrained writes num_local_experts, not num_experts
    # (its attribute_map); the import reads either, and both must agree.
    cfg = hf("qwen3-30b-a3b")
    cfg["num_local_experts"] = cfg.pop("num_experts")
    spec = imp(cfg, name="qwen3-30b-a3b")
    assert spec == load_preset("qwen3-30b-a3b")
    cfg["num_experts"] = 64
    assert err(cfg) == "config.json: num_experts (64) and num_local_experts (128) must agree"
    cfg["num_experts"] = 128
    assert imp(cfg).num_experts == 128
    cfg["num_experts_per_tok"] = 129
    assert err(cfg) == "config.json: num_experts_per_tok (129) must be <= num_local_experts (128)"
