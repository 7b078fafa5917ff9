"""``moe-planner plan``: the main job (docs/contracts.md, "Command line").

The planning flags are made from :class:`planner.specs.options.PlanOptions` (one flag per field
that has one: same name with dashes, default, help and choices), so the command, the sweep
spec and :func:`planner.plan` cannot disagree; the flags written here only say where the
result goes and how it is printed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from planner.api import prepare, solve
from planner.cli.render import flags_text, render_launch
from planner.cli.render_serving import render_serving
from planner.cli.render_strategies import render_strategies
from planner.cost.memory import GIB
from planner.errors import InputError
from planner.io import check_writable
from planner.offload import OffloadProblem
from planner.progress import StderrProgress, reporting, stage, wants_progress
from planner.serve_plan import plan_serving
from planner.solve.strategies import plan_what_if
from planner.specs.options import SOLVE_OPTIONS, PlanOptions, flag_info, option_kinds
from planner.specs.plan import Plan


def _fmt_bytes(b: float) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= div:
            return f"{b / div:.2f} {unit}"
    return f"{b:.0f} B"


def render_plan(plan: Plan) -> str:
    """The human-readable plan table."""
    m, c, par, pl, pred, sol = plan.model, plan.cluster, plan.parallel, plan.placement, plan.predicted, plan.solver
    n_phys = par.ep * pl.slots_per_gpu
    lines = [
        f"moe-planner plan: {m.name} on {c.num_nodes} × {c.gpus_per_node} {c.hardware} ({plan.workload.mode})",
        f"  trace      {plan.provenance.trace}",
        f"  parallel   dp {par.dp}  tp {par.tp}  pp {par.pp}  ep {par.ep}  etp {par.etp}",
        f"  placement  {m.num_experts} experts + {n_phys - m.num_experts} redundant = {n_phys} slots,"
        f" {pl.slots_per_gpu} per GPU; dispatch {plan.dispatch}" if plan.cache is None else
        f"  experts    {m.num_experts} per MoE layer in pinned host memory, cached on the GPU (cache below)",
    ]
    if sol.candidates:
        cand = ", ".join(f"{k} {v:.3f} ms" for k, v in sol.candidates.items())
        lines.append(f"  solver     {sol.name} ({sol.status}); planning-step MoE time: {cand}")
    else:
        lines.append(f"  solver     {sol.name} ({sol.status})")
    if sol.bound is not None and sol.gap is not None:
        lines.append(f"  bound      {sol.bound:.3f} ms (gap {100 * sol.gap:.1f}%), solved in {sol.time_s:.1f} s")
    if pred is not None:
        lines += _predicted_lines(plan)
    lines += render_launch(plan)  # parallelism search and launch arguments (planner.cli.render)
    lines += render_cache(plan)  # offload mode: the GPU expert cache
    return "\n".join(lines)


def _predicted_lines(plan: Plan) -> list[str]:
    """The predicted figures, labelled by what they are: an offload plan (one GPU, experts in
    host memory) has no dispatch, imbalance or NVLink traffic, its time beside compute is the
    stall waiting for expert copies; a serving plan's step time is a step, not a token."""
    m, pred = plan.model, plan.predicted
    assert pred is not None
    worst = max(pred.per_layer, key=lambda lp: lp.total_ms)
    offload = plan.cache is not None
    lines = [f"  scored on  {pred.evaluated_on}, {pred.tokens_per_step:.0f} tokens per step", "",
             f"  {'':34}{'per MoE layer':>16}"]
    if offload:
        lines += [
            f"  {'compute (attention, router, FFNs)':34}{pred.compute_ms:>13.4f} ms",
            f"  {'stall (expert copies, CPU experts)':34}{pred.comm_ms:>13.4f} ms",
            f"  {'layer':34}{pred.moe_layer_ms:>13.4f} ms",
        ]
    else:
        lines += [
            f"  {'load imbalance (max/mean GPU)':34}{pred.imbalance:>16.3f}",
            f"  {'expert compute, slowest GPU (' + plan.workload.expert_kernel + ')':34}{pred.compute_ms:>13.4f} ms",
            f"  {'dispatch + combine (exposed)':34}{pred.comm_ms:>13.4f} ms",
            f"  {'MoE layer':34}{pred.moe_layer_ms:>13.4f} ms",
        ]
    lines += [f"  {'slowest layer (#' + str(worst.layer) + ')':34}{worst.total_ms:>13.4f} ms", ""]
    what = "layers of one decode step" if offload else "MoE layers per step"
    lines.append(f"  all {m.num_moe_layers} {what}: {pred.moe_time_per_step_ms:.3f} ms"
                 f" (p50 {pred.moe_time_p50_ms:.3f}, p99 {pred.moe_time_p99_ms:.3f})")
    lines += _step_lines(plan)
    if not offload:
        lines.append(f"  bytes per step: NVLink {_fmt_bytes(pred.intra_node_bytes_per_step)},"
                     f" inter-node {_fmt_bytes(pred.inter_node_bytes_per_step)}")
    lines.append(
        f"  {'memory' if pred.memory_breakdown_gib else 'weights'} per GPU: {pred.memory_per_gpu_gib:.2f} GiB"
        + (" (" + ", ".join(f"{k} {v:.1f}" for k, v in pred.memory_breakdown_gib.items() if v > 0.05) + ")"
           if pred.memory_breakdown_gib else "")
    )
    return lines + [f"  note: {flags_text(n)}" for n in pred.notes]


