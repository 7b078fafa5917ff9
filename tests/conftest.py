"""Shared fixtures: small models built by hand, so tests do not depend on presets."""

import os
from pathlib import Path

import pytest

from planner.cli import main
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


def cuda_layer_case(ml, ffn: int):
    """A small bf16 DeepSeek-style layer (groups, shared expert) on 300 tokens for the GPU tests:
    (cfg, CPU weights, their CUDA copy, x, routed ids, routing weights, float64 reference)."""
    import torch

    cfg = ml.MoEConfig(hidden=256, ffn=ffn, num_experts=16, top_k=4, n_group=4, topk_group=2, shared_ffn=128)
    gen = torch.Generator().manual_seed(11)
    w = ml.init_weights(cfg, dtype=torch.bfloat16, generator=gen)
    x = torch.randn(300, 256, generator=gen).to(torch.bfloat16)
    ids, wts = ml.route(x, w.router_ED, cfg)
    ref, _ = ml.reference_moe(x, w, cfg, topk_ids_TK=ids)
    wc = ml.MoEWeights(**{k: (None if v is None else v.cuda()) for k, v in vars(w).items()})
    return cfg, w, wc, x, ids, wts, ref


def kernel_module(name: str):
    """``kernels/<name>.py`` as the installed ``planner_kernels.<name>`` (or from the source tree)."""
    import importlib

    from planner.kernel_loader import load_kernels

    return importlib.import_module(f"{load_kernels().__name__}.{name}")


# Real routing recorded from trained models lies outside the repository (test data, not shipped):
# $MOE_PLANNER_REAL_TRACES, else ../shared/data/traces next to the checkout (where CI has it).
REAL_TRACES = Path(os.environ.get("MOE_PLANNER_REAL_TRACES", Path(__file__).resolve().parents[1].parent / "shared/data/traces"))


def real_trace_file(name: str) -> Path:
    """A real routing file by name; the test is skipped when the folder is absent."""
    p = REAL_TRACES / name
    if not p.is_file():
        pytest.skip(f"real trace {name} not found in {REAL_TRACES} (set MOE_PLANNER_REAL_TRACES)")
    return p


@pytest.fixture(scope="module")
def ds_trace_file(tmp_path_factory):
    """A small DeepSeek-V2-Lite trace file (384 tokens, one step, 6 ranks, no weights) written by
    ``moe-planner trace synth``: the offload and CLI tests' input."""
    p = tmp_path_factory.mktemp("tr") / "ds.npz"
    assert main(["trace", "synth", "--model", "deepseek-v2-lite", "--tokens", "384", "--tokens-per-step", "384",
                 "--ranks", "6", "--no-weights", "--out", str(p)]) == 0
    return p
