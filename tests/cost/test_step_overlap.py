"""Megatron's combined 1F1B (EP all-to-all overlap): the paired-layer windows, the share of passes
paired, the layouts Megatron refuses, the step and memory it changes, and the search, plan and
Megatron line that carry it."""

import pytest

from planner.cost.memory import training_memory
from planner.cost.step import (
    OVERLAP_GEMM_SLOWDOWN,
    StepModel,
    alltoall_ms,
    overlap_problem,
    paired_fraction,
    paired_layer_ms,
)
from planner.errors import InputError
from planner.solve.parallel import search
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import load_hardware
from planner.specs.model_io import load_model

G = OVERLAP_GEMM_SLOWDOWN


@pytest.fixture(scope="module")
def hw():
    return load_hardware("h100-sxm")


def test_paired_layer_by_hand():
    # four windows, each the longer of its compute node (slowed by G where the all-to-all runs
    # beside it) and one all-to-all phase
    assert paired_layer_ms(1.0, 2.0, 3.0, 4.0, 0.0) == pytest.approx(10.0)
    # all-to-all shorter than every node: hidden; each node slowed by G for the 0.5 ms it shares
    assert paired_layer_ms(1.0, 2.0, 3.0, 4.0, 0.5) == pytest.approx(10.0 + 4 * G * 0.5)
    # all-to-all of 2.5 ms: windows max(1 + G, 2.5) + max(4 + 2.5G, 2.5) + max(2 + 2G, 2.5) + max(3 + 2.5G, 2.5)
    want = 2.5 + (4 + 2.5 * G) + max(2 + 2 * G, 2.5) + (3 + 2.5 * G)
    assert paired_layer_ms(1.0, 2.0, 3.0, 4.0, 2.5) == pytest.approx(want)
    # never longer than running the eight nodes one after another while G < 1
    assert paired_layer_ms(1.0, 2.0, 3.0, 4.0, 2.5) < 10.0 + 4 * 2.5


def test_paired_fraction_by_hand():
    assert paired_fraction(1, 1, 8) == pytest.approx(7 / 8)  # the first forward runs alone
    assert paired_fraction(1, 1, 1) == 0.0  # one micro-batch: nothing to pair
    # pp 4, vpp 2, m 16: 32 chunk forwards, warm-up 2·3 + 1·4 + 1 = 11
    assert paired_fraction(4, 2, 16) == pytest.approx(21 / 32)
    assert paired_fraction(8, 4, 2) == 0.0  # warm-up takes every pass


def test_layouts_megatron_refuses():
    assert overlap_problem(ep=1, pp=1, vpp=1, mtp_layers=0) is not None
    assert "vpp > 1" in overlap_problem(ep=8, pp=4, vpp=1, mtp_layers=0)
    assert "MTP" in overlap_problem(ep=8, pp=1, vpp=1, mtp_layers=2)
    assert overlap_problem(ep=8, pp=4, vpp=2, mtp_layers=1) is None


def test_step_hides_the_paired_share_of_the_all_to_all(hw):
    m = load_model("qwen3-30b-a3b")
    sm = StepModel(m, hw, 8)
    kw = dict(num_gpus=16, tp=1, pp=1, ep=16, micro_batch=1, global_batch=128, seq_len=4096, recompute="none")
    off = sm.train_step(**kw)
    on = sm.train_step(**kw, a2a_overlap=True)
    mbs = 128 // 16
    saved = sm._a2a_hidden(1, 1, 1, 4096, 16, 1, "pairs")
    assert 0.0 < saved < 4 * alltoall_ms(hw, m, 4096, 16, 1, 8, "pairs")  # at most the four phases
    # pp 1: every MoE layer of the (m − 1) paired micro-batches saves `saved`
    assert off.step_ms - on.step_ms == pytest.approx((mbs - 1) * m.num_moe_layers * saved)
    assert on.parts["a2a_paired_fraction"] == pytest.approx((mbs - 1) / mbs)
    assert on.parts["a2a_hidden_ms"] == pytest.approx(off.step_ms - on.step_ms)
    # no expert parallelism, or pp > 1 without virtual stages: Megatron refuses, so does the model
    with pytest.raises(InputError, match="ep > 1"):
        sm.train_step(**{**kw, "ep": 1}, a2a_overlap=True)
    with pytest.raises(InputError, match="vpp > 1"):
        sm.train_step(**{**kw, "pp": 2}, a2a_overlap=True)


