"""Uneven pipeline layouts Megatron-core runs, and the search planning published layouts as
published (issue 19)."""

import re

import pytest

from planner.cost.step import StepModel
from planner.solve.parallel import search
from planner.specs.cluster import ClusterSpec
from planner.specs.degrees import pipeline_layout
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model


def expand(layout: str) -> list[str]:
    """A --pipeline-model-parallel-layout string unrolled (Megatron's syntax: (…)*n, x*n, '|')."""
    s = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), layout)
    s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
    return s.split("|")


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def test_94_layers_over_8_by_4_virtual_stages_by_hand():
    lay = pipeline_layout(94, 8, 4)
    # 94 = 2 (mod 4): no first/last split Megatron accepts (each a multiple of vpp 4, the middle
    # ranks' layers too), so a layout string: embedding + loss count one layer each, 96 units
    # over 32 virtual stages = 3 each
    assert lay.kind == "layout"
    assert lay.chunks == (2,) + (3,) * 30 + (2,)
    assert [lay.rank_layers(r) for r in range(8)] == [11, 12, 12, 12, 12, 12, 12, 11]
    assert lay.rank_ranges(0) == [(0, 2), (23, 26), (47, 50), (71, 74)]  # chunks 0, 8, 16, 24
    s = lay.string()
    assert s == "Et*2|(t*3|)*30t*2L"
    stages = expand(s)
    assert len(stages) == 32 and "".join(stages).count("t") == 94
    assert stages[0] == "Ett" and stages[-1] == "ttL"
    assert lay.megatron_args() == ["--pipeline-model-parallel-layout", s]


def test_61_layers_with_mtp_by_hand():
    # pp 16: 61 = first + 14 × 4 + last; embedding on the first, loss and the MTP layer on the last
    lay = pipeline_layout(61, 16, 1, mtp=1)
    assert (lay.kind, lay.first, lay.last) == ("first-last", 3, 2)  # units 3+1, 4 × 14, 2+1+1
    assert lay.megatron_args() == ["--decoder-first-pipeline-num-layers", "3", "--decoder-last-pipeline-num-layers", "2"]
    # the Megatron-MoE-ModelZoo's DeepSeek-V3 split (PP_FIRST 4, PP_LAST 1), as fixed by a user
    pub = pipeline_layout(61, 16, 1, mtp=1, first=4, last=1)
    assert [pub.rank_layers(r) for r in range(16)] == [4] + [4] * 14 + [1]
    # pp 8 × vpp 4: the ModelZoo's "Et|(tt|)*30mL"
    v = pipeline_layout(61, 8, 4, mtp=1)
    assert expand(v.string()) == expand("Et|(tt|)*30mL")
    assert "".join(expand(v.string())).count("m") == 1


def test_first_last_rule_is_megatrons():
    assert "divisible by vpp" in pipeline_layout(61, 4, 2, first=16, last=13)
    assert "middle pipeline ranks" in pipeline_layout(61, 16, 1, first=4, last=2)
    assert isinstance(pipeline_layout(61, 16, 1, first=4, last=1), type(pipeline_layout(32, 4)))
    assert pipeline_layout(32, 4, 8).kind == "even"  # divisible: Megatron's default, no layout argument
    assert pipeline_layout(3, 4) == "pp (4) must be <= the model's layers (3)"


def test_stage_times_by_hand(hw):
    m = load_model("deepseek-v3")
    sm = StepModel(m, hw, 8)
    # rank layers of the published split: 4 (3 dense + 1 MoE), 4 MoE × 14, 1 MoE + MTP + head
    t = sm._stage_times(16, 1, 4, 1, t_moe=10.0, t_dense=7.0, head=5.0, embed=0.5, mtp=13.0)
    assert t == [3 * 7.0 + 10.0 + 0.5] + [40.0] * 14 + [10.0 + 5.0 + 13.0]
    even = sm._stage_times(16, 1, None, None, t_moe=10.0, t_dense=7.0, head=5.0, embed=0.5, mtp=13.0)
    assert even[0] == 3 * 7.0 + 0.5 and even[-1] == 2 * 10.0 + 5.0 + 13.0  # first 3, last 2


def test_published_layouts_plannable_as_published(hw):
    # Qwen3-235B on 256 H100, TP2 PP8 VPP4 EP32 (Megatron-MoE-ModelZoo): was refused twice
    # ("ep × etp spans more than one node", then "pp × vpp (8 × 4) must divide the 94 layers")
    q = load_model("qwen3-235b-a22b")
    r = search(q, hw, ClusterSpec(hardware="h100-sxm", num_nodes=32, gpus_per_node=8), mode="train",
               global_batch=2048, fixed=dict(tp=2, pp=8, vpp=4, ep=32, etp=1, cp=1, micro_batch=1))
    assert (r.best.tp, r.best.pp, r.best.vpp, r.best.ep) == (2, 8, 4, 32)
    assert any("--pipeline-model-parallel-layout Et*2|(t*3|)*30t*2L" in n for n in r.notes)
    assert any("spans 4 nodes" in n for n in r.notes)
    # DeepSeek-V3 on 1024 H100, PP16 EP64 with the published first/last split and its MTP layer
    d = load_model("deepseek-v3")
    r = search(d, hw, ClusterSpec(hardware="h100-sxm", num_nodes=128, gpus_per_node=8), mode="train",
               global_batch=8192, fixed=dict(tp=1, pp=16, vpp=1, ep=64, etp=1, cp=1, micro_batch=1, pp_first=4, pp_last=1),
               dispatcher="deepep")
    assert (r.best.pp_first, r.best.pp_last) == (4, 1) and r.best.tflops_per_gpu > 0
    assert any("first 4, last 1" in n and "+1 MTP" in n for n in r.notes)


def test_fixed_tp_across_nodes_training_only(hw):
    # training honours a fixed TP spanning nodes (with a note); serving keeps its in-node TP rule
    from planner.errors import InputError

    m = load_model("deepseek-v2-lite")  # 16 heads (MLA)
    two = ClusterSpec(hardware="h100-sxm", num_nodes=2, gpus_per_node=8)
    r = search(m, hw, two, mode="train", global_batch=64, fixed=dict(tp=16, ep=1))
    assert r.best.tp == 16 and any("tp 16 as fixed spans nodes" in n for n in r.notes)
    with pytest.raises(InputError, match="tp 16 spans more than one node"):
        search(m, hw, two, mode="decode", seq_len=1024, fixed=dict(tp=16, ep=1))
