"""Stage 1b of the placement solver: swaps of experts between nodes that cut inter-node copies.

A token is sent once to every remote node that holds one of its experts (DeepEP's inter-node
dispatch, :mod:`planner.simulator`), so the inter-node copies of a layer, for a map
``node_E`` of experts to nodes, are::

    copies(node_E) = Σ_t |{node_E[e] : e ∈ t} \\ {src_node(t)}|

Stage 1 fixes whole routing groups on nodes (or keeps EPLB's node sets when a model has no
usable groups); this step then exchanges single experts between nodes while that lowers
``copies`` on the planning tokens — exactly, not through a linear stand-in — without raising
the largest node load above ``max_load`` (each node keeps its number of experts, so its slots
still fit). It is what rank locality (the tokens of a node prefer some experts) and
co-activation across groups (experts picked together) are worth when the router does not
confine tokens to node-aligned groups; with DeepSeek's group-limited routing on node-aligned
groups it finds nothing on our traces (every token picks about two experts in each chosen
group, so moving one of them away adds a node for most of its tokens).

Exact gain of a swap, from counts on the current map (``φ_tv`` the experts of token ``t`` on
node ``v``, plus one on its source node so that the source is never a copy)::

    move(e → v) = #{t ∋ e : φ_t,node(e) = 1}  −  #{t ∋ e : φ_tv = 0}       copies saved by moving e alone
    gain(a ↔ b) = move(a → node b) + move(b → node a) − pair(a, b) − pair(b, a)

with ``pair(a, b) = #{t ∋ a, b : φ_t,node(a) = 1}``: a token that picks both experts keeps both
nodes, so the two single moves over-count it. Swaps on disjoint node pairs change disjoint
nodes of every token, so their gains add up: each round takes the best swap, then the best
on other nodes, and so on (up to N/2 swaps); then it tries adding the next best swaps of other
experts (up to :data:`SWAPS_PER_ROUND` in all; their gains no longer add exactly, so the larger
batch is kept only when an exact recount says it beats the disjoint one); the gain matrix is
rebuilt, and the search stops when no swap gains at least :data:`MIN_SWAP_GAIN` of the current copies, after
``max_rounds`` rounds (a count, so results do not depend on the machine's speed), or at the
deadline (a safety stop). Migration (a previous placement) enters as a cost per expert and
node in copies. Best-improvement local search: heuristic, deterministic.
"""

from __future__ import annotations

import time

import numpy as np

#: Smallest gain of a swap, relative to the layer's copies on the planning tokens: smaller gains
#: are sampling noise on a held-out trace.
MIN_SWAP_GAIN = 2e-4
#: Swaps a round may take in all: the exact disjoint-node batch, then the next best ones on
#: other experts, kept only when the recount confirms the larger batch (fewer rounds).
SWAPS_PER_ROUND = 16


def copies_of(nd_Tk: np.ndarray, src_node_T: np.ndarray) -> int:
    """Distinct remote nodes per token, summed, for the node ``nd_Tk`` [T, k] serving each choice."""
    nd = np.sort(nd_Tk, axis=1)
    first = np.ones_like(nd, dtype=bool)
    first[:, 1:] = nd[:, 1:] != nd[:, :-1]
    return int((first & (nd != src_node_T[:, None])).sum())


def node_copies(ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray) -> int:
    """Inter-node copies of the tokens ``ids_Tk`` [T, k] for the map ``node_E``: distinct
    remote nodes per token, summed."""
    return copies_of(node_E[ids_Tk], src_node_T)


