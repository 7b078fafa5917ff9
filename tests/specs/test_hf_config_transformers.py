"""The HF config import on configs written by real ``transformers`` config classes: every preset
whose published config.json (``tests/data/hf/``) has a config class in the installed version is
built with that class, written by ``save_pretrained`` (as a user's checkpoint folder holds it) and
imported; the ModelSpec must equal the preset, derived numbers included. No hub access.
Kimi-K2 (``model_type: kimi_k2``) has no class in ``transformers`` and is covered by the fixture
test of ``test_hf_config.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

from planner.specs.model_io import PRESETS, load_model, load_preset  # noqa: E402

HF_DIR = Path(__file__).resolve().parents[1] / "data" / "hf"
CONFIG_CLASSES = {
    "mixtral": "MixtralConfig", "qwen2_moe": "Qwen2MoeConfig", "qwen3_moe": "Qwen3MoeConfig",
    "deepseek_v2": "DeepseekV2Config", "deepseek_v3": "DeepseekV3Config", "olmoe": "OlmoeConfig",
    "dbrx": "DbrxConfig", "gpt_oss": "GptOssConfig",
}


def _fields(name: str) -> dict:
    cfg = json.loads((HF_DIR / f"{name}.json").read_text(encoding="utf-8"))
    if cfg["model_type"] == "dbrx":  # the published 0 is a float field (strict in transformers 5.10)
        cfg["ffn_config"] = dict(cfg["ffn_config"], moe_jitter_eps=float(cfg["ffn_config"].get("moe_jitter_eps") or 0))
    return cfg


@pytest.mark.parametrize("name", PRESETS)
def test_save_pretrained_config_imports_as_the_preset(name, tmp_path):
    if not (HF_DIR / f"{name}.json").exists():
        pytest.skip(f"{name}: no published config.json fixture (tests/specs/test_hf_config.py NO_FIXTURE)")
    fields = _fields(name)
    cls_name = CONFIG_CLASSES.get(fields["model_type"])
    if cls_name is None or not hasattr(transformers, cls_name):
        pytest.skip(f"transformers {transformers.__version__} has no config class for {fields['model_type']}")
    kwargs = {k: v for k, v in fields.items() if k not in ("model_type", "architectures")}
    getattr(transformers, cls_name)(**kwargs).save_pretrained(tmp_path / name)
    spec = load_model(str(tmp_path / name / "config.json"))
    preset = load_preset(name)
    assert spec.name == name  # the folder's name
    assert spec == preset
    assert spec.total_params == preset.total_params and spec.active_params == preset.active_params
    assert spec.moe_layer_indices == preset.moe_layer_indices
