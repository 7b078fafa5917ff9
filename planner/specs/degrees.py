"""The rules parallel degrees obey: one home for the plan schema, ``check``, the degree defaults
and the parallelism search.

Each rule is written once, in :func:`iter_degree_problems`, in the order the parallelism search
reports them (the first broken rule names a rejected candidate, so the order is part of the
search's output). The consumers differ only in how many problems they want:

- :class:`~planner.specs.plan.Plan` raises the first (``parallel: ...``);
- :func:`planner.check.check_plan` lists them all;
- :func:`planner.solve.degrees.resolve_degrees` raises the most basic one, with the valid values;
- :func:`planner.solve.parallel.rule_violation` rejects a candidate by the first.

The rules are the real systems' (Megatron-core, vLLM, SGLang): the degrees multiply to the GPUs;
tp divides the attention heads (and the KV heads for GQA); etp divides the expert FFN width; ep
divides the physical expert slots (every EP rank holds the same number); ep·etp divides the GPUs
of a pipeline stage (Megatron's expert-data-parallel rule); every pipeline stage keeps a layer;
interleaving (vpp > 1) needs pp > 1, layers divisible by pp·vpp and micro-batches divisible by pp;
cp > 1 needs the sequence divisible by 2·cp; the global batch divides by dp·micro-batch. Keeping
TP (and, in training, EP·ETP) inside a node is the search's policy, asked for by the caller.

Messages name fields (``ep``, ``global_batch``), never command-line flags.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from planner.errors import InputError
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec


def divisors(n: int) -> list[int]:
    """The divisors of ``n`` in increasing order."""
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class DegreeProblem:
    """One broken rule: its name (the search's ``rule_counts`` key), the field it is about and
    the message, which starts with that field when it can."""

    rule: str
    field: str
    message: str


@dataclass(frozen=True)
class Degrees:
    """The degrees a rule reads (the plan's :class:`~planner.specs.plan.Parallel` or a search
    candidate), plus the micro-batch of a training step."""

    dp: int
    tp: int
    pp: int
    ep: int
    etp: int = 1
    vpp: int = 1
    cp: int = 1
    micro_batch: int = 1

    @classmethod
    def of(cls, par: object, micro_batch: int = 1) -> Degrees:
        """From any object with ``dp, tp, pp, ep, etp, vpp, cp`` attributes."""
        return cls(par.dp, par.tp, par.pp, par.ep, par.etp, par.vpp, par.cp, micro_batch)  # type: ignore[attr-defined]


def iter_degree_problems(
    model: ModelSpec,
    cluster: ClusterSpec,
    d: Degrees,
    *,
    redundant: int | None = None,
    tp_in_node: bool = False,
    ep_in_node: bool = False,
    seq_len: int | None = None,
    global_batch: int | None = None,
) -> Iterator[DegreeProblem]:
    """Every rule ``d`` breaks, lazily, in the search's order (module docstring).

    ``redundant``: redundant expert slots; with it, ep must divide experts + redundant (a plan
    checks its slots through its placement instead). ``tp_in_node`` / ``ep_in_node``: keep TP /
    EP·ETP inside a node. ``seq_len`` and ``global_batch``: a training step's sequence and batch,
    for the cp and batch rules.
    """
    N, n = cluster.num_gpus, cluster.gpus_per_node
    L = model.num_layers
    att = model.attention
    if d.dp * d.tp * d.pp * d.cp != N:
        yield DegreeProblem("product", "dp", (
            f"dp × tp × pp × cp ({d.dp} × {d.tp} × {d.pp} × {d.cp} = {d.dp * d.tp * d.pp * d.cp}) must equal "
            f"the cluster's GPUs ({cluster.num_nodes} × {n} = {N})"
        ))
    if att.num_heads % d.tp or (att.kind == "gqa" and att.num_kv_heads % d.tp):
        yield DegreeProblem("tp-heads", "tp", (
            f"tp {d.tp} must divide the {att.num_heads} attention heads"
            + (f" and the {att.num_kv_heads} KV heads" if att.kind == "gqa" else "")
        ))
    if model.expert_intermediate_size % d.etp:
        yield DegreeProblem(
            "etp-width", "etp", f"etp ({d.etp}) must divide the expert FFN width ({model.expert_intermediate_size})"
        )
    if redundant is not None:
        slots = model.num_experts + redundant
        if slots % d.ep:
            what = f"{model.num_experts} experts" + (f" + {redundant} redundant" if redundant else "")
            yield DegreeProblem(
                "ep-experts", "ep", f"ep {d.ep} must divide the {what} (= {slots}): every EP rank holds the same number"
            )
    if tp_in_node and d.tp > n:
        yield DegreeProblem("tp-node", "tp", f"tp {d.tp} spans more than one node ({n} GPUs per node); TP stays on NVLink")
    if ep_in_node and d.ep * d.etp > n:
        yield DegreeProblem("ep-node", "ep", (
            f"ep × etp ({d.ep} × {d.etp} = {d.ep * d.etp}) spans more than one node ({n} GPUs per node); "
            "allow cross-node expert parallelism to search it"
        ))
    if N % d.pp:
        yield DegreeProblem("pp-gpus", "pp", f"pp ({d.pp}) must divide the cluster's {N} GPUs")
    elif (N // d.pp) % (d.ep * d.etp):
        yield DegreeProblem("edp", "ep", (
            f"ep × etp ({d.ep} × {d.etp} = {d.ep * d.etp}) must divide the {N // d.pp} GPUs of a pipeline stage"
            " (the experts of a stage shard over its GPUs: Megatron's expert-data-parallel rule)"
        ))
    if d.pp > L:
        yield DegreeProblem("pp-layers", "pp", f"pp ({d.pp}) must be <= the model's layers ({L})")
    else:
        per = math.ceil(L / d.pp)
        if L - (d.pp - 1) * per < 1:
            yield DegreeProblem(
                "pp-layers", "pp", f"pp {d.pp} with ⌈{L}/{d.pp}⌉ = {per} layers per stage leaves the last stage empty"
            )
    if d.vpp > 1:
        if d.pp == 1:
            yield DegreeProblem("vpp", "vpp", f"vpp {d.vpp} needs pp > 1")
        if L % (d.pp * d.vpp):
            yield DegreeProblem(
                "vpp", "pp", f"pp × vpp ({d.pp} × {d.vpp} = {d.pp * d.vpp}) must divide the model's {L} layers"
            )
    if seq_len is not None and d.cp > 1 and seq_len % (2 * d.cp):
        yield DegreeProblem(
            "cp-seq", "cp", f"cp {d.cp} needs the sequence length {seq_len} divisible by 2 × cp = {2 * d.cp}"
        )
    if global_batch is not None:
        if global_batch % (d.dp * d.micro_batch):
            yield DegreeProblem("batch", "global_batch", (
                f"global batch {global_batch} must be a multiple of dp × micro-batch ({d.dp} × {d.micro_batch})"
            ))
        elif d.vpp > 1 and (global_batch // (d.dp * d.micro_batch)) % d.pp:
            mbs = global_batch // (d.dp * d.micro_batch)
            yield DegreeProblem("vpp", "vpp", f"interleaving needs micro-batches ({mbs}) divisible by pp ({d.pp})")


def degree_problems(model: ModelSpec, cluster: ClusterSpec, par: object, **rules: object) -> list[str]:
    """Every rule the degrees of ``par`` break, one message each (empty: none); ``rules`` as
    for :func:`iter_degree_problems`."""
    return [p.message for p in iter_degree_problems(model, cluster, Degrees.of(par), **rules)]  # type: ignore[arg-type]


def require_positive(**values: int | float | None) -> None:
    """InputError naming the first field given a value <= 0 (``None``: not given)."""
    for name, v in values.items():
        if v is not None and not isinstance(v, bool) and v <= 0:
            raise InputError(f"{name} must be > 0 (got {v})", field=name)


def require_redundant(redundant: int) -> None:
    """InputError unless the redundant expert slots are >= 0."""
    if redundant < 0:
        raise InputError(f"redundant_experts must be >= 0 (got {redundant})", field="redundant_experts")
