"""Schemas of the parallelism search's report and of the launch arguments written into a plan."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from planner.specs.base import Spec


class Alternative(Spec):
    """One configuration the search evaluated, with its predicted figures."""

    dp: int = Field(gt=0, description="Data-parallel degree (attention data parallelism when serving)")
    tp: int = Field(gt=0, description="Tensor-parallel degree")
    pp: int = Field(gt=0, description="Pipeline-parallel degree")
    ep: int = Field(gt=0, description="Expert-parallel degree")
    etp: int = Field(gt=0, description="Expert tensor-parallel degree")
    cp: int = Field(default=1, gt=0, description="Context-parallel degree (train)")
    vpp: int = Field(default=1, gt=0, description="Virtual pipeline stages per pipeline rank (train)")
    micro_batch: int | None = Field(default=None, gt=0, description="Micro-batch size in sequences (train)")
    recompute: Literal["none", "selective", "full"] | None = Field(default=None, description="Activation recompute (train)")
    distributed_optimizer: bool | None = Field(default=None, description="Megatron distributed optimizer (train)")
    global_batch: int | None = Field(default=None, gt=0, description="Sequences per training step (train)")
    pp_first: int | None = Field(default=None, gt=0, description="Decoder layers of the first pipeline rank, as fixed by the user (train; None: the default layout)")
    pp_last: int | None = Field(default=None, gt=0, description="Decoder layers of the last pipeline rank, as fixed by the user (train; None: the default layout)")
    sequences: int | None = Field(default=None, gt=0, description="Sequences in one serving step across the cluster (prefill/decode)")
    step_ms: float = Field(ge=0, description="Predicted step time, ms (train: one optimizer step; serving: one forward step)")
    tokens_per_s: float = Field(ge=0, description="Predicted tokens per second across the cluster")
    tflops_per_gpu: float | None = Field(default=None, ge=0, description="Train: model TFLOP/s per GPU (Megatron's FLOP count)")
    latency_ms: float | None = Field(default=None, ge=0, description="Serving: per-token latency (decode) or time to first token (prefill), ms")
    two_batch_overlap: bool | None = Field(default=None, description="Serving: the step is priced with SGLang's two-batch overlap (--enable-two-batch-overlap)")
    a2a_overlap: bool | None = Field(default=None, description="Train: the step is priced with Megatron's combined 1F1B, the expert all-to-all overlapped with another micro-batch's compute (--overlap-moe-expert-parallel-comm)")
    memory_gib: float = Field(ge=0, description="Predicted memory per GPU for the mode, GiB")


class RejectedConfig(Spec):
    """A configuration the search rejected, and why."""

    config: str = Field(description="The configuration in words (degrees and settings)")
    rule: str = Field(description="Which rule rejected it (memory, latency, tp-node, ep-node, edp, ...)")
    reason: str = Field(description="The reason with numbers")
    step_ms: float | None = Field(default=None, ge=0, description="Predicted step time had it been allowed, ms (when timed)")


class SearchReport(Spec):
    """What the parallelism search compared and why it chose what it chose."""

    objective: str = Field(description="What was ranked (train: step time; serving: throughput within the latency target)")
    fixed: list[str] = Field(default_factory=list, description="Degrees and settings the user fixed (the rest were searched)")
    chosen: Alternative = Field(description="The chosen configuration")
    alternatives: list[Alternative] = Field(description="The top candidates, best first (the chosen one included)")
    rejected: list[RejectedConfig] = Field(description="The best rejected candidates and one example per broken rule")
    rule_counts: dict[str, int] = Field(default_factory=dict, description="Candidates rejected by each rule")
    enumerated: int = Field(ge=0, description="Candidates enumerated")
    evaluated: int = Field(ge=0, description="Candidates timed by the step-time model")
    memory_budget_gib: float = Field(ge=0, description="Memory per GPU the candidates had to fit in, GiB")
    time_s: float = Field(ge=0, description="Wall time of the search, seconds")
    notes: list[str] = Field(default_factory=list, description="Caveats about the chosen configuration")


class LaunchArgs(Spec):
    """Command-line arguments that run the plan, ready to paste."""

    megatron: list[str] | None = Field(default=None, description="Megatron-core (pretrain_gpt.py) arguments (train)")
    vllm: list[str] | None = Field(default=None, description="vLLM `vllm serve` flags (prefill/decode)")
    sglang: list[str] | None = Field(default=None, description="SGLang `python -m sglang.launch_server` flags (prefill/decode)")
