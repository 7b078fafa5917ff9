"""Plan: the planner's answer, written as ``plan.json`` (contract in docs/contracts.md).

A plan carries everything needed to check and reproduce it: the full model spec, the cluster,
the workload, the parallel degrees, the placement (``physical_to_logical``), the dispatch policy,
optional offload cache, the predicted figures, the solver's report and provenance.

Placement convention (shared with DeepSeek EPLB and SGLang): physical slot ``p`` of a layer lives
on EP rank ``p // slots_per_gpu``; EP ranks are numbered node by node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_serializer, model_validator

from planner.errors import InputError
from planner.io import atomic_write_text
from planner.specs.base import Spec, parse, read_mapping, show
from planner.specs.cluster import ClusterSpec
from planner.specs.degrees import Degrees, iter_degree_problems
from planner.specs.model import ModelSpec
from planner.specs.search import LaunchArgs, SearchReport
from planner.specs.workload import Workload

SCHEMA_VERSION = "1"


class Parallel(Spec):
    """Parallel degrees. Attention uses DP×TP×PP = GPUs; experts use EP×ETP×EDP = DP×TP."""

    dp: int = Field(gt=0, description="Data-parallel degree (attention data parallelism when serving)")
    tp: int = Field(gt=0, description="Tensor-parallel degree of attention and dense layers")
    pp: int = Field(gt=0, description="Pipeline-parallel degree")
    ep: int = Field(gt=0, description="Expert-parallel degree: GPUs that split the experts of a layer")
    etp: int = Field(default=1, gt=0, description="Tensor-parallel degree inside each expert")
    vpp: int = Field(default=1, gt=0, description="Virtual pipeline stages per pipeline rank")
    cp: int = Field(default=1, gt=0, description="Context-parallel degree")


class Placement(Spec):
    """Which logical expert each physical slot holds, per MoE layer."""

    slots_per_gpu: int = Field(gt=0, description="Physical expert slots on each EP rank (same on every rank)")
    physical_to_logical: list[list[int]] = Field(
        description="[num_moe_layers][ep × slots_per_gpu] logical expert id in each physical slot; slot p is on EP rank p // slots_per_gpu"
    )


class Prefetch(Spec):
    """Offload mode: experts fetched ahead for the next layer."""

    count: int = Field(ge=0, description="Experts of the next layer fetched ahead per layer")
    predictor: str = Field(description="How they are chosen (e.g. 'cross-layer-transition', 'frequency')")
    threshold: float | None = Field(
        default=None, ge=0, le=1, description="Fetch a predicted expert only when P(needed) >= threshold (None: the top `count`)"
    )
    accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Prefetched experts that were then needed / prefetched, on the evaluated steps"
    )


class CachePlan(Spec):
    """Offload mode: which experts stay in GPU memory and how the rest is cached."""

    budget_bytes: int = Field(ge=0, description="GPU memory given to experts, in bytes")
    resident: list[list[int]] = Field(description="[num_moe_layers][...] expert ids pinned in GPU memory per layer")
    dynamic_slots: list[int] = Field(description="[num_moe_layers] further cache slots per layer for experts not pinned")
    policy: Literal["lru", "lfu"] = Field(default="lru", description="Replacement policy of the dynamic slots")
    prefetch: Prefetch | None = Field(default=None, description="Next-layer prefetch, if any")
    staging_slots: int = Field(default=0, ge=0, description="Expert-sized staging buffers for on-demand copies (in budget_bytes)")
    cpu_execution: Literal["off", "fastest", "all"] = Field(
        default="off",
        description="Missed experts: always copied (off), run on the host CPU when that finishes first (fastest), always on the CPU (all)",
    )
    expert_precision: list[list[str]] | None = Field(
        default=None,
        description="[num_moe_layers][num_experts] precision each expert is kept in (bf16 / fp8 / int4), chosen per expert "
        "under the budget (--expert-precisions); None: every expert in the model's expert_dtype",
    )
    accuracy_cost: float | None = Field(
        default=None, ge=0, description="With expert_precision: routed-token-weighted mean of the experts' stated precision costs",
    )
    predicted: CachePredicted | None = Field(default=None, description="Offload figures predicted on the evaluated steps")


class CachePredicted(Spec):
    """Offload mode: what the cache simulator predicts on the evaluated steps."""

    hit_rate: float = Field(ge=0, le=1, description="Needed experts found on the GPU (resident, cached or prefetched) / needed")
    hit_rate_per_layer: list[float] = Field(description="[num_moe_layers] hit rate of each MoE layer")
    transfers_per_step: float = Field(ge=0, description="Host-to-device expert copies per decode step (demand plus prefetch)")
    cpu_per_step: float = Field(default=0.0, ge=0, description="Missed experts run on the host CPU instead of copied, per decode step")
    bytes_per_step: float = Field(ge=0, description="Host-to-device bytes per decode step")
    stall_ms_per_step: float = Field(ge=0, description="Time per step lost waiting for expert copies, ms")
    step_ms: float = Field(ge=0, description="Predicted decode step time (all layers, copies and stalls), ms")
    tokens_per_s: float = Field(ge=0, description="Predicted decode tokens per second (batch / step time)")
    decode_batch: int = Field(gt=0, description="Tokens per decode step")
    belady_transfers_per_step: float | None = Field(
        default=None, ge=0,
        description="Belady's optimum for the same slots shared by all layers, warm start: a lower bound on misses per step",
    )


class LayerPrediction(Spec):
    """Predicted figures for one MoE layer, averaged over the evaluated steps."""

    layer: int = Field(ge=0, description="MoE layer index (0-based among MoE layers)")
    compute_ms: float = Field(ge=0, description="Expert compute of the slowest GPU, ms")
    comm_ms: float = Field(ge=0, description="Dispatch plus combine communication not hidden by compute, ms")
    total_ms: float = Field(ge=0, description="Predicted MoE-layer time (mean over steps of the per-step maximum), ms")
    imbalance: float = Field(ge=0, description="Max over GPUs of routed tokens divided by the mean")


class Predicted(Spec):
    """What the cost model predicts for the plan on the evaluated trace steps."""

    evaluated_on: str = Field(description="Which trace steps the figures come from (held-out steps when the trace has several)")
    moe_time_per_step_ms: float = Field(ge=0, description="Sum over MoE layers of the layer time, mean over steps, ms")
    moe_time_p50_ms: float = Field(ge=0, description="Median over steps of the summed MoE-layer time, ms")
    moe_time_p99_ms: float = Field(ge=0, description="99th percentile over steps of the summed MoE-layer time, ms")
    moe_layer_ms: float = Field(ge=0, description="Mean MoE-layer time (per layer, per step), ms")
    compute_ms: float = Field(ge=0, description="Mean per-layer expert compute of the slowest GPU, ms")
    comm_ms: float = Field(ge=0, description="Mean per-layer exposed dispatch+combine time, ms")
    imbalance: float = Field(ge=0, description="Mean over layers and steps of max/mean GPU tokens")
    intra_node_bytes_per_step: float = Field(ge=0, description="Dispatch+combine bytes over NVLink per step, all layers")
    inter_node_bytes_per_step: float = Field(ge=0, description="Dispatch+combine bytes between nodes per step, all layers")
    tokens_per_step: float = Field(ge=0, description="Tokens in one evaluated step (mean)")
    memory_per_gpu_gib: float = Field(
        ge=0,
        description="Memory per GPU for the mode, GiB: weights, plus gradients, optimizer state and activations when "
        "training, plus KV cache, activations and dispatch buffers when serving (memory_breakdown_gib); weights only "
        "when no parallelism search ran",
    )
    per_layer: list[LayerPrediction] = Field(description="Per-MoE-layer breakdown")
    notes: list[str] = Field(default_factory=list, description="Caveats that qualify these figures")
    tokens_per_s: float | None = Field(default=None, description="Predicted tokens per second across the cluster (train: step tokens / step time; serving: throughput)")
    tflops_per_gpu: float | None = Field(default=None, description="Train mode: model FLOPs per step / step time / GPUs (Megatron's FLOP count, planner.cost.step)")
    step_time_ms: float | None = Field(default=None, ge=0, description="Whole step predicted by the step-time model (train: optimizer step; serving: forward step), ms")
    latency_per_token_ms: float | None = Field(default=None, ge=0, description="Serving: per-token latency (decode) or time to first token (prefill), ms")
    memory_breakdown_gib: dict[str, float] = Field(default_factory=dict, description="memory_per_gpu_gib by kind (weights, gradients, optimizer, activations, kv_cache, dispatch_buffers), GiB")


class SolverReport(Spec):
    """How the plan was found."""

    name: str = Field(description="Solver or baseline that produced the placement")
    status: str = Field(description="optimal, feasible, time_limit, heuristic or baseline")
    objective: float | None = Field(default=None, description="Objective value on the planning steps (predicted MoE ms per step)")
    bound: float | None = Field(default=None, description="Lower bound on the objective (None: the method gives none)")
    gap: float | None = Field(default=None, description="(objective - bound) / objective; None without a bound")
    time_s: float = Field(ge=0, description="Wall time of the solve in seconds (not part of the input hash)")
    candidates: dict[str, float] = Field(
        default_factory=dict, description="Objective of every candidate the solver compared, by name"
    )


class Provenance(Spec):
    """Where the plan came from."""

    version: str = Field(description="moe-planner version")
    seed: int = Field(description="Random seed")
    input_hash: str = Field(description="sha256 of the canonical inputs (model, cluster, workload, hardware, trace, options)")
    created: str = Field(description="Creation time, UTC ISO 8601")
    trace: str | None = Field(default=None, description="Trace the plan was made from (file name or 'synthetic')")


class PoolReport(Spec):
    """``--mode serve``: one pool of the disaggregated deployment, or the colocated deployment it is
    compared with (docs/serving.md)."""

    role: Literal["prefill", "decode", "colocated"] = Field(description="What the pool runs")
    nodes: int = Field(gt=0, description="Nodes of the pool (1 when pools split one node's GPUs)")
    gpus: int = Field(gt=0, description="GPUs of the pool")
    parallel: Parallel | None = Field(default=None, description="Parallel degrees (None when nothing fits)")
    batch: int | None = Field(
        default=None, gt=0,
        description="Sequences per step across the pool: prompts per prefill step, sequences in flight in decode",
    )
    step_ms: float | None = Field(default=None, ge=0, description="One step, ms (colocated: the mean step, chunks included)")
    ttft_ms: float | None = Field(
        default=None, ge=0, description="Mean time to first token at the goodput rate, ms (prefill: KV copy included)"
    )
    tpot_ms: float | None = Field(default=None, ge=0, description="Mean time per output token at the goodput rate, ms")
    capacity_rps: float = Field(
        ge=0, description="Requests/s at full load, targets aside (colocated: its decode batch without prefill chunks)"
    )
    goodput_rps: float = Field(ge=0, description="Requests/s that meet both the TTFT and the TPOT target")
    utilization: float = Field(
        ge=0, le=1,
        description="Prefill: share of capacity used at the goodput; colocated: share of steps carrying a prefill chunk",
    )
    memory_gib: float = Field(default=0.0, ge=0, description="Predicted memory per GPU, GiB")
    binding: str = Field(default="", description="What limits the goodput (ttft, tpot, memory, utilization cap, ...)")
    reason: str = Field(default="", description="Why the goodput is zero, when it is")
    detail: dict[str, float] = Field(default_factory=dict, description="The model's intermediate figures (docs/serving.md)")
    launch: LaunchArgs | None = Field(default=None, description="Engine flags of this pool (SGLang, vLLM)")


class KVTransferReport(Spec):
    """``--mode serve``: the KV cache a request's prefill hands to decode."""

    bytes_per_token: float = Field(ge=0, description="KV bytes of one token, all layers, one copy, in the KV dtype")
    bytes_per_request: float = Field(ge=0, description="bytes_per_token × prompt tokens")
    link: Literal["nic", "nvlink"] = Field(
        default="nic", description="The link that carries it: the inter-node NIC, or NVLink when both pools share one node"
    )
    bandwidth_gbps: float = Field(gt=0, description="That link's bandwidth per GPU in the hardware profile, GB/s")
    ms_per_request: float = Field(ge=0, description="One request's copy over one GPU's link (latency + bytes / bandwidth), ms")
    max_rps: float = Field(ge=0, description="Requests/s the smaller pool's links carry")
    utilization: float = Field(ge=0, description="Share of that at the disaggregated goodput")


