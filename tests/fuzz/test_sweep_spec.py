"""Fuzz the sweep-spec loader (``moe-planner sweep SPEC``): mutated ``examples/sweep.yaml`` files
end in an accepted spec or an InputError of one line naming the file; rejected ones exit 2 with
one ``error:`` line through the CLI. Same generators and checks as ``test_loaders.py``."""

from __future__ import annotations

from hypothesis import given

from planner.cli import main
from tests.fuzz.generators import describe, fuzz_settings, run_case, sweep_cases


@fuzz_settings(120)
@given(case=sweep_cases())
def test_sweep_specs(case, capsys):
    def cli(argv):
        capsys.readouterr()
        rc = main(argv)
        out, err = capsys.readouterr()
        return rc, out, err

    outcome = run_case(case, cli=cli)
    assert outcome.kind != "crash", f"{describe(case)}\n{outcome.message}"
