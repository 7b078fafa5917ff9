"""plan.json's ``model`` carries the fields scripts rely on (docs/contracts.md, "Plan file")."""

import json

import pytest

from planner.errors import InputError
from planner.specs.plan import Plan


def test_model_carries_num_moe_layers_and_reads_back(plan_replicas, tmp_path):
    data = json.loads(plan_replicas.to_json())
    m = data["model"]
    assert (m["name"], m["num_moe_layers"], m["num_experts"], m["top_k"]) == ("deepseek-v2-lite", 26, 64, 6)
    path = tmp_path / "plan.json"
    plan_replicas.save(path)
    assert Plan.load(path) == plan_replicas
    assert json.loads(path.read_text())["model"]["num_moe_layers"] == 26


def test_a_num_moe_layers_that_contradicts_the_layers_is_refused(plan_replicas, tmp_path):
    data = json.loads(plan_replicas.to_json())
    data["model"]["num_moe_layers"] = 27
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"^plan.json: model.num_moe_layers is 27 but the model's layers give 26"):
        Plan.load(path)
    del data["model"]["num_moe_layers"]  # plan files written before the field still load
    path.write_text(json.dumps(data))
    assert Plan.load(path) == plan_replicas