class SplitReport(Spec):
    """One way of dividing the GPUs into a prefill and a decode pool, and its goodput."""

    prefill_units: int = Field(gt=0, description="Nodes (GPUs when the cluster is one node) of the prefill pool")
    decode_units: int = Field(gt=0, description="Nodes (GPUs when the cluster is one node) of the decode pool")
    goodput_rps: float = Field(ge=0, description="Disaggregated goodput of this split, requests/s")
    binding: str = Field(description="What binds it: prefill, decode or kv copy")


class RateSizing(Spec):
    """GPUs needed for a target request rate: copies of the best pool size."""

    units: int = Field(gt=0, description="Nodes (or GPUs on one node) of one pool copy")
    copies: int = Field(gt=0, description="Copies of that pool")
    gpus: int = Field(gt=0, description="GPUs in all")


class GpusNeeded(Spec):
    """``--mode serve`` with ``--request-rate``: GPUs each deployment needs for that rate."""

    request_rate: float = Field(gt=0, description="Requests/s to serve")
    prefill: RateSizing | None = Field(default=None, description="Prefill pools (None: no size meets the targets)")
    decode: RateSizing | None = Field(default=None, description="Decode pools (None: no size meets the targets)")
    disaggregated_gpus: int | None = Field(default=None, description="Prefill + decode GPUs")
    colocated: RateSizing | None = Field(default=None, description="Colocated deployments (None: none meets the targets)")


