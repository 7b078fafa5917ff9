"""Baseline placements, implemented from their published descriptions (docs/facts.md §4).

All functions are pure and work on arrays; shapes in the names (``L`` MoE layers, ``E`` logical
experts, ``P`` physical slots = ``E + R``, ``G`` EP ranks):

- :func:`contiguous` — Megatron-core: EP rank ``g`` holds experts ``[g·E/G, (g+1)·E/G)``.
- :func:`round_robin` — vLLM ``expert_placement_strategy=round_robin``: expert ``e`` on rank
  ``e mod G``.
- :func:`eplb` — DeepSeek EPLB ``rebalance_experts``, hierarchical when the expert groups divide
  by the nodes, global otherwise:

  1. pack expert groups onto nodes by total load, each node the same number of groups
     (heaviest group first onto the lightest node that has room);
  2. inside each node, add replicas one at a time to the expert with the largest
     load-per-replica;
  3. pack the node's physical replicas onto its GPUs, each GPU the same count, heaviest first
     onto the lightest GPU that has room (a replica's load is its expert's load / replicas).

  The global policy is the same with one group and one node. It balances token counts only:
  no communication, no cross-layer affinity, no migration cost; two replicas of one expert may
  land on the same GPU. Ties break by lower index, so results are deterministic.

All return ``phy2log_LP`` (logical expert in each physical slot; slot ``p`` on GPU
``p // (P / G)``, GPUs numbered node by node); :func:`logical_maps` derives ``log2phy`` and
``logcnt`` in EPLB's layout.
"""

from __future__ import annotations

import numpy as np

from planner.errors import InputError


def _check_divides(num_slots: int, num_gpus: int, what: str) -> None:
    if num_gpus <= 0 or num_slots % num_gpus:
        raise InputError(
            f"{what}: ep ({num_gpus}) must divide the physical expert slots ({num_slots}) so every EP rank "
            f"holds the same number of experts"
        )


def contiguous(num_layers: int, num_experts: int, num_gpus: int) -> np.ndarray:
    """Megatron placement: consecutive experts per rank. Returns ``phy2log_LP`` [L, E]."""
    _check_divides(num_experts, num_gpus, "contiguous")
    return np.tile(np.arange(num_experts, dtype=np.int64), (num_layers, 1))


def round_robin(num_layers: int, num_experts: int, num_gpus: int) -> np.ndarray:
    """vLLM round-robin: expert ``e`` on rank ``e mod G``. Returns ``phy2log_LP`` [L, E]."""
    _check_divides(num_experts, num_gpus, "round-robin")
    per = num_experts // num_gpus
    # slot s of rank g holds expert g + s·G
    g = np.arange(num_gpus)[:, None]
    s = np.arange(per)[None, :]
    row = (g + s * num_gpus).reshape(-1)
    return np.tile(row.astype(np.int64), (num_layers, 1))


