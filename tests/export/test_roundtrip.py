"""export → import_placement gives back the plan's placement, for every format and encoding."""

import numpy as np
import pytest

from planner.errors import InputError
from planner.exports import FORMATS, export, import_placement, vllm
from planner.exports._common import phy2log_of

NO_TORCH = [("sglang", ".json"), ("vllm", ".npz"), ("vllm-ascend", ".json"), ("eplb", ".npz"),
            ("megatron", ".json"), ("megatron", ".txt")]
TORCH = [("sglang", ".pt"), ("vllm", ".pt"), ("eplb", ".pt")]
PLANS = ["plan_replicas", "plan_replicas_2n", "plan_perm", "plan_perm_2n"]


def _roundtrip(plan, to, suffix, tmp_path):
    out = tmp_path / f"placement{suffix}"
    export(plan, to, out)
    ep = None if to in ("vllm-ascend", "megatron") else plan.parallel.ep
    return import_placement(out, to, model=plan.model, ep=ep)


@pytest.mark.parametrize("plan_name", PLANS)
@pytest.mark.parametrize("to, suffix", NO_TORCH)
def test_export_then_import_gives_the_same_placement(request, plan_name, to, suffix, tmp_path):
    plan = request.getfixturevalue(plan_name)
    has_replicas = plan.parallel.ep * plan.placement.slots_per_gpu > plan.model.num_experts
    if to == "megatron" and has_replicas:
        out = tmp_path / f"m{suffix}"
        export(plan, to, out)
        with pytest.raises(InputError, match="holds no expert permutation"):
            import_placement(out, to)
        return
    imp = _roundtrip(plan, to, suffix, tmp_path)
    want = np.asarray(plan.placement.physical_to_logical)
    if to == "vllm-ascend":  # same-rank copies swapped apart (planner.exports.vllm.ascend_placement)
        want, swaps = vllm.ascend_placement(plan)
        assert (swaps > 0) == (not np.array_equal(want, phy2log_of(plan)))
    assert imp.phy2log_LP.dtype == np.int64
    assert np.array_equal(imp.phy2log_LP, want)
    assert imp.slots_per_gpu == plan.placement.slots_per_gpu
    assert imp.same_as(plan) == np.array_equal(want, phy2log_of(plan))


@pytest.mark.parametrize("plan_name", ["plan_replicas", "plan_perm_2n"])
@pytest.mark.parametrize("to, suffix", TORCH)
def test_pt_roundtrip(request, plan_name, to, suffix, tmp_path):
    pytest.importorskip("torch")
    plan = request.getfixturevalue(plan_name)
    imp = _roundtrip(plan, to, suffix, tmp_path)
    assert np.array_equal(imp.phy2log_LP, phy2log_of(plan))
    assert imp.slots_per_gpu == plan.placement.slots_per_gpu


def test_the_fixture_plans_cover_what_the_roundtrips_claim(plan_replicas, plan_replicas_2n, plan_perm, plan_perm_2n):
    # replicas present / absent, one node / two nodes, and a placement that is not the identity
    assert (plan_replicas.parallel.ep, plan_replicas.placement.slots_per_gpu) == (8, 9)
    assert (plan_replicas_2n.cluster.num_nodes, plan_replicas_2n.parallel.ep, plan_replicas_2n.placement.slots_per_gpu) == (2, 16, 5)
    assert (plan_perm.parallel.ep, plan_perm.placement.slots_per_gpu) == (8, 8)
    assert (plan_perm_2n.parallel.ep, plan_perm_2n.placement.slots_per_gpu) == (16, 4)
    identity = np.tile(np.arange(64), (26, 1))
    assert not np.array_equal(phy2log_of(plan_perm), identity)
    assert not np.array_equal(phy2log_of(plan_perm_2n), identity)


def test_import_without_ep_leaves_slots_unknown(plan_replicas, tmp_path):
    out = tmp_path / "p.npz"
    export(plan_replicas, "eplb", out)
    imp = import_placement(out, "eplb")
    assert imp.slots_per_gpu is None
    assert imp.phy2log_LP.shape == (26, 72)
    assert imp.same_as(plan_replicas)  # unknown slots do not contradict the plan


@pytest.mark.parametrize("to, suffix", NO_TORCH)
def test_a_file_for_another_model_is_refused(plan_replicas, plan_perm, to, suffix, tmp_path):
    plan = plan_perm if to == "megatron" else plan_replicas
    out = tmp_path / f"p{suffix}"
    export(plan, to, out)
    with pytest.raises(InputError, match=r"qwen3-30b-a3b|another model"):
        import_placement(out, to, model="qwen3-30b-a3b")