class ServingReport(Spec):
    """``--mode serve``: prefill and decode pools planned on the cluster, compared with a
    colocated deployment of the same GPUs. The plan holding it is the decode pool's; the prefill
    pool's own plan (placement, launch) is ``prefill_plan``."""

    cluster: ClusterSpec = Field(description="All the GPUs (both pools)")
    prompt_len: int = Field(gt=0, description="Prompt tokens per request")
    output_len: int = Field(gt=0, description="Output tokens per request")
    ttft_target_ms: float | None = Field(default=None, description="Time-to-first-token target, ms")
    tpot_target_ms: float | None = Field(default=None, description="Time-per-output-token target, ms")
    prefill_tokens: int = Field(gt=0, description="Prefill tokens per GPU in one prefill step (chunk budget)")
    prefill: PoolReport = Field(description="The prefill pool")
    decode: PoolReport = Field(description="The decode pool (this plan's parallel, placement and launch)")
    colocated: PoolReport = Field(description="One engine doing both on all the GPUs, chunked prefill")
    kv_transfer: KVTransferReport = Field(description="The KV copy from prefill to decode")
    goodput_rps: float = Field(ge=0, description="Disaggregated goodput: min(prefill, decode, KV copy), requests/s")
    binding: str = Field(description="What binds the disaggregated goodput: prefill, decode or kv copy")
    splits: list[SplitReport] = Field(default_factory=list, description="Every split compared, prefill units ascending")
    gpus_needed: GpusNeeded | None = Field(default=None, description="GPUs for request_rate (with --request-rate)")
    prefill_plan: Plan = Field(description="The prefill pool's plan (placement, predicted figures, launch)")
    notes: list[str] = Field(default_factory=list, description="The model's assumptions, in words")


