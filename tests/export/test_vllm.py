"""vLLM EplbState tensors and the vllm-ascend expert map."""

import json

import numpy as np
import pytest

from planner.errors import InputError
from planner.exports import export, import_placement, vllm
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


def test_the_file_is_the_physical_to_logical_map_update_mapping_takes(plan_replicas, tmp_path):
    # vLLM's EplbState.add_model allocates logical_to_physical_map 1024 wide (MAX_EXPERT_REDUNDANCY + 1)
    # and update_mapping derives it from physical_to_logical_map: an R+1-wide copy would not fit
    out = tmp_path / "eplb_state.npz"
    r = export(plan_replicas, "vllm", out)
    z = np.load(out)
    assert z.files == ["physical_to_logical_map"]
    p2l = z["physical_to_logical_map"]
    assert p2l.dtype == np.int64 and p2l.shape == (26, 72)
    assert np.array_equal(p2l, phy2log_of(plan_replicas))
    assert any("EplbState.update_mapping" in n and "compute_logical_maps" in n for n in r.notes)
    assert r.flags == [
        "--enable-expert-parallel", "--tensor-parallel-size", "1", "--data-parallel-size", "8",
        "--enable-eplb", "--eplb-config", '{"num_redundant_experts": 8}',
    ]


def test_docstring_names_vllms_current_api():
    import planner.exports.vllm as v

    assert "EplbState.build" not in v.__doc__
    assert "update_mapping" in v.__doc__ and "from_mapping" in v.__doc__ and "add_model" in v.__doc__


def test_without_replicas_the_count_is_zero(plan_perm):
    r = export(plan_perm, "vllm")
    assert r.shapes() == {"physical_to_logical_map": [26, 64]}
    assert '{"num_redundant_experts": 0}' in r.flags


def test_three_map_files_of_earlier_releases_still_read_and_must_agree(plan_replicas, tmp_path):
    p2l = phy2log_of(plan_replicas)
    l2p, cnt = logical_to_physical(p2l, 64, 9)
    p = tmp_path / "old.npz"
    np.savez(p, physical_to_logical_map=p2l, logical_to_physical_map=l2p, logical_replica_count=cnt)
    assert import_placement(p, "vllm", model="deepseek-v2-lite", ep=8).same_as(plan_replicas)
    cnt = cnt.copy()
    cnt[3, 5] += 1
    np.savez(p, physical_to_logical_map=p2l, logical_to_physical_map=l2p, logical_replica_count=cnt)
    with pytest.raises(InputError, match=r"old.npz: logical_replica_count\[3\]\[5\] is \d+, physical_to_logical_map gives expert 5"):
        import_placement(p, "vllm")
    np.savez(p, physical_to_logical_map=p2l, logical_replica_count=cnt)
    with pytest.raises(InputError, match="old.npz: missing 'logical_to_physical_map'"):
        import_placement(p, "vllm")
    np.savez(p, physical_to_logical_map=p2l[:, :70])
    with pytest.raises(InputError, match="not a multiple of ep"):
        import_placement(p, "vllm", ep=8)
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"old.npz: not a readable .npz file"):
        import_placement(p, "vllm")


def test_multi_node_lines_name_the_local_dp_size_and_the_head_address(plan_replicas_2n):
    f = export(plan_replicas_2n, "vllm").flags  # 2 nodes × 8 GPUs, dp 16 tp 1
    assert f[f.index("--data-parallel-size") + 1] == "16"
    assert f[f.index("--data-parallel-size-local") + 1] == "8"
    assert f[f.index("--data-parallel-address") + 1] == "HEAD_NODE_IP"
    assert "--data-parallel-rpc-port" in f
    notes = export(plan_replicas_2n, "vllm").notes
    assert any("--headless --data-parallel-start-rank n × 8" in n for n in notes)
    one = export(plan_replicas_2n.model_copy(update={"cluster": plan_replicas_2n.cluster.model_copy(update={"num_nodes": 1, "gpus_per_node": 16})}), "vllm")
    assert "--data-parallel-size-local" not in one.flags and "--data-parallel-address" not in one.flags