def test_pairing_never_slower_than_running_alone():
    # with the slow-down below 1, each window max(x + G·min(x, c), c) <= x + c
    for nodes in ((1.0, 2.0, 3.0, 4.0), (0.1, 0.1, 0.2, 0.2), (5.0, 0.5, 5.0, 1.0)):
        for c in (0.0, 0.01, 0.3, 1.0, 7.0):
            assert paired_layer_ms(*nodes, c) <= sum(nodes) + 4 * c + 1e-12
    assert paired_layer_ms(1.0, 2.0, 3.0, 4.0, 0.01) == pytest.approx(10.0 + 4 * G * 0.01)


def test_memory_holds_one_more_chunk(hw):
    m = load_model("qwen3-30b-a3b")
    kw = dict(slots_per_gpu=16, tp=1, pp=4, dp=8, ep=8, vpp=2, seq_len=4096, micro_batch=1, num_microbatches=16,
              recompute="none")
    off = training_memory(m, **kw).activations
    on = training_memory(m, **kw, a2a_overlap=True).activations
    # rank 0 holds 4 micro-batches × (1 + 3/8) interleaved; one more chunk is 1/vpp of a micro-batch
    per_mb = off / (4 * (1 + 3 / 8))
    assert on - off == pytest.approx(per_mb / 2)


def test_search_modes_plan_and_megatron_line(hw):
    from planner.exports.megatron import args as megatron_args

    m = load_model("qwen3-30b-a3b")
    cl = ClusterSpec(hardware="h100-sxm", num_nodes=2, gpus_per_node=8)
    fixed = dict(tp=1, pp=1, ep=16, cp=1, micro_batch=1, recompute="none")
    off = search(m, hw, cl, global_batch=128, fixed=fixed)
    on = search(m, hw, cl, global_batch=128, fixed=fixed, a2a_overlap="on")
    auto = search(m, hw, cl, global_batch=128, fixed=fixed, a2a_overlap="auto")
    assert not off.best.a2a_overlap and on.best.a2a_overlap
    assert auto.best.step_ms == pytest.approx(min(off.best.step_ms, on.best.step_ms))
    assert any("combined 1F1B" in n for n in on.notes)
    with pytest.raises(InputError, match="a2a_overlap must be one of"):
        search(m, hw, cl, global_batch=128, fixed=fixed, a2a_overlap="yes")
    with pytest.raises(InputError, match="applies to mode train"):
        search(m, hw, cl, mode="decode", fixed=dict(tp=1), a2a_overlap="on")
    # "on" where Megatron cannot run it (pp 2 without virtual stages): priced without, and said so
    no = search(m, hw, cl, global_batch=128, fixed=dict(fixed, pp=2, ep=8, vpp=1), a2a_overlap="on")
    assert not no.best.a2a_overlap and any("not for this layout" in n for n in no.notes)

    import planner

    plan = planner.plan(model="qwen3-30b-a3b", hardware="h100-sxm", nodes=2, mode="train", global_batch=128, tp=1,
                        pp=1, ep=16, cp=1, micro_batch=1, recompute="none", a2a_overlap="on")
    assert plan.search.chosen.a2a_overlap is True
    line = megatron_args(plan)
    assert "--overlap-moe-expert-parallel-comm" in line
    plain = planner.plan(model="qwen3-30b-a3b", hardware="h100-sxm", nodes=2, mode="train", global_batch=128, tp=1,
                         pp=1, ep=16, cp=1, micro_batch=1, recompute="none")
    assert "--overlap-moe-expert-parallel-comm" not in megatron_args(plain)
    assert plain.search.chosen.a2a_overlap is False
    # check: a plan priced with the overlap on degrees Megatron refuses it for
    from planner.check import check_plan

    assert check_plan(plan) == []
    raw = plan.model_dump(mode="json")
    raw["search"]["chosen"]["ep"] = raw["parallel"]["ep"] = 1
    raw["parallel"]["dp"] = 16
    assert any(p.startswith("search.chosen.a2a_overlap: a2a_overlap needs ep > 1") for p in check_plan(raw))
