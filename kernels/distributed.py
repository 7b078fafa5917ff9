"""The expert-parallel MoE layer over ``torch.distributed``: one process per EP rank.

Shape legend as in :mod:`.moe_layer` (``T`` this rank's source tokens, ``K`` top-k, ``N = T·K``
its (token, choice) pairs, ``S`` slots per rank, ``R`` EP ranks, ``M`` rows a rank receives).

:func:`ep_forward` runs one layer on rank ``r`` of an EP group of R ranks. Physical slot ``p``
lives on rank ``p // S`` (the plan's placement; a replica is a slot holding an expert another
slot holds too); the caller gives the slot serving each of this rank's pairs (``slot_TK``, e.g.
``planner.simulator.choose_slots`` with the plan's dispatch policy). Every rank holds the
weights of its own S slots only.

1. **Dispatch.** The N pairs are sorted by (destination rank, local slot), stable; rank r sends
   ``in_splits[q]`` rows ``x[token]`` to rank q, and the local slot of each row. The split sizes
   are exchanged first (an equal-split ``all_to_all_single`` of R integers), then the rows and
   the slot ids go with ``all_to_all_single`` with uneven splits (:func:`all_to_all_v`). Gloo
   (CPU) and NCCL (GPU) both implement uneven splits (gloo through its ``alltoallv``); the
   ``p2p`` implementation (``isend``/``irecv`` pairs, the local share copied) is kept as a
   fallback for backends that do not, and is tested against the native one.
2. **Expert compute.** The M received rows are sorted by local slot (stable) and run through
   :func:`.moe_layer.run_local_experts` (grouped GEMM on CUDA bf16, else a loop; one slot: a
   dense FFN), then put back in arrival order.
3. **Combine.** The outputs go back with the reverse ``all_to_all_v`` (the splits swapped) and
   are added on the token's rank: ``out[token] += weight · y`` in float32 at least, plus the
   shared experts (replicated on every rank, run on the rank's own tokens).

The result equals :func:`.moe_layer.moe_forward` on the same tokens with the same top-k (up to
summation order), which :func:`planner.validate_dist` checks. :class:`PhaseTimes` records the
wall time of each phase (CUDA synchronised at the boundaries, so a phase's time includes its
kernels).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist

from .moe_layer import MoEWeights, ffn, run_local_experts

A2AImpl = Literal["native", "p2p"]


@dataclass
class PhaseTimes:
    """Wall time of each phase of one :func:`ep_forward` call, ms."""

    dispatch_ms: float = 0.0
    compute_ms: float = 0.0
    combine_ms: float = 0.0
    shared_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.dispatch_ms + self.compute_ms + self.combine_ms + self.shared_ms


def all_to_all_v(
    out: torch.Tensor,
    inp: torch.Tensor,
    out_splits: Sequence[int],
    in_splits: Sequence[int],
    group: dist.ProcessGroup | None = None,
    impl: A2AImpl = "native",
) -> torch.Tensor:
    """Rows ``inp[sum(in_splits[:q]) : …+in_splits[q]]`` go to rank q; rows from rank q land at
    ``out[sum(out_splits[:q]) : …]``. ``native``: ``all_to_all_single``; ``p2p``: isend/irecv."""
    if impl == "native":
        dist.all_to_all_single(out, inp, list(out_splits), list(in_splits), group=group)
        return out
    me = dist.get_rank(group)
    R = dist.get_world_size(group)
    o_off = [0] * (R + 1)
    i_off = [0] * (R + 1)
    for q in range(R):
        o_off[q + 1] = o_off[q] + int(out_splits[q])
        i_off[q + 1] = i_off[q] + int(in_splits[q])
    reqs = []
    for q in range(R):
        if q == me:
            continue
        peer = dist.get_global_rank(group, q) if group is not None else q
        if out_splits[q]:
            reqs.append(dist.irecv(out[o_off[q] : o_off[q + 1]], src=peer, group=group))
        if in_splits[q]:
            reqs.append(dist.isend(inp[i_off[q] : i_off[q + 1]].contiguous(), dst=peer, group=group))
    out[o_off[me] : o_off[me + 1]].copy_(inp[i_off[me] : i_off[me + 1]])
    for r in reqs:
        r.wait()
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ep_forward(
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    slot_TK: torch.Tensor,
    slots_per_rank: int,
    w13_S2FD: torch.Tensor,
    w2_SDF: torch.Tensor,
    shared: MoEWeights | None = None,
    *,
    group: dist.ProcessGroup | None = None,
    backend: str = "auto",
    impl: A2AImpl = "native",
) -> tuple[torch.Tensor, torch.Tensor, PhaseTimes]:
    """One EP-sharded layer on this rank (module docstring).

    ``slot_TK``: physical slot serving each of this rank's pairs; ``w13_S2FD`` / ``w2_SDF``: the
    weights of this rank's S slots; ``shared``: weights holding ``shared_w13_2SD`` /
    ``shared_w2_DS`` (or None). Returns ``(out_TD in x's dtype, rows_S received per local slot,
    PhaseTimes)``.
    """
    dev = x_TD.device
    R = dist.get_world_size(group)
    S = slots_per_rank
    T, K = slot_TK.shape
    times = PhaseTimes()
    _sync(dev)
    t0 = time.perf_counter()

    # 1. dispatch: pairs sorted by (destination rank, local slot)
    slot_N = slot_TK.reshape(-1).to(device=dev, dtype=torch.long)
    order_N = torch.argsort(slot_N, stable=True)  # slot order is (rank, local slot) order
    token_N = order_N // K
    dest_N = slot_N[order_N] // S
    send_R = torch.bincount(dest_N, minlength=R)
    if slot_N.numel() and (int(slot_N.min()) < 0 or int(slot_N.max()) >= R * S):
        raise ValueError(f"slot_TK holds slots outside [0, {R * S}) for {R} ranks x {S} slots")
    recv_R = torch.empty_like(send_R)
    dist.all_to_all_single(recv_R, send_R, group=group)
    in_splits, out_splits = send_R.tolist(), recv_R.tolist()
    x_send = x_TD.index_select(0, token_N)
    local_send = (slot_N[order_N] % S).contiguous()
    x_recv = x_TD.new_empty(sum(out_splits), x_TD.shape[1])
    local_recv = local_send.new_empty(sum(out_splits))
    all_to_all_v(x_recv, x_send, out_splits, in_splits, group, impl)
    all_to_all_v(local_recv, local_send, out_splits, in_splits, group, impl)
    _sync(dev)
    t1 = time.perf_counter()

    # 2. expert compute on the received rows, sorted by local slot
    perm_M = torch.argsort(local_recv, stable=True)
    rows_S = torch.bincount(local_recv, minlength=S)
    y_sorted = run_local_experts(x_recv.index_select(0, perm_M), rows_S, w13_S2FD, w2_SDF, backend)
    y_recv = torch.empty_like(y_sorted)
    y_recv[perm_M] = y_sorted
    _sync(dev)
    t2 = time.perf_counter()

    # 3. combine: outputs back to the token's rank, weighted sum
    y_back = y_recv.new_empty(x_send.shape[0], x_TD.shape[1])
    all_to_all_v(y_back, y_recv, in_splits, out_splits, group, impl)
    acc = torch.promote_types(x_TD.dtype, torch.float32)
    w_N = weights_TK.reshape(-1).to(device=dev, dtype=acc).index_select(0, order_N)
    out_TD = torch.zeros(T, x_TD.shape[1], dtype=acc, device=dev)
    out_TD.index_add_(0, token_N, y_back.to(acc) * w_N[:, None])
    _sync(dev)
    t3 = time.perf_counter()

    if shared is not None and shared.shared_w13_2SD is not None and shared.shared_w2_DS is not None:
        out_TD += ffn(x_TD, shared.shared_w13_2SD, shared.shared_w2_DS).to(acc)
        _sync(dev)
    t4 = time.perf_counter()
    times.dispatch_ms, times.compute_ms = (t1 - t0) * 1e3, (t2 - t1) * 1e3
    times.combine_ms, times.shared_ms = (t3 - t2) * 1e3, (t4 - t3) * 1e3
    return out_TD.to(x_TD.dtype), rows_S.cpu(), times
