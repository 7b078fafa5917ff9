import json

import pytest

from planner.errors import InputError
from planner.specs.cluster import ClusterSpec
from planner.specs.plan import Parallel, Placement, Plan, Provenance, SolverReport
from planner.specs.workload import Workload
from tests.conftest import make_model


def _plan(**over):
    m = make_model(num_layers=2)
    fields = dict(
        model=m,
        cluster=ClusterSpec(hardware="h100-sxm", num_nodes=1, gpus_per_node=4),
        workload=Workload(),
        parallel=Parallel(dp=4, tp=1, pp=1, ep=4),
        placement=Placement(slots_per_gpu=2, physical_to_logical=[list(range(8)), [7, 6, 5, 4, 3, 2, 1, 0]]),
        solver=SolverReport(name="contiguous", status="baseline", time_s=0.0),
        provenance=Provenance(version="0", seed=0, input_hash="x", created="2026-01-01T00:00:00+00:00"),
    )
    fields.update(over)
    return Plan(**fields)


def test_round_trip(tmp_path):
    p = _plan()
    p.save(tmp_path / "plan.json")
    q = Plan.load(tmp_path / "plan.json")
    assert q == p
    assert (tmp_path / "plan.json").read_text() == p.to_json()
    assert list(tmp_path.iterdir()) == [tmp_path / "plan.json"]  # no temporary left behind


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["placement"]["physical_to_logical"][0].__setitem__(0, 9), r"holds expert 9, ids must be in \[0, 8\)"),
        (lambda d: d["placement"]["physical_to_logical"][1].__setitem__(0, 6), "misses expert 7"),
        (lambda d: d["placement"]["physical_to_logical"].pop(), "has 1 layers, model tiny-moe has 2 MoE layers"),
        (lambda d: d["parallel"].__setitem__("dp", 2), r"parallel: dp × tp × pp × cp \(2 × 1 × 1 × 1 = 2\) must equal the cluster's GPUs \(1 × 4 = 4\)"),
        (lambda d: d["placement"].__setitem__("slots_per_gpu", 3), "has 8 slots, ep × slots_per_gpu is 12"),
        (lambda d: d.__setitem__("surprise", 1), "unknown field 'surprise'"),
        (lambda d: d["model"].__setitem__("top_k", 9), r"top_k \(9\) must be <= num_experts \(8\)"),
        (lambda d: d.__setitem__("schema_version", "7"), "schema_version must be '1'"),
    ],
)
def test_bad_plan_files_give_one_line(tmp_path, mutate, message):
    d = json.loads(_plan().to_json())
    mutate(d)
    f = tmp_path / "plan.json"
    f.write_text(json.dumps(d))
    with pytest.raises(InputError, match=message) as e:
        Plan.load(f)
    assert "\n" not in str(e.value) and str(e.value).startswith("plan.json")


def test_malformed_json(tmp_path):
    f = tmp_path / "plan.json"
    f.write_text("{ not json")
    with pytest.raises(InputError, match="plan.json: invalid JSON at line 1"):
        Plan.load(f)


@pytest.mark.parametrize("root", ["Plan", "HardwareProfile", "ModelSpec", "Workload", "ClusterSpec"])
def test_every_field_has_a_description(root):
    import planner
    from planner.specs.base import Spec

    def walk(cls, seen):
        if cls in seen:
            return
        seen.add(cls)
        for name, f in cls.model_fields.items():
            assert f.description, f"{cls.__name__}.{name} has no description"
            ann = f.annotation
            for sub in getattr(ann, "__args__", ()) + (ann,):
                if isinstance(sub, type) and issubclass(sub, Spec):
                    walk(sub, seen)

    walk(getattr(planner, root) if hasattr(planner, root) else {"Workload": Workload, "ClusterSpec": ClusterSpec}[root], set())
