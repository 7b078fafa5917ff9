"""The options of a planning run, listed once: name, type, default, description, allowed values.

``moe-planner plan``'s flags, the keys a sweep spec may set and the keywords
:func:`planner.plan` accepts are all made from :class:`PlanOptions`, so an option added here
appears in all three with the same default and the same rule, and none of them can drift.
The model is a description, not the place values are parsed: the CLI parses its flags with
click, :func:`check_value` checks a sweep's or a caller's value against the option's type, and
:func:`planner.api.prepare` checks the rules between options (degrees, memory).

Each field's ``json_schema_extra`` says how the option appears on the command line: ``flag``
(``False``: a Python and sweep option only) and ``path`` (the value names a file).
"""

from __future__ import annotations

import difflib
import math
import numbers
import os
import types
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InputError
from planner.specs.base import show
from planner.specs.workload import DEFAULT_PREFILL_TOKENS

DEFAULT_MODEL = "qwen3-30b-a3b"
DEFAULT_HARDWARE = "h100-sxm"
#: Options that also take objects in Python (a ModelSpec, a HardwareProfile, a Trace, a Plan or array).
OBJECT_OPTIONS = ("model", "hardware", "trace", "previous")
#: Keywords of :func:`planner.api.solve` (the rest are :func:`planner.api.prepare`'s).
SOLVE_OPTIONS = ("previous", "migration_weight", "relay", "placement_workers")


def _opt(
    default: Any, description: str, *, flag: bool = True, path: bool = False, aliases: tuple[str, ...] = ()
) -> Any:
    return Field(default, description=description,
                 json_schema_extra={"flag": flag, "path": path, "aliases": list(aliases)})


