"""Replicas on other nodes for ``nearest`` and ``static`` dispatch: redundant slots placed for traffic.

Under ``nearest`` dispatch (:func:`planner.simulator.choose_slots`; SGLang's
``--ep-dispatch-algorithm dynamic`` with DeepEP) a token uses a replica of its expert on its own
GPU, else on its own node, else any replica. ``static`` (SGLang's static table, its default when
it loads a placement under DeepEP: :func:`planner.simulator.static_table`) prefers the same
replicas, pinning one per rank: own GPU, else the first on the node when the node holds some
but not all of them. A replica of expert ``e`` on node ``v`` then serves every
token of ``v`` that picks ``e`` without crossing the network, and a token's copy to ``e``'s home
node ``h`` is saved when every expert it picks on ``h`` is replicated on ``v``. EPLB and the
node-level stages of :mod:`planner.solve.placement` put every replica on its expert's node (with
``even`` dispatch a replica elsewhere only adds destinations); this stage re-spends part of each
node's redundant slots on replicas of other nodes' experts.

Per layer (``r`` a node's redundant slots, equal on every node when the experts are
node-aligned; layers whose experts are not node-aligned are left as they are):

1. *Which remote experts*, two candidate families —
   ``per-node``: for each node ``v``, greedily ``r`` times the expert whose replica on ``v``
   saves the most inter-node copies of ``v``'s planning tokens given those already picked (a
   token's copy to node ``h`` is saved when the new expert is the only one it still needs
   there); ``everywhere m`` (``m`` in ``r/4, r/2, 3r/4, r``): the experts with the largest such
   savings summed over the nodes, each replicated on *every* other node while each node has
   room for ``m`` — a token that finds no replica on its node is sent to any replica (the
   dispatch's fair draw), so an expert held everywhere draws no stray token to a third node;
   ``busiest m``: also replicated everywhere, but aimed at the binding link — repeatedly the node
   that the most tokens still need from elsewhere (under DeepEP's relay its NICs receive the
   most, and with one routing group per node a popular group makes its node's NICs the slowest
   link of the layer) gives up the expert whose replicas save the most of those copies.
   Greedy on coverage objectives (heuristic). ``cover`` and ``cover weighted``: the node sets
   chosen with the home sets together, keeping the most planning tokens whole on their node
   (:mod:`planner.solve.cover`; stages 2-3 are then its own: each node's set once, packed).
2. *Which own replicas make room* — the node keeps each of its experts once and fills its
   remaining slots by water-filling on the tokens that still reach it (its own tokens, and
   other nodes' tokens for experts they do not hold, spread over all holders): EPLB's rule,
   exact for the largest load per replica.
3. *Which GPU* — EPLB's longest-processing-time packing of the node's replicas on its GPUs by
   expected load (heuristic).
4. *Which variant* — each variant's layer is scored by the simulator on whole planning steps
   (the exact planning objective of that layer on those steps) and the best is kept, the input
   placement included: the layer never gets worse on those steps. A variant whose per-GPU token
   imbalance on those steps exceeds the input's or EPLB's (the larger) by more than
   :data:`IMBALANCE_TOLERANCE` is not taken.

Deterministic (no clock decides a result; the deadline only stops early, keeping the input
placement for the layers not reached).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from planner.solve import baselines
from planner.solve.cover import cover_row, cover_sets, rank_load, start_sets
from planner.solve.nodeswap import sole_needs
from planner.solve.problem import SEARCH_MAX_TOKENS, PlacementInputs, TokenSample
from planner.solve.scoring import simulated_time_imbalance

#: Dispatch rules under which a replica on a token's own node serves it (this stage runs for them).
NODE_LOCAL_DISPATCH = ("nearest", "static")
#: Rounds of the cover search per layer and weighting (:func:`planner.solve.cover.cover_sets`)
#: when no time limit sets them (:func:`cover_rounds`).
COVER_ROUNDS = 64
#: Share of the time limit the cover searches may use, and the array elements per second they
#: process on one core (measured on a 2-core x86 VM: 2-4e8): the budget becomes a number of
#: rounds from the problem's sizes, so the result does not depend on the machine's speed.
COVER_SHARE = 0.1
COVER_ELEMENTS_PER_S = 3e8
#: A variant is kept only when its per-GPU token imbalance on the planning steps is at most this
#: share above the input's or EPLB's, whichever is larger: the cover rows hold each expert once
#: per node, so a popular expert cannot be split inside a node, and a plan should not give up
#: more than 5% of EPLB's balance for traffic (4% here: held-out steps differ).
IMBALANCE_TOLERANCE = 0.04


@dataclass
class XNodeStats:
    """What stage 5 did: layers changed, replicas placed off their expert's node, whether the
    deadline stopped it, and how often each variant won (``none``: the input was kept)."""

    layers_changed: int = 0
    remote_replicas: int = 0
    stopped_by_time: bool = False
    chosen: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"layers_changed": self.layers_changed, "remote_replicas": self.remote_replicas,
                                  "stopped_by_time": self.stopped_by_time}
        if self.chosen:
            out["chosen"] = dict(self.chosen)
        return out


def home_nodes(row_P: np.ndarray, slots_per_node: int, num_experts: int) -> np.ndarray | None:
    """Node of every expert when each expert's slots lie on one node (else None)."""
    node_P = np.arange(row_P.size) // slots_per_node
    lo = np.full(num_experts, np.iinfo(np.int64).max)
    hi = np.full(num_experts, -1)
    np.minimum.at(lo, row_P, node_P)
    np.maximum.at(hi, row_P, node_P)
    if (hi < 0).any() or (lo != hi).any():
        return None
    return lo