def _per_rank(phy2log, S):
    return phy2log.reshape(phy2log.shape[0], -1, S)


def test_vllm_ascend_swaps_same_rank_copies_apart(plan_replicas):
    # the EPLB baseline puts two copies of one expert on one rank in some layers (which ones
    # depends on the shipped trace); vllm-ascend would take that rank's distinct experts as the
    # slots per rank and shift every other rank's slots
    S = plan_replicas.placement.slots_per_gpu
    before = _per_rank(phy2log_of(plan_replicas), S)
    doubled = [(l, g) for l in range(26) for g in range(8) if len(np.unique(before[l, g])) < S]
    assert doubled, "the fixture no longer has a rank holding two copies of one expert"
    fixed, swaps = vllm.ascend_placement(plan_replicas)
    after = _per_rank(fixed, S)
    assert swaps > 0
    assert all(len(np.unique(after[l, g])) == S for l in range(26) for g in range(8))
    for l in range(26):  # a permutation of the same slots: every expert keeps its copy count
        assert np.array_equal(np.sort(fixed[l]), np.sort(phy2log_of(plan_replicas)[l]))
    assert (fixed != phy2log_of(plan_replicas)).sum() == 2 * swaps
    r = export(plan_replicas, "vllm-ascend")
    assert any(f"{swaps} slot swap(s)" in n for n in r.notes)
    flat = np.array([[e for d in layer["device_list"] for e in d["device_expert"]] for layer in r.payload["layer_list"]])
    assert np.array_equal(flat, fixed)


def test_vllm_ascend_refuses_more_copies_than_ranks(plan_replicas):
    row = [0] * 9 + list(range(1, 64)) * 1  # 72 slots: expert 0 nine times on 8 ranks
    bad = plan_replicas.model_copy(update={"placement": plan_replicas.placement.model_copy(
        update={"physical_to_logical": [row] * 26})})
    with pytest.raises(InputError, match=r"^vllm-ascend: MoE layer 0 holds 9 copies of expert 0 on 8 EP ranks"):
        export(bad, "vllm-ascend")


def test_vllm_ascend_flags_carry_the_redundant_count(plan_replicas, plan_perm, tmp_path):
    out = tmp_path / "m.json"
    f = export(plan_replicas, "vllm-ascend", out).flags
    cfg = json.loads(f[f.index("--additional-config") + 1])
    assert cfg == {"eplb_config": {"expert_map_path": str(out), "num_redundant_experts": 8}}
    f0 = export(plan_perm, "vllm-ascend").flags
    assert json.loads(f0[f0.index("--additional-config") + 1])["eplb_config"]["num_redundant_experts"] == 0


def test_vllm_ascend_json_layout(plan_replicas_2n, tmp_path):
    out = tmp_path / "expert_map.json"
    r = export(plan_replicas_2n, "vllm-ascend", out)
    data = json.loads(out.read_text())
    assert data["moe_layer_count"] == 26 and len(data["layer_list"]) == 26
    layer = data["layer_list"][7]
    assert layer["layer_id"] == 7 and layer["device_count"] == 16
    assert [d["device_id"] for d in layer["device_list"]] == list(range(16))
    row = vllm.ascend_placement(plan_replicas_2n)[0][7].tolist()
    assert layer["device_list"][3]["device_expert"] == row[15:20]  # rank 3 holds slots 15..19
    flat = [e for d in layer["device_list"] for e in d["device_expert"]]
    assert flat == row
    cfg = r.flags[r.flags.index("--additional-config") + 1]
    assert json.loads(cfg) == {"eplb_config": {"expert_map_path": str(out), "num_redundant_experts": 16}}


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
