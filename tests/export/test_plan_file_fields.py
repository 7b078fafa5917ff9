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


def test_the_plan_schema_admits_what_plan_json_writes(plan_replicas):
    """`moe-planner schema plan` lists the derived model fields: the model's schema forbids
    unknown properties, so without them a written plan.json would not validate."""
    data = json.loads(plan_replicas.to_json())
    s = Plan.model_json_schema()
    model_def = s["$defs"][s["properties"]["model"]["$ref"].rsplit("/", 1)[-1]]
    assert model_def["additionalProperties"] is False
    assert set(data["model"]) <= set(model_def["properties"])
    assert model_def["properties"]["num_moe_layers"]["readOnly"] is True
    assert "num_moe_layers" not in s["$defs"]["ModelSpec"]["properties"]  # a ModelSpec file cannot set it
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(data["model"], {**model_def, "$defs": s["$defs"]})