def pick_remote(ids_Tk: np.ndarray, node_E: np.ndarray, v: int, m: int, num_nodes: int) -> list[int]:
    """Stage 1: ``m`` experts of other nodes whose replicas on ``v`` save the most copies of
    ``ids_Tk`` (the planning tokens of node ``v``), greedily."""
    E = node_E.size
    if m <= 0 or ids_Tk.shape[0] == 0:
        return []
    nd = node_E[ids_Tk]
    have = node_E == v
    out: list[int] = []
    for _ in range(m):
        need = ~have[ids_Tk]  # (t, j) still served off the node
        _, sole = sole_needs(nd, need, num_nodes)
        gain = np.bincount(ids_Tk.ravel(), weights=sole.ravel(), minlength=E)
        gain[have] = -1.0
        e = int(np.argmax(gain))
        if gain[e] <= 0:
            break
        have[e] = True
        out.append(e)
    return out


def spread_everywhere(ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray, num_nodes: int,
                      budget: int) -> list[int]:
    """Experts to replicate on every node but their own (no token then strays to another node
    for them), by the copies single replicas would save summed over the nodes, while every node
    has room: at most ``budget`` experts homed elsewhere."""
    E = node_E.size
    total = np.zeros(E)
    for v in range(num_nodes):
        sel = ids_Tk[src_node_T == v]
        if sel.size == 0:
            continue
        nd = node_E[sel]
        _, sole = sole_needs(nd, nd != v, num_nodes)
        total += np.bincount(sel.ravel(), weights=sole.ravel(), minlength=E)
    used = np.zeros(num_nodes, dtype=np.int64)
    out: list[int] = []
    for e in np.argsort(-total, kind="stable"):
        if total[e] <= 0:
            break
        add = np.ones(num_nodes, dtype=np.int64)
        add[node_E[e]] = 0
        if (used + add > budget).any():
            continue
        used += add
        out.append(int(e))
    return out


