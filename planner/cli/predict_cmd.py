"""``moe-planner predict``: what the cost model predicts for one expert, and for a whole MoE layer.

    moe-planner predict --model deepseek-v3 --hardware h100 --tokens-per-expert 256
    moe-planner predict --model mixtral-8x7b --tokens-per-expert 64 --tokens 4096 --ep 8 --json

``expert_ffn_ms``: one expert's FFN at N tokens (:func:`planner.cost.compute.expert_ffn_ms`).
With ``--tokens T``: one MoE layer for T tokens spread by uniform routing over ``--ep`` GPUs, with
its compute and communication parts (:func:`planner.cost.moe_layer.uniform_moe_layer`).
"""

from __future__ import annotations

import json

import click

from planner.cost.compute import expert_ffn_ms, ffn_curve
from planner.cost.moe_layer import uniform_moe_layer
from planner.errors import InputError
from planner.specs.hardware import load_hardware
from planner.specs.model import DTYPE_BYTES
from planner.specs.model_io import load_model


@click.command()
@click.option("--model", default="qwen3-30b-a3b", show_default=True, help="Preset name, HF config.json, or ModelSpec .yaml/.json")
@click.option("--hardware", default="h100-sxm", show_default=True, help="Hardware profile name or profile file")
@click.option("--tokens-per-expert", "tokens_per_expert", type=float, default=None, help="Tokens routed to the expert (N)")
@click.option("--tokens", type=float, default=None, help="Tokens of one step for a whole MoE layer (T), spread over --ep GPUs")
@click.option("--ep", type=int, default=1, show_default=True, help="Expert-parallel GPUs sharing the layer's experts (with --tokens)")
@click.option("--gpus-per-node", type=int, default=None, help="GPUs per node (default: the profile's NVLink domain)")
@click.option("--etp", type=int, default=1, show_default=True, help="Expert tensor-parallel degree (splits each expert's FFN width)")
@click.option("--dispatcher", type=click.Choice(["deepep", "gpu", "pairs"]), default="deepep", show_default=True,
              help="Dispatch traffic: one copy per destination node/GPU (deepep), per GPU, or per (token, expert) pair")
@click.option("--dtype", default=None, help="Expert weight dtype (default: the model's expert_dtype)")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object on stdout")
def predict(model, hardware, tokens_per_expert, tokens, ep, gpus_per_node, etp, dispatcher, dtype, as_json) -> None:
    """Predict one expert's FFN time (and, with --tokens, a whole MoE layer's)."""
    if tokens_per_expert is None and tokens is None:
        raise InputError("predict needs --tokens-per-expert N (one expert) and/or --tokens T (a whole MoE layer)")
    if tokens_per_expert is not None and not tokens_per_expert >= 0:
        raise InputError(f"--tokens-per-expert must be >= 0 (got {tokens_per_expert:g})")
    if tokens is not None and not tokens >= 0:
        raise InputError(f"--tokens must be >= 0 (got {tokens:g})")
    if tokens is None and ep != 1:
        raise InputError(f"--ep ({ep}) needs --tokens: it spreads a whole layer's tokens over GPUs")
    if etp <= 0:
        raise InputError(f"--etp must be > 0 (got {etp})")
    if gpus_per_node is not None and gpus_per_node <= 0:
        raise InputError(f"--gpus-per-node must be > 0 (got {gpus_per_node})")
    m = load_model(model)
    if dtype is not None:
        if dtype not in DTYPE_BYTES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPE_BYTES)} (got {dtype!r})")
        m = m.model_copy(update={"expert_dtype": dtype})
    hw = load_hardware(hardware)
    if m.expert_intermediate_size % etp:
        raise InputError(f"--etp ({etp}) must divide the expert FFN width ({m.expert_intermediate_size})")
    ffn = m.expert_intermediate_size // etp
    n_tok = tokens_per_expert if tokens_per_expert is not None else tokens * m.top_k / m.num_experts
    curve = ffn_curve(hw, m.hidden_size, ffn, m.expert_dtype)
    out: dict = {
        "model": m.name,
        "hardware": hw.name,
        "hidden": m.hidden_size,
        "ffn": ffn,
        "dtype": m.expert_dtype,
        "tokens_per_expert": n_tok,
        "expert_ffn_ms": float(expert_ffn_ms(hw, m.hidden_size, ffn, m.expert_dtype, n_tok)),
        "source": {"table": "measured table", "transfer": "device model + nearest measured shapes", "model": "device model"}[curve.source],
    }
    layer = None
    if tokens is not None:
        layer = uniform_moe_layer(hw, m, tokens, ep, gpus_per_node=gpus_per_node, etp=etp, dispatcher=dispatcher)
        out["moe_layer_ms"] = layer.moe_layer_ms
        out["moe_layer"] = layer.as_dict()
    if as_json:
        click.echo(json.dumps(out, indent=1))
        return
    click.echo(
        f"{m.name} expert ({m.hidden_size} × {ffn}, {m.expert_dtype}) on {hw.name} at {n_tok:g} tokens: "
        f"{out['expert_ffn_ms']:.4f} ms  [{out['source']}]"
    )
    if layer is not None:
        click.echo(
            f"MoE layer, {tokens:g} tokens over ep {layer.ep} ({layer.gpus_per_node} per node), uniform routing: "
            f"{layer.tokens_per_expert:g} tokens per expert, {layer.experts_per_gpu} experts per GPU"
        )
        for name, v in (
            ("router", layer.router_ms), ("permute", layer.permute_ms),
            (f"dispatch + combine ({dispatcher})", layer.comm_ms), ("expert compute", layer.compute_ms),
            ("unpermute + combine", layer.combine_ms), ("shared experts", layer.shared_experts_ms),
        ):
            click.echo(f"  {name:32} {v:10.4f} ms")
        click.echo(f"  {'MoE layer':32} {layer.moe_layer_ms:10.4f} ms")