class PlanOptions(BaseModel):
    """Every option of ``moe-planner plan`` / :func:`planner.plan`, in the order ``--help`` lists them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = _opt(DEFAULT_MODEL, "Preset name, HF config.json, or ModelSpec .yaml/.json")
    hardware: str = _opt(DEFAULT_HARDWARE, "Hardware profile name or profile file")
    nodes: int = _opt(1, "Nodes")
    gpus_per_node: int = _opt(8, "GPUs per node")
    mode: Literal["train", "prefill", "decode", "offload", "serve"] = _opt(
        "decode", "What runs: training, prefill or decode serving, decode on one GPU with experts offloaded to host memory, "
        "or serve (a prefill pool and a decode pool, compared with colocated serving)"
    )
    trace: str | None = _opt(
        None, "Routing trace (.npz, SGLang .json/.pt); default: the model's shipped trace or a synthetic one", path=True
    )
    ep: int | None = _opt(None, "Expert-parallel degree (omitted: all GPUs of a stage)")
    tp: int | None = _opt(None, "Tensor-parallel degree")
    pp: int | None = _opt(None, "Pipeline-parallel degree")
    dp: int | None = _opt(None, "Data-parallel degree")
    etp: int | None = _opt(None, "Expert tensor-parallel degree")
    vpp: int | None = _opt(None, "Virtual pipeline stages")
    pp_first: int | None = _opt(None, "Train: decoder layers of the first pipeline rank (Megatron --decoder-first-pipeline-num-layers; omitted: the planner's layout)")
    pp_last: int | None = _opt(None, "Train: decoder layers of the last pipeline rank (Megatron --decoder-last-pipeline-num-layers; omitted: the planner's layout)")
    micro_batch: int | None = _opt(None, "Micro-batch size (sequences)")
    cp: int | None = _opt(None, "Context-parallel degree (train; omitted: searched)")
    recompute: Literal["none", "selective", "full"] | None = _opt(None, "Activation recompute (train; omitted: searched)")
    train_dtype: Literal["bf16", "fp8"] = _opt(
        "bf16", "Train: dtype of the weights in training (bf16, or fp8 linear layers); gradients and optimizer states fp32"
    )
    latency_target_ms: float | None = _opt(
        None, "Serving, older name of the latency target: --tpot-ms in decode, --ttft-ms in prefill"
    )
    cross_node: bool = _opt(False, "Let TP and EP×ETP groups span nodes in the parallelism search")
    global_batch: int | None = _opt(None, "Train: global batch size (sequences); serving: older name of --batch")
    seq_len: int = _opt(4096, "Sequence length (train); serving: the prompt length when --prompt-len is omitted")
    batch: int | None = _opt(
        None, "Serving: concurrent sequences across the cluster (decode: in flight; prefill: prompts per step); "
        "omitted: the largest that fits memory and meets --tpot-ms / --ttft-ms", aliases=("--concurrency",)
    )
    prompt_len: int | None = _opt(None, "Serving: prompt tokens per request (omitted: --seq-len)")
    output_len: int | None = _opt(
        None, "Serving: output tokens per request (omitted: the mean length of the trace's sequences, else 1024)"
    )
    request_rate: float | None = _opt(
        None, "Serving: requests/s to sustain; the plan says how many copies of the deployment that takes"
    )
    kv_dtype: Literal["bf16", "fp8"] = _opt("bf16", "Serving: KV-cache dtype")
    ttft_ms: float | None = _opt(None, "Serving: time-to-first-token target, ms")
    tpot_ms: float | None = _opt(None, "Decode: time-per-output-token target, ms")
    prefill_nodes: int | None = _opt(
        None, "Serve: nodes of the prefill pool (GPUs when --nodes is 1); omitted: every split is compared"
    )
    decode_nodes: int | None = _opt(None, "Serve: nodes of the decode pool (GPUs when --nodes is 1); omitted: the rest")
    prefill_tokens: int = _opt(
        DEFAULT_PREFILL_TOKENS, "Serve: prefill tokens per GPU in one prefill step (SGLang --max-prefill-tokens per DP rank)"
    )
    a2a_overlap: Literal["off", "on", "auto"] | None = _opt(
        None, "Train: price Megatron's combined 1F1B, the expert all-to-all overlapped with another micro-batch's "
        "compute (--overlap-moe-expert-parallel-comm): on (where Megatron runs it), off, or auto (whichever step is "
        "faster); omitted: off"
    )
    two_batch_overlap: Literal["off", "on", "auto"] | None = _opt(
        None, "Serving: price the MoE layers as SGLang's two-batch overlap (--enable-two-batch-overlap): on, off, or "
        "auto (whichever step is faster); omitted: auto in serve mode, off in prefill and decode"
    )
    routing: Literal["eplb", "uniform"] | None = _opt(
        None, "Serving: price each step at its busiest GPU under EPLB with the redundant experts, derived from the "
        "trace at the step's tokens per GPU (eplb), or every GPU at the mean load (uniform); omitted: eplb in serve "
        "mode, uniform in prefill and decode"
    )
    tokens_per_step: int | None = _opt(None, "Tokens per step when the trace has no step array")
    redundant_experts: int = _opt(0, "Extra physical expert slots for replicas")
    gpu_memory_gb: float | None = _opt(None, "GPU memory budget (offload mode)")
    expert_precisions: str | None = _opt(
        None, "Offload: precisions an expert may take with their accuracy cost, e.g. fp8=0.1,int4=2.9 (the model's expert "
        "dtype costs 0; no default costs), chosen per expert under the budget (docs/offload.md); omitted: the model's dtype"
    )
    max_accuracy_cost: float | None = _opt(
        None, "Offload with --expert-precisions: cap on the plan's accuracy cost (routed-token-weighted mean of the experts')"
    )
    baseline: Literal["contiguous", "round-robin", "eplb"] | None = _opt(
        None, "Produce this baseline plan instead of solving"
    )
    dispatch: Literal["even", "local-first", "nearest", "static"] = _opt(
        "even",
        "How tokens pick among replicas: even spread, own GPU first, nearest (own GPU, then own node: "
        "SGLang --ep-dispatch-algorithm dynamic with deepep), or static (one replica pinned per rank: "
        "SGLang --ep-dispatch-algorithm static)",
    )
    prefill_budget: Literal["engine", "per-rank"] = _opt(
        "engine",
        "Prefill steps from a trace's requests: the token budget is the engine's, whole prompts on a rank (engine), or "
        "divided over the data-parallel ranks, long prompts chunked (per-rank: SGLang --enable-dp-attention)",
    )
    expert_kernel: Literal["loop", "grouped"] = _opt(
        "loop",
        "Placement figures with experts run one after another (loop, the profiled kernels) or as one grouped GEMM per GPU",
    )
    previous: str | None = _opt(
        None, "Plan in service (plan.json): re-plan with a penalty per moved expert (migration-aware)", path=True
    )
    time_limit: float = _opt(60.0, "Solver time limit in seconds")
    seed: int = _opt(0, "Random seed")
    train_fraction: float = _opt(
        0.75, "Share of the trace's steps planned on; the rest are held out and score the plan", flag=False
    )
    distributed_optimizer: bool | None = _opt(
        None, "Train: shard optimizer state over data-parallel ranks (omitted: searched)", flag=False
    )
    migration_weight: float = _opt(
        0.01, "With previous: weight of the time to copy moved experts' weights, per planning step", flag=False
    )
    relay: str | None = _opt(
        None, "Simulator convention for where an inter-node copy lands (omitted: the simulator's default)", flag=False
    )
    placement_workers: int = _opt(
        0, "Solve the placement's layers as Ray tasks on this many workers (RAY_ADDRESS names the cluster, else a "
        "local Ray instance; the same placement as one process); 0: in this process"
    )


@cache
def option_kinds() -> dict[str, tuple[str, tuple[str, ...] | None, bool]]:
    """Every option: name → (kind, allowed values or None, may be null); ``kind`` is ``int``,
    ``float``, ``str`` or ``bool``."""
    out: dict[str, tuple[str, tuple[str, ...] | None, bool]] = {}
    for name, f in PlanOptions.model_fields.items():
        ann = f.annotation
        args = get_args(ann) if get_origin(ann) in (Union, types.UnionType) else (ann,)
        nullable = type(None) in args
        (base,) = [a for a in args if a is not type(None)]
        if get_origin(base) is Literal:
            out[name] = ("str", tuple(str(c) for c in get_args(base)), nullable)
        else:
            out[name] = ({bool: "bool", int: "int", float: "float"}.get(base, "str"), None, nullable)
    return out


def flag_info(name: str) -> dict[str, Any]:
    """``{"flag": bool, "path": bool, "aliases": [str]}`` of an option (how it appears on the
    command line; ``aliases``: further flag names, ``--concurrency`` for ``--batch``)."""
    extra = PlanOptions.model_fields[name].json_schema_extra
    assert isinstance(extra, dict)
    return extra


def check_name(option: Any, where: str) -> str:
    """``option`` when it is a known option name; else ``ValueError`` listing close matches."""
    known = option_kinds()
    if option in known:
        return option
    text = str(option)
    hint = ""
    if isinstance(option, str):
        dashed = option.replace("-", "_").lstrip("_")
        close = [dashed] if dashed in known else difflib.get_close_matches(option, list(known), n=3, cutoff=0.6)
        if close:
            hint = f"; did you mean {' or '.join(close)}?"
    if not hint:
        hint = f" (options: {', '.join(sorted(known))})"
    raise ValueError(f"{where}: unknown plan option {show(text)}{hint}")


def value_problem(option: str, value: Any, *, lenient: bool = False) -> str | None:
    """Why ``value`` does not fit ``option``'s type (the rule, naming the option), or ``None``.

    ``lenient`` (Python callers): numpy numbers count as numbers, paths as text, non-finite
    floats are left to the checks downstream."""
    kind, choices, nullable = option_kinds()[option]
    if value is None:
        return None if nullable else f"{option} may not be null"
    if kind == "bool":
        ok = isinstance(value, bool) or (lenient and isinstance(value, np.bool_))
    elif kind == "int":
        ok = isinstance(value, numbers.Integral if lenient else int) and not isinstance(value, bool)
    elif kind == "float":
        real = numbers.Real if lenient else int | float
        ok = isinstance(value, real) and not isinstance(value, bool) and (lenient or math.isfinite(value))
    else:
        ok = isinstance(value, str) and value.strip() != "" and "\x00" not in value
        ok = ok or (lenient and isinstance(value, os.PathLike))
    if not ok:
        want = {"bool": "true or false", "int": "an integer", "float": "a finite number", "str": "non-empty text"}[kind]
        return f"{option} must be {want} (got {show(value)})"
    if choices is not None and value not in choices:
        return f"{option} must be one of {', '.join(choices)} (got {show(value)})"
    return None


def yaml_choice(option: str, value: Any) -> Any:
    """``value`` with YAML 1.1's reading of ``on`` / ``off`` undone: a boolean given to an option
    whose choices are ``on`` and ``off`` (``--two-batch-overlap``, ``--a2a-overlap``) is that word,
    so that a sweep file may write ``[off, on, auto]`` unquoted. ``option`` is a known option."""
    choices = option_kinds()[option][1] or ()
    if isinstance(value, bool) and {"on", "off"} <= set(choices):
        return "on" if value else "off"
    return value


def check_value(option: str, value: Any, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when ``value`` does not fit ``option``'s type."""
    problem = value_problem(option, value)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def check_plan_kwargs(kwargs: dict[str, Any]) -> None:
    """:class:`InputError` naming the field for a keyword of :func:`planner.plan` that is not an
    option or whose value does not fit it. Objects are let through where an option takes them
    (:data:`OBJECT_OPTIONS`)."""
    for name, value in kwargs.items():
        try:
            check_name(name, "planner.plan")
        except ValueError as e:
            raise InputError(str(e)) from None
        if name in OBJECT_OPTIONS and not isinstance(value, str | bytes | numbers.Number | type(None)):
            continue
        problem = value_problem(name, value, lenient=True)
        if problem is not None:
            raise InputError(problem, field=name)


def require_placement_workers(workers: int) -> int:
    """The one rule on ``placement_workers`` (plan, solve): an integer >= 0."""
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise InputError(f"placement_workers must be an integer >= 0 (got {workers!r})", field="placement_workers")
    return workers


def require_time_limit(time_limit: float) -> float:
    """The one rule on a solver time limit: > 0 seconds (plan, placement, parallelism search)."""
    if not time_limit > 0:
        raise InputError(f"time_limit must be > 0 seconds (got {time_limit})", field="time_limit")
    return time_limit


def require_migration_weight(migration_weight: float, where: str = "") -> float:
    """The one rule on the migration penalty: >= 0 (plan, placement, rebalance). ``where``
    prefixes the message (``"rebalance: "``)."""
    if migration_weight < 0:
        raise InputError(f"{where}migration_weight must be >= 0 (got {migration_weight})",
                         field=None if where else "migration_weight")
    return migration_weight
