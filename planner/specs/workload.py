"""Workload: what the deployment runs (training, prefill, decode or offloaded decode)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from planner.specs.base import Spec

Mode = Literal["train", "prefill", "decode", "offload"]


class Workload(Spec):
    """Mode and batch shape of the deployment."""

    mode: Mode = Field(default="decode", description="train, prefill, decode, or offload (experts in host memory)")
    seq_len: int = Field(default=4096, gt=0, description="Sequence length in tokens")
    micro_batch: int | None = Field(default=None, gt=0, description="Micro-batch size in sequences (train); None: searched")
    global_batch: int | None = Field(default=None, gt=0, description="Global batch size in sequences (train)")
    tokens_per_step: int | None = Field(
        default=None, gt=0, description="Tokens in one step across the cluster when the trace does not mark steps"
    )
    gpu_memory_gb: float | None = Field(default=None, gt=0, description="GPU memory budget in GB for offload mode")
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
        return self
