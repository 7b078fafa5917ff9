"""Fast re-placement from fresh expert counts, for use inside a serving or training loop.

:func:`rebalance` is pure numpy, vectorized over layers (DeepSeek-V3: 58 layers × 256 experts
on 64 GPUs in a few milliseconds), and migration-aware:

1. **Balance** — DeepSeek EPLB (:func:`planner.solve.baselines.eplb`) on the fresh counts:
   hierarchical when the expert groups divide by the nodes (groups stay node-aligned, which
   group-limited routing needs), global otherwise.
2. **Relabel to the previous placement** (when ``previous`` is given) — nodes, then GPUs inside
   each node, are permuted to keep as many experts where they were as possible (greedy maximum
   overlap; node and GPU labels do not change any GPU's load), and inside each GPU an expert
   that stays keeps its slot. Only the experts that really change GPU must be copied.
3. **Keep or move, per layer** — a layer is re-placed only when the fresh placement lowers its
   largest GPU load by at least ``migration_weight`` tokens per moved expert copy (with weight 0:
   unless the previous layer balances the fresh counts strictly better, as EPLB's greedy result
   sometimes does not); otherwise the previous layer is kept as it was.

Shapes: ``L`` layers, ``E`` logical experts, ``P = E + R`` physical slots, ``G`` GPUs of ``N``
nodes (``g = G / N`` per node), ``S = P / G`` slots per GPU. Slot ``p`` lives on GPU ``p // S``,
GPUs numbered node by node (as in EPLB and the plan file).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from planner.errors import InfeasibleError, InputError
from planner.solve import baselines
from planner.specs.options import require_migration_weight


def _check(counts_LE: ArrayLike, num_gpus: int, num_nodes: int, num_redundant: int) -> np.ndarray:
    w = np.asarray(counts_LE, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] == 0:
        raise InputError(f"rebalance: counts must be [layers, experts] (got shape {w.shape})")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InputError("rebalance: counts must be finite and >= 0")
    L, E = w.shape
    if num_gpus <= 0 or num_nodes <= 0 or num_gpus % num_nodes:
        raise InputError(f"rebalance: num_gpus ({num_gpus}) must be a positive multiple of num_nodes ({num_nodes})")
    if num_redundant < 0:
        raise InputError(f"rebalance: num_redundant must be >= 0 (got {num_redundant})")
    P = E + num_redundant
    if P % num_gpus:
        raise InputError(
            f"rebalance: experts + redundant ({E} + {num_redundant} = {P}) must divide by the {num_gpus} GPUs "
            "so every GPU holds the same number of slots"
        )
    return w


def gpu_loads(weight_LE: np.ndarray, phy2log_LP: np.ndarray, num_gpus: int) -> np.ndarray:
    """Load of each GPU ``[L, G]`` when every expert's load splits evenly over its replicas."""
    L, E = weight_LE.shape
    P = phy2log_LP.shape[1]
    rows = np.arange(L)[:, None]
    cnt = np.bincount((rows * E + phy2log_LP).ravel(), minlength=L * E).reshape(L, E)
    per_slot = weight_LE[rows, phy2log_LP] / cnt[rows, phy2log_LP]
    return per_slot.reshape(L, num_gpus, P // num_gpus).sum(axis=2)


def _greedy_match(score: np.ndarray) -> np.ndarray:
    """Row -> column assignment of each ``[..., n, n]`` score matrix, largest entries first.

    Returns ``match[..., n]``: the column given to each row. Vectorized over the leading axes.
    """
    *lead, n, _ = score.shape
    flat = score.reshape(-1, n * n).astype(np.float64).copy()
    B = flat.shape[0]
    match = np.full((B, n), -1, dtype=np.int64)
    rows = np.arange(B)
    for _ in range(n):
        best = np.argmax(flat, axis=1)  # lowest index among ties: deterministic
        r, c = best // n, best % n
        match[rows, r] = c
        grid = flat.reshape(B, n, n)
        grid[rows, r, :] = -np.inf
        grid[rows, :, c] = -np.inf
    return match.reshape(*lead, n)


def relabel_to_previous(new_LP: np.ndarray, prev_LP: np.ndarray, num_gpus: int, num_nodes: int) -> np.ndarray:
    """Permute nodes, GPUs inside nodes and slots inside GPUs of ``new_LP`` so that as many
    (GPU, expert) pairs of ``prev_LP`` as possible stay (module docstring, step 2)."""
    L, P = new_LP.shape
    G, N = num_gpus, num_nodes
    g, S = G // N, P // G
    E = int(max(new_LP.max(), prev_LP.max())) + 1
    rows = np.arange(L)[:, None]
    # nodes: overlap[l, new node, old node] = Σ_e min(count_new, count_old)
    node_of_slot = np.arange(P) // (g * S)
    key = (rows * N + node_of_slot[None, :]) * E
    cn = np.bincount((key + new_LP).ravel(), minlength=L * N * E).reshape(L, N, E)
    co = np.bincount((key + prev_LP).ravel(), minlength=L * N * E).reshape(L, N, E)
    ov = np.minimum(cn[:, :, None, :], co[:, None, :, :]).sum(axis=3)  # [L, N, N]
    node_map = _greedy_match(ov)  # new node -> old node position
    new_N = new_LP.reshape(L, N, g * S)
    out = np.empty_like(new_N)
    out[rows, node_map] = new_N
    # GPUs inside each node: overlap = common experts of the two slot sets
    nG = out.reshape(L, N, g, S)
    oG = prev_LP.reshape(L, N, g, S)
    eq = nG[:, :, :, None, :, None] == oG[:, :, None, :, None, :]  # [L, N, g, g, S, S]
    ovg = eq.any(axis=5).sum(axis=4).astype(np.float64)
    gpu_map = _greedy_match(ovg)  # [L, N, g]
    res = np.empty_like(nG)
    ln = np.arange(L)[:, None, None], np.arange(N)[None, :, None]
    res[ln[0], ln[1], gpu_map] = nG
    # slots inside each GPU: an expert that stays keeps its slot index
    return keep_slot_order(res.reshape(L, P), prev_LP, S)


def keep_slot_order(new_LP: np.ndarray, prev_LP: np.ndarray, slots: int) -> np.ndarray:
    """Reorder the slots inside each GPU so that experts present before keep their slot index."""
    L, P = new_LP.shape
    a = new_LP.reshape(-1, slots).copy()  # [rows, S]
    b = prev_LP.reshape(-1, slots)
    R = a.shape[0]
    out = np.full_like(a, -1)
    used = np.zeros_like(a, dtype=bool)
    rr = np.arange(R)
    for j in range(slots):
        hit = (a == b[:, j : j + 1]) & ~used  # new slots holding the expert old slot j had
        has = hit.any(axis=1)
        i = np.argmax(hit, axis=1)
        out[rr[has], j] = a[rr[has], i[has]]
        used[rr[has], i[has]] = True
    # the rest fill the free positions in their order
    items = np.argsort(used, axis=1, kind="stable")  # unused new slots first, in order
    free = np.argsort(out >= 0, axis=1, kind="stable")  # free positions first, in order
    m = np.arange(slots)[None, :] < (~used).sum(axis=1)[:, None]
    r = np.broadcast_to(rr[:, None], m.shape)[m]
    out[r, free[m]] = a[r, items[m]]
    return out.reshape(L, P)


def moved_copies(new_LP: np.ndarray, prev_LP: np.ndarray, slots: int) -> np.ndarray:
    """Expert copies each layer must fetch: slots whose expert was not on that GPU before, ``[L]``."""
    L, P = new_LP.shape
    a = new_LP.reshape(L, P // slots, slots)
    b = prev_LP.reshape(L, P // slots, slots)
    present = (a[..., :, None] == b[..., None, :]).any(axis=-1)
    return (~present).sum(axis=(1, 2))


def rebalance(
    counts_LE: ArrayLike,
    num_gpus: int,
    num_nodes: int,
    num_redundant: int,
    previous: ArrayLike | None = None,
    *,
    num_groups: int | None = None,
    migration_weight: float = 0.0,
) -> np.ndarray:
    """Placement ``phy2log`` [L, E + R] from fresh per-expert counts ``counts_LE`` [L, E].

    ``num_groups``: routing groups (DeepSeek ``n_group``; groups stay node-aligned when they
    divide by the nodes). ``previous`` [L, E + R]: the placement in service; then the result
    moves as few experts as it can (module docstring) and a layer keeps its previous placement
    unless re-placing it lowers its largest GPU load by more than ``migration_weight`` tokens
    per moved expert copy. Raises :class:`InputError` for malformed input and
    :class:`InfeasibleError` when there are fewer slots than experts.
    """
    w = _check(counts_LE, num_gpus, num_nodes, num_redundant)
    L, E = w.shape
    P = E + num_redundant
    if P < E:  # pragma: no cover - num_redundant >= 0 is checked
        raise InfeasibleError(f"rebalance: {E} experts need {E} slots, there are {P}")
    require_migration_weight(migration_weight, "rebalance: ")
    groups = num_groups or 1
    if num_groups is not None and (num_groups <= 0 or E % num_groups):
        raise InputError(f"rebalance: num_groups ({num_groups}) must be > 0 and divide the {E} experts")
    new = baselines.eplb(w, P, groups, num_nodes, num_gpus)
    if previous is None:
        return new
    prev = np.asarray(previous, dtype=np.int64)
    if prev.shape != (L, P):
        raise InputError(f"rebalance: previous must be [layers, slots] = [{L}, {P}] (got {list(prev.shape)})")
    if prev.min() < 0 or prev.max() >= E:
        raise InputError(f"rebalance: previous holds expert ids outside [0, {E})")
    present = np.bincount((np.arange(L)[:, None] * E + prev).ravel(), minlength=L * E).reshape(L, E)
    missing = (present == 0).any(axis=1)
    new = relabel_to_previous(new, prev, num_gpus, num_nodes)
    S = P // num_gpus
    moved = moved_copies(new, prev, S)
    gain = gpu_loads(w, prev, num_gpus).max(axis=1) - gpu_loads(w, new, num_gpus).max(axis=1)
    # keep the previous layer when moving does not pay (a previous layer missing an expert never)
    keep = (gain < migration_weight * moved) & ~missing
    return np.where(keep[:, None], prev, new)