def test_out_refuses_to_overwrite_without_force(plan_replicas, tmp_path):
    out = tmp_path / "p.json"
    out.write_text("keep me")
    with pytest.raises(InputError, match=r"already exists \(pass `force` to overwrite\)") as e:
        export(plan_replicas, "sglang", out)
    assert e.value.for_flags().endswith("already exists (pass --force to overwrite)")
    assert out.read_text() == "keep me"
    export(plan_replicas, "sglang", out, force=True)
    assert out.read_text().startswith('{"physical_to_logical_map":')


def test_a_failing_export_writes_nothing(plan_replicas, tmp_path):
    # wrong suffix for the format: refused before anything is built or written
    with pytest.raises(InputError, match=r"p\.csv: `to` vllm writes \.pt or \.npz files \(got '\.csv'\)") as e:
        export(plan_replicas, "vllm", tmp_path / "p.csv")
    assert e.value.for_flags() == "p.csv: --to vllm writes .pt or .npz files (got '.csv')"
    # a plan Megatron cannot express (interleaving without a pipeline) fails while building
    bad = plan_replicas.model_copy(update={"parallel": plan_replicas.parallel.model_copy(update={"vpp": 4})})
    with pytest.raises(InputError, match=r"vpp 4 needs pp > 1"):
        export(bad, "megatron", tmp_path / "m.json")
    assert list(tmp_path.iterdir()) == []  # no file, no temporary left behind


def test_unknown_format_is_one_clear_line(plan_replicas):
    with pytest.raises(InputError, match=r"^to must be one of sglang, vllm, vllm-ascend, eplb, megatron \(got 'trtllm'\)") as e:
        export(plan_replicas, "trtllm")
    assert e.value.for_flags().startswith("--to must be one of sglang, vllm, vllm-ascend, eplb, megatron (got 'trtllm')")
    assert FORMATS == ("sglang", "vllm", "vllm-ascend", "eplb", "megatron")


def test_export_without_out_writes_nothing_and_returns_the_payload(plan_replicas, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = export(plan_replicas, "vllm")
    assert r.path is None and list(tmp_path.iterdir()) == []
    assert r.shapes() == {"physical_to_logical_map": [26, 72]}


def test_export_accepts_a_plan_file(plan_perm, tmp_path):
    plan_perm.save(tmp_path / "plan.json")
    r = export(tmp_path / "plan.json", "eplb", tmp_path / "e.npz")
    assert np.array_equal(r.payload["phy2log"], phy2log_of(plan_perm))


def test_planner_export_is_the_function_before_and_after_the_package_is_imported(plan_perm, tmp_path):
    import subprocess
    import sys

    import planner
    import planner.exports  # noqa: F401  (binding the package must not shadow the function)

    r = planner.export(plan_perm, to="eplb", out=tmp_path / "a.npz")
    assert np.array_equal(r.payload["phy2log"], phy2log_of(plan_perm))
    assert planner.export(plan_perm, to="megatron").payload["permutation"]["perm"] == plan_perm.placement.physical_to_logical
    assert "export" in planner.__all__
    code = (
        "import planner, planner.specs.plan as sp, sys;"
        f"p = sp.Plan.load({str(tmp_path / 'plan.json')!r});"
        "r = planner.export(p, to='vllm');"  # the very first use goes through the lazy lookup
        "print(r.shapes()['physical_to_logical_map'])"
    )
    plan_perm.save(tmp_path / "plan.json")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[26, 64]"  # 26 MoE layers × 64 slots


@pytest.mark.parametrize("to", ["sglang", "vllm", "eplb"])
def test_pt_without_torch_is_a_clear_error_and_writes_nothing(plan_replicas, tmp_path, monkeypatch, to):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(InputError, match=r"^p\.pt: writing \.pt files needs torch \(pip install 'moe-planner\[torch\]'\); or write \.(json|npz)$"):
        export(plan_replicas, to, tmp_path / "p.pt")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "q.pt").write_bytes(b"x")
    with pytest.raises(InputError, match=r"^q\.pt: reading \.pt files needs torch"):
        import_placement(tmp_path / "q.pt", to)


def test_out_that_is_a_folder_or_unwritable_is_one_line(plan_replicas, tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(InputError, match=r"d\.json: is a folder; `out` takes a file name") as e:
        export(plan_replicas, "sglang", tmp_path / "d.json", force=True)
    assert e.value.for_flags().endswith("d.json: is a folder; --out takes a file name")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"x\.json: cannot write"):
        export(plan_replicas, "sglang", blocker / "x.json")  # a file where a folder should be
