"""Communication time of expert-parallel dispatch and combine (first, simple model).

Hierarchical alpha-beta model (FACTS.md §3):

    t_link = α_link + max_g max(send_g, recv_g) / BW_link        (0 when no byte moves)
    t_dispatch = max(t_nvlink, t_nic)                              (the two paths run together)
    t_combine  = t_dispatch                                        (same bytes, reversed)
    exposed    = (t_dispatch + t_combine) · (1 − overlap)

``send_g`` / ``recv_g`` are the bytes GPU ``g`` sends / receives on that path, so the bottleneck
GPU decides. ``BW`` is the achievable per-GPU bandwidth of the profile (NCCL all-to-all bus
bandwidth inside a node, about one NIC per GPU between nodes); α the per-message latency
(≈ 10 µs inside a node, ≈ 20 µs between nodes). ``overlap`` is the profile's ``comm_overlap``.

Bytes counting (DeepEP's rule): a token is sent once per destination GPU inside its node and
once per destination node outside it, whatever number of its top-k experts live there.
"""

from __future__ import annotations

import numpy as np


def link_time_ms(send_G: np.ndarray, recv_G: np.ndarray, bandwidth_gbps: float, latency_us: float) -> np.ndarray:
    """Time of one all-to-all phase on one kind of link; arrays ``[..., G]`` → ``[...]`` in ms.

    ``bandwidth_gbps`` is GB/s (1e9 bytes per second).
    """
    send_G = np.asarray(send_G, dtype=np.float64)
    recv_G = np.asarray(recv_G, dtype=np.float64)
    worst = np.maximum(send_G.max(axis=-1), recv_G.max(axis=-1))
    t = latency_us * 1e-3 + worst / (bandwidth_gbps * 1e9) * 1e3
    return np.where(worst > 0, t, 0.0)


def dispatch_combine_ms(
    intra_send_G: np.ndarray,
    intra_recv_G: np.ndarray,
    inter_send_G: np.ndarray,
    inter_recv_G: np.ndarray,
    *,
    nvlink_gbps: float,
    nvlink_latency_us: float,
    nic_gbps: float,
    nic_latency_us: float,
    overlap: float = 0.0,
) -> np.ndarray:
    """Exposed dispatch + combine time in ms for arrays of per-GPU bytes ``[..., G]``."""
    t_nvl = link_time_ms(intra_send_G, intra_recv_G, nvlink_gbps, nvlink_latency_us)
    t_nic = link_time_ms(inter_send_G, inter_recv_G, nic_gbps, nic_latency_us)
    dispatch = np.maximum(t_nvl, t_nic)
    return 2.0 * dispatch * (1.0 - overlap)