class Plan(Spec):
    """A deployment plan for one MoE model on one cluster."""

    schema_version: Literal["1"] = Field(default=SCHEMA_VERSION, description="Plan file format version")
    model: ModelSpec = Field(description="The model the plan is for")
    cluster: ClusterSpec = Field(description="The cluster the plan is for")
    workload: Workload = Field(description="Mode and batch shape")
    parallel: Parallel = Field(description="Parallel degrees")
    placement: Placement = Field(description="Expert placement per MoE layer")
    dispatch: Literal["even", "local-first", "nearest", "static"] = Field(
        default="even", description="How a token picks among replicas of its expert (planner.simulator)"
    )
    cache: CachePlan | None = Field(default=None, description="Offload mode: GPU expert cache")
    predicted: Predicted | None = Field(default=None, description="Predicted figures")
    search: SearchReport | None = Field(default=None, description="Parallelism search: alternatives, rejections and the chosen settings")
    launch: LaunchArgs | None = Field(default=None, description="Launch arguments for Megatron-core, vLLM and SGLang")
    serving: ServingReport | None = Field(
        default=None, description="--mode serve: the prefill pool, the comparison with colocated serving (this plan is the decode pool)"
    )
    solver: SolverReport = Field(description="Solver report")
    provenance: Provenance = Field(description="Provenance")

    # plan.json's `model` carries the derived numbers scripts rely on (docs/contracts.md, "Plan
    # file": `num_moe_layers`); they are written, checked when read back, and never settings.
    @field_serializer("model", mode="wrap")
    def _model_with_derived(self, model: ModelSpec, handler: Any) -> Any:
        out = handler(model)
        if isinstance(out, dict):
            out["num_moe_layers"] = model.num_moe_layers
        return out

    @model_validator(mode="wrap")
    @classmethod
    def _derived_model_fields(cls, data: Any, handler: Any) -> Any:
        stated = None
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "num_moe_layers" in data["model"]:
            model = dict(data["model"])
            stated = model.pop("num_moe_layers")
            data = {**data, "model": model}
        plan = handler(data)
        if stated is not None and stated != plan.model.num_moe_layers:
            raise ValueError(
                f"model.num_moe_layers is {show(stated)} but the model's layers give {plan.model.num_moe_layers} "
                "(a derived number, not a setting)"
            )
        return plan

    @model_validator(mode="after")
    def _check(self) -> Plan:
        m, par, pl = self.model, self.parallel, self.placement
        for problem in iter_degree_problems(m, self.cluster, Degrees.of(par)):
            raise ValueError(f"parallel: {problem.message}")  # the first broken rule
        p2l = pl.physical_to_logical
        if len(p2l) != m.num_moe_layers:
            raise ValueError(
                f"placement.physical_to_logical has {len(p2l)} layers, model {m.name} has {m.num_moe_layers} MoE layers"
            )
        want = par.ep * pl.slots_per_gpu
        for i, row in enumerate(p2l):
            if len(row) != want:
                raise ValueError(
                    f"placement.physical_to_logical[{i}] has {len(row)} slots, ep × slots_per_gpu is {want}"
                )
            bad = [e for e in row if not 0 <= e < m.num_experts]
            if bad:
                raise ValueError(
                    f"placement.physical_to_logical[{i}] holds expert {bad[0]}, ids must be in [0, {m.num_experts})"
                )
            missing = set(range(m.num_experts)) - set(row)
            if missing:
                raise ValueError(
                    f"placement.physical_to_logical[{i}] misses expert {min(missing)}: every expert needs a slot in every layer"
                )
        if self.cache is not None:
            if len(self.cache.resident) != m.num_moe_layers or len(self.cache.dynamic_slots) != m.num_moe_layers:
                raise ValueError(f"cache.resident and cache.dynamic_slots need {m.num_moe_layers} layers")
            ep = self.cache.expert_precision
            if ep is not None and (len(ep) != m.num_moe_layers or any(len(r) != m.num_experts for r in ep)
                                   or any(x not in ("bf16", "fp8", "int4") for r in ep for x in r)):
                raise ValueError(f"cache.expert_precision needs {m.num_moe_layers} layers × {m.num_experts} of bf16, fp8, int4")
        return self

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The schema with Plan at the top level (a serve plan nests the prefill pool's Plan, so
        pydantic would otherwise answer with a bare ``$ref`` into ``$defs``)."""
        s = super().model_json_schema(*args, **kwargs)
        ref = s.pop("$ref", None)
        if ref is not None:
            s = {**s["$defs"][ref.rsplit("/", 1)[-1]], "$defs": s["$defs"]}
        # plan.json's model also carries the derived numbers it is written with (_model_with_derived)
        spec = s["$defs"]["ModelSpec"]
        s["$defs"]["PlanModel"] = {**spec, "title": "PlanModel", "properties": {**spec["properties"], "num_moe_layers": {
            "type": "integer", "readOnly": True,
            "description": "MoE layers (derived from num_layers, first_k_dense and moe_layer_freq; checked when read)"}}}
        for plan_def in (s, s["$defs"].get("Plan", {})):
            if "model" in plan_def.get("properties", {}):
                plan_def["properties"]["model"] = {**plan_def["properties"]["model"], "$ref": "#/$defs/PlanModel"}
        return s

    # ---- files ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical JSON text (stable key order, so the same plan gives the same bytes)."""
        return json.dumps(self.model_dump(mode="json"), indent=1, sort_keys=False) + "\n"

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, then rename)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        p = Path(path)
        data = read_mapping(p)
        version = data.get("schema_version")
        if version is not None and version != SCHEMA_VERSION:
            raise InputError(f"{p.name}: schema_version must be '{SCHEMA_VERSION}' (got {show(version)})")
        return parse(cls, data, p.name)


ServingReport.model_rebuild()
Plan.model_rebuild()
