"""``moe-planner simulate --plan plan.json --trace FILE``: replay a trace through a plan.

Every step of the trace goes through the plan's placement (:func:`planner.api.simulate`): per
MoE layer the time distribution over steps (mean, p50, p99), compute and exposed communication,
load imbalance (max/mean GPU tokens), NVLink and inter-node bytes and the busiest GPU; then the
whole MoE part of a step (mean, p50, p99). ``--json`` prints the full figures, per-GPU token
loads of every layer included (:func:`planner.simulator.describe`).
"""

from __future__ import annotations

import json
from typing import Any

import click

from planner.api import simulate as run_simulation
from planner.specs.plan import Plan


def _mb(b: float) -> str:
    return f"{b / 1e6:.1f}"


def render_simulation(s: dict[str, Any]) -> str:
    """Human-readable table of :meth:`planner.offload.OffloadSimulationReport.summary`."""
    acc = s.get("prefetch_accuracy")
    lines = [
        f"moe-planner simulate (offload): {s['model']} on one {s['hardware']}, {s['gpu_memory_gb']} GB,"
        f" decode batch {s['decode_batch']}",
        f"  trace      {s['trace']}: {s['evaluated_on']}",
        f"  hit rate   {100 * s['hit_rate']:.1f}% (resident, cached or prefetched)",
        f"  copies     {s['transfers_per_step']:.1f} experts per step ({s['bytes_per_step'] / 1e6:.1f} MB),"
        f" prefetch {s['prefetch_per_step']:.1f} per step" + (f", accuracy {100 * acc:.1f}%" if acc is not None else ""),
        f"  stall      {s['stall_ms_per_step']:.3f} ms per step; step {s['step_ms']:.3f} ms; {s['tokens_per_s']:.1f} tokens/s",
        "  hit rate per layer: " + " ".join(f"{100 * h:.0f}" for h in s["hit_rate_per_layer"]),
    ]
    return "\n".join(lines)


def render(summary: dict) -> str:
    """The human-readable table of a simulation summary."""
    s = summary
    if s.get("mode") == "offload":  # offload plans: the expert-cache simulator (planner.offload)
        return render_simulation(s)
    t = s["moe_time_per_step_ms"]
    lines = [
        f"moe-planner simulate: {s['model']} on {s['cluster']}, dispatch {s['dispatch']}, relay {s['relay']}",
        f"  trace      {s['trace']}: {s['steps']} steps, {s['tokens_per_step']:.0f} tokens per step",
        "",
        f"  {'layer':>5} {'ms mean':>9} {'p50':>8} {'p99':>8} {'compute':>8} {'comm':>8} {'imbal':>6}"
        f" {'NVLink MB':>10} {'inter MB':>9} {'busiest GPU':>12}",
    ]
    for lay in s["layers"]:
        ms = lay["ms"]
        busiest = lay["busiest_gpu"]
        lines.append(
            f"  {lay['layer']:>5} {ms['mean']:>9.4f} {ms['p50']:>8.4f} {ms['p99']:>8.4f} {lay['compute_ms']:>8.4f}"
            f" {lay['comm_ms']:>8.4f} {lay['imbalance']:>6.3f} {_mb(lay['intra_node_bytes_per_step']):>10}"
            f" {_mb(lay['inter_node_bytes_per_step']):>9} {busiest:>4} ({lay['gpu_tokens'][busiest]:.0f} tok)"
        )
    lines += [
        "",
        f"  all MoE layers per step: {t['mean']:.3f} ms (p50 {t['p50']:.3f}, p99 {t['p99']:.3f})",
        f"  MoE layer: {s['moe_layer_ms']['mean']:.4f} ms (p50 {s['moe_layer_ms']['p50']:.4f}, p99 {s['moe_layer_ms']['p99']:.4f});"
        f" compute {s['compute_ms']:.4f} ms, comm {s['comm_ms']:.4f} ms",
        f"  load imbalance (max/mean GPU tokens): mean {s['imbalance']:.3f}, p99 {s['imbalance_p99']:.3f}",
        f"  bytes per step: NVLink {_mb(s['intra_node_bytes_per_step'])} MB,"
        f" inter-node {_mb(s['inter_node_bytes_per_step'])} MB",
    ]
    lines += [f"  note: {n}" for n in s["notes"]]
    return "\n".join(lines)


@click.command()
@click.option("--plan", "plan_path", required=True, type=click.Path(dir_okay=False), help="Plan file (plan.json)")
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False), help="Routing trace (.npz, SGLang .json/.pt)")
@click.option("--tokens-per-step", type=int, default=None, help="Tokens per step when the trace has no step array")
@click.option("--hardware", default=None, help="Hardware profile name or file (default: the plan's)")
@click.option("--relay", type=click.Choice(["first-destination", "same-rank"]), default=None,
              help="Where an inter-node copy lands (default: the simulator's, first-destination)")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout")
def simulate(plan_path, trace_path, tokens_per_step, hardware, relay, as_json) -> None:
    """Replay a routing trace through a plan: per-layer per-GPU load, imbalance, intra/inter-node
    bytes and predicted MoE time (mean, p50, p99)."""
    plan = Plan.load(plan_path)
    report = run_simulation(plan, trace_path, hardware=hardware, tokens_per_step=tokens_per_step, relay=relay)
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        click.echo(render(summary))