def balanced_packing(weight_LN: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack N items into ``num_packs`` packs of equal item count, minimizing the heaviest pack.

    Greedy (as EPLB describes): items by decreasing weight, each onto the lightest pack that still
    has room. Returns ``pack_LN`` (pack of each item) and ``rank_LN`` (position inside the pack).
    """
    L, N = weight_LN.shape
    assert N % num_packs == 0, (N, num_packs)
    per_pack = N // num_packs
    pack_LN = np.zeros((L, N), dtype=np.int64)
    rank_LN = np.zeros((L, N), dtype=np.int64)
    if per_pack == 1:
        order = np.argsort(-weight_LN, axis=1, kind="stable")
        pack_LN[np.arange(L)[:, None], order] = np.arange(N)[None, :]
        return pack_LN, rank_LN
    order_LN = np.argsort(-weight_LN, axis=1, kind="stable")
    load_LK = np.zeros((L, num_packs), dtype=np.float64)
    count_LK = np.zeros((L, num_packs), dtype=np.int64)
    rows = np.arange(L)
    for i in range(N):
        item = order_LN[:, i]
        w = weight_LN[rows, item]
        masked = np.where(count_LK < per_pack, load_LK, np.inf)
        pack = np.argmin(masked, axis=1)  # argmin takes the lowest index on ties
        pack_LN[rows, item] = pack
        rank_LN[rows, item] = count_LK[rows, pack]
        load_LK[rows, pack] += w
        count_LK[rows, pack] += 1
    return pack_LN, rank_LN


def replicate(weight_LE: np.ndarray, num_physical: int) -> tuple[np.ndarray, np.ndarray]:
    """Give ``num_physical - E`` extra replicas, each to the expert of largest load per replica.

    Returns ``phy2log_LP`` (first the E originals in order, then each added replica) and
    ``logcnt_LE`` (replicas per expert).
    """
    L, E = weight_LE.shape
    assert num_physical >= E
    phy2log = np.empty((L, num_physical), dtype=np.int64)
    phy2log[:, :E] = np.arange(E)
    logcnt = np.ones((L, E), dtype=np.int64)
    rows = np.arange(L)
    for p in range(E, num_physical):
        e = np.argmax(weight_LE / logcnt, axis=1)
        phy2log[:, p] = e
        logcnt[rows, e] += 1
    return phy2log, logcnt


def eplb(
    weight_LE: np.ndarray,
    num_physical: int,
    num_groups: int,
    num_nodes: int,
    num_gpus: int,
) -> np.ndarray:
    """DeepSeek EPLB placement from per-expert load ``weight_LE`` [L, E].

    Hierarchical when ``num_groups`` divides by ``num_nodes`` (and the nodes' slots divide
    evenly), global otherwise. Returns ``phy2log_LP`` [L, num_physical] ordered by GPU.
    """
    w = np.asarray(weight_LE, dtype=np.float64)
    L, E = w.shape
    _check_divides(num_physical, num_gpus, "eplb")
    if num_physical < E:
        raise InputError(f"eplb: physical slots ({num_physical}) must be >= experts ({E})")
    if num_gpus % num_nodes:
        raise InputError(f"eplb: GPUs ({num_gpus}) must divide by nodes ({num_nodes})")
    hierarchical = (
        num_groups > 0
        and E % num_groups == 0
        and num_groups % num_nodes == 0
        and num_physical % num_nodes == 0
        and (num_physical // num_nodes) >= E // num_nodes
    )
    if not hierarchical:
        num_groups, num_nodes = 1, 1
    group_size = E // num_groups
    rows = np.arange(L)[:, None]

    # 1. groups onto nodes
    group_load_LN = w.reshape(L, num_groups, group_size).sum(-1)
    group_node, group_rank = balanced_packing(group_load_LN, num_nodes)
    groups_per_node = num_groups // num_nodes
    # node-major ordering of logical experts: mlog position -> logical expert id
    pos_of_group = group_node * groups_per_node + group_rank  # [L, num_groups]
    log2mlog = (pos_of_group[:, :, None] * group_size + np.arange(group_size)).reshape(L, E)
    mlog2log = np.empty_like(log2mlog)
    mlog2log[rows, log2mlog] = np.arange(E)[None, :]

    # 2. replicas inside each node (experts of a node handled as one row of a batch)
    experts_per_node = E // num_nodes
    phys_per_node = num_physical // num_nodes
    w_node = w[rows, mlog2log].reshape(L * num_nodes, experts_per_node)
    phy2mlog, mlogcnt = replicate(w_node, phys_per_node)

    # 3. replicas onto the node's GPUs
    gpus_per_node = num_gpus // num_nodes
    rep_load = w_node[np.arange(L * num_nodes)[:, None], phy2mlog] / np.take_along_axis(mlogcnt, phy2mlog, axis=1)
    pack, rank = balanced_packing(rep_load, gpus_per_node)
    slots_per_gpu = phys_per_node // gpus_per_node
    new_pos = pack * slots_per_gpu + rank  # position of each replica inside its node
    pphy2mlog = np.empty_like(phy2mlog)
    pphy2mlog[np.arange(L * num_nodes)[:, None], new_pos] = phy2mlog
    # back to global mlog ids, then logical ids
    node_offset = (np.arange(num_nodes) * experts_per_node)[None, :, None]
    pphy2mlog = pphy2mlog.reshape(L, num_nodes, phys_per_node) + node_offset
    pphy2mlog = pphy2mlog.reshape(L, num_physical)
    return np.take_along_axis(mlog2log, pphy2mlog, axis=1)


def logical_maps(phy2log_LP: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """EPLB's ``log2phy`` [L, E, max_replicas] (padded with -1) and ``logcnt`` [L, E]."""
    L, P = phy2log_LP.shape
    logcnt = np.zeros((L, num_experts), dtype=np.int64)
    for l in range(L):
        logcnt[l] = np.bincount(phy2log_LP[l], minlength=num_experts)
    max_rep = int(logcnt.max()) if logcnt.size else 1
    log2phy = np.full((L, num_experts, max_rep), -1, dtype=np.int64)
    for l in range(L):
        fill = np.zeros(num_experts, dtype=np.int64)
        for p, e in enumerate(phy2log_LP[l]):
            log2phy[l, e, fill[e]] = p
            fill[e] += 1
    return log2phy, logcnt
