"""The ``moe-planner`` command line.

One module per subcommand (``plan_cmd``, ``trace_cmd``, ``schema_cmd`` …); this module only
assembles them and turns the project's errors into exit codes: bad input exits 2 with one line
on stderr, an infeasible problem exits 1 naming the binding constraint. Logs go to stderr;
``--json`` output goes to stdout.
"""

from __future__ import annotations

import click

from planner.cli.check_cmd import check
from planner.cli.export_cmd import export
from planner.cli.offload_cmd import offload_curve
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

    Runs the CLI and maps project errors to exit codes; returns the exit code.
    """
    try:
        # click returns the code of a ``ctx.exit(code)`` / ``click.exceptions.Exit`` here
        rc = cli.main(args=argv, prog_name="moe-planner", standalone_mode=False)
    except InputError as e:
        click.echo(f"error: {e.for_flags()}", err=True)
        return 2
    except InfeasibleError as e:
        click.echo(f"infeasible: {e.for_flags()}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        click.echo(f"error: {e.format_message()}{hint}".replace("\n", " "), err=True)
        return 2
    except click.ClickException as e:
        click.echo(f"error: {e.format_message()}".replace("\n", " "), err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    return rc if isinstance(rc, int) and not isinstance(rc, bool) else 0

