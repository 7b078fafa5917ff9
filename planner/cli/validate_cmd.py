"""``moe-planner validate``: execute each EP rank's share of a plan and report predicted vs measured.

A thin shell over :func:`planner.validate.validate` (what runs and how it is compared is
documented there); with ``--world-size N``, over :func:`planner.validate_dist.validate_distributed`
(the EP-sharded layer on N ranks with real all-to-all, checked against the unsharded layer; exit
1 when ``max_abs_err`` exceeds ``--tol``). Needs torch (``pip install 'moe-planner[torch]'``); without it, or with
``--device cuda`` where torch sees no GPU, it exits 2 with one line. Progress goes to stderr;
``--json`` prints the report on stdout; ``--out FILE`` writes it (refusing to overwrite without
``--force``).
"""

from __future__ import annotations

import json
from typing import Any

import click

from planner.cli.render_validate import render_distributed, render_validation
from planner.io import atomic_write_text, check_writable
from planner.kernel_loader import load_kernels
from planner.specs.plan import Plan
from planner.validate import TimingOptions
from planner.validate import validate as run_validate
from planner.validate_dist import validate_distributed


def _argv(ctx: click.Context) -> list[str]:
    """The options this run was given, as a command line (for the report's provenance)."""
    out: list[str] = []
    for p in ctx.command.params:
        v = ctx.params.get(p.name)
        if v is None or v is False or v == () or (p.default is not None and v == p.default):
            continue
        flag = p.opts[0]
        if v is True:
            out.append(flag)
        elif isinstance(v, tuple):
            for item in v:
                out += [flag, str(item)]
        else:
            out += [flag, str(v)]
    return out


@click.command()
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="plan.json to validate")
@click.option("--trace", "trace_path", default=None, type=click.Path(dir_okay=False),
              help="Routing trace to replay (default: the plan's own trace, its held-out steps)")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default=None,
              help="Where to execute (default: cuda when torch sees a GPU, else cpu)")
@click.option("--steps", type=int, default=None, help="Evaluate only the first N evaluated steps")
@click.option("--layers", type=int, default=None, help="Evaluate N MoE layers evenly spaced (default: all)")
@click.option("--max-tokens", type=int, default=None, help="Cap every expert slot's rows at N (small CPU runs; with --world-size: N of each step's tokens)")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["auto", "grouped", "loop", "padded", "triton"]),
              help="Expert-FFN backend(s) to measure; repeat for several (default: auto)")
@click.option("--warmup", type=int, default=3, show_default=True, help="Untimed calls per run")
@click.option("--reps", type=int, default=10, show_default=True, help="Timed calls per run (median kept)")
@click.option("--runs", type=int, default=3, show_default=True, help="Runs per figure (minimum kept)")
@click.option("--eager", is_flag=True, help="Time eager calls (host gaps count) instead of GPU time alone")
@click.option("--budget-s", type=float, default=None, help="Stop measuring after this many seconds (report says how far it got)")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False), help="Write the JSON report here")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout")
@click.option("--world-size", type=int, default=None,
              help="Run the EP-sharded layer on N local ranks with real all-to-all (N = the plan's ep; or under torchrun)")
@click.option("--dtype", "dist_dtype", type=click.Choice(["float32", "float64", "bfloat16"]), default=None,
              help="With --world-size: dtype of the run (default: bfloat16 on cuda, float32 on cpu)")
@click.option("--tol", type=float, default=None, help="With --world-size: max_abs_err above this exits 1 (default by dtype)")
@click.option("--a2a", type=click.Choice(["native", "p2p"]), default="native", show_default=True,
              help="With --world-size: all_to_all_single with uneven splits, or isend/irecv pairs")
def validate(plan_path, trace_path, device, steps, layers, max_tokens, backends, warmup, reps, runs, eager,
             budget_s, out_path, force, as_json, world_size, dist_dtype, tol, a2a) -> None:
    """Execute the real MoE layers a plan implies (one EP rank at a time) and compare with the prediction."""
    if out_path is not None:
        check_writable(out_path, force)
    plan = Plan.load(plan_path)
    load_kernels()
    if device is None:
        import torch  # noqa: PLC0415

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size is not None:  # several ranks: planner/validate_dist.py
        return _run_distributed(plan, world_size=world_size, trace=trace_path, device=device, steps=steps, layers=layers,
                       max_tokens=max_tokens, dtype=dist_dtype, tol=tol, backend=(backends or ("auto",))[0], a2a=a2a,
                       warmup=warmup, reps=reps, argv=_argv(click.get_current_context()), out_path=out_path,
                       as_json=as_json)
    report = run_validate(
        plan,
        trace=trace_path,
        device=device,
        steps=steps,
        layers=layers,
        max_tokens=max_tokens,
        backends=tuple(backends) or ("auto",),
        timing=TimingOptions(warmup=warmup, reps=reps, runs=runs, lead=not eager),
        budget_s=budget_s,
        argv=_argv(click.get_current_context()),
        progress=lambda msg: click.echo(msg, err=True),
    )
    text = json.dumps(report, indent=1) + "\n"
    if out_path is not None:
        atomic_write_text(out_path, text)
        click.echo(f"wrote {out_path}", err=True)
    if as_json:
        click.echo(text, nl=False)
    else:
        click.echo(render_validation(report))


def _run_distributed(plan: Plan, *, out_path: str | None, as_json: bool, **kwargs: Any) -> None:
    """``--world-size N``: run, write ``--out``, print; exit 1 above the tolerance.

    Under torchrun only rank 0 writes and prints.
    """
    report = validate_distributed(plan, progress=lambda msg: click.echo(msg, err=True), **kwargs)
    if report is None:
        return
    text = json.dumps(report, indent=1) + "\n"
    if out_path is not None:
        atomic_write_text(out_path, text)
        click.echo(f"wrote {out_path}", err=True)
    click.echo(text if as_json else render_distributed(report), nl=not as_json)
    if not report["passed"]:
        click.echo(
            f"validate: max_abs_err {report['max_abs_err']:.3g} exceeds the tolerance {report['tolerance']:g} "
            "(the sharded layer differs from the unsharded one)", err=True,
        )
        raise click.exceptions.Exit(1)
