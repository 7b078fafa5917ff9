"""Memory per GPU (first, simple model: weights only).

    experts_g   = slots_per_gpu · expert_bytes · (MoE layers of the stage) / etp
    non_expert  = non-expert weights / (tp · pp)
    weights_g   = experts_g + non_expert

Training state (gradients, optimizer), activations and the KV cache come with the cost-model
issue; the plan table labels this figure "weights".
"""

from __future__ import annotations

import math

from planner.specs.model import ModelSpec

GIB = 1024**3


def weights_per_gpu_bytes(model: ModelSpec, slots_per_gpu: int, tp: int, pp: int, etp: int) -> float:
    """Bytes of weights one GPU holds (experts of its slots plus its share of the rest)."""
    moe_layers_per_stage = math.ceil(model.num_moe_layers / pp)
    experts = slots_per_gpu * model.expert_bytes * moe_layers_per_stage / etp
    return experts + model.non_expert_bytes / (tp * pp)
