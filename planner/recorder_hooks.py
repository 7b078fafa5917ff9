"""Where :class:`planner.recorder.RoutingRecorder` hooks a torch MoE model, and how it reads what
it sees there: router discovery (:func:`find_routers`, :func:`named_routers`) and the readers of
a router's output (:func:`read_router_output`) and of an experts module's inputs
(:func:`read_experts_args`).

Two hook points, chosen per MoE block at construction:

- ``experts`` (preferred): a forward pre-hook on the block's experts module when that module
  takes the routing as arguments — ``forward(hidden_states, top_k_index, top_k_weights)`` in
  ``transformers`` 5 for every family here, ``DbrxExperts(x, weights, top_weights, top_experts)``
  and ``GptOssExperts(hidden_states, router_indices, routing_weights)`` in 4.x. The ids and
  weights recorded are then exactly those the experts compute with, whatever the router did to
  get them (DeepSeek-V2's blocks in ``transformers`` 5.0-5.10 call ``F.linear(x,
  self.gate.weight)`` and never call their ``gate``; only this point sees their routing).
- ``router``: a forward hook on the block's ``gate`` or ``router`` module (experts held as a
  ``ModuleList`` of per-expert MLPs, ``transformers`` 4.x; custom models). Its output is read as
  in :func:`find_routers`' table.

Weights, on either point, are what the experts multiply their outputs by: DeepSeek's
``routed_scaling_factor`` is included (the 4.x DeepSeek gates and the 5.x routers return it
included; logits read here are scaled the same way) and DBRX's top-k weights are divided by their
``moe_normalize_expert_weights``-norm (L1 in DBRX's config) as ``DbrxRouter`` does.

torch is imported inside the functions (``import planner`` does not import it).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from planner.errors import InputError

#: MoE block classes whose router renormalises the top-k weights whatever its config says.
ALWAYS_NORMALISE = ("MixtralSparseMoeBlock",)
#: Router classes that route as DeepSeek does (sigmoid or group-limited scores).
DEEPSEEK_ROUTERS = ("MoEGate", "DeepseekV3TopkRouter", "DeepseekV2TopkRouter", "DeepseekV2MoEGate")


@dataclass
class RouterHook:
    """How to read one MoE layer: the hooked ``module`` (a router, or the experts module when
    ``point`` is ``experts``), its MoE-layer ``layer`` index, ``top_k`` and ``num_experts``
    (None: learnt from the first output) and, for logits, how to route (``scoring`` softmax or
    deepseek, ``normalise`` over the top k, ``norm_p`` DBRX's p-norm, ``scale`` DeepSeek's
    ``routed_scaling_factor``)."""

    name: str
    module: Any
    layer: int
    top_k: int | None = None
    num_experts: int | None = None
    scoring: str = "softmax"  # softmax | deepseek
    normalise: bool = False
    n_group: int | None = None
    topk_group: int | None = None
    bias: Any = None  # DeepSeek-V3 e_score_correction_bias (a tensor), or None
    norm_p: float | None = None  # DBRX moe_normalize_expert_weights
    scale: float = 1.0  # DeepSeek routed_scaling_factor
    point: str = "router"  # router: its output is read | experts: the experts module's inputs are read
    handle: Any = None
    ids: list[Any] = field(default_factory=list)  # this step's [T_i, k] device tensors
    weights: list[Any] = field(default_factory=list)


def _configs(objs: Iterable[Any]) -> list[Any]:
    """The ``config`` of each object, and DBRX's nested ``ffn_config``."""
    out = []
    for o in objs:
        c = getattr(o, "config", None)
        if c is not None:
            out.append(c)
            ffn = getattr(c, "ffn_config", None)
            if ffn is not None:
                out.append(ffn)
    return out


def _first(objs: Iterable[Any], *names: str) -> Any:
    """The first non-callable attribute found among ``names`` on ``objs`` (objects in order)."""
    for o in objs:
        if o is None:
            continue
        for n in names:
            v = getattr(o, n, None)
            if v is not None and not callable(v):
                return v
    return None


