"""The EP-sharded layer over real torch.distributed (gloo on CPU) against the unsharded layer.

Two multi-process runs (2 ranks through the CLI, 4 ranks through the API, with replicas and
shared experts) and in-process checks of the pieces on a one-rank gloo group."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from planner.api import plan  # noqa: E402
from planner.cli import main  # noqa: E402
from planner.errors import InputError  # noqa: E402
from tests.conftest import kernel_module, make_model  # noqa: E402


@pytest.fixture(scope="module")
def dk():
    return kernel_module("distributed")


def _replicated(p):
    p2l = np.asarray(p.placement.physical_to_logical)
    return (np.array([np.bincount(row, minlength=p.model.num_experts).max() for row in p2l]) > 1).any()


def test_two_ranks_through_the_cli(tmp_path, capsys):
    p = plan(make_model(num_shared_experts=1), ep=2, redundant_experts=2, baseline="eplb")
    assert _replicated(p) and p.placement.slots_per_gpu == 5
    path = tmp_path / "plan.json"
    p.save(path)
    out = tmp_path / "rep.json"
    args = ["validate", "--plan", str(path), "--world-size", "2", "--device", "cpu", "--dtype", "float64",
            "--layers", "2", "--warmup", "0", "--reps", "1", "--json", "--out", str(out)]
    assert main(args) == 0
    rep = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == rep
    assert rep["world_size"] == 2 and rep["dist_backend"] == "gloo" and rep["passed"]
    assert rep["max_abs_err"] < 1e-5 and rep["max_abs_err_vs_float64"] < 1e-12
    assert rep["rows_match_dispatch"] and all(c["dispatch_matches_plan"] for c in rep["cases"])
    assert [c["layer"] for c in rep["cases"]] == [0, 2] and len(rep["per_rank"]) == 2
    for c in rep["cases"]:
        assert sum(r["source_tokens"] for r in c["ranks"]) == c["tokens"] > 0
        assert sum(sum(r["rows_per_slot"]) for r in c["ranks"]) == c["tokens"] * p.model.top_k
    assert all(r["dispatch_ms"] > 0 and r["compute_ms"] > 0 for r in rep["per_rank"])
    # --world-size must be the plan's ep
    assert main(["validate", "--plan", str(path), "--world-size", "4", "--device", "cpu"]) == 2
    assert "must equal the plan's ep (2)" in capsys.readouterr().err


def test_four_ranks_with_replicas_shared_experts_and_p2p():
    from planner.validate_dist import validate_distributed

    p = plan(make_model(num_shared_experts=1), ep=4, redundant_experts=4, baseline="eplb", dispatch="local-first")
    assert _replicated(p)
    rep = validate_distributed(p, world_size=4, device="cpu", dtype="float32", a2a="p2p", warmup=0, reps=1,
                               max_tokens=24)
    assert rep["passed"] and rep["max_abs_err"] < 1e-5 and rep["max_abs_err_vs_float64"] < 1e-4
    assert "isend/irecv" in rep["all_to_all"] and rep["rows_match_dispatch"]
    (case,) = rep["cases"]
    assert case["tokens"] == 24 and case["dispatch_matches_plan"] is None  # capped: not the plan's counts
    assert len(case["ranks"]) == 4 and all(r["max_abs_output"] > 0.01 for r in case["ranks"])  # not a zero layer


def test_bad_options():
    from planner.validate_dist import validate_distributed

    p = plan(make_model(), ep=4)
    # the library names the field; the CLI shows its flag (InputError.for_flags)
    with pytest.raises(InputError) as info:
        validate_distributed(p, world_size=2)
    assert "--world-size (2) must equal the plan's ep (4)" in info.value.for_flags()
    with pytest.raises(InputError) as info:
        validate_distributed(p, world_size=4, dtype="int8")
    assert "--dtype must be one of" in info.value.for_flags()
    with pytest.raises(InputError) as info:
        validate_distributed(p, world_size=4, tol=0.0)
    assert "--tol must be > 0" in info.value.for_flags()
    with pytest.raises(InputError, match="etp 1"):
        validate_distributed(plan(make_model(), ep=4, etp=2, baseline="round-robin"), world_size=4)


def test_a_failing_check_exits_1(monkeypatch, tmp_path, capsys):
    import planner.cli.validate_cmd as vc  # the CLI shell of planner.validate_dist

    p = plan(make_model(), ep=2)
    path = tmp_path / "plan.json"
    p.save(path)
    fake = {"passed": False, "max_abs_err": 0.5, "tolerance": 1e-4}
    monkeypatch.setattr(vc, "validate_distributed", lambda plan, **kw: fake)
    monkeypatch.setattr(vc, "render_distributed", lambda rep: "report")
    assert main(["validate", "--plan", str(path), "--world-size", "2", "--device", "cpu"]) == 1
    assert "max_abs_err 0.5 exceeds the tolerance 0.0001" in capsys.readouterr().err


@pytest.fixture
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ep_forward_on_one_rank_equals_the_layer_and_catches_a_wrong_slot(ml, dk, one_rank_group):
    cfg = ml.MoEConfig(hidden=16, ffn=8, num_experts=4, top_k=2, shared_ffn=8)
    gen = torch.Generator().manual_seed(1)
    w = ml.init_weights(cfg, dtype=torch.float64, generator=gen)
    x = torch.randn(9, 16, generator=gen, dtype=torch.float64)
    ids, wts = ml.route(x, w.router_ED, cfg)
    p2l = torch.tensor([0, 1, 2, 3, 1])  # five slots on the only rank; expert 1 twice
    slots = ids.clone()
    slots[ids == 1] = 4  # every pair of expert 1 served by its replica
    ref = ml.moe_forward(x, w, cfg, topk=(ids, wts))
    for impl in ("native", "p2p"):
        out, rows, t = dk.ep_forward(x, wts, slots, 5, w.w13_E2FD[p2l], w.w2_EDF[p2l], w, impl=impl)
        assert torch.allclose(out, ref, rtol=0, atol=1e-12)
        assert rows.tolist() == np.bincount(slots.reshape(-1).numpy(), minlength=5).tolist() and rows[1] == 0
        assert t.total_ms > 0
    wrong = slots.clone()
    wrong[ids == 0] = 2  # pairs of expert 0 sent to expert 2's slot
    out, _, _ = dk.ep_forward(x, wts, wrong, 5, w.w13_E2FD[p2l], w.w2_EDF[p2l], w)
    assert (out - ref).abs().max() > 1e-3
    with pytest.raises(ValueError, match="outside"):
        dk.ep_forward(x, wts, slots + 5, 5, w.w13_E2FD[p2l], w.w2_EDF[p2l], w)


def test_all_to_all_v_uneven_splits_on_one_rank(dk, one_rank_group):
    inp = torch.arange(6.0).reshape(3, 2)
    for impl in ("native", "p2p"):
        out = torch.empty(3, 2)
        assert torch.equal(dk.all_to_all_v(out, inp, [3], [3], impl=impl), inp)


@pytest.mark.gpu
def test_two_gpus_with_nccl():
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    from planner.validate_dist import validate_distributed

    p = plan(make_model(num_shared_experts=1), ep=2, redundant_experts=2, baseline="eplb")
    rep = validate_distributed(p, world_size=2, device="cuda", warmup=1, reps=3)
    assert rep["dist_backend"] == "nccl" and rep["dtype"] == "bfloat16"
    assert rep["passed"] and rep["rows_match_dispatch"]
