"""Stages 2-4 of the placement: replicas inside each node, and their GPUs.

Once the nodes of the experts are fixed (stage 1, or EPLB's global placement when nodes are not
used), each node is an independent problem (docs/placement.md §5.2-§5.4): water-filling replica
counts, EPLB's longest-processing-time packing as the start, then every assignment enumerated
when a node is small, else the swap search of :class:`planner.solve.gpusearch.NodeSearch`.
Shapes: ``L`` layers, ``T`` (sampled) tokens, ``k`` top-k, ``E`` experts, ``P`` slots (replica
items), ``G`` GPUs, ``g`` GPUs per node, ``S`` slots per GPU, ``nS`` planning steps.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from planner.errors import InfeasibleError
from planner.simulator import even_replica
from planner.solve import baselines
from planner.solve.gpusearch import NodeProblem, NodeSearch
from planner.solve.migration import item_migration_ms, keep_slots
from planner.solve.problem import PlacementInputs, TokenSample

#: Largest number of distinct slot assignments of one node that stage 3 enumerates exactly, and
#: the most array elements that enumeration may touch (else the local search runs).
EXHAUSTIVE_LIMIT = 3000
EXHAUSTIVE_WORK = 5e6
#: Tokens using a node below which the per-node search scores traffic step by step (exact mode).
EXACT_ROWS_LIMIT = 4096


def search_seconds(instances: int, time_limit: float) -> float:
    """Estimated seconds of local search: 2 s + 0.06 s per (layer, node) instance, at most half
    the time limit (small problems stay fast: the default plan runs in a few seconds)."""
    return min(0.5 * time_limit, 2.0 + 0.06 * instances)


@dataclass
class SearchStats:
    """What stages 3-4 did (docs/placement.md §5.3-§5.4)."""

    exhaustive: bool  #: every node's assignments enumerated (no local search)
    search_budget_s: float  #: estimated seconds of search the evaluation counts stand for
    accepted: int = 0  #: swaps taken
    instances: int = 0  #: (layer, node) problems solved
    evals: int = 0  #: swap neighbourhoods scored
    stopped_by_time: bool = False  #: the time limit cut the search short
    time_s: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {"exhaustive": self.exhaustive, "accepted": self.accepted, "instances": self.instances,
                "evals": self.evals, "search_budget_s": self.search_budget_s,
                "stopped_by_time": self.stopped_by_time, "time_s": self.time_s}


# ---- stage 2 / 3: replicas inside nodes, replicas -> GPUs ----------------------------------


def replicas_in_nodes(weight_LE: np.ndarray, node_LE: np.ndarray, num_nodes: int, slots_per_node: int) -> list[list[np.ndarray]]:
    """Stage 2 (docs/placement.md §5.2): water-filling replica counts inside each node.

    ``weight_LE`` [L, E] tokens per step, ``node_LE`` [L, E] node of each expert. Returns
    ``items[l][v]`` int [slots_per_node] the expert of each replica item of node v (each expert
    of the node once, then the added replicas; an expert's replicas in order).
    """
    L, E = weight_LE.shape
    out: list[list[np.ndarray]] = []
    for l in range(L):
        row = []
        for v in range(num_nodes):
            experts = np.nonzero(node_LE[l] == v)[0]
            if experts.size > slots_per_node:
                raise InfeasibleError(
                    f"placement: node {v} of layer {l} holds {experts.size} experts but has {slots_per_node} slots"
                )
            p2m, _ = baselines.replicate(weight_LE[l, experts][None, :], slots_per_node)
            row.append(np.sort(experts[p2m[0]], kind="stable"))
        out.append(row)
    return out


def initial_items(weight_LE: np.ndarray, node_LE: np.ndarray | None, warm_LP: np.ndarray, num_nodes: int,
                  gpus_per_node: int, slots: int) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Stages 2-3 start: per layer and node, the experts of the replica items and their global
    GPUs (EPLB's longest-processing-time packing), items in GPU order.

    ``node_LE`` [L, E] the nodes of stage 1, or None to start from EPLB's global placement
    ``warm_LP`` [L, P] (one node of all GPUs). Returns (experts[l][v], gpus[l][v]).
    """
    L, E = weight_LE.shape
    P = warm_LP.shape[1]
    items = replicas_in_nodes(weight_LE, node_LE, num_nodes, P // num_nodes) if node_LE is not None else None
    exp_rows: list[list[np.ndarray]] = []
    gpu_rows: list[list[np.ndarray]] = []
    for l in range(L):
        ex_rows, g_rows = [], []
        for v in range(num_nodes):
            if items is not None:
                ex = items[l][v]
                cnt = np.bincount(ex, minlength=E)
                load = weight_LE[l, ex] / cnt[ex]
                pack, _ = baselines.balanced_packing(load[None, :], gpus_per_node)
                gpu = v * gpus_per_node + pack[0]
            else:  # EPLB's global placement
                ex = warm_LP[l]
                gpu = np.arange(P) // slots
            order = np.argsort(gpu, kind="stable")  # replica j of an expert = its j-th slot
            ex_rows.append(ex[order])
            g_rows.append(gpu[order])
        exp_rows.append(ex_rows)
        gpu_rows.append(g_rows)
    return exp_rows, gpu_rows


def count_assignments(n_items: int, positions: int, per_position: int) -> int:
    """Distinct ways to put ``n_items`` distinct items on ``positions`` ordered GPUs, ``per_position`` each."""
    return math.factorial(n_items) // (math.factorial(per_position) ** positions)


def all_assignments(n_items: int, positions: int, per_position: int) -> np.ndarray:
    """Every assignment (int [M, n_items] position of each item), items of equal position unordered."""
    out: list[list[int]] = []
    cur = [0] * n_items
    fill = [0] * positions

    def rec(i: int) -> None:
        if i == n_items:
            out.append(cur.copy())
            return
        for p in range(positions):
            if fill[p] < per_position:
                fill[p] += 1
                cur[i] = p
                rec(i + 1)
                fill[p] -= 1

    rec(0)
    return np.asarray(out, dtype=np.int64)


# ---- the items of a layer and the traffic they fix ------------------------------------------


@dataclass
class LayerItems:
    """Replica items of one layer: expert, node and GPU of each item, and the item serving each
    (token, choice) pair under even dispatch."""

    item_exp: np.ndarray  #: int [P]
    item_node: np.ndarray  #: int [P]
    item_gpu: np.ndarray  #: int [P] global GPU
    item_Tk: np.ndarray  #: int [T, k]


def layer_items(items_by_node: list[np.ndarray], gpu_of_item: list[np.ndarray], ids_Tk: np.ndarray,
                tok_index_T: np.ndarray, num_experts: int) -> LayerItems:
    """Replica items of a layer and which item serves each pair under even dispatch.

    ``items_by_node[v]`` experts of node v's items; ``gpu_of_item[v]`` their global GPUs;
    ``ids_Tk`` [T, k], ``tok_index_T`` [T]. Replica ``j`` of expert ``e`` is its ``j``-th item
    (in node order); pair (t, c) goes to replica ``(tok_index_t · k + c) mod r_e`` (§4).
    """
    item_exp = np.concatenate(items_by_node)
    item_gpu = np.concatenate(gpu_of_item)
    item_node = np.concatenate([np.full(len(x), v) for v, x in enumerate(items_by_node)])
    cnt = np.bincount(item_exp, minlength=num_experts)
    order = np.argsort(item_exp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    rep = even_replica(tok_index_T, ids_Tk.shape[1], cnt[ids_Tk])
    item_Tk = order[starts[ids_Tk] + rep]
    return LayerItems(item_exp, item_node, item_gpu, item_Tk)


def nic_copies(gpu_Tk: np.ndarray, step_T: np.ndarray, src_T: np.ndarray, num_steps: int, num_gpus: int,
               gpus_per_node: int, tscale: float) -> tuple[np.ndarray, np.ndarray]:
    """Inter-node copies per step and GPU: (sent [nS, G], received under same-rank relay [nS, G]).

    ``gpu_Tk`` [T, k] the GPU serving each pair, ``step_T`` / ``src_T`` [T]. One copy per
    distinct remote node of a token (docs/placement.md, the traffic rule of "Formulation", as
    :func:`planner.cost.comm.dispatch_traffic` charges DeepEP), received by the GPU of the
    source's local rank there; ``tscale`` tokens per sampled token.
    """
    G, gpn = num_gpus, gpus_per_node
    nd = np.sort(gpu_Tk // gpn, axis=1)
    fo = np.ones_like(nd, dtype=bool)
    fo[:, 1:] = nd[:, 1:] != nd[:, :-1]
    copy = fo & (nd != (src_T // gpn)[:, None])  # one NIC copy per distinct remote node
    send_SG = np.bincount(step_T * G + src_T, weights=copy.sum(axis=1) * tscale,
                          minlength=num_steps * G).reshape(num_steps, G)
    relay = nd * gpn + (src_T % gpn)[:, None]
    key = (step_T[:, None] * G + relay)[copy]
    recv_SG = np.bincount(key, minlength=num_steps * G).reshape(num_steps, G) * tscale
    return send_SG, recv_SG


def fixed_nic_SG(lay: LayerItems, sample: TokenSample, inp: PlacementInputs, num_nodes: int) -> np.ndarray:
    """Inter-node copies each GPU sends (and, under same-rank relay, receives) per step: float
    [nS, G], fixed once the nodes are (the per-node search cannot change them)."""
    G = inp.num_gpus
    if num_nodes <= 1:
        return np.zeros((inp.num_steps, G))
    send_SG, recv_SG = nic_copies(lay.item_gpu[lay.item_Tk], sample.step_T, sample.src_T, inp.num_steps, G,
                                  G // num_nodes, sample.tscale)
    if inp.relay == "same-rank":  # received by the source's local rank there: fixed too
        return np.maximum(send_SG, recv_SG)
    return send_SG


def item_loads(lay: LayerItems, exp_rows: list[np.ndarray], gpu_rows: list[np.ndarray], l: int,
               sample: TokenSample, inp: PlacementInputs) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [nS, P], expert ms [nS, P]) of every item per step, from every planning token
    (the balance guard must not see sampling noise)."""
    P, n_steps = lay.item_exp.size, inp.num_steps
    stride = sample.stride
    full_Tk = lay.item_Tk if stride == 1 else layer_items(
        exp_rows, gpu_rows, inp.ids_LTk[l].astype(np.int64), inp.tok_index_T, inp.num_experts
    ).item_Tk
    full_step = inp.step_T.astype(np.int64) if stride > 1 else sample.step_T
    tok_SP = np.bincount((full_step[:, None] * P + full_Tk).ravel(), minlength=n_steps * P).reshape(n_steps, P)
    tok_SP = tok_SP / inp.token_groups
    F_SP = np.asarray(inp.cost.ffn_ms(tok_SP.reshape(-1)), dtype=np.float64).reshape(n_steps, P)
    return tok_SP, F_SP


def phy2log_from_items(item_exp: np.ndarray, item_gpu: np.ndarray, num_gpus: int, slots: int) -> np.ndarray:
    """Row of phy2log int [P]: items of GPU u fill slots [u·S, (u+1)·S), in item order."""
    order = np.argsort(item_gpu, kind="stable")
    row = item_exp[order]
    assert np.array_equal(np.bincount(item_gpu, minlength=num_gpus), np.full(num_gpus, slots)), "equal slots per GPU"
    return row.astype(np.int64)


def with_nodes(inp: PlacementInputs, gpn: int) -> PlacementInputs:
    """``inp`` with the node size the search uses (all EP ranks one node when nodes are not used)."""
    return inp if gpn == inp.gpus_per_node else replace(inp, gpus_per_node=gpn)


def unique_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a non-negative int table [n, m] and their counts (rows in lexicographic order)."""
    if table.shape[0] == 0:
        return table, np.zeros(0)
    base = table.max(axis=0).astype(np.float64) + 1.0
    if float(np.prod(base)) < 2.0**62:  # encode each row as one int64: a fast 1-D unique
        mult = np.concatenate([np.cumprod(base[::-1])[::-1][1:], [1.0]]).astype(np.int64)
        key = table.astype(np.int64) @ mult
        uk, first, c = np.unique(key, return_index=True, return_counts=True)
        return table[first], c.astype(np.float64)
    u, c = np.unique(table, axis=0, return_counts=True)
    return u, c.astype(np.float64)


# ---- the per-node problems of a layer --------------------------------------------------------


def node_problem(
    lay: LayerItems, v: int, inp: PlacementInputs, step_T: np.ndarray, src_T: np.ndarray, n_steps: int,
    tok_SP: np.ndarray, F_SP: np.ndarray, xsend_SG: np.ndarray, exact: bool | None,
    mig_P_g: np.ndarray | None, row_scale: float = 1.0,
) -> tuple[NodeProblem, np.ndarray]:
    """The :class:`NodeProblem` of node ``v`` and the (layer) item ids of its items [I].

    ``step_T`` / ``src_T`` [T] the sampled tokens (``lay.item_Tk`` [T, k] their items);
    ``tok_SP`` / ``F_SP`` [nS, P] tokens and compute ms of every item per step; ``xsend_SG``
    [nS, G] the inter-node copies each GPU sends (and, under same-rank relay, receives), which
    the search cannot change; ``mig_P_g`` [P, g] migration ms; ``row_scale`` tokens each sampled
    token stands for; ``exact``: score traffic step by step (None: when the node's tokens are
    few, :data:`EXACT_ROWS_LIMIT`).
    """
    gpn = inp.gpus_per_node
    items = np.nonzero(lay.item_node == v)[0]
    nl = items.size
    lid = np.full(lay.item_exp.size, nl, dtype=np.int64)
    lid[items] = np.arange(nl)
    li = lid[lay.item_Tk]  # [T, k], nl = not on this node
    n_loc = (li < nl).sum(axis=1)
    touch = n_loc > 0
    if exact is None:
        exact = int(touch.sum()) <= EXACT_ROWS_LIMIT
    nT = n_steps if exact else 1
    st = step_T if exact else np.zeros_like(step_T)
    scale = row_scale * (1.0 if exact else 1.0 / n_steps)
    src_node = src_T // gpn
    src_pos = src_T % gpn  # for a remote token under same-rank relay: the GPU that takes its copy
    rem = src_node != v
    if inp.relay == "same-rank":
        # the copy lands on the source's local rank here and is forwarded over NVLink: remote
        # tokens count like tokens of this node starting on that GPU (their NIC part is fixed)
        rem = np.zeros_like(rem)
    single = n_loc == 1
    one_item = li.min(axis=1)
    # single-item tokens -> weights per item
    m1 = single & rem
    r1 = np.bincount(one_item[m1] * nT + st[m1], minlength=nl * nT).reshape(nl, nT) * scale
    m1 = single & ~rem
    i1 = np.bincount((one_item[m1] * gpn + src_pos[m1]) * nT + st[m1], minlength=nl * gpn * nT).reshape(nl, gpn, nT) * scale
    # multi-item tokens -> distinct signatures
    multi = n_loc > 1
    K = max(2, int(n_loc.max()) if multi.any() else 2)
    sorted_li = np.sort(li[multi], axis=1)[:, :K]
    mr, mi = rem[multi], ~rem[multi]
    ru, rc = unique_rows(np.concatenate([st[multi][mr][:, None], sorted_li[mr]], axis=1))
    iu, ic = unique_rows(np.concatenate([st[multi][mi][:, None], src_pos[multi][mi][:, None], sorted_li[mi]], axis=1))
    empty_sig = np.zeros((0, K), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    xs = xsend_SG[:, v * gpn:(v + 1) * gpn]
    if not exact:
        xs = xs.mean(axis=0, keepdims=True)
    problem = NodeProblem(
        gpu_I=lay.item_gpu[items] - v * gpn, gpus=gpn,
        compute_ms_IS=F_SP[:, items].T.copy(), tokens_IS=tok_SP[:, items].T.copy(),
        remote_single_IT=r1, remote_rows_RK=ru[:, 1:] if ru.size else empty_sig,
        remote_step_R=ru[:, 0] if ru.size else empty, remote_weight_R=rc * scale,
        intra_single_IgT=i1, intra_rows_RK=iu[:, 2:] if iu.size else empty_sig,
        intra_src_R=iu[:, 1] if iu.size else empty, intra_step_R=iu[:, 0] if iu.size else empty,
        intra_weight_R=ic * scale, fixed_nic_Tg=xs, migration_Ig=None if mig_P_g is None else mig_P_g[items],
    )
    return problem, items


def build_node_search(
    lay: LayerItems, v: int, inp: PlacementInputs, step_T: np.ndarray, src_T: np.ndarray, n_steps: int,
    tok_SP: np.ndarray, F_SP: np.ndarray, xsend_SG: np.ndarray, exact: bool | None,
    mig_P_g: np.ndarray | None, balance_tolerance: float, row_scale: float = 1.0, keep_nvlink: bool = False,
) -> tuple[NodeSearch, np.ndarray]:
    """The :class:`NodeSearch` of node ``v`` (arguments as :func:`node_problem`) and its items,
    with the balance guard of §4 set and the NVLink terms dropped where they cannot bind (§5)
    unless ``keep_nvlink`` (exact mode)."""
    problem, items = node_problem(lay, v, inp, step_T, src_T, n_steps, tok_SP, F_SP, xsend_SG, exact, mig_P_g,
                                  row_scale)
    ns = NodeSearch(problem, inp.cost)
    t_nvl, t_nic = ns.link_ms()  # bandwidth parts, ms
    if (ns.isig.size or ns.i1tot.any()) and not keep_nvlink:
        # skip NVLink bookkeeping where it cannot matter: far below the NIC (which then binds),
        # or its bandwidth part a few % of the compute (its latency does not depend on placement)
        if (inp.num_nodes > 1 and t_nvl < 0.25 * t_nic) or ns.k2 * t_nvl < 0.05 * float(ns.comp.max(axis=1).mean()):
            ns.drop_intra()
    ns.cap = ns.balance * (1.0 + balance_tolerance)
    return ns, items


# ---- stages 3 / 4 over every layer and node --------------------------------------------------


def place_on_gpus(
    inp: PlacementInputs, sample: TokenSample, weight_LE: np.ndarray, warm_LP: np.ndarray,
    node_LE: np.ndarray | None, num_nodes: int, previous_LP: np.ndarray | None, mig_w: float, exact_setting: bool,
    *, time_limit: float, deadline: float, balance_tolerance: float, search_evals: int | None,
    budget_instances: int | None = None,
) -> tuple[np.ndarray, SearchStats]:
    """Stages 2-4 (docs/placement.md §5.2-§5.4) on every layer: the placement int [L, P] and its
    statistics.

    ``node_LE`` [L, E] the experts' nodes from stage 1 over ``num_nodes`` nodes, or None (then
    ``num_nodes`` is 1 and EPLB's ``warm_LP`` [L, P] is the start); ``exact_setting``: the
    per-node objective is the simulator's layer time (§5), so nodes are enumerated without the
    balance guard. ``search_evals`` neighbourhoods per node (default: :func:`search_seconds`
    converted to a count from the sizes). ``budget_instances``: the (layer, node) problems that
    budget is shared by (default: these layers' ``L`` × nodes; a solve of some layers of a larger
    problem passes the whole problem's count, so each gets the budget it gets there).
    """
    L, P = warm_LP.shape
    G, S, E = inp.num_gpus, inp.slots_per_gpu, inp.num_experts
    gpn = G // num_nodes
    exp_rows, gpu_rows = initial_items(weight_LE, node_LE, warm_LP, num_nodes, gpn, S)
    exhaustive = count_assignments(P // num_nodes, gpn, S) <= EXHAUSTIVE_LIMIT
    instances = budget_instances if budget_instances is not None else L * num_nodes
    search_s = search_seconds(instances, time_limit)
    stats = SearchStats(exhaustive=exhaustive, search_budget_s=round(search_s, 2))
    new = np.empty((L, P), dtype=np.int64)
    inp_eff = with_nodes(inp, gpn)
    for l in range(L):
        lay = layer_items(exp_rows[l], gpu_rows[l], sample.ids_LTk[l], sample.tok_index_T, E)
        xfix_SG = fixed_nic_SG(lay, sample, inp, num_nodes)
        tok_SP, F_SP = item_loads(lay, exp_rows[l], gpu_rows[l], l, sample, inp)
        mig_P_g = None
        if mig_w > 0:
            assert previous_LP is not None
            mig_P_g = item_migration_ms(lay.item_exp, lay.item_gpu // gpn, previous_LP[l], inp_eff, mig_w)
        for v in range(num_nodes):
            if time.perf_counter() > deadline:
                stats.stopped_by_time = True
                break
            ns, its = build_node_search(
                lay, v, inp_eff, sample.step_T, sample.src_T, inp.num_steps, tok_SP, F_SP, xfix_SG,
                True if (exhaustive and exact_setting) else None, mig_P_g, balance_tolerance,
                row_scale=sample.tscale, keep_nvlink=exhaustive and exact_setting,
            )
            stats.instances += 1
            if exhaustive and count_assignments(ns.nl, ns.g, S) * ns.full_elements() > EXHAUSTIVE_WORK:
                exhaustive = stats.exhaustive = False  # too many rows to score every assignment: search
            if exhaustive:
                ns.exhaustive(all_assignments(ns.nl, ns.g, S), guard=not exact_setting)
            else:
                budget = search_evals if search_evals is not None else ns.eval_budget(search_s / instances)
                stats.accepted += ns.run(budget, deadline)
                stats.evals += ns.evals
            lay.item_gpu[its] = v * gpn + ns.gpos
        new[l] = phy2log_from_items(lay.item_exp, lay.item_gpu, G, S)
        if previous_LP is not None:
            new[l] = keep_slots(new[l], previous_LP[l], S)
    if time.perf_counter() > deadline:
        stats.stopped_by_time = True
    return new, stats
