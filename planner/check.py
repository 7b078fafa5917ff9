"""``check_plan``: verify a plan against its model and cluster, listing every problem found.

:meth:`Plan.load <planner.specs.plan.Plan.load>` stops at the first broken rule. ``check`` reads
the file in two passes instead:

1. **Structure** (types, required and unknown fields, each part's own rules) with the plan's
   field schemas but *without* the plan's cross-field validator. A failure here is unreadable
   input: one :class:`~planner.errors.InputError` line naming the file, field and rule (exit 2).
2. **Consistency**, every rule checked and every failure listed (exit 1):

   - the model: against ``model`` when one is given (``plan is for qwen3-30b-a3b (48 MoE layers),
     model given (deepseek-v2-lite) has 26``); the checks below use the given model when it has
     the plan's MoE layers and experts, the plan's own model otherwise (so that one mismatch is
     one line, not one per layer);
   - degrees: every rule of :mod:`planner.specs.degrees` (the one home of the degree rules,
     shared with the plan schema and the parallelism search);
   - placement: one row per MoE layer; ep × slots_per_gpu slots in every row (the same count on
     every EP rank); ids in [0, E); every expert at least once per layer;
   - memory: weights per GPU (:func:`planner.cost.memory.weights_per_gpu_bytes`; a training plan's
     in its training dtype, :func:`planner.cost.memory.train_weight_bytes`) within the hardware
     profile's ``hbm_bytes``;
   - predicted figures: one entry per MoE layer, numbered in order; a layer's total equal to its
     compute plus exposed communication; totals equal to the per-layer sums and means they
     summarize; imbalance within [1, ep]; p50 ≤ p99; memory equal to the weights of the
     placement; no inter-node bytes when an EP group fits in one node;
   - cache (offload): one entry per MoE layer, pinned ids in range and distinct; offload mode
     has a cache.

``check_plan`` accepts a :class:`~planner.specs.plan.Plan`, a plan file, or the plan's raw
mapping, and returns the problems as one-line strings (empty: the plan is consistent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import create_model

from planner.cost.memory import GIB, train_weight_bytes, weights_per_gpu_bytes
from planner.cost.step import overlap_problem
from planner.errors import InputError
from planner.offload import cache_memory_problems
from planner.specs.base import Spec, parse, read_mapping
from planner.specs.degrees import degree_problems
from planner.specs.hardware import HardwareProfile, load_hardware
from planner.specs.model import ModelSpec
from planner.specs.model_io import load_model
from planner.specs.plan import SCHEMA_VERSION, Plan

#: Relative tolerance for figures that are sums or means of others.
REL_TOL = 1e-6
#: Relative tolerance for the memory figure (recomputed with today's cost model).
MEM_REL_TOL = 1e-3


@cache
def _fields_only() -> type[Spec]:
    """The plan's fields with their own schemas, without the cross-field validator."""
    fields: dict[str, Any] = {name: (f.annotation, f) for name, f in Plan.model_fields.items()}
    return create_model("PlanFields", __base__=Spec, **fields)


def read_plan_fields(data: Mapping[str, Any] | str | Path, source: str | None = None) -> Any:
    """Pass 1: the plan's parts, structurally valid (InputError otherwise), not cross-checked."""
    if isinstance(data, str | Path):
        p = Path(data)
        raw = read_mapping(p)
        source = source or p.name
    else:
        raw = dict(data)
        source = source or "plan"
    version = raw.get("schema_version")
    if version is not None and version != SCHEMA_VERSION:
        raise InputError(f"{source}: schema_version must be '{SCHEMA_VERSION}' (got {version!r})")
    stated = None
    if isinstance(raw.get("model"), dict) and "num_moe_layers" in raw["model"]:
        # plan.json's model carries the derived num_moe_layers (docs/contracts.md, "Plan file"):
        # not a field of the model's schema; checked against the model's layers instead
        model = dict(raw["model"])
        stated = model.pop("num_moe_layers")
        raw = {**raw, "model": model}
    parts = parse(_fields_only(), raw, source)
    if stated is not None and stated != parts.model.num_moe_layers:
        raise InputError(
            f"{source}: model.num_moe_layers is {stated!r} but the model's layers give {parts.model.num_moe_layers} "
            "(a derived number, not a setting)", field="model.num_moe_layers")
    return parts


