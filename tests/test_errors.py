"""Library errors name fields; the CLI spells them as flags (planner/errors.py)."""

import pickle

import pytest

from planner.cli import main
from planner.errors import InfeasibleError, InputError


def test_leading_field_and_mentions_become_flags():
    e = InputError("jobs must be >= 1 (got 0); or pass `restart`", field="jobs", mentions=("restart",))
    assert str(e) == "jobs must be >= 1 (got 0); or pass `restart`"
    assert e.for_flags() == "--jobs must be >= 1 (got 0); or pass --restart"
    assert e.for_flags({"jobs": "-j"}).startswith("-j must be")


def test_field_not_leading_and_unlisted_words_are_left_alone():
    e = InputError("out/results.csv: jobs out of range", field="jobs", mentions=("out",))
    assert e.for_flags() == "out/results.csv: jobs out of range"


def test_infeasible_errors_map_too_and_survive_pickling():
    e = InfeasibleError("gpu_memory_gb 2 is too small; raise `gpu_memory_gb`", field="gpu_memory_gb",
                        mentions=("gpu_memory_gb",))
    assert e.for_flags() == "--gpu-memory-gb 2 is too small; raise --gpu-memory-gb"
    assert str(pickle.loads(pickle.dumps(e))) == str(e)


def test_cli_prints_the_flag_spelling(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {}\ngrid: {seed: [0]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    assert "error: --jobs must be >= 1 (got 0)" in capsys.readouterr().err


def test_placement_workers_must_be_a_count():
    import planner

    for bad in (-1, 1.5, True):
        with pytest.raises(InputError, match=r"placement_workers must be an integer") as e:
            planner.plan("deepseek-v2-lite", baseline="eplb", placement_workers=bad)
        assert e.value.field == "placement_workers"
