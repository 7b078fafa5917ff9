"""``moe-planner offload-curve``: the offload sizing curve (hit rate and tokens/s against GPU memory).

For each budget of ``--budgets`` (GB) the offload plan is solved (:func:`planner.offload.solve_offload`)
and scored on the held-out decode steps; writes ``OUT/sizing.csv`` and ``OUT/sizing.png``
(:func:`planner.offload.write_sizing_curve`). Budgets below what the model needs besides its
cached experts are kept in the CSV as infeasible rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from planner.errors import InputError
from planner.io import check_writable
from planner.offload import sizing_curve, write_sizing_curve
from planner.progress import StderrProgress, reporting, stage, wants_progress
from planner.resolve import resolve_hardware, resolve_model, resolve_trace


def _budgets(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--budgets must be comma-separated numbers of GB (got {text!r})") from None
    if not out or min(out) <= 0:
        raise InputError(f"--budgets must list budgets > 0 GB (got {text!r})")
    return sorted(out)


@click.command("offload-curve")
@click.option("--model", default="qwen3-30b-a3b", show_default=True, help="Preset name, HF config.json, or ModelSpec file")
@click.option("--hardware", default="h100-sxm", show_default=True, help="Hardware profile name or file")
@click.option("--trace", "trace_path", default=None, type=click.Path(dir_okay=False), help="Routing trace (default: shipped)")
@click.option("--budgets", required=True, help="GPU memory budgets in GB, comma-separated (e.g. 20,30,40,50)")
@click.option("--micro-batch", type=int, default=None, help="Decode batch in tokens (default 1)")
@click.option("--seq-len", type=int, default=4096, show_default=True, help="Context length (KV cache)")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Write OUT/sizing.csv and OUT/sizing.png")
@click.option("--force", is_flag=True, help="Overwrite existing files in OUT")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout")
@click.option("--progress", "show_progress", is_flag=True,
              help="Show progress on stderr even when it is not a terminal (on a terminal it always shows)")
def offload_curve(model, hardware, trace_path, budgets, micro_batch, seq_len, seed, out_dir, force, as_json,
                  show_progress) -> None:
    """Sizing curve of an offloaded deployment: hit rate and predicted tokens/s against GPU memory."""
    for name in ("sizing.csv", "sizing.png"):
        check_writable(Path(out_dir) / name, force)
    grid = _budgets(budgets)
    m = resolve_model(model)
    hw = resolve_hardware(hardware)
    tr, label, _ = resolve_trace(trace_path, m, seed)
    rows = []
    with reporting(StderrProgress("offload-curve") if wants_progress(show_progress) else None):
        for i, gb in enumerate(grid):  # one budget at a time: each is solved on its own
            stage(f"budget {gb:g} GB", i, len(grid))
            rows += sizing_curve(m, hw, tr, label, [gb], batch=micro_batch, seq_len=seq_len, seed=seed)
        stage("writing the curve", len(grid), len(grid))
        csv, png = write_sizing_curve(rows, out_dir, f"{m.name} on {hw.name}, offloaded decode ({label})")
    if as_json:
        click.echo(json.dumps(rows, indent=1))
    else:
        click.echo(f"{'GB':>6} {'slots':>6} {'hit rate':>9} {'tokens/s':>9} {'stall ms':>9}")
        for r in rows:
            if not r["feasible"]:
                click.echo(f"{r['gpu_memory_gb']:>6g} {'infeasible: the non-expert weights and KV cache do not fit':>40}")
                continue
            click.echo(f"{r['gpu_memory_gb']:>6g} {r['expert_slots']:>6} {100 * r['hit_rate']:>8.1f}% {r['tokens_per_s']:>9.1f}"
                       f" {r['stall_ms_per_step']:>9.3f}")
    click.echo(f"wrote {csv} and {png}", err=True)
