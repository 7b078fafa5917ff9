"""``two_batch_overlap`` and ``routing`` in prefill and decode planning (``plan --mode decode``):
the search prices its steps as told, the launch line follows, and other modes refuse them."""

import pytest

from planner.cost.serve_step import serve_step
from planner.errors import InputError
from planner.solve.parallel import check_serving_pricing, search_workload
from planner.solve.serve_imbalance import imbalance_at
from planner.specs.cluster import ClusterSpec
from planner.specs.model_io import load_model
from planner.specs.workload import Workload

FIXED = {"tp": 1, "pp": 1, "ep": 8, "etp": 1}


@pytest.fixture(scope="module")
def lite():
    return load_model("deepseek-v2-lite")


def _search(lite, hw, **kw):
    cluster = ClusterSpec(hardware=hw.name, num_nodes=1, gpus_per_node=8)
    w = Workload(mode="decode", seq_len=1024, batch=512, output_len=128)
    found, _ = search_workload(lite, hw, cluster, w, fixed=FIXED, **kw)
    return found


def test_routing_eplb_prices_the_busiest_gpu(lite, hw):
    uniform = _search(lite, hw)
    eplb = _search(lite, hw, routing="eplb")
    b = eplb.best
    assert (b.dp, b.ep) == (8, 8) and b.sequences == 512
    # the same step priced by hand at the factors derived for 64 tokens per GPU
    f = imbalance_at(lite, 8, 0, 64, "decode")
    want = serve_step(lite, hw, mode="decode", num_gpus=8, gpus_per_node=8, tp=1, pp=1, ep=8, sequences=512,
                      seq_len=1024 + 64, imbalance=f)
    assert b.step_ms == pytest.approx(want.step_ms, rel=1e-9)
    assert f[0] > 1.0 and b.step_ms > uniform.best.step_ms
    assert any(n.startswith("routing imbalance") for n in eplb.notes)
    assert not any(n.startswith("routing imbalance") for n in uniform.notes)


def test_two_batch_overlap_modes(lite, hw):
    off, on, auto = (_search(lite, hw, two_batch_overlap=x).best for x in ("off", "on", "auto"))
    assert not off.detail.get("two_batch_overlap") and on.detail.get("two_batch_overlap")
    assert off.step_ms != on.step_ms
    assert auto.step_ms == pytest.approx(min(off.step_ms, on.step_ms))


@pytest.mark.parametrize("mode", ["train", "offload"])
def test_other_modes_refuse_them(mode):
    with pytest.raises(InputError, match="routing prices serving steps"):
        check_serving_pricing(mode, None, "eplb")
    with pytest.raises(InputError, match="two_batch_overlap prices serving steps"):
        check_serving_pricing(mode, "on", None)


def test_bad_values_name_the_field():
    with pytest.raises(InputError, match="routing must be one of eplb, uniform"):
        check_serving_pricing("decode", None, "perfect")
    with pytest.raises(InputError, match="two_batch_overlap must be one of off, on, auto"):
        check_serving_pricing("prefill", "always", None)
