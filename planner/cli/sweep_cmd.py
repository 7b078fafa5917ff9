"""``moe-planner sweep SPEC.yaml --out DIR``: what-if grid (docs/contracts.md, "Command line").

A thin shell over :func:`planner.sweep.run_sweep` (the spec format is documented in
:mod:`planner.specs.sweep`, the CSV and resumption in :mod:`planner.sweep`, the plots in
:mod:`planner.sweep_plots`). A bad spec exits 2 with one line naming the file, the field and the
rule; a failing combination does not stop the sweep (its row says why) and the exit code stays
0. Progress goes to stderr; ``--json`` prints a summary on stdout.
"""

from __future__ import annotations

import json

import click

from planner.specs.sweep import check_spec_file
from planner.sweep import EXECUTORS, run_sweep


def _table(result, grid: list[str], limit: int = 20) -> list[str]:
    """A short table of the rows: the grid values, status, EP, imbalance and MoE time."""
    extra_ep = [] if "ep" in grid else ["ep"]
    tps = any(r.get("tokens_per_s") not in (None, "") for r in result.rows)
    head = [*grid, "status", *extra_ep, "imbalance", "moe ms/step", *(["tokens/s"] if tps else [])]
    body = []
    for r in result.rows[:limit]:
        def cell(c, r=r):
            v = r.get(c)
            return "none" if v in (None, "") and c in grid else ("" if v is None else str(v))

        ms, imb = r.get("moe_time_per_step_ms"), r.get("imbalance")
        body.append([*(cell(g) for g in grid), str(r.get("status")), *(cell(c) for c in extra_ep),
                     f"{float(imb):.3f}" if imb not in (None, "") else "",
                     f"{float(ms):.3f}" if ms not in (None, "") else "",
                     *([f"{float(r['tokens_per_s']):.0f}" if r.get("tokens_per_s") not in (None, "") else ""]
                       if tps else [])])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    if len(result.rows) > limit:
        lines.append(f"... {len(result.rows) - limit} more rows in {result.csv_path}")
    return lines


@click.command("sweep")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for results.csv and the plots (an existing results.csv is resumed)")
@click.option("--jobs", type=int, default=None, help="Worker processes (default: the CPU count; 1: in this process)")
@click.option("--executor", type=click.Choice(EXECUTORS), default="local", show_default=True,
              help="local processes, or a Ray cluster (RAY_ADDRESS; needs the 'ray' extra)")
@click.option("--restart", is_flag=True, help="Ignore rows already in results.csv and plan the whole grid again")
@click.option("--retry-failed", is_flag=True, help="Plan again the combinations whose row failed")
@click.option("--no-plots", is_flag=True, help="Write results.csv only")
@click.option("--quiet", is_flag=True, help="No progress on stderr")
@click.option("--json", "as_json", is_flag=True, help="Print a summary (the CSV and plot paths, counts) as JSON on stdout")
def sweep(spec, out_dir, jobs, executor, restart, retry_failed, no_plots, quiet, as_json) -> None:
    """Plan every combination of a grid of plan options; write results.csv and plots.

    SPEC is a YAML (or JSON) file with `base:` (plan options shared by every combination, long
    names with underscores) and `grid:` (option -> list of values). Example:

    \b
        base: {model: mixtral-8x7b, time_limit: 5}
        grid: {nodes: [1, 2, 4], redundant_experts: [0, 8]}
    """
    sp = check_spec_file(spec)
    result = run_sweep(spec, out_dir, jobs=jobs, executor=executor, restart=restart, retry_failed=retry_failed,
                       plots=not no_plots, progress=not quiet)
    if as_json:
        click.echo(json.dumps({
            "csv": str(result.csv_path), "plots": [str(p) for p in result.plots], "combinations": len(result.rows),
            "ran": result.ran, "skipped": result.skipped, "failed": result.failed,
        }, indent=1))
        return
    name = f" {sp.name}" if sp.name else ""
    click.echo(f"moe-planner sweep{name}: {len(result.rows)} combinations ({result.ran} planned, "
               f"{result.skipped} kept from before, {result.failed} failed)")
    for line in _table(result, list(sp.grid)):
        click.echo("  " + line)
    click.echo(f"  results: {result.csv_path}")
    for p in result.plots:
        click.echo(f"  plot:    {p}")
