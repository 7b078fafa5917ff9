"""``moe-planner check``: verify a plan file against its model and cluster (docs/contracts.md)."""

from __future__ import annotations

import json

import click

from planner.check import check_plan


class ProblemsFound(click.ClickException):
    """The plan was read but is inconsistent: exit 1 (the CLI wrapper prints the message)."""

    exit_code = 1


@click.command("check")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file (plan.json)")
@click.option("--model", default=None, help="Check against this model (preset, config.json or spec) instead of the plan's own")
@click.option("--hardware", default=None, help="Check memory against this hardware profile instead of the plan's")
@click.option("--json", "as_json", is_flag=True, help="Print {plan, ok, problems} as JSON on stdout")
def check(plan_path: str, model: str | None, hardware: str | None, as_json: bool) -> None:
    """Verify a plan against its model and cluster; list every problem found.

    Exit 0 when the plan is consistent, 1 when problems are found (one per line), 2 when the
    file cannot be read or its fields are malformed.
    """
    problems = check_plan(plan_path, model=model, hardware=hardware)
    if as_json:
        click.echo(json.dumps({"plan": plan_path, "ok": not problems, "problems": problems}, indent=1))
    elif problems:
        for p in problems:
            click.echo(p)
    else:
        click.echo(f"{plan_path}: OK")
    if problems:
        raise ProblemsFound(f"{plan_path}: {len(problems)} problem(s) found")
