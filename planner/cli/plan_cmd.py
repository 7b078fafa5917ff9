"""``moe-planner plan``: the main job (docs/contracts.md, "Command line")."""

from __future__ import annotations

import json
from pathlib import Path

import click

from planner.io import check_writable
from planner.offload import render_cache
from planner.solve.parallel import render_launch


def _fmt_bytes(b: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def render_plan(plan) -> str:
    """The human-readable plan table."""
    m, c, par, pl, pred, sol = plan.model, plan.cluster, plan.parallel, plan.placement, plan.predicted, plan.solver
    n_phys = par.ep * pl.slots_per_gpu
    lines = [
        f"moe-planner plan: {m.name} on {c.num_nodes} × {c.gpus_per_node} {c.hardware} ({plan.workload.mode})",
        f"  trace      {plan.provenance.trace}",
        f"  parallel   dp {par.dp}  tp {par.tp}  pp {par.pp}  ep {par.ep}  etp {par.etp}",
        f"  placement  {m.num_experts} experts + {n_phys - m.num_experts} redundant = {n_phys} slots,"
        f" {pl.slots_per_gpu} per GPU; dispatch {plan.dispatch}",
    ]
    if sol.candidates:
        cand = ", ".join(f"{k} {v:.3f} ms" for k, v in sol.candidates.items())
        lines.append(f"  solver     {sol.name} ({sol.status}); planning-step MoE time: {cand}")
    else:
        lines.append(f"  solver     {sol.name} ({sol.status})")
    if sol.bound is not None and sol.gap is not None:
        lines.append(f"  bound      {sol.bound:.3f} ms (gap {100 * sol.gap:.1f}%), solved in {sol.time_s:.1f} s")
    if pred is not None:
        worst = max(pred.per_layer, key=lambda lp: lp.total_ms)
        lines += [
            f"  scored on  {pred.evaluated_on}, {pred.tokens_per_step:.0f} tokens per step",
            "",
            f"  {'':34}{'per MoE layer':>16}",
            f"  {'load imbalance (max/mean GPU)':34}{pred.imbalance:>16.3f}",
            f"  {'expert compute, slowest GPU (' + plan.workload.expert_kernel + ')':34}{pred.compute_ms:>13.4f} ms",
            f"  {'dispatch + combine (exposed)':34}{pred.comm_ms:>13.4f} ms",
            f"  {'MoE layer':34}{pred.moe_layer_ms:>13.4f} ms",
            f"  {'slowest layer (#' + str(worst.layer) + ')':34}{worst.total_ms:>13.4f} ms",
            "",
            f"  all {m.num_moe_layers} MoE layers per step: {pred.moe_time_per_step_ms:.3f} ms"
            f" (p50 {pred.moe_time_p50_ms:.3f}, p99 {pred.moe_time_p99_ms:.3f})",
            f"  bytes per step: NVLink {_fmt_bytes(pred.intra_node_bytes_per_step)},"
            f" inter-node {_fmt_bytes(pred.inter_node_bytes_per_step)}",
            f"  {'memory' if pred.memory_breakdown_gib else 'weights'} per GPU: {pred.memory_per_gpu_gib:.2f} GiB"
            + (" (" + ", ".join(f"{k} {v:.1f}" for k, v in pred.memory_breakdown_gib.items() if v > 0.05) + ")"
               if pred.memory_breakdown_gib else ""),
        ]
        lines += [f"  note: {n}" for n in pred.notes]
    lines += render_launch(plan)  # parallelism search and launch arguments (planner.solve.parallel)
    lines += render_cache(plan)  # offload mode: the GPU expert cache (planner.offload)
    return "\n".join(lines)


@click.command()
@click.option("--model", default="qwen3-30b-a3b", show_default=True, help="Preset name, HF config.json, or ModelSpec .yaml/.json")
@click.option("--hardware", default="h100-sxm", show_default=True, help="Hardware profile name or profile file")
@click.option("--nodes", default=1, show_default=True, type=int, help="Nodes")
@click.option("--gpus-per-node", default=8, show_default=True, type=int, help="GPUs per node")
@click.option("--mode", default="decode", show_default=True, type=click.Choice(["train", "prefill", "decode", "offload"]))
@click.option("--trace", "trace_path", default=None, type=click.Path(dir_okay=False), help="Routing trace (.npz, SGLang .json/.pt); default: the model's shipped trace or a synthetic one")
@click.option("--ep", type=int, default=None, help="Expert-parallel degree (omitted: all GPUs of a stage)")
@click.option("--tp", type=int, default=None, help="Tensor-parallel degree")
@click.option("--pp", type=int, default=None, help="Pipeline-parallel degree")
@click.option("--dp", type=int, default=None, help="Data-parallel degree")
@click.option("--etp", type=int, default=None, help="Expert tensor-parallel degree")
@click.option("--vpp", type=int, default=None, help="Virtual pipeline stages")
@click.option("--micro-batch", type=int, default=None, help="Micro-batch size (sequences)")
@click.option("--cp", type=int, default=None, help="Context-parallel degree (train; omitted: searched)")
@click.option("--recompute", type=click.Choice(["none", "selective", "full"]), default=None, help="Activation recompute (train; omitted: searched)")
@click.option("--latency-target-ms", type=float, default=None, help="Serving: per-token latency target for the parallelism search, ms")
@click.option("--cross-node", is_flag=True, help="Let TP and EP×ETP groups span nodes in the parallelism search")
@click.option("--global-batch", type=int, default=None, help="Global batch size (sequences)")
@click.option("--seq-len", type=int, default=4096, show_default=True, help="Sequence length")
@click.option("--tokens-per-step", type=int, default=None, help="Tokens per step when the trace has no step array")
@click.option("--redundant-experts", type=int, default=0, show_default=True, help="Extra physical expert slots for replicas")
@click.option("--gpu-memory-gb", type=float, default=None, help="GPU memory budget (offload mode)")
@click.option("--baseline", type=click.Choice(["contiguous", "round-robin", "eplb"]), default=None, help="Produce this baseline plan instead of solving")
@click.option("--dispatch", type=click.Choice(["even", "local-first", "nearest"]), default="even", show_default=True,
              help="How tokens pick among replicas: even spread, own GPU first, or nearest (own GPU, then own node: "
                   "SGLang --ep-dispatch-algorithm static)")
@click.option("--expert-kernel", type=click.Choice(["loop", "grouped"]), default="loop", show_default=True,
              help="Placement figures with experts run one after another (loop, the profiled kernels) or as one grouped GEMM per GPU")
@click.option("--previous", "previous_path", default=None, type=click.Path(dir_okay=False),
              help="Plan in service (plan.json): re-plan with a penalty per moved expert (migration-aware)")
@click.option("--time-limit", type=float, default=60.0, show_default=True, help="Solver time limit in seconds")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write OUT/plan.json")
@click.option("--force", is_flag=True, help="Overwrite OUT/plan.json if it exists")
@click.option("--dry-run", is_flag=True, help="Check the inputs and print the problem size; solve nothing")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or the dry-run report) as JSON on stdout")
def plan(trace_path, out_dir, force, dry_run, as_json, model, hardware, previous_path, **opts) -> None:
    """Plan expert placement (and, later, parallelism and caching) for an MoE deployment.

    With no arguments it plans the embedded default: Qwen3-30B-A3B on one 8-GPU H100 node,
    with the shipped synthetic routing trace.
    """
    from planner.api import prepare, solve

    out_file = Path(out_dir) / "plan.json" if out_dir else None
    if out_file is not None:
        check_writable(out_file, force)
    problem = prepare(model, hardware, trace=trace_path, **opts)
    if dry_run:
        problem.check_memory()  # infeasible weights exit 1 here too, before anything is solved
        size = problem.size()
        if as_json:
            click.echo(json.dumps(size, indent=1))
        else:
            click.echo("dry run: inputs are valid; nothing solved")
            for k, v in size.items():
                click.echo(f"  {k:16} {v}")
        return
    result = solve(problem, previous=previous_path) if previous_path else solve(problem)
    if out_file is not None:
        result.save(out_file)
    if as_json:
        click.echo(result.to_json(), nl=False)
    else:
        click.echo(render_plan(result))
    if out_file is not None:
        click.echo(f"wrote {out_file}", err=True)