def relieve_busiest(ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray, num_nodes: int,
                    budget: int) -> list[int]:
    """Experts to replicate on every node but their own, aimed at the binding NIC: repeatedly the
    node that the most tokens still need from elsewhere (its inter-node receives, what DeepEP's
    relay makes the slowest link when one node's experts are popular), and of its experts the one
    whose replicas save the most of those copies, while every node has room (``budget``)."""
    E = node_E.size
    nd = node_E[ids_Tk]
    local = np.zeros(E, dtype=bool)  # replicated everywhere so far
    used = np.zeros(num_nodes, dtype=np.int64)
    out: list[int] = []
    while True:
        need = ~local[ids_Tk] & (nd != src_node_T[:, None])
        cnt, sole = sole_needs(nd, need, num_nodes)
        recv = (cnt > 0).sum(axis=0)  # tokens that need each node from elsewhere
        gain = np.bincount(ids_Tk.ravel(), weights=sole.ravel(), minlength=E)
        for h in np.argsort(-recv, kind="stable"):
            others = np.arange(num_nodes) != h
            if (used[others] + 1 > budget).any():
                continue
            g = np.where((node_E == h) & ~local, gain, -1.0)
            e = int(np.argmax(g))
            if g[e] <= 0:
                continue
            local[e] = True
            used[others] += 1
            out.append(e)
            break
        else:
            return out


def node_row(
    node_E: np.ndarray, remote: list[list[int]], w_NE: np.ndarray, slots_per_node: int, gpus_per_node: int,
) -> np.ndarray:
    """Stages 2 and 3: the layer's ``phy2log`` row given each node's remote replicas.

    ``w_NE`` tokens per step of each source node per expert (planning counts).
    """
    N, E = w_NE.shape
    spg = slots_per_node // gpus_per_node
    rep_NE = np.zeros((N, E), dtype=bool)
    for v in range(N):
        rep_NE[v, remote[v]] = True
    served_NE = rep_NE | (node_E[None, :] == np.arange(N)[:, None])  # node v holds e
    # tokens that find no replica on their node spread over all replicas: approximate each
    # replica's share of them by 1 / (holders of e) before the counts are known
    holders_E = served_NE.sum(axis=0)
    stray_E = (w_NE * ~served_NE).sum(axis=0) / holders_E
    row = np.empty(N * slots_per_node, dtype=np.int64)
    for v in range(N):
        own = np.flatnonzero(node_E == v)
        rem = np.asarray(remote[v], dtype=np.int64)
        load_own = w_NE[v, own] + stray_E[own]
        free = slots_per_node - own.size - rem.size
        p2m, _ = baselines.replicate(load_own[None, :], own.size + free)
        items = np.concatenate([own[p2m[0]], rem])
        cnt = np.bincount(items, minlength=E)
        load_items = (w_NE[v, items] + stray_E[items]) / cnt[items]
        pack, rank = baselines.balanced_packing(load_items[None, :], gpus_per_node)
        pos = v * slots_per_node + pack[0] * spg + rank[0]
        row[pos] = items
    return row