def sole_needs(nd_Tk: np.ndarray, need_Tk: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per token and node, how many of its choices still need that node (``cnt`` [T, N]), and which
    needed (token, choice) pairs are the only one keeping their node needed (``sole`` [T, k])."""
    T = nd_Tk.shape[0]
    key = (np.arange(T)[:, None] * num_nodes + nd_Tk).ravel()
    cnt = np.bincount(key, weights=need_Tk.ravel(), minlength=T * num_nodes).reshape(T, num_nodes)
    sole = need_Tk & (np.take_along_axis(cnt, nd_Tk, axis=1) == 1)
    return cnt, sole


def round_elements(num_tokens: int, top_k: int, num_experts: int, num_nodes: int) -> int:
    """Array elements one round of :func:`swap_experts` touches (for a work budget)."""
    return num_tokens * top_k * (top_k + num_nodes + 4) + 4 * num_experts * num_experts


class _Keys:
    """Index arrays of the planning tokens that do not change while experts move."""

    def __init__(self, ids_Tk: np.ndarray, num_experts: int, num_nodes: int) -> None:
        T, k = ids_Tk.shape
        self.ids = np.ascontiguousarray(ids_Tk, dtype=np.int64)
        self.flat = self.ids.ravel()
        self.ia, self.ib = np.nonzero(~np.eye(k, dtype=bool))
        self.pair = (self.ids[:, self.ia] * num_experts + self.ids[:, self.ib]).ravel()  # ordered pairs in a token


def _gains(ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray, num_nodes: int,
           mig_EN: np.ndarray | None, keys: _Keys | None = None) -> np.ndarray:
    """Copies saved by swapping experts a and b (float [E, E]; same-node pairs −inf)."""
    E, N = node_E.size, num_nodes
    kk = keys if keys is not None else _Keys(ids_Tk, E, N)
    T, k = kk.ids.shape
    nd = node_E[kk.ids]
    cnt, sole = sole_needs(nd, nd != src_node_T[:, None], N)  # the source node is never a copy
    leave = np.bincount(kk.flat, weights=sole.ravel(), minlength=E)
    absent = cnt == 0
    absent[np.arange(T), src_node_T] = False
    absent = absent.astype(np.float64)
    enter = np.stack([np.bincount(kk.flat, weights=np.repeat(absent[:, v], k), minlength=E) for v in range(N)], axis=1)
    move = leave[:, None] - enter  # [E, N]
    if mig_EN is not None:
        move -= mig_EN - mig_EN[np.arange(E), node_E][:, None]
    pair = np.bincount(kk.pair, weights=sole[:, kk.ia].ravel(), minlength=E * E).reshape(E, E)
    gv = move[:, node_E]  # gv[a, b] = move(a -> node of b)
    gain = gv + gv.T - pair - pair.T
    gain[node_E[:, None] == node_E[None, :]] = -np.inf
    return gain


def swap_experts(
    ids_Tk: np.ndarray,
    src_node_T: np.ndarray,
    node_E: np.ndarray,
    w_E: np.ndarray,
    num_nodes: int,
    *,
    max_load: float,
    max_rounds: int,
    mig_EN: np.ndarray | None = None,
    deadline: float | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Best-improvement swaps of experts between nodes on the exact copies (module docstring).

    ``ids_Tk`` [T, k] planning tokens' experts, ``src_node_T`` [T] their source nodes,
    ``node_E`` [E] the starting map, ``w_E`` [E] expert loads (any unit; the node-load cap
    ``max_load`` is in the same unit), ``mig_EN`` [E, N] optional cost in copies of expert e
    ending on node v. Returns (new map, {"swaps", "rounds", "copies_before", "copies_after"}).
    """
    ids_Tk = np.asarray(ids_Tk, dtype=np.int64)
    src_node_T = np.asarray(src_node_T, dtype=np.int64)
    node_E = np.asarray(node_E, dtype=np.int64).copy()
    w_E = np.asarray(w_E, dtype=np.float64)
    E, N = node_E.size, num_nodes
    load = np.bincount(node_E, weights=w_E, minlength=N)
    keys = _Keys(ids_Tk, E, N)

    def cost(nodes: np.ndarray) -> tuple[int, float]:  # (copies, copies + migration)
        c = node_copies(ids_Tk, src_node_T, nodes)
        return c, c + (float(mig_EN[np.arange(E), nodes].sum()) if mig_EN is not None else 0.0)

    def apply(nodes: np.ndarray, loads: np.ndarray, a: int, b: int) -> None:
        u, v = int(nodes[a]), int(nodes[b])
        nodes[a], nodes[b] = v, u
        loads[u] += w_E[b] - w_E[a]
        loads[v] += w_E[a] - w_E[b]

    before = copies = node_copies(ids_Tk, src_node_T, node_E)
    swaps = rounds = 0
    while rounds < max_rounds and copies > 0 and (deadline is None or time.perf_counter() < deadline):
        rounds += 1
        gain = _gains(ids_Tk, src_node_T, node_E, N, mig_EN, keys)
        d = w_E[None, :] - w_E[:, None]  # node of a gains w_b - w_a
        lu, lv = load[node_E][:, None], load[node_E][None, :]
        gain[(lu + d > max_load) | (lv - d > max_load)] = -np.inf
        flat = gain.ravel()
        cand = np.flatnonzero(flat >= max(MIN_SWAP_GAIN * copies, 1e-9))
        if cand.size == 0:
            break
        cand = cand[np.argsort(-flat[cand], kind="stable")]
        ca, cb = np.divmod(cand, E)
        # 1. the best swap, then the best on two other nodes, ...: gains add up exactly
        safe, safe_load = node_E.copy(), load.copy()
        used = np.zeros(E, dtype=bool)
        cu, cv = ca, cb
        n_safe = 0
        while cu.size:
            a, b = int(cu[0]), int(cv[0])
            u, v = int(safe[a]), int(safe[b])
            apply(safe, safe_load, a, b)
            used[a] = used[b] = True
            n_safe += 1
            nu, nv = node_E[cu], node_E[cv]  # candidates' nodes at the start of the round
            free = (nu != u) & (nu != v) & (nv != u) & (nv != v)
            cu, cv = cu[free], cv[free]
        # 2. more of the next best swaps (other experts, node loads re-checked), kept only if the
        #    exact count says the whole batch beats step 1 alone
        trial, trial_load = safe.copy(), safe_load.copy()
        extra = 0
        for a, b in zip(ca[:4096].tolist(), cb[:4096].tolist(), strict=True):
            if n_safe + extra >= SWAPS_PER_ROUND:
                break
            u, v = int(trial[a]), int(trial[b])
            if used[a] or used[b] or u == v:
                continue
            if trial_load[u] + w_E[b] - w_E[a] > max_load or trial_load[v] + w_E[a] - w_E[b] > max_load:
                continue
            apply(trial, trial_load, a, b)
            used[a] = used[b] = True
            extra += 1
        c_safe, t_safe = cost(safe)
        c_trial, t_trial = cost(trial) if extra else (c_safe, t_safe)
        if extra and t_trial < t_safe:
            node_E, load, copies, swaps = trial, trial_load, c_trial, swaps + n_safe + extra
        else:
            node_E, load, copies, swaps = safe, safe_load, c_safe, swaps + n_safe
    return node_E, {"swaps": swaps, "rounds": rounds, "copies_before": before, "copies_after": copies}