def check_plan(
    plan: Plan | Mapping[str, Any] | str | Path,
    model: ModelSpec | str | None = None,
    hardware: HardwareProfile | str | None = None,
) -> list[str]:
    """Every problem of ``plan`` against its model (or ``model``) and cluster, one line each.

    ``plan`` is a Plan, a plan file or its raw mapping; a file that cannot be read or whose
    fields are malformed raises :class:`~planner.errors.InputError`. ``hardware`` overrides the
    profile named in ``cluster.hardware``.
    """
    parts = plan if isinstance(plan, Plan) else read_plan_fields(plan)
    given = None
    if model is not None:
        given = model if isinstance(model, ModelSpec) else load_model(model)
    problems: list[str] = []
    m = parts.model
    if given is not None:
        problems += model_problems(parts.model, given)
        # a model of another shape would fail every row of the placement: those rows are checked
        # against the plan's own model instead, so that the list stays one line per problem
        if (given.num_moe_layers, given.num_experts) == (m.num_moe_layers, m.num_experts):
            m = given
    problems += parallel_problems(parts, m)
    problems += placement_problems(parts, m)
    hw, hw_problem = _hardware(parts, hardware)
    problems += hw_problem
    if hw is not None:
        problems += memory_problems(parts, m, hw)
    if parts.predicted is not None:
        problems += predicted_problems(parts, m)
    problems += cache_problems(parts, m)
    return problems


# ---- model -----------------------------------------------------------------------------------


def model_problems(planned: ModelSpec, given: ModelSpec) -> list[str]:
    """The plan's model against the one given."""
    out = []
    if planned.num_moe_layers != given.num_moe_layers:
        out.append(
            f"model: plan is for {planned.name} ({planned.num_moe_layers} MoE layers), "
            f"model given ({given.name}) has {given.num_moe_layers}"
        )
    if planned.num_experts != given.num_experts:
        out.append(
            f"model: plan is for {planned.name} ({planned.num_experts} experts per layer), "
            f"model given ({given.name}) has {given.num_experts}"
        )
    a, b = planned.model_dump(), given.model_dump()
    diff = [k for k in a if k not in ("name", "num_experts") and a[k] != b[k]]
    if planned.num_moe_layers != given.num_moe_layers:
        diff = [k for k in diff if k not in ("num_layers", "first_k_dense", "moe_layer_freq", "extra_dense_layers")]
    if diff:
        shown = ", ".join(f"{k} ({_short(a[k])} vs {_short(b[k])})" for k in diff[:4])
        more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
        out.append(f"model: the plan's model {planned.name} differs from the model given ({given.name}) in {shown}{more}")
    return out


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


# ---- degrees ---------------------------------------------------------------------------------


def parallel_problems(parts: Any, m: ModelSpec) -> list[str]:
    """The degrees' rules (:func:`planner.specs.degrees.degree_problems`), every one broken, and a
    step priced with Megatron's combined 1F1B on degrees Megatron refuses it for."""
    out = [f"parallel: {p}" for p in degree_problems(m, parts.cluster, parts.parallel)]
    chosen = parts.search.chosen if parts.search is not None else None
    if chosen is not None and chosen.a2a_overlap:
        par = parts.parallel
        why = overlap_problem(ep=par.ep, pp=par.pp, vpp=par.vpp, mtp_layers=m.mtp_layers)
        if why:
            out.append(f"search.chosen.a2a_overlap: {why}")
    return out


# ---- placement -------------------------------------------------------------------------------


def _ids(ids: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" … ({len(ids)} in all)" if len(ids) > limit else "")


