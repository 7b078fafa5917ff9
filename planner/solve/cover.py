"""Node expert sets that keep whole tokens on their node under ``nearest`` (and ``static``) dispatch (stage 5, "cover").

Under ``nearest`` dispatch (:func:`planner.simulator.choose_slots`) a token uses a replica of its
expert on its own node whenever the node holds one, so a token of node ``v`` causes no
inter-node copy exactly when all ``k`` of its experts lie in ``v``'s set ``S_v``. Each node has
``P / N`` slots; holding every expert of ``S_v`` once, a node can hold ``P / N`` distinct experts
(``E / N`` of its own plus ``R / N`` more), and every expert must be held somewhere. This stage
chooses the sets ``S_v`` to maximise the planning tokens kept whole on their node::

    max Σ_v Σ_{t from v} w_t · [ids_t ⊆ S_v]    s.t. |S_v| = P / N,  ∪_v S_v = all experts

with ``w_t`` 1 (copies) or the token count of the token's (step, source GPU) (the busiest GPU's
NIC decides the layer's exposed time, so a token on a loaded GPU weighs more). It is what
co-activation is worth under ``nearest``: experts picked together end up in the same sets.
The stages before it choose experts → nodes for copies with one home per expert (stage 1b,
:mod:`planner.solve.nodeswap`) and then spend the redundant slots (:mod:`planner.solve.xnode`);
this one chooses the home sets and the replicas together.

Moves, with exact gains from counts on the current sets (``miss_t`` the experts of token ``t``
its node lacks)::

    G_v[x, y] = #{t ∋ y : miss_t = 1, y missing} − #{t ∋ x : miss_t = 0} − #{t ∋ x : miss_t = 1, y missing}

the tokens of ``v`` newly kept whole when ``x`` leaves ``S_v`` and ``y`` joins it. A *replace*
on node ``v`` (``x`` still held by another node) gains ``G_v[x, y]``; an *exchange* between
nodes ``u`` and ``v`` (``u`` gives ``x`` to ``v``, ``v`` gives ``y`` to ``u``) gains
``G_u[x, y] + G_v[y, x]`` (the two nodes' tokens are disjoint, so the gains add exactly). Each
round takes the best move, then the best touching other nodes (their gains stay exact), and so
on; it stops when no move gains :data:`MIN_GAIN` of the planning weight or after ``max_rounds``
rounds. Best-improvement local search on the exact coverage: heuristic, deterministic. The row
(which GPU holds what) is EPLB's longest-processing-time packing of each node's set by the
tokens each replica will serve. :mod:`planner.solve.xnode` scores the result by the simulator
against its other variants and the input, per layer.
"""

from __future__ import annotations

import numpy as np

from planner.solve import baselines

#: Smallest gain of a move, relative to the planning tokens' total weight (smaller is noise).
MIN_GAIN = 1e-4


def node_gains(ids_Tk: np.ndarray, w_T: np.ndarray, has_E: np.ndarray) -> np.ndarray:
    """``G[x, y]`` for one node's tokens ``ids_Tk`` [T, k] with weights ``w_T`` and set ``has_E``
    [E] (module docstring); entries with ``x`` outside the set or ``y`` inside it are −inf."""
    E = has_E.size
    k = ids_Tk.shape[1]
    miss_Tk = ~has_E[ids_Tk]
    miss = miss_Tk.sum(axis=1)
    whole = miss == 0
    # (bincount of an empty selection is int64 whatever the weights: cast)
    lose = np.bincount(ids_Tk[whole].ravel(), weights=np.repeat(w_T[whole], k), minlength=E).astype(np.float64)
    one = miss == 1
    ids1, m1, w1 = ids_Tk[one], miss_Tk[one], w_T[one]
    y_T = ids1[m1]  # the one expert each such token misses
    add = np.bincount(y_T, weights=w1, minlength=E).astype(np.float64)
    if k > 1:
        others = ids1[~m1].reshape(-1, k - 1)
        pair = np.bincount((others * E + y_T[:, None]).ravel(), weights=np.repeat(w1, k - 1),
                           minlength=E * E).reshape(E, E).astype(np.float64)
    else:
        pair = np.zeros((E, E))
    g = add[None, :] - lose[:, None] - pair
    g[~has_E, :] = -np.inf
    g[:, has_E] = -np.inf
    return g