def _step_lines(plan: Plan) -> list[str]:
    """The whole step of the step-time model, and what it means per token for serving."""
    pred, mode = plan.predicted, plan.workload.mode
    assert pred is not None
    if pred.step_time_ms is None:
        return []
    what = {"train": "optimizer step", "prefill": "prefill step", "decode": "decode step"}.get(mode, "step")
    line = f"  whole {what} (step-time model): {pred.step_time_ms:.3f} ms"
    if pred.latency_per_token_ms is not None and mode == "prefill":
        same = abs(pred.latency_per_token_ms - pred.step_time_ms) <= 1e-9 * max(1.0, pred.step_time_ms)
        line += " = time to first token" if same else f"; time to first token {pred.latency_per_token_ms:.3f} ms"
    elif pred.latency_per_token_ms is not None and mode == "decode":
        line += f"; {pred.latency_per_token_ms:.3f} ms per output token"
    if pred.tokens_per_s is not None:
        line += f"; {pred.tokens_per_s:,.0f} tokens/s"
    return [line]


def render_cache(plan: Plan) -> list[str]:
    """Lines for the ``cache`` section of ``moe-planner plan``'s table (empty without a cache)."""
    c = plan.cache
    if c is None:
        return []
    res = [len(r) for r in c.resident]
    lines = [
        "",
        f"  cache      {c.budget_bytes / GIB:.2f} GiB for experts: {sum(res)} resident (per layer {min(res)}-{max(res)}),"
        f" {sum(c.dynamic_slots)} dynamic {c.policy} slots, {c.staging_slots} staging buffers",
    ]
    if c.prefetch is not None:
        acc = f", accuracy {100 * c.prefetch.accuracy:.1f}%" if c.prefetch.accuracy is not None else ""
        lines.append(f"  prefetch   up to {c.prefetch.count} next-layer experts with P >= {c.prefetch.threshold}"
                     f" ({c.prefetch.predictor}){acc}")
    if c.cpu_execution != "off":
        rule = "when that finishes before a copy would (Fiddler's rule)" if c.cpu_execution == "fastest" else "always"
        lines.append(f"  CPU        missed experts run on the host CPU {rule}")
    cp = c.predicted
    if cp is not None:
        bel = cp.belady_transfers_per_step
        bel_s = f"; Belady's bound on misses {bel:.1f} per step" if bel is not None else ""
        lines += [
            f"  hit rate   {100 * cp.hit_rate:.1f}%; {cp.transfers_per_step:.1f} expert copies per step"
            f" ({cp.bytes_per_step / 1e6:.1f} MB), {cp.cpu_per_step:.1f} missed experts run on the CPU{bel_s}",
            f"  decode     {cp.step_ms:.3f} ms per step of {cp.decode_batch} token(s), stall {cp.stall_ms_per_step:.3f} ms:"
            f" {cp.tokens_per_s:.1f} tokens/s",
        ]
    return lines


