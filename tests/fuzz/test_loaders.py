"""Fuzz every loader with hypothesis: malformed inputs end in an InputError of one line naming
the file, never another exception; through the CLI they exit 2 with one stderr line.

The generators (mutated real fixtures, garbage, hand-made archives) live in
:mod:`tests.fuzz.generators`; ``benchmarks/robustness.py`` runs the same ones by the thousand.
Example counts keep this file well under a minute; ``FUZZ_EXAMPLES=2000`` raises every count,
``FUZZ_RANDOM=1`` draws fresh examples instead of the fixed (derandomized) ones.

The sweep-spec loader is fuzzed in ``test_sweep_spec.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given

from planner.cli import main
from tests.fuzz.generators import (
    describe,
    fuzz_settings,
    hardware_cases,
    hf_cases,
    model_cases,
    plan_cases,
    run_case,
    sglang_cases,
    sglang_pt_cases,
    trace_cases,
)


def _cli(capsys):
    """A CLI runner for :func:`run_case` on pytest's captured streams."""

    def run(argv: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        rc = main(argv)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _check(case, capsys) -> None:
    outcome = run_case(case, cli=_cli(capsys))
    assert outcome.kind != "crash", f"{describe(case)}\n{outcome.message}"


@fuzz_settings(400)
@given(case=model_cases())
def test_model_spec_files(case, capsys):
    """ModelSpec .yaml/.json files made from the shipped presets (load_model, plan --model)."""
    _check(case, capsys)


@fuzz_settings(400)
@given(case=hf_cases())
def test_hf_config_files(case, capsys):
    """Hugging Face config.json files and model folders made from real configs."""
    _check(case, capsys)


@fuzz_settings(150)
@given(case=hardware_cases())
def test_hardware_profiles(case, capsys):
    """Hardware profiles made from hwprofiles/*.json (load_hardware, plan --hardware)."""
    _check(case, capsys)


@fuzz_settings(500)
@given(case=trace_cases())
def test_npz_traces(case, capsys):
    """.npz traces: wrong shapes, dtypes, ids, lying headers, pickles, corrupt zips (trace stats)."""
    _check(case, capsys)


@fuzz_settings(200)
@given(case=trace_cases())
def test_npz_traces_streamed(case, capsys):
    """The same .npz traces through the streaming reader (a trace memory budget of 1 byte)."""
    import os

    old = os.environ.get("MOE_PLANNER_TRACE_MEMORY_GB")
    os.environ["MOE_PLANNER_TRACE_MEMORY_GB"] = "1e-9"
    try:
        _check(case, capsys)
    finally:
        if old is None:
            os.environ.pop("MOE_PLANNER_TRACE_MEMORY_GB", None)
        else:
            os.environ["MOE_PLANNER_TRACE_MEMORY_GB"] = old


@fuzz_settings(300)
@given(case=sglang_cases())
def test_sglang_json(case, capsys):
    """SGLang logical_count .json: ragged, strings, deep nesting, huge numbers."""
    _check(case, capsys)


@fuzz_settings(150)
@given(case=sglang_pt_cases())
def test_sglang_pt(case, capsys):
    """SGLang logical_count .pt: every tensor dtype and layout, lists, garbage bytes."""
    pytest.importorskip("torch")
    _check(case, capsys)


@fuzz_settings(200)
@given(case=plan_cases())
def test_plan_files(case, capsys):
    """plan.json files made from a real plan (Plan.load, export --plan); accepted plans export."""
    _check(case, capsys)
