"""Real Ray (a local ``ray.init(num_cpus=2)``, skipped without the ``ray`` package; .ci/run installs
it in a step of its own): ``sweep --executor ray`` writes the rows the process pool writes, and
the placement's layers solved on Ray workers give the one-process placement."""

from __future__ import annotations

import csv
import io

import pytest

ray = pytest.importorskip("ray")

from planner.sweep import TIMING_COLUMNS, run_sweep  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


def rows_of(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_sweep_on_ray_writes_the_process_pools_rows(local_ray, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("base: {model: mixtral-8x7b, time_limit: 5}\ngrid: {nodes: [1, 2], redundant_experts: [0, 8]}\n")
    pool = run_sweep(spec, tmp_path / "pool", jobs=2, plots=False, progress=False)
    on_ray = run_sweep(spec, tmp_path / "ray", executor="ray", plots=False, progress=False)
    a, b = rows_of(pool.csv_path), rows_of(on_ray.csv_path)
    assert len(a) == 4 and all(r["status"] == "ok" for r in a)
    assert [r["key"] for r in a] == [r["key"] for r in b]
    for x, y in zip(a, b, strict=True):
        assert {c: v for c, v in x.items() if c not in TIMING_COLUMNS} == {
            c: v for c, v in y.items() if c not in TIMING_COLUMNS}
