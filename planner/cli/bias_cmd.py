"""``moe-planner trace bias-sim``: the imbalance a training run with DeepSeek-V3's
auxiliary-loss-free bias sees over steps (:mod:`planner.bias_balance`), per expert and per GPU
under placements: contiguous, EPLB planned on the unbalanced loads (with ``--redundant``
replicas), or a plan's (``--plan``).

The router's mean logits are fitted to a trace's counts (``--trace``) or drawn (``--skew``);
``--noise`` is the spread of a token's logits around them (module docstring of
:mod:`planner.bias_balance`: what the model assumes).
"""

from __future__ import annotations

import json

import click
import numpy as np

from planner.bias_balance import (
    SCORINGS,
    fit_router,
    placements_for,
    simulate_bias,
    synthetic_router,
)
from planner.errors import InputError
from planner.specs.model_io import load_model
from planner.specs.plan import Plan
from planner.traces import load_trace


@click.command("bias-sim")
@click.option("--model", "model_arg", metavar="NAME|FILE", help="Model preset or file: experts, top-k, scoring.")
@click.option("--experts", type=int, help="Routed experts per layer (without --model).")
@click.option("--top-k", "top_k", type=int, help="Experts per token (without --model).")
@click.option("--trace", "trace_arg", metavar="FILE", help="Fit the router's mean logits to this trace's counts.")
@click.option("--layers", type=int, default=4, show_default=True, help="MoE layers simulated (the first ones).")
@click.option("--scoring", type=click.Choice(SCORINGS), help="Router score the bias is added to (default: the model's, else sigmoid).")
@click.option("--noise", type=float, default=1.0, show_default=True, help="Std of a token's logits around the expert's mean.")
@click.option("--skew", type=float, default=1.0, show_default=True, help="Std of the experts' mean logits (without --trace).")
@click.option("--update-rate", type=float, default=1e-3, show_default=True, help="Bias update speed γ (DeepSeek-V3: 0.001).")
@click.option("--steps", type=int, default=300, show_default=True, help="Training steps simulated.")
@click.option("--tokens-per-step", type=int, default=4096, show_default=True, help="Tokens per step (per layer).")
@click.option("--gpus", type=int, default=8, show_default=True, help="Expert-parallel GPUs of the placements followed.")
@click.option("--redundant", type=int, default=0, show_default=True, help="Redundant slots of the EPLB placement (0: none).")
@click.option("--plan", "plan_arg", metavar="PLAN.json", help="Also follow this plan's placement (its first layers).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def bias_sim(
    model_arg: str | None, experts: int | None, top_k: int | None, trace_arg: str | None, layers: int, scoring: str | None,
    noise: float, skew: float, update_rate: float, steps: int, tokens_per_step: int, gpus: int, redundant: int,
    plan_arg: str | None, seed: int, as_json: bool,
) -> None:
    """Predict per-step expert and GPU imbalance under auxiliary-loss-free bias balancing."""
    model = load_model(model_arg) if model_arg else None
    if model is not None:
        experts, top_k = model.num_experts, model.top_k
        scoring = scoring or model.scoring
    if experts is None or top_k is None:
        raise InputError("bias-sim needs --model or both --experts and --top-k", field="model")
    if layers <= 0:
        raise InputError(f"--layers must be > 0 (got {layers})", field="layers")
    scoring = scoring or "sigmoid"
    if trace_arg:
        counts = load_trace(trace_arg, model=model).counts()[:layers]
        if counts.shape[1] != experts:
            raise InputError(f"--trace has {counts.shape[1]} experts per layer, the model {experts}", field="trace")
        router = fit_router(counts, top_k, noise=noise, scoring=scoring, seed=seed)
    else:
        router = synthetic_router(layers, experts, top_k, skew=skew, noise=noise, scoring=scoring, seed=seed)
    L = router.shape[0]
    pl = placements_for(router, gpus, redundant, seed=seed)
    if plan_arg:
        plan = Plan.load(plan_arg)
        p2l = np.asarray(plan.placement.physical_to_logical)[:L]
        if p2l.shape[0] < L:
            raise InputError(f"--plan has {p2l.shape[0]} MoE layers; the simulation {L}", field="plan")
        pl[f"plan {plan.model.name} ep{plan.parallel.ep}"] = (p2l, plan.parallel.ep)
    res = simulate_bias(router, steps=steps, tokens_per_step=tokens_per_step, update_rate=update_rate, placements=pl, seed=seed)
    s = res.summary()
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    lines = [
        f"bias-sim: {L} layers × {router.shape[1]} experts, top-{top_k}, {scoring} scores, noise {noise:g}; "
        f"router {router.source}; γ {update_rate:g}, {tokens_per_step} tokens/step, {steps} steps",
        f"{'max/mean (mean over layers)':<52}" + "".join(f"{'step ' + str(p):>11}" for p in s["at_steps"])
        + f"{'steady':>9}{'steps':>7}",
    ]
    for name, v in s["series"].items():
        to = "-" if v["steps_to_steady"] is None else str(v["steps_to_steady"])
        lines.append(f"{name[:52]:<52}" + "".join(f"{x:>11.3f}" for x in v["imbalance_at"]) + f"{v['steady_state']:>9.3f}{to:>7}")
    lines += [f"note: {n}" for n in s["notes"]]
    lines.append("steady: mean over the last quarter of the steps; steps: first step whose 10-step mean is within 10% of it")
    click.echo("\n".join(lines))