def _attr(objs: Iterable[Any], *names: str) -> Any:
    """``names`` looked up on the modules ``objs`` first, then on their configs."""
    mods = [o for o in objs if o is not None]
    v = _first(mods, *names)
    return v if v is not None else _first(_configs(mods), *names)


def _top_k(*mods: Any) -> int | None:
    """Experts per token: the modules' own ``top_k`` / ``num_experts_per_tok``, else their
    configs' ``num_experts_per_tok`` / ``moe_top_k`` — never a config's ``top_k``, which in
    ``transformers`` 4.x is the generation default (50)."""
    v = _first([m for m in mods if m is not None], "top_k", "num_experts_per_tok", "moe_top_k")
    if v is None:
        v = _first(_configs(mods), "num_experts_per_tok", "moe_top_k", "experts_per_token")
    return int(v) if v is not None else None


def _num_experts(gate: Any, block: Any, experts: Any = None) -> int | None:
    for lin in (gate, getattr(gate, "layer", None)):  # DbrxRouter keeps its Linear as .layer
        w = getattr(lin, "weight", None)
        if w is not None and getattr(w, "ndim", 0) == 2:
            return int(w.shape[0])
    v = _attr((block, gate, experts), "num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
    return int(v) if v is not None else None


def takes_routing(experts: Any) -> bool:
    """Whether ``experts`` is one module called with the routing (hidden states, ids, weights)."""
    import torch

    if not isinstance(experts, torch.nn.Module) or isinstance(experts, torch.nn.ModuleList | torch.nn.ModuleDict):
        return False
    try:
        params = inspect.signature(experts.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(named) >= 3


def _router_of(block: Any) -> tuple[str, Any] | None:
    import torch

    for attr in ("gate", "router"):
        r = getattr(block, attr, None)
        if isinstance(r, torch.nn.Module):
            return attr, r
    return None


def find_routers(model: Any) -> list[RouterHook]:
    """The routing of every MoE block of ``model`` (a module with ``experts`` and a ``gate`` or
    ``router`` submodule), in module order; raises :class:`InputError` for a block whose router
    returns logits and whose top-k is nowhere to be found (rather than at the first forward).

    The experts module is hooked when it takes the routing as arguments (module docstring);
    otherwise the router, whose output is read as

    ==========================  =====================================  ================================
    router (transformers)       returns                                ids taken as
    ==========================  =====================================  ================================
    ``nn.Linear`` (Mixtral,     logits [T, E]                          top-k of softmax(logits); weights
    Qwen2/3-MoE, OLMoE 4.x)                                            renormalised over the top-k for
                                                                       Mixtral, else when the block's
                                                                       ``norm_topk_prob`` is set
    ``*TopKRouter`` (5.x)       ``(logits, scores, indices)``          the integer tensor of the tuple
    DeepSeek ``MoEGate`` /      ``(topk_idx, topk_weight[, aux])``     the integer tensor of the tuple
    ``DeepseekV3TopkRouter``
    (4.x)
    ``DeepseekV3TopkRouter``    logits [T, E] (5.0-5.10)               sigmoid scores + the gate's
                                                                       ``e_score_correction_bias``,
                                                                       group-limited top-k (``n_group``,
                                                                       ``topk_group``: the best
                                                                       ``topk_group`` groups by the sum
                                                                       of their two best scores), weights
                                                                       the unbiased scores, normalised
                                                                       when ``norm_topk_prob``, times
                                                                       ``routed_scaling_factor``
    ``DbrxRouter`` (4.x)        ``(weights, top_weights, top_experts)``  the integer tensor of the tuple
    ==========================  =====================================  ================================

    (Module names and outputs as in ``transformers``' ``modeling_mixtral.py``,
    ``modeling_qwen2_moe.py``, ``modeling_qwen3_moe.py``, ``modeling_olmoe.py``,
    ``modeling_deepseek_v2.py``, ``modeling_deepseek_v3.py``, ``modeling_dbrx.py``,
    ``modeling_gpt_oss.py`` of 4.57, 5.10 and 5.24, and DeepSeek's own ``modeling_deepseek.py``;
    the group-limited routing is DeepSeek-V3's, docs/facts.md.)
    """
    import torch

    out: list[RouterHook] = []
    for name, block in model.named_modules():
        experts = getattr(block, "experts", None)
        found = _router_of(block) if experts is not None else None
        if found is None:
            continue
        attr, gate = found
        cls = type(block).__name__
        deepseek = "deepseek" in cls.lower() or type(gate).__name__ in DEEPSEEK_ROUTERS
        top_k = _top_k(block, gate)
        prefix = f"{name}." if name else ""
        point = "experts" if takes_routing(experts) else "router"
        hook = RouterHook(
            name=f"{prefix}experts" if point == "experts" else f"{prefix}{attr}",
            module=experts if point == "experts" else gate,
            layer=len(out),
            top_k=top_k,
            num_experts=_num_experts(gate, block, experts),
            scoring="deepseek" if deepseek else "softmax",
            normalise=cls in ALWAYS_NORMALISE or bool(_attr((block, gate), "norm_topk_prob")),
            point=point,
        )
        p = _attr((block, gate), "moe_normalize_expert_weights")
        hook.norm_p = float(p) if p is not None else None
        if deepseek:
            hook.n_group = _attr((gate, block), "n_group")
            hook.topk_group = _attr((gate, block), "topk_group")
            hook.bias = getattr(gate, "e_score_correction_bias", None)
            hook.scale = float(_attr((gate, block), "routed_scaling_factor") or 1.0)
        if point == "router" and isinstance(gate, torch.nn.Linear) and top_k is None:
            raise InputError(
                f"RoutingRecorder: the router {hook.name} returns logits and its block says no top-k "
                "(top_k / num_experts_per_tok); pass top_k="
            )
        out.append(hook)
    return out


def named_routers(model: Any, routers: Iterable[Any], top_k: int | None, num_experts: int | None) -> list[RouterHook]:
    """Hooks for routers named by the caller (module names of ``model``, or modules); top-k and
    DBRX's weight norm may come from the router's block (a named DBRX ``router``: ``DbrxFFN.top_k``).
    A ``Linear`` router whose top-k is nowhere to be found is an error here, not at the first forward."""
    import torch

    by_name = dict(model.named_modules())
    by_id = {id(m): n for n, m in by_name.items()}
    out = []
    for r in routers:
        if isinstance(r, str):
            if r not in by_name:
                raise InputError(f"RoutingRecorder: routers: the model has no module named {r!r}")
            mod, name = by_name[r], r
        elif isinstance(r, torch.nn.Module):
            mod, name = r, by_id.get(id(r), type(r).__name__)
        else:
            raise InputError(f"RoutingRecorder: routers: expected module names or modules, got {type(r).__name__}")
        parent = by_name.get(name.rpartition(".")[0])  # its block (the model for a top-level name)
        k = top_k if top_k is not None else _top_k(mod, parent)
        if k is None and isinstance(mod, torch.nn.Linear):
            raise InputError(f"RoutingRecorder: router {name} is a Linear (it returns logits) and no top-k is "
                             "known from it or its block; pass top_k=")
        hook = RouterHook(name=name, module=mod, layer=len(out), top_k=k,
                          num_experts=num_experts if num_experts is not None else _num_experts(mod, parent))
        p = _attr((parent, mod), "moe_normalize_expert_weights")
        hook.norm_p = float(p) if p is not None else None
        out.append(hook)
    return out


def deepseek_topk(logits: Any, top_k: int, n_group: int | None, topk_group: int | None, bias: Any, normalise: bool) -> tuple[Any, Any]:
    """DeepSeek-V3 routing from router logits [T, E]: ids and weights [T, k] (:func:`find_routers`, ``DeepseekV3TopkRouter``)."""
    import torch

    scores = logits.float().sigmoid()
    choice = scores + bias.float() if bias is not None else scores
    T, E = choice.shape
    if n_group and topk_group and n_group > 1 and E % n_group == 0:
        per = E // n_group
        grouped = choice.view(T, n_group, per)
        group_score = grouped.topk(min(2, per), dim=-1).values.sum(dim=-1)  # [T, n_group]
        keep = group_score.topk(topk_group, dim=-1).indices
        mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~mask.repeat_interleave(per, dim=1), float("-inf"))
    ids = choice.topk(top_k, dim=-1).indices
    w = scores.gather(1, ids)
    if normalise:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, w


def _ids_and_weights(h: RouterHook, tensors: list[Any]) -> tuple[Any, Any] | None:
    """The first integer tensor of ``tensors`` as ids, and the float tensor of its shape (or of
    shape [.., E], gathered at the ids) as weights; None when no integer tensor is there."""
    import torch

    ints = [t for t in tensors if not t.is_floating_point() and t.dtype != torch.bool and t.ndim >= 1]
    if not ints:
        return None
    ids = ints[0].detach()
    floats = [t for t in tensors if t.is_floating_point()]
    w = next((t for t in floats if t.shape == ids.shape), None)
    if w is None and h.num_experts is not None and ids.ndim == 2:  # gpt-oss 4.x: scores [T, E]
        dense = next((t for t in floats if t.ndim == 2 and t.shape == (ids.shape[0], h.num_experts)), None)
        w = None if dense is None else dense.gather(1, ids.long())
    return ids, None if w is None else w.detach()


def read_experts_args(h: RouterHook, args: Any, kwargs: Any) -> tuple[Any, Any]:
    """(ids [.., k], weights [.., k] or None) from the arguments of an experts module's forward."""
    import torch

    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    got = _ids_and_weights(h, tensors)
    if got is None:
        raise InputError(f"RoutingRecorder: the experts module {h.name} was called without a tensor of expert ids")
    return got


def read_router_output(h: RouterHook, output: Any, record_weights: bool) -> tuple[Any, Any]:
    """(ids [.., k], weights [.., k] or None) from a router's output."""
    import torch

    if isinstance(output, tuple | list):
        tensors = [t for t in output if isinstance(t, torch.Tensor)]
        got = _ids_and_weights(h, tensors)
        if got is not None:
            return got
        floats = [t for t in tensors if t.is_floating_point() and t.ndim >= 2]
        if not floats:
            raise InputError(f"RoutingRecorder: router {h.name} returned no tensor of ids or logits")
        output = floats[0]
    if not isinstance(output, torch.Tensor):
        raise InputError(f"RoutingRecorder: router {h.name} returned {type(output).__name__}, not a tensor")
    if not output.is_floating_point():
        return output.detach(), None
    logits = output.detach().reshape(-1, output.shape[-1])
    if h.num_experts is None:
        h.num_experts = int(logits.shape[-1])
    if h.top_k is None:
        raise InputError(f"RoutingRecorder: router {h.name} returns logits; pass top_k=")
    if h.scoring == "deepseek":
        ids, w = deepseek_topk(logits, h.top_k, h.n_group, h.topk_group, h.bias, h.normalise)
        return ids, w * h.scale
    if not record_weights:
        return logits.topk(h.top_k, dim=-1).indices, None  # softmax is monotone: same ids
    # top-k of the logits (softmax is monotone), then the weights from the k values alone:
    # softmax(l)_i = exp(l_i − logsumexp(l)); renormalised over the top k it is softmax(top k)
    vals, ids = logits.topk(h.top_k, dim=-1)
    vals = vals.float()
    if h.normalise:
        return ids, vals.softmax(dim=-1)
    w = (vals - logits.float().logsumexp(dim=-1, keepdim=True)).exp()
    if h.norm_p is not None:  # DBRX: top-k probabilities over their p-norm (DbrxRouter)
        w = w / w.norm(p=h.norm_p, dim=-1, keepdim=True)
    return ids, w
