"""Trace-driven simulator: replay routing through a placement, step by step.

For every step of a trace and every MoE layer it computes where each token's top-k experts are
served (dispatch policy over replicas), the tokens each GPU's expert slots receive, the bytes
dispatch and combine move inside and between nodes, and the predicted layer time::

    layer_ms = max_g compute_g + exposed dispatch/combine time     (planner.cost.comm)

Why replay rather than expectations: a placement's worth is in its straggler GPU and in which
copies cross the network, both of which depend on the real co-occurrence of a token's top-k
choices. The full specification is docs/cost_model.md §6.

- **compute** per GPU: its slots' expert FFN times (``kernel="loop"``) or one grouped launch
  (``"grouped"``), :mod:`planner.cost.compute`;
- **replica choice** (:data:`DISPATCH`, deterministic so plans and scores are reproducible):
  ``even`` — pair (t, j) goes to replica ``(t·k + j) mod c_e`` (:func:`even_replica`);
  ``local-first`` — a replica on the token's own GPU, else as ``even``; ``nearest`` — own GPU,
  else own node, else as ``even`` (SGLang's ``dynamic`` dispatch under ``--moe-a2a-backend
  deepep``); ``static`` — one replica pinned per (EP rank, expert), SGLang's static table
  (:func:`static_table`);
- **traffic** — :func:`planner.cost.comm.dispatch_copies` with DeepEP's rule; the inter-node
  copy lands by ``relay`` (:data:`RELAYS`): ``same-rank`` (default, DeepEP's normal kernels) or
  ``first-destination`` (kept for comparison; not how DeepEP routes).

A null choice (id -1: dynamic top-k, AdaMoE null experts) has no slot, no compute and no copy.
Tokens start on EP rank ``source_rank`` (the trace's, or each step's tokens in equal contiguous
blocks). Shapes: ``S`` steps, ``L`` MoE layers, ``T`` tokens, ``k`` top-k, ``E`` experts,
``P`` physical slots, ``G`` EP ranks. The module is ``simulator`` so that ``planner.simulate``
stays the API function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from planner.cost.comm import RELAYS, Copies, dispatch_copies, exposed_alltoall_ms, nic, nvlink
from planner.cost.compute import (
    ACTIVATION_BYTES,
    KERNELS,
    device_fit,
    expert_ffn_ms,
    grouped_model_ms,
)
from planner.errors import InputError

#: How a token picks among the replicas of its expert (see the docs/cost_model.md §6).
DISPATCH = ("even", "local-first", "nearest", "static")
__all__ = ["DEFAULT_RELAY", "DISPATCH", "RELAYS", "SimResult", "choose_slots", "combine_groups", "describe",
           "even_replica", "simulate_arrays", "simulate_placement", "static_table"]
#: The convention plans are scored with.
DEFAULT_RELAY = "same-rank"


def check_relay(relay: str | None) -> str:
    relay = DEFAULT_RELAY if relay is None else relay
    if relay not in RELAYS:
        raise InputError(f"relay must be one of {', '.join(RELAYS)} (got {relay!r})")
    return relay


@dataclass(frozen=True)
class SimResult:
    """Per-step, per-layer figures of one simulation (arrays ``[S, L]`` unless noted)."""

    compute_ms_SL: np.ndarray
    comm_ms_SL: np.ndarray
    imbalance_SL: np.ndarray
    intra_bytes_SL: np.ndarray
    inter_bytes_SL: np.ndarray
    gpu_tokens_SLG: np.ndarray
    tokens_S: np.ndarray

    @property
    def layer_ms_SL(self) -> np.ndarray:
        return self.compute_ms_SL + self.comm_ms_SL

    @property
    def step_ms_S(self) -> np.ndarray:
        """Summed MoE-layer time of each step."""
        return self.layer_ms_SL.sum(axis=1)


def even_replica(tok_index_T: np.ndarray, k: int, replicas_Tk: np.ndarray) -> np.ndarray:
    """The ``even`` rule: token ``t``'s ``j``-th choice goes to replica ``(t·k + j) mod r`` of
    the ``r`` = ``replicas_Tk`` [T, k] candidates (``tok_index_T`` [T]: each token's index t)."""
    return (np.asarray(tok_index_T, dtype=np.int64)[:, None] * k + np.arange(k)[None, :]) % replicas_Tk


def choose_slots(
    ids_Tk: np.ndarray,
    src_T: np.ndarray,
    phy2log_P: np.ndarray,
    slots_per_gpu: int,
    num_experts: int,
    dispatch: str,
    gpus_per_node: int | None = None,
) -> np.ndarray:
    """Physical slot serving each (token, choice) pair of one layer: ``slot_Tk`` (``gpus_per_node``
    is needed by ``nearest``; without it all GPUs are one node). A null choice (id -1, no
    expert) is served nowhere: slot -1."""
    null = np.asarray(ids_Tk) < 0
    if null.any():
        slot_Tk = choose_slots(np.where(null, 0, ids_Tk), src_T, phy2log_P, slots_per_gpu, num_experts, dispatch,
                               gpus_per_node)
        return np.where(null, -1, slot_Tk)
    P = phy2log_P.shape[0]
    G = P // slots_per_gpu
    T, k = ids_Tk.shape
    cnt_E = np.bincount(phy2log_P, minlength=num_experts)
    if (cnt_E == 0).any():
        raise InputError(f"placement misses expert {int(np.argmin(cnt_E))}: every expert needs a slot")
    if dispatch == "static":
        return static_table(phy2log_P, slots_per_gpu, num_experts, gpus_per_node)[src_T[:, None], ids_Tk]
    # replica table: log2phy_ER[e, r] = r-th slot holding e
    order = np.argsort(phy2log_P, kind="stable")
    starts = np.concatenate([[0], np.cumsum(cnt_E)[:-1]])
    rep = even_replica(np.arange(T), k, cnt_E[ids_Tk])
    slot_Tk = order[starts[ids_Tk] + rep]
    if dispatch not in DISPATCH:
        raise InputError(f"dispatch must be one of {', '.join(DISPATCH)} (got {dispatch!r})")
    if dispatch == "nearest":
        gpn = G if gpus_per_node is None else int(gpus_per_node)
        N = max(1, G // gpn)
        node_P = np.arange(P) // slots_per_gpu // gpn
        # replicas of e on node v: slots order_n[start_EN[e, v] : start_EN[e, v] + cnt_EN[e, v]]
        key_P = phy2log_P * N + node_P
        order_n = np.argsort(key_P, kind="stable")
        cnt_EN = np.bincount(key_P, minlength=num_experts * N)
        start_EN = np.concatenate([[0], np.cumsum(cnt_EN)[:-1]])
        key_Tk = ids_Tk * N + (src_T // gpn)[:, None]
        c = cnt_EN[key_Tk]
        on_node = c > 0
        pick = even_replica(np.arange(T), k, np.maximum(c, 1))
        slot_Tk = np.where(on_node, order_n[np.minimum(start_EN[key_Tk] + pick, P - 1)], slot_Tk)
    if dispatch in ("local-first", "nearest"):
        # slot of expert e on GPU g, or -1
        local_EG = np.full((num_experts, G), -1, dtype=np.int64)
        gpu_P = np.arange(P) // slots_per_gpu
        local_EG[phy2log_P[::-1], gpu_P[::-1]] = np.arange(P)[::-1]  # first slot wins
        local = local_EG[ids_Tk, src_T[:, None]]
        slot_Tk = np.where(local >= 0, local, slot_Tk)
    return slot_Tk


def static_table(
    phy2log_P: np.ndarray, slots_per_gpu: int, num_experts: int, gpus_per_node: int | None = None
) -> np.ndarray:
    """SGLang's static dispatch table ``pin_GE`` [G, E]: the one physical slot EP rank ``g`` sends
    every token of expert ``e`` to.

    As SGLang 0.5.23 builds it (``compute_logical_to_rank_dispatch_physical_map`` and
    ``_find_nearest_expert`` in ``python/sglang/srt/eplb/expert_location.py``): the expert's
    only replica; else its first slot on rank ``g``'s GPU; else its first slot on ``g``'s node
    when that node holds some but not all of its replicas; else a fair draw, every replica
    taking ⌊n/c⌋ or ⌈n/c⌉ of the ``n`` ranks left. SGLang draws those with a seeded shuffle;
    here they are dealt in rank order (the ``i``-th rank left takes replica ``(i + e) mod c``),
    the same share per replica, deterministic. ``gpus_per_node`` ``None``: one node.
    """
    P = phy2log_P.shape[0]
    G = P // slots_per_gpu
    E = num_experts
    cnt_E = np.bincount(phy2log_P, minlength=E)
    order = np.argsort(phy2log_P, kind="stable")  # slots grouped by expert, increasing slot
    starts = np.concatenate([[0], np.cumsum(cnt_E)[:-1]])
    gpn = G if gpus_per_node is None else int(gpus_per_node)
    N = max(1, -(-G // gpn))
    slot_P = np.arange(P)
    gpu_P = slot_P // slots_per_gpu
    pin_GE = np.full((G, E), P, dtype=np.int64)
    np.minimum.at(pin_GE, (gpu_P, phy2log_P), slot_P)  # the expert's first slot on the GPU
    key_P = phy2log_P * N + gpu_P // gpn
    first_EN = np.full(E * N, P, dtype=np.int64)
    np.minimum.at(first_EN, key_P, slot_P)  # its first slot on the node
    cnt_EN = np.bincount(key_P, minlength=E * N).reshape(E, N)
    narrows_EN = (cnt_EN > 0) & (cnt_EN < cnt_E[:, None])
    node_G = np.arange(G) // gpn
    on_node_GE = np.where(narrows_EN[:, node_G].T, first_EN.reshape(E, N)[:, node_G].T, -1)
    pin_GE = np.where(pin_GE < P, pin_GE, on_node_GE)
    rest_GE = pin_GE < 0
    i_GE = np.cumsum(rest_GE, axis=0) - 1
    fair_GE = order[starts[None, :] + (i_GE + np.arange(E)[None, :]) % np.maximum(cnt_E, 1)[None, :]]
    return np.where(rest_GE, fair_GE, pin_GE)


def simulate_placement(
    phy2log_LP: np.ndarray,
    slots_per_gpu: int,
    topk_ids_LTk: np.ndarray,
    step_T: np.ndarray,
    src_T: np.ndarray,
    *,
    hw,
    hidden: int,
    ffn: int,
    dtype: str,
    num_experts: int,
    gpus_per_node: int,
    dispatch: str = "even",
    act_bytes: float = ACTIVATION_BYTES,
    num_steps: int | None = None,
    relay: str | None = None,
    kernel: str = "loop",
) -> SimResult:
    """Replay ``topk_ids_LTk`` through the placement; see the docs/cost_model.md §6.

    ``step_T`` holds step ids; with ``num_steps`` it must already be step indices in
    ``[0, num_steps)`` (so several token subsets of one trace line up step by step).
    ``kernel``: ``loop`` or ``grouped`` (docs/cost_model.md §6).
    """
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {', '.join(KERNELS)} (got {kernel!r})")
    launch_ms = device_fit(hw, dtype).fixed_ms if kernel == "grouped" else 0.0

    def ffn_ms(tokens: np.ndarray) -> np.ndarray:
        if kernel == "grouped":
            return grouped_model_ms(hw, hidden, ffn, dtype, tokens)
        return expert_ffn_ms(hw, hidden, ffn, dtype, tokens)

    nvl, net = nvlink(hw), nic(hw)

    def comm_ms(i_s, i_r, x_s, x_r) -> np.ndarray:
        return exposed_alltoall_ms(nvl, net, i_s, i_r, x_s, x_r, hw.comm_overlap)

    return simulate_arrays(
        phy2log_LP, slots_per_gpu, topk_ids_LTk, step_T, src_T, ffn_ms=ffn_ms, comm_ms=comm_ms,
        token_bytes=hidden * act_bytes, num_experts=num_experts, gpus_per_node=gpus_per_node,
        dispatch=dispatch, num_steps=num_steps, relay=relay, launch_ms=launch_ms,
    )


def simulate_arrays(
    phy2log_LP: np.ndarray,
    slots_per_gpu: int,
    topk_ids_LTk: np.ndarray,
    step_T: np.ndarray,
    src_T: np.ndarray,
    *,
    ffn_ms: Callable[[np.ndarray], np.ndarray],
    comm_ms: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    token_bytes: float,
    num_experts: int,
    gpus_per_node: int,
    dispatch: str = "even",
    num_steps: int | None = None,
    relay: str | None = None,
    launch_ms: float = 0.0,
) -> SimResult:
    """The simulator's core with the cost model passed in: ``ffn_ms(tokens) -> ms`` of one expert
    (any shape), ``comm_ms(intra_send, intra_recv, inter_send, inter_recv)`` per-GPU bytes
    ``[S, G]`` -> exposed dispatch + combine ms ``[S]``, ``token_bytes`` bytes per token copy,
    ``relay`` where an inter-node copy lands (:data:`RELAYS`; default :data:`DEFAULT_RELAY`),
    ``launch_ms`` a fixed cost per GPU that has any token (a grouped kernel's launch)."""
    relay = check_relay(relay)
    phy2log_LP = np.asarray(phy2log_LP, dtype=np.int64)
    L, P = phy2log_LP.shape
    G = P // slots_per_gpu
    if num_steps is None:
        _, step_idx_T = np.unique(step_T, return_inverse=True)
        S = int(step_idx_T.max()) + 1 if step_idx_T.size else 0
    else:
        step_idx_T = np.asarray(step_T, dtype=np.int64)
        S = num_steps
    tokens_S = np.bincount(step_idx_T, minlength=S).astype(np.float64)
    src_T = np.asarray(src_T, dtype=np.int64)

    compute = np.zeros((S, L))
    comm = np.zeros((S, L))
    imbalance = np.zeros((S, L))
    intra = np.zeros((S, L))
    inter = np.zeros((S, L))
    gpu_tokens = np.zeros((S, L, G))
    for l in range(L):
        ids = topk_ids_LTk[l]
        slot = choose_slots(ids, src_T, phy2log_LP[l], slots_per_gpu, num_experts, dispatch, gpus_per_node)
        # --- compute: tokens per slot per step -> time per GPU (null choices, slot -1, cost nothing)
        served = slot >= 0
        flat = (step_idx_T[:, None] * P + slot)[served]
        slot_tokens_SP = np.bincount(flat, minlength=S * P).reshape(S, P)
        t_SP = np.asarray(ffn_ms(slot_tokens_SP.reshape(-1)), dtype=np.float64).reshape(S, P)
        t_SG = t_SP.reshape(S, G, slots_per_gpu).sum(-1)
        tok_SG = slot_tokens_SP.reshape(S, G, slots_per_gpu).sum(-1)
        if launch_ms:
            t_SG = t_SG + np.where(tok_SG > 0, launch_ms, 0.0)
        compute[:, l] = t_SG.max(axis=1)
        mean = tok_SG.mean(axis=1)
        imbalance[:, l] = np.where(mean > 0, tok_SG.max(axis=1) / np.where(mean > 0, mean, 1), 1.0)
        gpu_tokens[:, l] = tok_SG
        # --- traffic: one copy per distinct destination GPU (NVLink) / remote node (network)
        dest_Tk = np.where(served, slot // slots_per_gpu, src_T[:, None])  # a null choice stays home: no copy
        nvl, net = dispatch_copies(dest_Tk, src_T, num_gpus=G, gpus_per_node=gpus_per_node,
                                   dispatcher="deepep", relay=relay)
        intra_send, intra_recv = _per_step_counts(nvl, step_idx_T, S, G)
        inter_send, inter_recv = _per_step_counts(net, step_idx_T, S, G)
        shape = (S, G)
        i_s = intra_send.reshape(shape) * token_bytes
        i_r = intra_recv.reshape(shape) * token_bytes
        x_s = inter_send.reshape(shape) * token_bytes
        x_r = inter_recv.reshape(shape) * token_bytes
        comm[:, l] = comm_ms(i_s, i_r, x_s, x_r)
        intra[:, l] = 2 * i_s.sum(1)
        inter[:, l] = 2 * x_s.sum(1)
    return SimResult(compute, comm, imbalance, intra, inter, gpu_tokens, tokens_S)


def _per_step_counts(c: Copies, step_idx_T: np.ndarray, S: int, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Copies each GPU sends and receives in each step, flat ``[S·G]``."""
    step_C = step_idx_T[c.token_C] * G
    send = np.bincount(step_C + c.src_C, minlength=S * G).astype(np.float64)
    return send, np.bincount(step_C + c.dst_C, minlength=S * G).astype(np.float64)


def combine_groups(results: list[SimResult]) -> SimResult:
    """Expert-data-parallel groups run side by side: times and imbalance take the worst group,
    bytes and tokens add up, per-rank tokens add up rank by rank."""
    first = results[0]
    if len(results) == 1:
        return first

    def stack(name: str) -> np.ndarray:
        return np.stack([getattr(r, name) for r in results])

    return SimResult(
        compute_ms_SL=stack("compute_ms_SL").max(0),
        comm_ms_SL=stack("comm_ms_SL").max(0),
        imbalance_SL=stack("imbalance_SL").max(0),
        intra_bytes_SL=stack("intra_bytes_SL").sum(0),
        inter_bytes_SL=stack("inter_bytes_SL").sum(0),
        gpu_tokens_SLG=stack("gpu_tokens_SLG").sum(0),
        tokens_S=stack("tokens_S").sum(0),
    )


def describe(sim: SimResult) -> dict:
    """JSON-ready summary of a simulation: the per-step distribution of the summed MoE time,
    and per MoE layer the time distribution over steps, imbalance, bytes and each GPU's mean
    tokens per step (``gpu_tokens`` [G], EP ranks numbered node by node)."""
    step_ms = sim.step_ms_S
    layer_ms = sim.layer_ms_SL

    def dist(x: np.ndarray) -> dict[str, float]:
        return {"mean": float(x.mean()), "p50": float(np.percentile(x, 50)), "p99": float(np.percentile(x, 99))}

    layers = []
    for i in range(layer_ms.shape[1]):
        tok_G = sim.gpu_tokens_SLG[:, i].mean(axis=0)
        layers.append({
            "layer": i,
            "ms": dist(layer_ms[:, i]),
            "compute_ms": float(sim.compute_ms_SL[:, i].mean()),
            "comm_ms": float(sim.comm_ms_SL[:, i].mean()),
            "imbalance": float(sim.imbalance_SL[:, i].mean()),
            "intra_node_bytes_per_step": float(sim.intra_bytes_SL[:, i].mean()),
            "inter_node_bytes_per_step": float(sim.inter_bytes_SL[:, i].mean()),
            "busiest_gpu": int(np.argmax(tok_G)),
            "gpu_tokens": [float(x) for x in tok_G],
        })
    return {
        "steps": int(step_ms.size),
        "tokens_per_step": float(sim.tokens_S.mean()),
        "moe_time_per_step_ms": dist(step_ms),
        "moe_layer_ms": dist(layer_ms.ravel()),
        "compute_ms": float(sim.compute_ms_SL.mean()),
        "comm_ms": float(sim.comm_ms_SL.mean()),
        "imbalance": float(sim.imbalance_SL.mean()),
        "imbalance_p99": float(np.percentile(sim.imbalance_SL, 99)),
        "intra_node_bytes_per_step": float(sim.intra_bytes_SL.sum(1).mean()),
        "inter_node_bytes_per_step": float(sim.inter_bytes_SL.sum(1).mean()),
        "layers": layers,
    }