def covered(ids_Tk: np.ndarray, src_node_T: np.ndarray, has_NE: np.ndarray) -> np.ndarray:
    """Whether each token's experts all lie in its source node's set: bool [T]."""
    return has_NE[src_node_T[:, None], ids_Tk].all(axis=1)


def cover_sets(ids_Tk: np.ndarray, src_node_T: np.ndarray, w_T: np.ndarray, has_NE: np.ndarray,
               max_rounds: int) -> tuple[np.ndarray, int]:
    """Local search of the module docstring from ``has_NE`` [N, E] (every expert held, equal set
    sizes): (the new sets, moves taken)."""
    has = has_NE.copy()
    N, E = has.shape
    by_node = [np.flatnonzero(src_node_T == v) for v in range(N)]
    toks = [np.asarray(ids_Tk[i], dtype=np.int64) for i in by_node]
    ws = [np.asarray(w_T[i], dtype=np.float64) for i in by_node]
    min_gain = max(MIN_GAIN * float(np.sum(w_T)), 1e-9)
    moves = 0
    for _ in range(max_rounds):
        gains = [node_gains(toks[v], ws[v], has[v]) for v in range(N)]
        cands = []  # (gain, nodes, move)
        for v in range(N):
            g = np.where((has.sum(axis=0) >= 2)[:, None], gains[v], -np.inf)
            i = int(np.argmax(g))
            cands.append((float(g.flat[i]), (v,), ("replace", v, *divmod(i, E))))
        for u in range(N):
            for v in range(u + 1, N):
                g = gains[u] + gains[v].T
                i = int(np.argmax(g))
                cands.append((float(g.flat[i]), (u, v), ("exchange", u, v, *divmod(i, E))))
        cands.sort(key=lambda c: -c[0])
        used: set[int] = set()
        taken = 0
        for gain, nodes, move in cands:
            if gain < min_gain:
                break
            if used.intersection(nodes) or not _apply(has, move):
                continue
            used.update(nodes)
            taken += 1
        moves += taken
        if not taken:
            break
    return has, moves


def _apply(has: np.ndarray, move: tuple) -> bool:
    """Apply a move if it is still valid (a replace keeps its expert held elsewhere)."""
    if move[0] == "replace":
        _, v, x, y = move
        if has[:, x].sum() < 2 or not has[v, x] or has[v, y]:
            return False
        has[v, x], has[v, y] = False, True
        return True
    _, u, v, x, y = move
    if not (has[u, x] and not has[u, y] and has[v, y] and not has[v, x]):
        return False
    has[u, x], has[u, y], has[v, y], has[v, x] = False, True, False, True
    return True


def start_sets(node_E: np.ndarray, w_NE: np.ndarray, slots_per_node: int) -> np.ndarray:
    """Each node's own experts plus, in its free slots, the other experts its tokens use most."""
    N, E = w_NE.shape
    has = node_E[None, :] == np.arange(N)[:, None]
    for v in range(N):
        free = slots_per_node - int(has[v].sum())
        order = [e for e in np.argsort(-w_NE[v], kind="stable") if not has[v, e]]
        has[v, order[:max(0, free)]] = True
    return has


def cover_row(has_NE: np.ndarray, w_NE: np.ndarray, slots_per_node: int, gpus_per_node: int) -> np.ndarray:
    """The layer's ``phy2log`` row: node ``v`` holds each expert of its set once, packed on its
    GPUs by EPLB's longest-processing-time rule on the tokens each replica serves (its node's
    tokens of the expert, plus an even share of the tokens of nodes that lack it)."""
    N, E = has_NE.shape
    spg = slots_per_node // gpus_per_node
    stray_E = (w_NE * ~has_NE).sum(axis=0) / np.maximum(has_NE.sum(axis=0), 1)
    row = np.empty(N * slots_per_node, dtype=np.int64)
    for v in range(N):
        items = np.flatnonzero(has_NE[v])
        load = w_NE[v, items] + stray_E[items]
        pack, rank = baselines.balanced_packing(load[None, :], gpus_per_node)
        row[v * slots_per_node + pack[0] * spg + rank[0]] = items
    return row


def rank_load(step_T: np.ndarray, src_T: np.ndarray) -> np.ndarray:
    """Tokens of each token's (step, source GPU): float [T] (the weight of the loaded GPUs)."""
    key = np.asarray(step_T, dtype=np.int64) * (int(np.max(src_T)) + 1) + np.asarray(src_T, dtype=np.int64)
    _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    return cnt[inv].astype(np.float64)
