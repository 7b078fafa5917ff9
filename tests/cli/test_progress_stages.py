"""Progress inside the long searches goes to stderr only: the offload search names each candidate
it replays, ``validate --world-size`` each case, ``plan --mode serve`` each split; stdout stays the
result (valid JSON under ``--json``)."""

import json

import pytest

from planner.cli import main
from planner.progress import reporting
from planner.solve import pools as P


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append((event.stage, event.done, event.total))


def test_offload_search_reports_each_candidate_on_stderr(capfd):
    code = main(["plan", "--mode", "offload", "--model", "olmoe-1b-7b", "--gpu-memory-gb", "8", "--time-limit", "3",
                 "--progress", "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    json.loads(out)  # stdout is the plan alone
    lines = [x for x in err.splitlines() if "offload search:" in x]
    assert any("even-lru" in x for x in lines) and any("global-topk" in x for x in lines)
    assert "offload search" not in out


def test_serve_splits_are_stages():
    from planner.resolve import resolve_hardware, resolve_model

    hw, m = resolve_hardware("h100-sxm"), resolve_model("olmoe-1b-7b")
    t = P.ServeTargets(prompt_len=1024, output_len=256, tpot_ms=30.0)
    table = P.PoolTable(m, hw, P.pool_cluster(4, P.ClusterSpec(hardware=hw.name, num_nodes=1, gpus_per_node=4)), t,
                        P.kv_copy(m, hw, 1024, "bf16", same_node=True))
    rec = Recorder()
    with reporting(rec):
        P.best_split(table)
    split_events = [e for e in rec.events if e[0].startswith("pool sizes")]
    assert [(d, n) for _, d, n in split_events] == [(0, 3), (1, 3), (2, 3)]


def test_validate_world_size_reports_each_case_on_stderr(tmp_path, capfd):
    pytest.importorskip("torch")
    from planner.api import plan
    from tests.conftest import make_model

    p = plan(make_model(), ep=2, baseline="contiguous")
    path = tmp_path / "plan.json"
    p.save(path)
    code = main(["validate", "--plan", str(path), "--world-size", "2", "--device", "cpu", "--dtype", "float64",
                 "--layers", "2", "--warmup", "0", "--reps", "1", "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    json.loads(out)
    assert "validate: case 1/2" in err and "validate: case 2/2" in err
    assert "validate: case" not in out
