"""One whole MoE layer under uniform routing: what ``moe-planner predict --tokens T --ep E`` prints.

T tokens of one step are spread evenly over the ``ep`` GPUs of an expert-parallel group (T/ep
start on each), every token picks k of the E routed experts uniformly at random (without
replacement), and expert e lives on GPU e // (E/ep) (contiguous placement, no replicas). Then, in
expectation, for the layer on one GPU::

    M         = T·k / E                                  tokens per expert
    compute   = (E/ep) · t(M)                             t: expert FFN curve (compute.py)
    copies    = from uniform_remote_fractions (comm.py):  per token, pairs / distinct GPUs /
                distinct nodes that are not its own, with P(a group of e experts gets none of
                its k) = C(E−e, k)/C(E, k)
    nvlink    = (T/ep) · copies_intra · h · B_act         (+ DeepEP's NVLink forwarding of
                                                           inter-node copies to further GPUs)
    rdma      = (T/ep) · copies_inter · h · B_act
    comm      = 2 · max(α_nvl + nvlink/BW_nvl, α_nic + rdma/BW_nic) · (1 − overlap)
    layer     = router + permute + comm + compute + combine + shared experts

(every GPU sends and receives the same bytes by symmetry, so the busiest GPU is any GPU). The
parts are priced by :mod:`planner.cost.layers`. With ``etp`` > 1 each expert is split in ``etp``
along f, and the expert-parallel group has ``ep`` GPUs of such shards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from planner.cost.comm import DISPATCHERS, exposed_alltoall_ms, nic, nvlink, uniform_copies
from planner.cost.compute import ACTIVATION_BYTES, expert_ffn_ms
from planner.cost.layers import combine_ms, permute_ms, router_ms, shared_experts_ms
from planner.errors import InputError
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class MoeLayerPrediction:
    """Predicted time (ms) of one MoE layer on one GPU, by part, and the bytes each GPU sends."""

    tokens: float  #: tokens of the step over the expert-parallel group
    ep: int
    gpus_per_node: int
    tokens_per_expert: float
    experts_per_gpu: int
    router_ms: float
    permute_ms: float
    comm_ms: float  #: exposed dispatch + combine
    compute_ms: float  #: routed experts of one GPU
    combine_ms: float
    shared_experts_ms: float
    nvlink_bytes_per_gpu: float  #: dispatch bytes one GPU sends over NVLink (combine: the same back)
    rdma_bytes_per_gpu: float  #: dispatch bytes one GPU sends to other nodes

    @property
    def moe_layer_ms(self) -> float:
        return (
            self.router_ms + self.permute_ms + self.comm_ms + self.compute_ms + self.combine_ms + self.shared_experts_ms
        )

    def as_dict(self) -> dict[str, float | int]:
        d = asdict(self)
        d["moe_layer_ms"] = self.moe_layer_ms
        return d


def uniform_moe_layer(
    hw: HardwareProfile,
    model: ModelSpec,
    tokens: float,
    ep: int = 1,
    *,
    gpus_per_node: int | None = None,
    etp: int = 1,
    dispatcher: str = "deepep",
) -> MoeLayerPrediction:
    """Predicted MoE layer time for ``tokens`` spread by uniform routing over ``ep`` GPUs."""
    if tokens < 0:
        raise InputError(f"tokens must be >= 0 (got {tokens:g})", field="tokens")
    if ep <= 0 or etp <= 0:
        raise InputError(f"ep and etp must be > 0 (got ep={ep}, etp={etp})", field="ep")
    E, k, h = model.num_experts, model.top_k, model.hidden_size
    if E % ep:
        raise InputError(f"ep ({ep}) must divide the model's {E} routed experts (each GPU holds E/ep of them)", field="ep")
    if model.expert_intermediate_size % etp:
        raise InputError(f"etp ({etp}) must divide the expert FFN width ({model.expert_intermediate_size})", field="etp")
    if dispatcher not in DISPATCHERS:
        raise InputError(f"dispatcher must be one of {', '.join(DISPATCHERS)} (got {dispatcher!r})", field="dispatcher")
    n = min(gpus_per_node or hw.nvlink.gpus_per_domain, ep)
    if ep % n:
        raise InputError(f"gpus_per_node ({n}) must divide ep ({ep}): EP ranks are numbered node by node", field="gpus_per_node")
    local = tokens / ep
    m = tokens * k / E
    per_gpu = E // ep
    f_shard = model.expert_intermediate_size // etp
    compute = per_gpu * float(expert_ffn_ms(hw, h, f_shard, model.expert_dtype, m)) if m > 0 else 0.0
    bpt = h * ACTIVATION_BYTES
    nvl_bytes = rdma_bytes = 0.0
    comm = 0.0
    if ep > 1 and tokens > 0:
        intra, inter = uniform_copies(E, k, ep, n, dispatcher)
        nvl_bytes = local * intra * bpt
        rdma_bytes = local * inter * bpt
        # every GPU sends and receives the same bytes by symmetry
        comm = float(exposed_alltoall_ms(nvlink(hw), nic(hw), [nvl_bytes], [nvl_bytes], [rdma_bytes], [rdma_bytes],
                                         hw.comm_overlap))
    return MoeLayerPrediction(
        tokens=float(tokens), ep=ep, gpus_per_node=n, tokens_per_expert=m, experts_per_gpu=per_gpu,
        router_ms=router_ms(hw, model, local), permute_ms=permute_ms(hw, model, local), comm_ms=comm,
        compute_ms=compute, combine_ms=combine_ms(hw, model, local),
        shared_experts_ms=shared_experts_ms(hw, model, local, etp),
        nvlink_bytes_per_gpu=nvl_bytes, rdma_bytes_per_gpu=rdma_bytes,
    )