def plan_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate ``f`` with a click option per :class:`PlanOptions` field that has a flag, in
    field order: ``--gpus-per-node`` for ``gpus_per_node``, the field's default (shown unless it
    is ``None`` or a switch), its description as help, its allowed values as choices, a file
    path for ``path`` options and a switch for booleans."""
    kinds = option_kinds()
    for name, field in reversed(PlanOptions.model_fields.items()):
        info = flag_info(name)
        if not info["flag"]:
            continue
        kind, choices, _ = kinds[name]
        flag = "--" + name.replace("_", "-")
        default = field.default
        names = (flag, *info.get("aliases", ()))
        if kind == "bool":
            f = click.option(*names, is_flag=True, default=default, help=field.description)(f)
            continue
        if choices is not None:
            typ: Any = click.Choice(list(choices))
        elif info["path"]:
            typ = click.Path(dir_okay=False)
        else:
            typ = {"int": int, "float": float, "str": None}[kind]
        f = click.option(*names, name, type=typ, default=default, show_default=default is not None,
                         help=field.description)(f)
    return f


@click.command()
@plan_flags
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write OUT/plan.json")
@click.option("--force", is_flag=True, help="Overwrite OUT/plan.json if it exists")
@click.option("--dry-run", is_flag=True, help="Check the inputs and print the problem size; solve nothing")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or the dry-run report) as JSON on stdout")
@click.option("--progress", "show_progress", is_flag=True,
              help="Show the stages on stderr even when it is not a terminal (on a terminal they always show)")
@click.option("--strategies", "show_strategies", is_flag=True,
              help="--mode train: also price FSMoE, FSSDP (Hecate) and DeepSpeed-MoE on the chosen layout (docs/strategies.md)")
def plan(out_dir, force, dry_run, as_json, show_progress, model, hardware, previous, show_strategies=False,
         **opts) -> None:
    """Plan expert placement (and, later, parallelism and caching) for an MoE deployment.

    With no arguments it plans the embedded default: Qwen3-30B-A3B on one 8-GPU H100 node,
    with the shipped synthetic routing trace. ``--mode serve`` plans a prefill pool and a decode
    pool and compares them with colocated serving (docs/serving.md).
    """
    out_file = Path(out_dir) / "plan.json" if out_dir else None
    if out_file is not None:
        check_writable(out_file, force)
    if opts.get("mode") == "serve":
        _serve(out_file, dry_run, as_json, show_progress, model, hardware, previous, opts)
        return
    offload = opts.get("mode") == "offload"
    solve_kw = {k: opts.pop(k) for k in SOLVE_OPTIONS if k in opts}  # the rest are prepare()'s
    bar = StderrProgress("plan", stages=2 if offload else 4) if wants_progress(show_progress) else None
    with reporting(bar):
        stage("loading inputs")
        problem = prepare(model, hardware, **opts)
        if dry_run:
            problem.check_memory()  # infeasible weights exit 1 here too, before anything is solved
        else:
            if isinstance(problem, OffloadProblem):
                stage("expert-cache search (offload)")
            result = solve(problem, previous=previous or None, **solve_kw)
    if dry_run:
        size = problem.size()
        if as_json:
            click.echo(json.dumps(size, indent=1))
        else:
            click.echo("dry run: inputs are valid; nothing solved")
            for k, v in size.items():
                click.echo(f"  {k:16} {v}")
        return
    if out_file is not None:
        result.save(out_file)
    if as_json:
        click.echo(result.to_json(), nl=False)
    else:
        click.echo(render_plan(result))
        if show_strategies:  # what-ifs beside the search's layout (planner.solve.strategies)
            click.echo("\n".join(render_strategies(plan_what_if(result))))
    if out_file is not None:
        click.echo(f"wrote {out_file}", err=True)


def _serve(out_file: Path | None, dry_run: bool, as_json: bool, show_progress: bool, model: str, hardware: str,
           previous: str | None, opts: dict[str, Any]) -> None:
    """``plan --mode serve``: :func:`planner.serve_plan.plan_serving`, rendered."""
    if dry_run:
        raise InputError("dry_run is not available with mode serve (pool sizes are searched)", field="dry_run")
    opts = {k: v for k, v in opts.items() if k != "mode"}
    bar = StderrProgress("plan", stages=5) if wants_progress(show_progress) else None
    with reporting(bar):
        result = plan_serving(model, hardware, previous=previous, **opts)
    if out_file is not None:
        result.save(out_file)
    if as_json:
        click.echo(result.to_json(), nl=False)
    else:
        click.echo("decode pool (its plan: placement, figures); both pools and the colocated comparison below")
        click.echo(render_plan(result.model_copy(update={"launch": None})))
        click.echo("\n".join(render_serving(result)))
    if out_file is not None:
        click.echo(f"wrote {out_file}", err=True)
