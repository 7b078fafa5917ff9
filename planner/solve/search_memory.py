"""Memory of a parallelism-search candidate against the GPU's budget (the search's rule 8).

The budget is the GPU's usable memory less :data:`MEMORY_RESERVE_GIB`; a rejection names what
the memory is made of and what would make it fit.
"""

from __future__ import annotations

import math

from planner.cost.memory import GIB, MemoryBreakdown, inference_memory, training_memory
from planner.solve.candidates import Candidate
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec

#: GPU memory kept free of the planned tensors: CUDA context and NCCL buffers (~1-2 GiB) and
#: allocator fragmentation. An assumption, not a measurement.
MEMORY_RESERVE_GIB = 4.0


def budget_bytes(hw: HardwareProfile) -> float:
    return hw.hbm_bytes - MEMORY_RESERVE_GIB * GIB


def candidate_memory(
    model: ModelSpec, c: Candidate, *, seq_len: int, global_batch: int = 0, redundant: int = 0, train_dtype: str = "bf16",
    output_len: int | None = None, kv_dtype: str = "bf16",
) -> MemoryBreakdown:
    """Memory per GPU of ``c``: training with its recompute and optimizer choice, or inference
    weights + KV cache + activations. Decode holds the KV cache of its rank's sequences at their
    longest, ``seq_len + output_len`` tokens (``output_len`` None: one new token), so that every
    sequence in flight can finish without being preempted; prefill the prompts' ``seq_len``."""
    if c.mode == "train":
        return training_memory(
            model, slots_per_gpu=model.num_experts // c.ep, tp=c.tp, pp=c.pp, dp=c.dp * c.cp, ep=c.ep, etp=c.etp,
            vpp=c.vpp, seq_len=seq_len // c.cp, micro_batch=c.micro_batch,
            num_microbatches=global_batch // (c.dp * c.micro_batch) if global_batch else None,
            distributed_optimizer=c.distributed_optimizer, recompute=c.recompute,  # type: ignore[arg-type]
            train_dtype=train_dtype, pp_first=c.pp_first, pp_last=c.pp_last, a2a_overlap=c.a2a_overlap,
        )
    per_rank = math.ceil(c.sequences / c.dp)
    new = 1 if c.mode == "decode" else seq_len
    grown = (output_len or 1) if c.mode == "decode" else 0
    return inference_memory(
        model, slots_per_gpu=(model.num_experts + redundant) // c.ep, tp=c.tp, pp=c.pp, etp=c.etp,
        kv_tokens=per_rank * (seq_len + grown), batch_tokens=per_rank * new // c.tp, kv_dtype=kv_dtype,
    )


def memory_reason(mem: MemoryBreakdown, budget: float, hw: HardwareProfile, mode: str, recompute: str = "full") -> str:
    g = mem.as_gib()
    parts = ", ".join(f"{k} {v:.1f}" for k, v in g.items() if k != "total" and v > 0.05)
    if mode == "train":
        fix = "raise pp or ep" + (", use recompute full" if recompute != "full" else "") + ", or add GPUs"
    elif mem.weights > budget:
        fix = (f"the weights alone need {mem.weights / GIB:.1f} GiB per GPU: raise ep or tp, or add GPUs "
               "(`nodes`, `gpus_per_node`)")
    elif mode == "decode":
        fix = ("raise ep or tp, or add GPUs (`nodes`, `gpus_per_node`); a smaller batch (`batch`), a shorter context "
               "(`prompt_len`, `output_len`) or `kv_dtype` fp8 shrinks the KV cache")
    else:
        fix = "raise ep or tp, add GPUs (`nodes`, `gpus_per_node`), or fewer prompts per step (`batch`, `prompt_len`)"
    return (
        f"needs {g['total']:.1f} GiB per GPU ({parts}), has {budget / GIB:.1f} "
        f"({hw.name} has {hw.hbm_bytes / GIB:.1f} GiB, {MEMORY_RESERVE_GIB:g} reserved); {fix}"
    )


#: Fields a serving memory message may name (the CLI spells them as flags).
SERVE_MEMORY_FIELDS = ("nodes", "gpus_per_node", "batch", "prompt_len", "output_len", "kv_dtype")
