"""``moe-planner export``: hand a plan's placement to an engine (docs/contracts.md, "Command line")."""

from __future__ import annotations

import json
from pathlib import Path

import click

from planner.exports import ENGINE_COMMAND, FORMATS
from planner.exports import export as do_export
from planner.specs.plan import Plan


@click.command("export")
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file (plan.json)")
@click.option("--to", "to", required=True, type=click.Choice(FORMATS), help="Engine format")
@click.option(
    "--out", "out", required=True, type=click.Path(dir_okay=False),
    help="File to write: sglang .json/.pt, vllm .pt/.npz, vllm-ascend .json, eplb .pt/.npz, megatron .json/.txt",
)
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists")
@click.option("--json", "as_json", is_flag=True, help="Print what was written and the flags to pass as JSON on stdout")
def export(plan_path: str, to: str, out: str, force: bool, as_json: bool) -> None:
    """Write a plan's placement in an engine's format, and print the flags to pass with it."""
    plan = Plan.load(plan_path)
    result = do_export(plan, to, out, force=force)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "to": to,
                    "path": str(result.path),
                    "description": result.description,
                    "shapes": result.shapes(),
                    "flags": result.flags,
                    "command_line": result.command_line,
                    "notes": result.notes,
                },
                indent=1,
            )
        )
    else:
        m, par, pl = plan.model, plan.parallel, plan.placement
        shape = ", ".join(f"{k} {v}" for k, v in result.shapes().items())
        click.echo(f"{result.description} for {m.name}: {Path(out)}")
        click.echo(
            f"  {m.num_moe_layers} MoE layers of {m.num_layers}; {par.ep} EP ranks × {pl.slots_per_gpu} slots"
            f" = {par.ep * pl.slots_per_gpu} ({m.num_experts} experts + {par.ep * pl.slots_per_gpu - m.num_experts} redundant)"
        )
        if shape:
            click.echo(f"  arrays: {shape}")
        if result.flags:
            engine = ENGINE_COMMAND.get(to, "")
            click.echo(f"  pass: {engine + ' ' if engine else ''}{result.command_line}")
        for n in result.notes:
            click.echo(f"  note: {n}")
    click.echo(f"wrote {out}", err=True)