def cross_node_replicas(
    phy2log_LP: np.ndarray,
    ids_LTk: np.ndarray,
    src_node_T: np.ndarray,
    weight_NLE: np.ndarray,
    num_nodes: int,
    gpus_per_node: int,
    layer_ms: Callable[[int, np.ndarray], float | tuple[float, float]],
    deadline: float,
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),  # the ``everywhere m`` variants, m = f · r
    load_T: np.ndarray | None = None,
    rounds: int = COVER_ROUNDS,
    reference_LP: np.ndarray | None = None,
) -> tuple[np.ndarray, XNodeStats]:
    """Apply the stages of the module docstring to every layer of ``phy2log_LP`` [L, P].

    ``ids_LTk`` planning tokens (a subsample is fine) with their source node ``src_node_T``;
    ``weight_NLE`` tokens per step by source node, layer and expert; ``layer_ms(l, row)`` the
    planning objective of layer ``l`` with ``row`` as its placement, or (that, the per-GPU token
    imbalance): a variant more than :data:`IMBALANCE_TOLERANCE` above the larger of the input's
    and ``reference_LP``'s (EPLB's) imbalance is then not taken. Returns the new placement
    and statistics (replicas moved off their node, layers changed, stopped by the deadline).
    ``load_T``: tokens of each planning token's (step, source GPU), the weight of the ``cover
    weighted`` variant (:mod:`planner.solve.cover`; without it only ``cover`` is tried);
    ``rounds`` of each cover search per layer.
    """
    L, P = phy2log_LP.shape
    E = weight_NLE.shape[2]
    spn = P // num_nodes
    out = phy2log_LP.copy()
    stats = XNodeStats()
    by_node = [np.flatnonzero(src_node_T == v) for v in range(num_nodes)]
    for l in range(L):
        if time.perf_counter() > deadline:
            stats.stopped_by_time = True
            break
        node_E = home_nodes(phy2log_LP[l], spn, E)
        if node_E is None:
            continue
        spare = spn - np.bincount(node_E, minlength=num_nodes)
        r = int(spare.min())
        if r <= 0:
            continue
        ms = sorted({max(1, round(f * r)) for f in fractions})
        picks = [pick_remote(ids_LTk[l][by_node[v]], node_E, v, r, num_nodes) for v in range(num_nodes)]
        best_ms, imb0 = _time_imbalance(layer_ms(l, phy2log_LP[l]))
        best, label = phy2log_LP[l], "none"
        if imb0 is not None and reference_LP is not None:
            imb0 = max(imb0, _time_imbalance(layer_ms(l, reference_LP[l]))[1] or imb0)
        shared = spread_everywhere(ids_LTk[l], src_node_T, node_E, num_nodes, r)
        busiest = relieve_busiest(ids_LTk[l], src_node_T, node_E, num_nodes, r)
        variants = [(f"per-node {r}", picks)] + [
            (f"{name} {m}", [[e for e in order[:m] if node_E[e] != v] for v in range(num_nodes)])
            for name, order in (("everywhere", shared), ("busiest", busiest)) for m in ms
        ]
        rows = [(name, node_row(node_E, remote, weight_NLE[:, l], spn, gpus_per_node)) for name, remote in variants]
        rows += cover_variants(ids_LTk[l], src_node_T, node_E, weight_NLE[:, l], spn, gpus_per_node, load_T,
                               rounds)
        for name, row in rows:
            t, imb = _time_imbalance(layer_ms(l, row))
            if imb is not None and imb0 is not None and imb > imb0 * (1 + IMBALANCE_TOLERANCE):
                continue  # faster, but gives up more balance than a plan may
            if t < best_ms * (1 - 1e-9):
                best, best_ms, label = row, t, name
        stats.chosen[label] = stats.chosen.get(label, 0) + 1
        if label != "none":
            out[l] = best
            stats.layers_changed += 1
            stats.remote_replicas += int((np.arange(P) // spn != node_E[best]).sum())
    return out, stats


def _time_imbalance(score: float | tuple[float, float]) -> tuple[float, float | None]:
    """``layer_ms``'s answer as (ms, imbalance or None)."""
    if isinstance(score, tuple):
        return float(score[0]), float(score[1])
    return float(score), None


def cover_variants(ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray, w_NE: np.ndarray,
                   slots_per_node: int, gpus_per_node: int, load_T: np.ndarray | None,
                   rounds: int = COVER_ROUNDS) -> list[tuple[str, np.ndarray]]:
    """Rows whose node sets keep the most planning tokens whole on their node
    (:mod:`planner.solve.cover`): by token count (``cover``) and weighted by the load of the
    token's GPU (``cover weighted``); none when a node's slots could hold every expert."""
    N, E = w_NE.shape
    if N < 2 or slots_per_node >= E:
        return []
    start = start_sets(node_E, w_NE, slots_per_node)
    weights = [("cover", np.ones(ids_Tk.shape[0]))] + ([("cover weighted", load_T)] if load_T is not None else [])
    out = []
    for name, w_T in weights:
        has, _ = cover_sets(ids_Tk, src_node_T, w_T, start, max_rounds=rounds)
        out.append((name, cover_row(has, w_NE, slots_per_node, gpus_per_node)))
    return out


def cover_rounds(num_tokens: int, top_k: int, num_experts: int, num_nodes: int, num_layers: int,
                 time_limit: float) -> int:
    """Rounds of each cover search (two per layer) from :data:`COVER_SHARE` of the time limit:
    a round builds ``N`` gain matrices and ``N (N - 1) / 2`` sums of two (``E × E`` each) from
    the tokens' counts."""
    pairs = num_nodes + num_nodes * (num_nodes - 1) // 2
    per_round = 4 * pairs * num_experts ** 2 + num_tokens * top_k * (top_k + 4)
    return max(1, int(COVER_SHARE * time_limit * COVER_ELEMENTS_PER_S / per_round / (2 * num_layers)))


def nearest_replicas(phy2log_LP: np.ndarray, inp: PlacementInputs, sample: TokenSample,
                     deadline: float, time_limit: float | None = None,
                     reference_LP: np.ndarray | None = None) -> tuple[np.ndarray, XNodeStats]:
    """Stage 5 of the placement (docs/placement.md §5.5) on ``phy2log_LP`` [L, P] whose experts
    sit on ``inp.num_nodes`` nodes: :func:`cross_node_replicas` with every variant scored by the
    simulator on whole planning steps, evenly spaced, about :data:`SEARCH_MAX_TOKENS` tokens in all
    (per-step loads as planned); ``sample`` the search's tokens for the coverage counts. A deadline
    already past returns the input, marked as stopped by time. ``time_limit`` sets the cover
    searches' rounds (:func:`cover_rounds`; :data:`COVER_ROUNDS` without it); ``reference_LP``
    (EPLB's placement) the balance a variant may use up to (:data:`IMBALANCE_TOLERANCE`)."""
    if time.perf_counter() > deadline:
        return phy2log_LP, XNodeStats(stopped_by_time=True)
    L, E, N = inp.num_layers, inp.num_experts, inp.num_nodes
    n_steps, gpn = inp.num_steps, inp.gpus_per_node
    full_step = inp.step_T.astype(np.int64)
    per_step = max(1, inp.ids_LTk.shape[1] // n_steps)
    keep = np.unique(np.linspace(0, n_steps - 1, max(1, min(n_steps, SEARCH_MAX_TOKENS // per_step))).round()
                     .astype(np.int64))
    tk = np.flatnonzero(np.isin(full_step, keep))
    x_ids = inp.ids_LTk[:, tk].astype(np.int64)
    x_step = np.searchsorted(keep, full_step[tk])
    x_src = inp.src_T[tk].astype(np.int64)
    x_grp = None if inp.group_T is None else inp.group_T[tk]
    src_node_full = inp.src_T.astype(np.int64) // gpn
    w_NLE = np.zeros((N, L, E))
    for l in range(L):
        flat = (src_node_full[:, None] * E + inp.ids_LTk[l])[inp.ids_LTk[l] >= 0]  # -1: no expert
        w_NLE[:, l] = np.bincount(flat, minlength=N * E).reshape(N, E) / n_steps / inp.token_groups
    return cross_node_replicas(
        phy2log_LP, sample.ids_LTk, sample.src_T // gpn, w_NLE, N, gpn,
        lambda l, row: simulated_time_imbalance(inp, row[None, :], x_ids[l][None], x_step, x_src, x_grp, keep.size),
        deadline, load_T=rank_load(sample.step_T, sample.src_T),
        rounds=COVER_ROUNDS if time_limit is None else cover_rounds(*sample.ids_LTk.shape[1:], E, N, L, time_limit),
        reference_LP=reference_LP,
    )
