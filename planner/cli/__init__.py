"""The ``moe-planner`` command line.

One module per subcommand (``plan_cmd``, ``trace_cmd``, ``schema_cmd`` …); this module only
assembles them and turns the project's errors into exit codes: bad input exits 2 with one line
on stderr, an infeasible problem exits 1 naming the binding constraint. Logs, progress and
anything a solver prints go to stderr; only results go to stdout (:mod:`planner.cli.output`),
and under ``--json`` an error is a JSON object there too (``error``, ``kind``, ``field``).
"""

from __future__ import annotations

import sys

import click

from planner.cli.check_cmd import check
from planner.cli.export_cmd import export
from planner.cli.offload_cmd import offload_curve
from planner.cli.output import asks_for_json, error_json, results_only_stdout
from planner.cli.plan_cmd import plan
from planner.cli.predict_cmd import predict
from planner.cli.profile_cmd import profile
from planner.cli.schema_cmd import schema
from planner.cli.simulate_cmd import simulate
from planner.cli.sweep_cmd import sweep
from planner.cli.trace_cmd import trace
from planner.cli.validate_cmd import validate
from planner.errors import InfeasibleError, InputError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="moe-planner")
def cli() -> None:
    """Plan Mixture-of-Experts deployments: placement, parallelism and expert caching."""


for _cmd in (plan, schema, trace, validate, export, check, predict, simulate, sweep, profile, offload_curve):
    cli.add_command(_cmd)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point (pip's wrapper calls ``sys.exit(main())``).

    Runs the CLI and maps project errors to exit codes; returns the exit code. Only the
    command's result reaches stdout (:func:`planner.cli.output.results_only_stdout`: a solver's
    log written from C goes to stderr); under ``--json`` an error is also a JSON object on
    stdout (:func:`planner.cli.output.error_json`).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    with results_only_stdout():
        return _run(args, asks_for_json(args))


def _fail(line: str, code: int, as_json: bool, message: str, kind: str, field: str | None = None) -> int:
    click.echo(line, err=True)
    if as_json:
        click.echo(error_json(message, kind, field))
    return code


def _run(argv: list[str], as_json: bool) -> int:
    try:
        # click returns the code of a ``ctx.exit(code)`` / ``click.exceptions.Exit`` here
        rc = cli.main(args=argv, prog_name="moe-planner", standalone_mode=False)
    except InputError as e:
        return _fail(f"error: {e.for_flags()}", 2, as_json, e.for_flags(), "input", e.field)
    except InfeasibleError as e:
        return _fail(f"infeasible: {e.for_flags()}", 1, as_json, e.for_flags(), "infeasible", e.field)
    except click.exceptions.Abort:
        return _fail("aborted", 1, as_json, "aborted", "aborted")
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        msg = e.format_message().replace("\n", " ")
        param = getattr(e, "param", None)
        return _fail(f"error: {msg}{hint}", 2, as_json, msg, "usage", getattr(param, "name", None))
    except click.ClickException as e:  # a command's own failure (check's problems): it printed its result
        click.echo(f"error: {e.format_message()}".replace("\n", " "), err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0