def placement_problems(parts: Any, m: ModelSpec) -> list[str]:
    pl, par = parts.placement, parts.parallel
    p2l = pl.physical_to_logical
    out = []
    if len(p2l) != m.num_moe_layers:
        out.append(
            f"placement.physical_to_logical has {len(p2l)} layers, model {m.name} has {m.num_moe_layers} MoE layers"
        )
    want = par.ep * pl.slots_per_gpu
    E = m.num_experts
    if want < E:
        out.append(
            f"placement: ep × slots_per_gpu ({par.ep} × {pl.slots_per_gpu} = {want}) is fewer slots than the {E} experts"
        )
    for i, row in enumerate(p2l):
        where = f"placement.physical_to_logical[{i}]"
        if len(row) != want:
            uneven = "" if len(row) % par.ep == 0 else f", not a multiple of ep {par.ep} (EP ranks would hold unequal slots)"
            out.append(f"{where} has {len(row)} slots, ep × slots_per_gpu is {want}{uneven}")
        bad = sorted({e for e in row if not 0 <= e < E})
        if bad:
            out.append(f"{where} holds expert id(s) {_ids(bad)}, ids must be in [0, {E})")
        missing = sorted(set(range(E)) - set(row))
        if missing:
            out.append(f"{where} misses expert(s) {_ids(missing)}: every expert needs a slot in every layer")
    return out


# ---- memory ----------------------------------------------------------------------------------


def _hardware(parts: Any, hardware: HardwareProfile | str | None) -> tuple[HardwareProfile | None, list[str]]:
    if isinstance(hardware, HardwareProfile):
        return hardware, []
    if hardware is not None:
        return load_hardware(hardware), []  # a bad --hardware is bad input (exit 2)
    try:
        return load_hardware(parts.cluster.hardware), []
    except InputError as e:
        return None, [f"cluster.hardware: {e}; memory not checked"]


def memory_problems(parts: Any, m: ModelSpec, hw: HardwareProfile) -> list[str]:
    if parts.cache is not None:  # offload: experts live in host memory, the cache holds the GPU's share
        return cache_memory_problems(parts.cache, m, hw)
    par, pl = parts.parallel, parts.placement
    need = _weights(parts, m)
    cap = hw.hbm_bytes
    if need <= cap:
        return []
    return [
        f"memory: weights need {need / GIB:.1f} GiB per GPU ({pl.slots_per_gpu} expert slots × "
        f"{math.ceil(m.num_moe_layers / par.pp)} MoE layers per stage × {m.expert_bytes / 1e6:.1f} MB / etp {par.etp}"
        f" + non-expert {m.non_expert_bytes / GIB:.1f} GiB / (tp {par.tp} × pp {par.pp})), "
        f"{hw.name} has {cap / GIB:.1f} GiB"
    ]


def _weights(parts: Any, m: ModelSpec) -> float:
    """Weight bytes per GPU of the plan: in the training dtype for a training plan (the bytes the
    parallelism search and the plan's memory figure use), in the checkpoint's dtypes otherwise."""
    par, pl, w = parts.parallel, parts.placement, parts.workload
    if w.mode == "train":
        return train_weight_bytes(m, pl.slots_per_gpu, par.tp, par.pp, par.etp, w.train_dtype)
    return weights_per_gpu_bytes(m, pl.slots_per_gpu, par.tp, par.pp, par.etp)


# ---- predicted figures -----------------------------------------------------------------------


