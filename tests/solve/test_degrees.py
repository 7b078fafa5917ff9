import pytest

from planner.errors import InputError
from planner.solve.degrees import resolve_degrees
from planner.specs.cluster import ClusterSpec
from tests.conftest import make_model

NODE = ClusterSpec(hardware="h100-sxm", num_nodes=1, gpus_per_node=8)


def test_defaults_use_every_gpu_for_ep():
    par = resolve_degrees(make_model(), NODE)
    assert (par.dp, par.tp, par.pp, par.ep, par.etp) == (8, 1, 1, 8, 1)


def test_default_ep_falls_back_to_a_divisor_of_the_slots():
    # 6 experts on 8 GPUs: the largest ep dividing both 8 and 6 is 2
    par = resolve_degrees(make_model(num_experts=6, top_k=2), NODE)
    assert par.ep == 2


def test_ep_3_on_8_experts_says_why():
    with pytest.raises(InputError) as e:
        resolve_degrees(make_model(), NODE, ep=3)
    msg = str(e.value)
    assert "ep × etp (3 × 1 = 3) must divide the 8 GPUs" in msg and "valid ep: [1, 2, 4, 8]" in msg
    assert e.value.field == "ep" and e.value.for_flags().startswith("--ep × etp (3 × 1 = 3)")


def test_ep_must_divide_slots_with_redundancy():
    with pytest.raises(InputError, match=r"^ep 4 must divide the 8 experts \+ 2 redundant \(= 10\).*valid ep here: \[1, 2\]"):
        resolve_degrees(make_model(), NODE, ep=4, redundant=2)
    assert resolve_degrees(make_model(), NODE, ep=4, redundant=4).ep == 4


def test_tp_pp_and_dp_rules():
    par = resolve_degrees(make_model(), NODE, tp=2, pp=1)
    assert (par.dp, par.ep) == (4, 8)
    with pytest.raises(InputError, match=r"^tp × pp \(3 × 1 = 3\) must divide the cluster's 8 GPUs"):
        resolve_degrees(make_model(), NODE, tp=3)
    with pytest.raises(InputError, match=r"^dp × tp × pp × cp \(2 × 2 × 1 × 1 = 4\) must equal the cluster's GPUs \(1 × 8 = 8\)"):
        resolve_degrees(make_model(), NODE, dp=2, tp=2)
    with pytest.raises(InputError, match=r"^pp \(4\) must be <= the model's layers \(3\)"):
        resolve_degrees(make_model(), NODE, pp=4)
    with pytest.raises(InputError, match="^ep must be > 0"):
        resolve_degrees(make_model(), NODE, ep=0)


def test_etp_must_divide_expert_width():
    with pytest.raises(InputError, match=r"^etp \(8\) must divide the expert FFN width \(36\)"):
        resolve_degrees(make_model(expert_intermediate_size=36), NODE, ep=1, etp=8)
