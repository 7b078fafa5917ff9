"""Workload: what the deployment runs (training, prefill, decode or offloaded decode).

Serving is stated as users state it: prompt and output lengths, concurrent sequences
(``batch``), a request rate, the KV-cache dtype and TTFT / TPOT targets. What is omitted is
searched or derived (:mod:`planner.solve.parallel` finds the largest decode batch that fits
memory and meets the targets; :func:`serving_lengths` resolves the lengths).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from planner.errors import InputError
from planner.specs.base import Spec

Mode = Literal["train", "prefill", "decode", "offload"]


class Workload(Spec):
    """Mode and batch shape of the deployment."""

    mode: Mode = Field(default="decode", description="train, prefill, decode, or offload (experts in host memory)")
    seq_len: int = Field(
        default=4096, gt=0,
        description="Sequence length in tokens (train); serving: the prompt length when prompt_len is omitted",
    )
    micro_batch: int | None = Field(default=None, gt=0, description="Micro-batch size in sequences (train); None: searched")
    global_batch: int | None = Field(
        default=None, gt=0,
        description="Global batch size in sequences (train); serving: the same as batch (kept for older plans)",
    )
    prompt_len: int | None = Field(
        default=None, gt=0,
        description="Serving: prompt tokens per request (prefill holds them; decode's context starts there); "
        "None: seq_len",
    )
    output_len: int | None = Field(
        default=None, gt=0,
        description="Serving: output tokens per request (decode steps per sequence); None: 1024 (not the trace's "
        "sequence lengths: a teacher-forced trace's sequences are whole requests, prompts included)",
    )
    batch: int | None = Field(
        default=None, gt=0,
        description="Serving: concurrent sequences across the cluster in one step (decode: sequences in flight; "
        "prefill: prompts per step); None: searched — the largest that fits memory and meets the targets (the "
        "plan stores the batch found)",
    )
    batch_searched: bool = Field(
        default=False,
        description="True when the parallelism search chose batch (written into the plan's workload); a trace "
        "without sequences then keeps its file's steps, while a stated batch regroups its tokens",
    )
    request_rate: float | None = Field(
        default=None, gt=0,
        description="Serving: requests per second the deployment must sustain; reported against the rate the plan "
        "sustains (tokens/s ÷ output_len in decode, ÷ prompt_len in prefill) as the copies of it that rate needs",
    )
    kv_dtype: Literal["bf16", "fp8"] = Field(
        default="bf16", description="Serving: KV-cache dtype (fp8 halves the cache: vLLM/SGLang --kv-cache-dtype fp8_e4m3)"
    )
    ttft_ms: float | None = Field(
        default=None, gt=0,
        description="Serving: time-to-first-token target, ms (prefill: the step that holds a prompt; decode: a "
        "prefill of one prompt per data-parallel rank on the same GPUs)",
    )
    tpot_ms: float | None = Field(
        default=None, gt=0, description="Decode: time-per-output-token target, ms (one decode step)"
    )
    tokens_per_step: int | None = Field(
        default=None, gt=0, description="Tokens in one step across the cluster when the trace does not mark steps"
    )
    gpu_memory_gb: float | None = Field(default=None, gt=0, description="GPU memory budget in GB for offload mode")
    prefill_budget: Literal["engine", "per-rank"] = Field(
        default="engine",
        description="Prefill steps formed from a trace's requests: 'engine' (the step's token budget is the whole "
        "engine's; a data-parallel rank may take whole prompts up to it) or 'per-rank' (each rank takes budget / ranks "
        "tokens of its own queue a step, a longer prompt chunked over steps: SGLang with --enable-dp-attention divides "
        "--chunked-prefill-size by dp)",
    )
    expert_kernel: Literal["loop", "grouped"] = Field(
        default="loop",
        description="How a GPU's local experts run in the placement figures: 'loop' (one FFN after another, the "
        "profiled kernels) or 'grouped' (one grouped-GEMM launch per GPU, as Megatron --moe-grouped-gemm and fused-MoE "
        "kernels run them)",
    )

    train_dtype: Literal["bf16", "fp8"] = Field(
        default="bf16",
        description="Train: dtype the weights are held in during training (not the checkpoint's serving dtype): "
        "'bf16' (Megatron mixed precision) or 'fp8' (linear layers' weights in fp8, embeddings, output head and "
        "routers in bf16); gradients (fp32) and optimizer states (fp32 master weights, Adam m and v) are the same "
        "in both (docs/cost_model.md §4)",
    )

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.mode == "offload" and self.gpu_memory_gb is None:
            raise ValueError("gpu_memory_gb is required when mode is 'offload'")
        if self.global_batch is not None and self.micro_batch is not None and self.global_batch % self.micro_batch:
            raise ValueError(
                f"global_batch ({self.global_batch}) must be a multiple of micro_batch ({self.micro_batch})"
            )
        if self.batch is not None and self.global_batch is not None and self.mode != "train" \
                and self.batch != self.global_batch:
            raise ValueError(f"batch ({self.batch}) and global_batch ({self.global_batch}) differ; give one")
        return self

    @property
    def serving_batch(self) -> int | None:
        """Concurrent sequences stated for serving (``batch``, or ``global_batch`` as its old name)."""
        return self.batch if self.batch is not None else (self.global_batch if self.mode != "train" else None)


#: Prefill tokens per GPU in one prefill step when none is given (``--mode serve``): SGLang's
#: ``--max-prefill-tokens`` default (16384, python/sglang/srt/server_args.py), the per-rank budget
#: of its DP-attention prefill servers in the large-scale EP deployment.
DEFAULT_PREFILL_TOKENS = 16384


def check_pool_options(mode: str, prefill_nodes: int | None, decode_nodes: int | None, prefill_tokens: int) -> None:
    """The pool options (``prefill_nodes``, ``decode_nodes``, ``prefill_tokens``) apply to mode
    serve only: :class:`InputError` naming the first given in another mode."""
    if mode == "serve":
        return
    for name, v, default in (("prefill_nodes", prefill_nodes, None), ("decode_nodes", decode_nodes, None),
                             ("prefill_tokens", prefill_tokens, DEFAULT_PREFILL_TOKENS)):
        if v != default:
            raise InputError(f"{name} applies to mode serve only (got mode {mode!r})", field=name)


#: Output tokens per request when neither the workload nor the trace's sequences give them
#: (SGLang's bench_serving --random-output-len default is 1024).
DEFAULT_OUTPUT_LEN = 1024


def serving_lengths(workload: Workload, mean_sequence_len: float | None = None) -> tuple[int, int, str]:
    """(prompt tokens, output tokens, where they come from) of a serving workload:
    ``prompt_len`` or ``seq_len``; ``output_len``, else ``mean_sequence_len`` (the trace's
    sequences, rounded), else :data:`DEFAULT_OUTPUT_LEN`."""
    prompt = workload.prompt_len or workload.seq_len
    src = "stated" if workload.prompt_len else "seq_len"
    if workload.output_len is not None:
        return prompt, workload.output_len, f"prompt {prompt} ({src}), output {workload.output_len} (stated)"
    if mean_sequence_len is not None and mean_sequence_len >= 1:
        out = max(1, round(mean_sequence_len))
        return prompt, out, f"prompt {prompt} ({src}), output {out} (the mean length of the trace's sequences)"
    return prompt, DEFAULT_OUTPUT_LEN, f"prompt {prompt} ({src}), output {DEFAULT_OUTPUT_LEN} (default)"