def _close(a: float, b: float, rel: float = REL_TOL) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def predicted_problems(parts: Any, m: ModelSpec) -> list[str]:
    pred, par, c = parts.predicted, parts.parallel, parts.cluster
    out = []
    layers = pred.per_layer
    L = len(layers)
    if L != m.num_moe_layers:
        out.append(f"predicted.per_layer has {L} layers, model {m.name} has {m.num_moe_layers} MoE layers")
    wrong = [i for i, lp in enumerate(layers) if lp.layer != i]
    if wrong:
        i = wrong[0]
        out.append(
            f"predicted.per_layer[{i}].layer is {layers[i].layer}, expected {i} (entries in MoE-layer order; "
            f"{len(wrong)} out of place)"
        )
    if L:
        total = sum(lp.total_ms for lp in layers)
        if not _close(pred.moe_time_per_step_ms, total):
            out.append(
                f"predicted.moe_time_per_step_ms is {pred.moe_time_per_step_ms:.6g} ms, the per-layer total_ms sum to {total:.6g} ms"
            )
        if not _close(pred.moe_layer_ms, pred.moe_time_per_step_ms / L):
            out.append(
                f"predicted.moe_layer_ms is {pred.moe_layer_ms:.6g} ms, moe_time_per_step_ms / {L} layers is "
                f"{pred.moe_time_per_step_ms / L:.6g} ms"
            )
        for name in ("compute_ms", "comm_ms", "imbalance"):
            mean = sum(getattr(lp, name) for lp in layers) / L
            if not _close(getattr(pred, name), mean):
                out.append(f"predicted.{name} is {getattr(pred, name):.6g}, the mean of per_layer {name} is {mean:.6g}")
    for i, lp in enumerate(layers):
        if not 1 - REL_TOL <= lp.imbalance <= par.ep * (1 + REL_TOL):
            out.append(
                f"predicted.per_layer[{i}].imbalance is {lp.imbalance:.6g}, max/mean over {par.ep} EP ranks lies in [1, {par.ep}]"
            )
        if not _close(lp.total_ms, lp.compute_ms + lp.comm_ms):
            out.append(
                f"predicted.per_layer[{i}].total_ms is {lp.total_ms:.6g} ms, compute + exposed communication is "
                f"{lp.compute_ms:.6g} + {lp.comm_ms:.6g} ms"
            )
    if pred.moe_time_p50_ms > pred.moe_time_p99_ms * (1 + REL_TOL):
        out.append(f"predicted.moe_time_p50_ms ({pred.moe_time_p50_ms:.6g}) exceeds moe_time_p99_ms ({pred.moe_time_p99_ms:.6g})")
    mem = _weights(parts, m) / GIB
    # with the parallelism search's breakdown, memory_per_gpu_gib is the whole memory: check its weights
    got_w, what = pred.memory_per_gpu_gib, "predicted.memory_per_gpu_gib"
    if "weights" in pred.memory_breakdown_gib:
        got_w, what = pred.memory_breakdown_gib["weights"], "predicted.memory_breakdown_gib['weights']"
    if parts.cache is None and not _close(got_w, mem, MEM_REL_TOL):
        out.append(f"{what} is {got_w:.4g} GiB, the placement's weights are {mem:.4g} GiB per GPU")
    total = sum(pred.memory_breakdown_gib.values())
    if pred.memory_breakdown_gib and not _close(pred.memory_per_gpu_gib, total, MEM_REL_TOL):
        out.append(f"predicted.memory_per_gpu_gib is {pred.memory_per_gpu_gib:.4g} GiB, its breakdown sums to {total:.4g} GiB")
    if par.ep * par.etp <= c.gpus_per_node and pred.inter_node_bytes_per_step > 0:
        out.append(
            f"predicted.inter_node_bytes_per_step is {pred.inter_node_bytes_per_step:.4g}, but each EP group "
            f"(ep × etp = {par.ep * par.etp} GPUs) fits in one {c.gpus_per_node}-GPU node"
        )
    return out


# ---- cache -----------------------------------------------------------------------------------


def cache_problems(parts: Any, m: ModelSpec) -> list[str]:
    cache_, mode = parts.cache, parts.workload.mode
    if cache_ is None:
        return ["cache: workload.mode is 'offload' but the plan has no cache"] if mode == "offload" else []
    out = []
    L, E = m.num_moe_layers, m.num_experts
    if len(cache_.resident) != L:
        out.append(f"cache.resident has {len(cache_.resident)} layers, model {m.name} has {L} MoE layers")
    if len(cache_.dynamic_slots) != L:
        out.append(f"cache.dynamic_slots has {len(cache_.dynamic_slots)} layers, model {m.name} has {L} MoE layers")
    for i, ids in enumerate(cache_.resident):
        bad = sorted({e for e in ids if not 0 <= e < E})
        if bad:
            out.append(f"cache.resident[{i}] holds expert id(s) {_ids(bad)}, ids must be in [0, {E})")
        if len(set(ids)) != len(ids):
            out.append(f"cache.resident[{i}] pins an expert twice")
    for i, n in enumerate(cache_.dynamic_slots):
        if n < 0:
            out.append(f"cache.dynamic_slots[{i}] is {n}, must be >= 0")
    return out
