"""vLLM EplbState tensors and the vllm-ascend expert map."""

import json

import numpy as np
import pytest

from planner.errors import InputError
from planner.exports import export, import_placement
from planner.exports._common import logical_to_physical, phy2log_of


def test_matches_the_example_in_vllms_eplb_state_docstring():
    # vllm/distributed/eplb/eplb_state.py: 2 layers, 6 physical and 4 logical experts on 3 ranks
    p2l = np.array([[0, 1, 2, 3, 0, 1], [0, 2, 0, 1, 0, 3]])
    l2p, count = logical_to_physical(p2l, 4, 3)
    assert l2p.tolist() == [
        [[0, 4, -1], [1, 5, -1], [2, -1, -1], [3, -1, -1]],
        [[0, 2, 4], [3, -1, -1], [1, -1, -1], [5, -1, -1]],
    ]
    assert count.tolist() == [[2, 2, 1, 1], [3, 1, 1, 1]]


def test_tensors_shapes_padding_and_counts(plan_replicas, tmp_path):
    out = tmp_path / "eplb_state.npz"
    r = export(plan_replicas, "vllm", out)
    z = np.load(out)
    assert sorted(z.files) == ["logical_replica_count", "logical_to_physical_map", "physical_to_logical_map"]
    p2l, l2p, cnt = z["physical_to_logical_map"], z["logical_to_physical_map"], z["logical_replica_count"]
    assert all(a.dtype == np.int64 for a in (p2l, l2p, cnt))
    assert p2l.shape == (26, 72) and l2p.shape == (26, 64, 9) and cnt.shape == (26, 64)  # R + 1 = 9
    assert np.array_equal(p2l, phy2log_of(plan_replicas))
    assert np.array_equal(cnt, (l2p != -1).sum(-1))  # "exactly the non--1 count"
    assert cnt.sum(1).tolist() == [72] * 26
    for l in range(26):
        for e in range(64):
            slots = l2p[l, e, : cnt[l, e]]
            assert np.all(p2l[l, slots] == e) and np.all(np.diff(slots) > 0)
            assert np.all(l2p[l, e, cnt[l, e]:] == -1)
    assert r.flags == [
        "--enable-expert-parallel", "--tensor-parallel-size", "1", "--data-parallel-size", "8",
        "--enable-eplb", "--eplb-config", '{"num_redundant_experts": 8}',
    ]


def test_without_replicas_the_map_is_one_wide(plan_perm):
    r = export(plan_perm, "vllm")
    assert r.shapes()["logical_to_physical_map"] == [26, 64, 1]
    assert r.payload["logical_replica_count"].tolist() == [[1] * 64] * 26
    assert '{"num_redundant_experts": 0}' in r.flags


def test_inconsistent_maps_are_refused(plan_replicas, tmp_path):
    r = export(plan_replicas, "vllm")
    bad = dict(r.payload)
    cnt = bad["logical_replica_count"].copy()
    cnt[3, 5] += 1
    bad["logical_replica_count"] = cnt
    p = tmp_path / "bad.npz"
    np.savez(p, **bad)
    with pytest.raises(InputError, match=r"bad.npz: logical_replica_count\[3\]\[5\] is \d+, physical_to_logical_map gives expert 5"):
        import_placement(p, "vllm")
    np.savez(p, physical_to_logical_map=r.payload["physical_to_logical_map"])
    with pytest.raises(InputError, match="bad.npz: missing 'logical_to_physical_map'"):
        import_placement(p, "vllm")
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bad.npz: not a readable .npz file"):
        import_placement(p, "vllm")


def test_vllm_ascend_json_layout(plan_replicas_2n, tmp_path):
    out = tmp_path / "expert_map.json"
    r = export(plan_replicas_2n, "vllm-ascend", out)
    data = json.loads(out.read_text())
    assert data["moe_layer_count"] == 26 and len(data["layer_list"]) == 26
    layer = data["layer_list"][7]
    assert layer["layer_id"] == 7 and layer["device_count"] == 16
    assert [d["device_id"] for d in layer["device_list"]] == list(range(16))
    row = plan_replicas_2n.placement.physical_to_logical[7]
    assert layer["device_list"][3]["device_expert"] == row[15:20]  # rank 3 holds slots 15..19
    flat = [e for d in layer["device_list"] for e in d["device_expert"]]
    assert flat == row
    cfg = r.flags[r.flags.index("--additional-config") + 1]
    assert json.loads(cfg) == {"eplb_config": {"expert_map_path": str(out)}}


def test_vllm_ascend_bad_files(tmp_path):
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"moe_layer_count": 1, "layer_list": [
        {"layer_id": 0, "device_count": 2, "device_list": [
            {"device_id": 0, "device_expert": [0, 1]}, {"device_id": 1, "device_expert": [2]}]}]}))
    with pytest.raises(InputError, match=r"m.json: layer_list\[0\].device_list\[1\].device_expert has 1 experts, device 0 of layer 0 has 2"):
        import_placement(p, "vllm-ascend")
    p.write_text(json.dumps({"moe_layer_count": 2, "layer_list": []}))
    with pytest.raises(InputError, match=r"m.json: layer_list must be a list of moe_layer_count \(2\) layers \(got 0\)"):
        import_placement(p, "vllm-ascend")
