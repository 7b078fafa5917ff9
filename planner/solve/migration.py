"""Migration when re-planning: what moving from the placement in service costs, and keeping slots.

A re-plan moves expert weights: a copy over the NIC when the node did not hold the expert
before, over NVLink when it did. The objective charges ``migration_weight`` × that copy time
per planning step (docs/placement.md §3: the weight amortises the one-time copy over the steps
until the next re-plan). Shapes: ``L`` layers, ``P`` physical slots, ``G`` GPUs, ``E`` experts,
``g`` GPUs per node, ``S`` slots per GPU.
"""

from __future__ import annotations

import numpy as np

from planner.solve.problem import PlacementInputs


def migration_ms(phy2log_LP: np.ndarray, previous_LP: np.ndarray | None, inp: PlacementInputs, weight: float) -> float:
    """Amortised migration penalty (ms per step) of moving from ``previous_LP`` [L, P] to
    ``phy2log_LP`` [L, P] (docs/placement.md §3)."""
    if previous_LP is None or weight <= 0:
        return 0.0
    c = inp.cost
    L, P = phy2log_LP.shape
    G, S, E = inp.num_gpus, inp.slots_per_gpu, inp.num_experts
    gpn = inp.gpus_per_node if inp.num_nodes > 1 else G
    N = G // gpn
    gpu = np.arange(P) // S
    node = gpu // gpn
    total = 0.0
    for l in range(L):
        new_GE = np.zeros((G, E), dtype=np.int64)
        old_GE = np.zeros((G, E), dtype=np.int64)
        np.add.at(new_GE, (gpu, phy2log_LP[l]), 1)
        np.add.at(old_GE, (gpu, previous_LP[l]), 1)
        moved_GE = np.maximum(new_GE - old_GE, 0)
        old_NE = np.zeros((N, E), dtype=np.int64)
        np.add.at(old_NE, (node, previous_LP[l]), 1)
        had = old_NE[np.arange(G) // gpn] > 0  # [G, E]: node had the expert before
        cost = np.where(had, c.nvlink.ms_per_byte, c.nic.ms_per_byte) * c.expert_bytes
        total += float((moved_GE * cost).sum())
    return weight * total


def item_migration_ms(item_exp: np.ndarray, item_node: np.ndarray, prev_LP_row: np.ndarray, inp: PlacementInputs,
                      weight: float) -> np.ndarray:
    """Migration cost float [items, g] of placing each replica item (expert ``item_exp`` [items]
    on node ``item_node`` [items]) on each GPU of its node, given the previous row [P]."""
    c = inp.cost
    G, S = inp.num_gpus, inp.slots_per_gpu
    gpn = inp.gpus_per_node if inp.num_nodes > 1 else G
    gpu = np.arange(prev_LP_row.size) // S
    had_gpu = np.zeros((G, inp.num_experts), dtype=bool)
    had_gpu[gpu, prev_LP_row] = True
    had_node = had_gpu.reshape(G // gpn, gpn, -1).any(axis=1)
    out = np.zeros((item_exp.size, gpn))
    for j in range(gpn):
        g_glob = item_node * gpn + j
        on_gpu = had_gpu[g_glob, item_exp]
        on_node = had_node[item_node, item_exp]
        per = np.where(on_node, c.nvlink.ms_per_byte, c.nic.ms_per_byte) * c.expert_bytes
        out[:, j] = np.where(on_gpu, 0.0, per * weight)
    return out


def keep_slots(row_P: np.ndarray, prev_P: np.ndarray, slots: int) -> np.ndarray:
    """Reorder the slots inside each GPU of ``row_P`` [P] so that an expert that stays on a GPU
    keeps its slot index of ``prev_P`` [P] (the order inside a GPU changes nothing else; fewer
    weight copies)."""
    out = row_P.copy()
    for u in range(row_P.size // slots):
        mine = list(row_P[u * slots:(u + 1) * slots])
        old = prev_P[u * slots:(u + 1) * slots]
        vals = [-1] * slots
        for s_ in range(slots):
            if old[s_] in mine:
                vals[s_] = int(old[s_])
                mine.remove(old[s_])
        for s_ in range(slots):
            if vals[s_] < 0:
                vals[s_] = int(mine.pop(0))
        out[u * slots:(u + 1) * slots] = vals
    return out


def first_node_of_experts(phy2log_P: np.ndarray, slots: int, gpn: int, num_experts: int) -> np.ndarray:
    """Node of each expert's first slot in ``phy2log_P`` [P]: int [E] (-1 for an expert with no slot)."""
    node = np.full(num_experts, -1, dtype=np.int64)
    p = np.arange(phy2log_P.size)[::-1]
    node[phy2log_P[::-1]] = (p // slots) // gpn
    return node
