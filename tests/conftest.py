"""Shared fixtures: small models built by hand, so tests do not depend on presets."""

import pytest

from planner.specs.hardware import load_hardware
from planner.specs.model import AttentionSpec, ModelSpec
from planner.specs.model_io import load_model


def make_model(**over) -> ModelSpec:
    fields = dict(
        name="tiny-moe",
        hidden_size=64,
        num_layers=3,
        num_experts=8,
        top_k=2,
        expert_intermediate_size=32,
        attention=AttentionSpec(kind="gqa", num_heads=4, num_kv_heads=2, head_dim=16),
        vocab_size=100,
    )
    fields.update(over)
    return ModelSpec(**fields)


@pytest.fixture
def tiny_model() -> ModelSpec:
    return make_model()


@pytest.fixture(scope="module")
def hw():
    """The H100 profile (the parallelism and step-time tests)."""
    return load_hardware("h100-sxm")


@pytest.fixture(scope="module")
def mixtral():
    return load_model("mixtral-8x7b")


def kernel_module(name: str):
    """``kernels/<name>.py`` as the installed ``planner_kernels.<name>`` (or from the source tree)."""
    import importlib

    from planner.validate import load_kernels

    return importlib.import_module(f"{load_kernels().__name__}.{name}")
