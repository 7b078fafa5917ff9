"""SGLang --init-expert-location: one row per hidden layer, dense rows trivial, flags."""

import json

import numpy as np
import pytest

from planner.errors import InputError
from planner.exports import export, import_placement, sglang
from planner.exports._common import phy2log_of
from tests.conftest import make_model


def test_one_row_per_hidden_layer_with_the_trivial_map_in_dense_layers(plan_replicas, tmp_path):
    out = tmp_path / "loc.json"
    export(plan_replicas, "sglang", out)
    data = json.loads(out.read_text())
    assert list(data) == ["physical_to_logical_map"]  # SGLang reads exactly this one key
    m = np.asarray(data["physical_to_logical_map"])
    assert m.shape == (27, 72)  # num_hidden_layers × (64 experts + 8 redundant)
    assert np.array_equal(m[0], np.arange(72) % 64)  # layer 0 is dense (first_k_dense_replace = 1)
    assert np.array_equal(m[1:], np.asarray(plan_replicas.placement.physical_to_logical))


def test_interleaved_dense_layers_land_in_their_rows():
    model = make_model(num_layers=6, first_k_dense=1, moe_layer_freq=2, dense_intermediate_size=16)
    assert model.moe_layer_indices == [1, 3, 5]
    moe = np.array([[1, 0, 3, 2, 4, 5, 6, 7, 0, 1]] * 3)
    full = sglang.all_layers_map(moe, model)
    assert full.shape == (6, 10)
    assert np.array_equal(full[[1, 3, 5]], moe)
    for dense in (0, 2, 4):
        assert full[dense].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]


def test_a_model_without_dense_layers_has_only_moe_rows(plan_qwen):
    r = export(plan_qwen, "sglang")
    assert r.shapes() == {"physical_to_logical_map": [48, 128]}
    assert np.array_equal(r.payload["physical_to_logical_map"], phy2log_of(plan_qwen))
    assert not any("dense" in n for n in r.notes)


def test_flags_name_the_file_ep_size_and_redundant_experts(plan_replicas, plan_replicas_2n, tmp_path):
    r = export(plan_replicas, "sglang", tmp_path / "loc.json")
    f = r.flags
    assert f[f.index("--init-expert-location") + 1] == str(tmp_path / "loc.json")
    assert f[f.index("--ep-size") + 1] == "8"
    assert f[f.index("--ep-num-redundant-experts") + 1] == "8"
    assert "1 dense layer(s) (layer 0)" in r.notes[0]
    f2 = export(plan_replicas_2n, "sglang").flags
    assert f2[f2.index("--ep-size") + 1] == "16"
    assert f2[f2.index("--ep-num-redundant-experts") + 1] == "16"
    assert f2[f2.index("--nnodes") + 1] == "2"


def test_import_with_and_without_a_model(plan_replicas, tmp_path):
    out = tmp_path / "loc.json"
    export(plan_replicas, "sglang", out)
    every = import_placement(out, "sglang")  # no model: every row, as in the file
    assert every.phy2log_LP.shape == (27, 72) and every.slots_per_gpu is None
    moe = import_placement(out, "sglang", model="deepseek-v2-lite", ep=8)
    assert moe.phy2log_LP.shape == (26, 72) and moe.slots_per_gpu == 9
    # a map over MoE layers only is accepted as well
    only = tmp_path / "moe.json"
    only.write_text(json.dumps({"physical_to_logical_map": moe.phy2log_LP.tolist()}))
    assert import_placement(only, "sglang", model="deepseek-v2-lite").same_as(plan_replicas)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"logical_count": [[1, 2]]}, "no 'physical_to_logical_map' key (found logical_count"),
        ({"physical_to_logical_map": [[0, 1]], "x": 1}, "unexpected key 'x'"),
        ({"physical_to_logical_map": [[0, 1], [0]]}, "rectangular array of integers"),
        ({"physical_to_logical_map": [[0, -1]]}, "holds -1: expert ids must be >= 0"),
        ({"physical_to_logical_map": [[0.5, 1]]}, "must hold integers"),
        ([1, 2], "expected an object"),
    ],
)
def test_bad_files_give_one_line_naming_the_file(tmp_path, content, message):
    p = tmp_path / "loc.json"
    p.write_text(json.dumps(content))
    with pytest.raises(InputError, match="^loc.json: ") as e:
        import_placement(p, "sglang")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_pt_file_holds_one_int64_tensor(plan_replicas, tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "loc.pt"
    export(plan_replicas, "sglang", out)
    d = torch.load(out, weights_only=True)  # how SGLang reads it
    assert list(d) == ["physical_to_logical_map"]
    assert d["physical_to_logical_map"].dtype == torch.int64
    assert tuple(d["physical_to_logical_map"].shape) == (27, 72)


def _value(flags, name):
    return flags[flags.index(name) + 1] if name in flags else None


def test_static_dispatch_is_printed_only_with_deepep(plan_replicas_2n):
    # SGLang refuses --ep-dispatch-algorithm static without an all-to-all backend
    # (handle_eplb_and_dispatch: "static picks a different physical replica per rank ...")
    for dispatch, algo, a2a in [("static", "static", "deepep"), ("nearest", "dynamic", "deepep"),
                                ("local-first", "dynamic", "deepep"), ("even", "dynamic", None)]:
        f = export(plan_replicas_2n.model_copy(update={"dispatch": dispatch}), "sglang").flags
        assert (_value(f, "--ep-dispatch-algorithm"), _value(f, "--moe-a2a-backend")) == (algo, a2a), dispatch
        if _value(f, "--ep-dispatch-algorithm") == "static":
            assert _value(f, "--moe-a2a-backend") == "deepep"


def test_notes_say_what_sglang_does_with_each_dispatch(plan_replicas_2n):
    even = export(plan_replicas_2n, "sglang")
    assert any("re-plan with --dispatch static" in n and "without DeepEP's all-to-all" in n for n in even.notes)
    near = export(plan_replicas_2n.model_copy(update={"dispatch": "nearest"}), "sglang")
    assert any("dynamic dispatch under deepep" in n for n in near.notes)
    static = export(plan_replicas_2n.model_copy(update={"dispatch": "static"}), "sglang")
    assert not any("re-plan" in n or "dynamic dispatch" in n for n in static.notes)


def test_without_redundant_slots_deepep_alone(plan_perm_2n):
    f = export(plan_perm_2n, "sglang").flags
    assert _value(f, "--moe-a2a-backend") == "deepep" and "--ep-dispatch-algorithm" not in f


def test_multi_node_lines_name_the_node_rank_and_the_head_address(plan_replicas, plan_replicas_2n):
    r = export(plan_replicas_2n, "sglang")
    f = r.flags
    assert _value(f, "--nnodes") == "2" and _value(f, "--node-rank") == "0"
    assert _value(f, "--dist-init-addr") == "HEAD_NODE_IP:5000"
    assert any("--node-rank 0 … 1" in n for n in r.notes)
    one = export(plan_replicas, "sglang").flags
    assert "--nnodes" not in one and "--node-rank" not in one and "--dist-init-addr" not in one
