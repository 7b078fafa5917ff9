"""The Megatron line: every argument spelled as Megatron-LM's arguments.py parses it, the model's
shape and the pipeline layout included (issue 19)."""

from pathlib import Path

import pytest

import planner
from planner.check import check_plan
from planner.exports.megatron import args, model_args
from planner.specs.degrees import pipeline_layout
from planner.specs.model_io import load_model

NAMES = {
    line.strip() for line in (Path(__file__).parent / "data" / "megatron_arguments.txt").read_text().splitlines()
    if line.startswith("--")
}


def flags(argv):
    return [a for a in argv if a.startswith("--")]


@pytest.fixture(scope="module")
def plan_fp8():
    """A training plan of the search, fp8, pipelined over an uneven split of 48 layers (pp 2, vpp 5)."""
    return planner.plan("qwen3-30b-a3b", nodes=2, mode="train", global_batch=512, tp=1, pp=2, vpp=5, ep=8,
                        micro_batch=2, cp=1, etp=1, train_dtype="fp8", time_limit=5)


def test_list_is_megatrons():
    assert len(NAMES) > 800 and "--tensor-model-parallel-size" in NAMES
    assert "--no-such-argument" not in NAMES


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-120b", "deepseek-v2-lite"])
def test_model_arguments_are_megatrons(name):
    m = load_model(name)
    argv = model_args(m, 4096)
    assert set(flags(argv)) <= NAMES, sorted(set(flags(argv)) - NAMES)
    for need in ("--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads", "--num-experts",
                 "--moe-router-topk", "--moe-ffn-hidden-size", "--seq-length", "--max-position-embeddings"):
        assert need in argv
    assert argv[argv.index("--num-layers") + 1] == str(m.num_layers)
    if name == "deepseek-v3":
        assert argv[argv.index("--mtp-num-layers") + 1] == "1"
        assert "--multi-latent-attention" in argv and argv[argv.index("--kv-lora-rank") + 1] == "512"
    if name == "qwen3-235b-a22b":
        assert argv[argv.index("--num-query-groups") + 1] == "4"


def test_layout_arguments_are_megatrons():
    for L, pp, vpp, mtp, first, last in [(94, 8, 4, 0, None, None), (61, 16, 1, 1, 4, 1), (61, 8, 4, 1, None, None),
                                         (32, 4, 8, 0, None, None), (94, 8, 1, 0, None, None), (61, 4, 1, 1, 16, 13)]:
        lay = pipeline_layout(L, pp, vpp, mtp=mtp, first=first, last=last)
        assert not isinstance(lay, str)
        assert set(flags(lay.megatron_args())) <= NAMES


def test_search_plan_line_is_megatrons(plan_fp8):
    argv = args(plan_fp8)
    assert set(flags(argv)) <= NAMES, sorted(set(flags(argv)) - NAMES)
    # 48 layers over pp 2 × vpp 5 cannot be even: the first/last split or a layout is written
    assert "--decoder-first-pipeline-num-layers" in argv or "--pipeline-model-parallel-layout" in argv
    assert "--num-layers-per-virtual-pipeline-stage" not in argv
    assert argv[argv.index("--fp8-format") + 1] == "e4m3" and "--fp8-param-gather" in argv
    assert "--bf16" in argv


def test_check_accepts_fp8_training_plan(plan_fp8):
    # issue 19: check priced a training plan's weights in the checkpoint's dtypes (bf16 here),
    # not the fp8 training dtype of the plan's memory figure, and rejected the search's own plan
    assert check_plan(plan_fp8) == []
