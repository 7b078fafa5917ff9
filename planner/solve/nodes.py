"""Stage 1 of the placement: experts onto nodes (docs/placement.md §1-§4, §5.1 and §5.1b).

When the EP ranks span several nodes, which node holds an expert decides how many inter-node
copies its tokens need, and inter-node bandwidth is the scarce link. Stage 1 places whole
blocks (routing groups that divide over the nodes) with a small MILP per layer, warm-started
from EPLB's node sets and kept only when it beats them on the exact copies of the planning
tokens; stage 1b (:mod:`planner.solve.nodeswap`) then swaps single experts between nodes on
those exact copies. Every limit is a size (variables, rounds), so results do not depend on the
machine's speed. Shapes: ``L`` layers, ``T`` sampled tokens, ``k`` top-k, ``E`` experts,
``B`` blocks, ``K`` block pairs, ``N`` nodes, ``g`` GPUs per node.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pulp

from planner.solve import baselines, milp
from planner.solve.migration import first_node_of_experts
from planner.solve.nodeswap import node_copies, round_elements, swap_experts
from planner.solve.problem import Clock, PlacementInputs, TokenSample, curve_slope, nodes_of

#: Stage-1 MILPs are solved only up to this many variables each and in all (layers beyond are
#: left with EPLB's node sets): decided from sizes, so results do not depend on machine speed.
STAGE1_MAX_VARS = 1200
STAGE1_TOTAL_VARS = 40000
#: Relative spread of a block's tokens over source nodes above which stage 1 models rank
#: locality (below it the sources are even up to sampling noise and every node is alike).
LOCALITY_MIN = 0.05
#: Stage 1b (expert swaps between nodes): planning tokens kept per layer, most experts (its
#: gain matrix is E × E), share of the time limit its work budget may use, and array elements
#: it processes per second on one core (measured on a 2-core x86 VM; converts the budget into
#: a deterministic number of rounds).
SWAP_MAX_TOKENS = 16384
SWAP_MAX_EXPERTS = 2048
SWAP_SHARE = 0.2
SWAP_ELEMENTS_PER_S = 3e8
#: Stage 1b may raise a node's load to this share above the mean node load when the start (EPLB)
#: is balanced tighter than that: EPLB balances node loads to a fraction of a percent, which left
#: the swaps little room, while at prefill token counts an expert's time is mostly its weight read
#: (a node's few percent more tokens cost little) and the copies saved are worth more (real
#: DeepSeek-V2-Lite routing, 2 × 8 GPUs, 16 redundant: inter-node bytes −6% → −13% against EPLB,
#: imbalance unchanged; ``python benchmarks/placement.py --real-only``).
SWAP_LOAD_SLACK = 0.02


@dataclass
class SwapTotals:
    """Stage 1b over every layer: swaps taken, rounds run, inter-node copies of the sampled
    tokens before and after, the round budget per layer; or why it was skipped."""

    swaps: int = 0
    rounds: int = 0
    copies_before: int = 0
    copies_after: int = 0
    max_rounds: int = 0
    skipped: str | None = None

    def to_dict(self) -> dict[str, object]:
        if self.skipped is not None:
            return {"skipped": self.skipped}
        return {"swaps": self.swaps, "rounds": self.rounds, "copies_before": self.copies_before,
                "copies_after": self.copies_after, "max_rounds": self.max_rounds}


@dataclass
class Stage1Stats:
    """What stage 1 did: layers whose MILP ran (or needed none), proven optimal, where EPLB's node
    sets were kept, layers skipped by the size limits, and stage 1b's totals."""

    layers_solved: int = 0
    optimal: int = 0
    kept_eplb: int = 0
    blocks: str | None = None  #: "groups" or "experts"
    skipped: int = 0
    time_limited: bool = False
    note: str | None = None
    swaps: SwapTotals | None = None
    time_s: float = 0.0

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"layers_solved": self.layers_solved, "optimal": self.optimal,
                                  "kept_eplb": self.kept_eplb}
        for key, value, keep in (("blocks", self.blocks, self.blocks is not None), ("skipped", self.skipped,
                                 self.skipped > 0), ("time_limited", True, self.time_limited),
                                 ("note", self.note, self.note is not None)):
            if keep:
                out[key] = value
        if self.swaps is not None:
            out["swaps"] = self.swaps.to_dict()
        out["time_s"] = self.time_s
        return out


# ---- blocks and their statistics --------------------------------------------------------------


def node_blocks(num_experts: int, num_nodes: int, n_group: int | None) -> np.ndarray | None:
    """Block of each expert for stage 1 (int [E]): routing groups when they divide over the
    nodes, else one block per expert; None when the experts cannot split evenly over nodes."""
    if num_experts % num_nodes:
        return None
    if n_group and n_group > 1 and n_group % num_nodes == 0 and num_experts % n_group == 0:
        return np.arange(num_experts) // (num_experts // n_group)
    return np.arange(num_experts)


def block_pairs(ids_Tk: np.ndarray, block_E: np.ndarray, num_blocks: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Co-activated block pairs of the tokens ``ids_Tk`` [T, k]: (pairs [K, 2], tokens choosing
    both [K]), largest first, at most ``max_pairs``."""
    b = block_E[ids_Tk]
    k = b.shape[1]
    if k < 2:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    ia, ib = np.triu_indices(k, 1)
    lo = np.minimum(b[:, ia], b[:, ib])
    hi = np.maximum(b[:, ia], b[:, ib])
    key = lo * num_blocks + hi
    key = np.where(lo == hi, -1, key)
    # count each block pair once per token
    key = np.sort(key, axis=1)
    first = np.ones_like(key, dtype=bool)
    first[:, 1:] = key[:, 1:] != key[:, :-1]
    key = key[first & (key >= 0)]
    cnt = np.bincount(key, minlength=num_blocks * num_blocks)
    nz = np.nonzero(cnt)[0]
    order = nz[np.argsort(-cnt[nz], kind="stable")][:max_pairs]
    return np.stack([order // num_blocks, order % num_blocks], axis=1), cnt[order].astype(np.float64)


def block_sources(ids_Tk: np.ndarray, block_E: np.ndarray, num_blocks: int, src_node_T: np.ndarray, num_nodes: int) -> np.ndarray:
    """Rank locality at block level: tokens from node v that pick at least one expert of block b
    (float [B, N]); a token is counted once per block whatever its number of experts there."""
    b = np.sort(block_E[ids_Tk], axis=1)
    first = np.ones_like(b, dtype=bool)
    first[:, 1:] = b[:, 1:] != b[:, :-1]
    key = b * num_nodes + np.broadcast_to(src_node_T[:, None], b.shape)
    return np.bincount(key[first], minlength=num_blocks * num_nodes).reshape(num_blocks, num_nodes).astype(np.float64)


def node_score(
    ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray, w_E: np.ndarray, num_nodes: int,
    lam_node: float, lam_copy: float,
) -> float:
    """Exact expected stage-1 cost on the planning tokens ``ids_Tk`` [T, k] for the map ``node_E``
    [E] with loads ``w_E`` [E]: λ_node·max node load + λ_copy·copies (§3)."""
    copies = float(node_copies(ids_Tk, src_node_T, node_E))
    load = np.bincount(node_E, weights=w_E, minlength=num_nodes)
    return lam_node * float(load.max()) + lam_copy * copies


# ---- the stage-1 MILP -------------------------------------------------------------------------


def stage1_layer(
    w_B: np.ndarray,
    size_B: np.ndarray,
    pairs_K2: np.ndarray,
    c_K: np.ndarray,
    num_nodes: int,
    warm_node_B: np.ndarray,
    lam_node: float,
    lam_copy: float,
    mig_BN: np.ndarray | None,
    time_limit: float,
    node_limit: int = 200,
) -> tuple[np.ndarray, str, float | None, float | None]:
    """The stage-1 MILP of one layer (docs/placement.md §1-§4): blocks onto nodes.

    ``w_B`` [B] load per block (tokens per step), ``size_B`` [B] experts per block, ``pairs_K2``
    / ``c_K`` co-activated block pairs and their tokens per step, ``warm_node_B`` [B] the warm
    start (§2), ``mig_BN`` [B, N] linear cost (ms) of block b on node v: migration, minus the
    copies rank locality saves there. Returns (node of each block, status, objective, bound).
    """
    B, N = w_B.size, num_nodes
    per_node = int(size_B.sum()) // N
    prob = pulp.LpProblem("experts_to_nodes", pulp.LpMinimize)
    # §1 variables
    x = [[milp.variable(prob, f"x_{b}_{v}", 0, 1, "Binary") for v in range(N)] for b in range(B)]
    y = [[milp.variable(prob, f"y_{p}_{v}", 0, 1) for v in range(N)] for p in range(len(c_K))]
    z = milp.variable(prob, "z_node", 0, None)
    # §2 warm start: EPLB's node of each block
    for b in range(B):
        for v in range(N):
            x[b][v].setInitialValue(1 if warm_node_B[b] == v else 0)
    for p, (b1, b2) in enumerate(pairs_K2):
        for v in range(N):
            y[p][v].setInitialValue(1 if warm_node_B[b1] == v and warm_node_B[b2] == v else 0)
    z.setInitialValue(float(np.bincount(warm_node_B, weights=w_B, minlength=N).max()))
    # §3 objective: node load, split co-activated pairs (one more inter-node copy), migration
    split = pulp.lpSum(float(c_K[p]) * (1 - pulp.lpSum(y[p])) for p in range(len(c_K)))
    obj = lam_node * z + lam_copy * split
    if mig_BN is not None:
        obj += pulp.lpSum(float(mig_BN[b, v]) * x[b][v] for b in range(B) for v in range(N) if mig_BN[b, v])
    prob += obj
    # §4 constraints
    for b in range(B):
        prob += pulp.lpSum(x[b]) == 1
    for v in range(N):
        prob += pulp.lpSum(int(size_B[b]) * x[b][v] for b in range(B)) == per_node
        prob += pulp.lpSum(float(w_B[b]) * x[b][v] for b in range(B)) <= z
    for p, (b1, b2) in enumerate(pairs_K2):
        for v in range(N):
            prob += y[p][v] <= x[b1][v]
            prob += y[p][v] <= x[b2][v]
    if mig_BN is None:  # nodes are interchangeable: pin block 0 (symmetry breaking)
        prob += x[0][int(warm_node_B[0])] == 1
    status, bound = milp.solve_milp(prob, time_limit, node_limit)
    if bound is not None:  # the solver's bound leaves out the objective's constant term
        bound += float(prob.objective.constant)
    if status == "none":
        return warm_node_B.copy(), status, None, bound
    node_B = np.array([int(np.argmax([x[b][v].varValue or 0 for v in range(N)])) for b in range(B)])
    return node_B, status, float(pulp.value(prob.objective)), bound


# ---- stage 1 over the layers ---------------------------------------------------------------------


@dataclass
class _Stage1:
    """Fixed data of stage 1 for one problem (docs/placement.md §3 for λ_node, λ_copy)."""

    inp: PlacementInputs
    sample: TokenSample
    weight_LE: np.ndarray  # [L, E] tokens per step
    warm_LP: np.ndarray  # [L, P] EPLB
    previous_LP: np.ndarray | None
    mig_w: float
    blocks: np.ndarray  # [E]
    size_B: np.ndarray  # [B]
    lam_node: float
    lam_copy: float
    budget_s: float
    node_LE: np.ndarray  # [L, E] the answer, filled layer by layer
    milp_vars: int = 0
    stats: Stage1Stats = field(default_factory=Stage1Stats)

    @property
    def num_nodes(self) -> int:
        return self.inp.num_gpus // self.gpn

    @property
    def gpn(self) -> int:
        return self.inp.gpus_per_node


def _warm_blocks(s: _Stage1, l: int, w_B: np.ndarray) -> np.ndarray:
    """EPLB's node of each block [B] (the node holding most of its experts), or an equal-count
    packing of whole blocks when EPLB split blocks over nodes."""
    E, N, nB = s.blocks.size, s.num_nodes, s.size_B.size
    warm_node_E = first_node_of_experts(s.warm_LP[l], s.inp.slots_per_gpu, s.gpn, E)
    vote = np.zeros((nB, N))
    np.add.at(vote, (s.blocks, warm_node_E), 1.0)
    warm_B = np.argmax(vote, axis=1)
    aligned = bool((warm_node_E == warm_B[s.blocks]).all()) and bool(
        (np.bincount(warm_B, weights=s.size_B, minlength=N) == E // N).all()
    )
    if not aligned:
        pk, _ = baselines.balanced_packing(w_B[None, :], N)
        warm_B = pk[0]
    return warm_B


def _block_migration(s: _Stage1, l: int) -> np.ndarray | None:
    """Migration ms per step [B, N] of block b ending on node v (None without a previous placement)."""
    if s.mig_w <= 0:
        return None
    assert s.previous_LP is not None
    E, N, nB, c = s.blocks.size, s.num_nodes, s.size_B.size, s.inp.cost
    prev_node_E = first_node_of_experts(s.previous_LP[l], s.inp.slots_per_gpu, s.gpn, E)
    mig = np.zeros((nB, N))
    for v in range(N):
        moved = np.bincount(s.blocks, weights=(prev_node_E != v).astype(float), minlength=nB)
        mig[:, v] = moved * c.expert_bytes * c.nic.ms_per_byte * s.mig_w
    return mig


def _layer_nodes(s: _Stage1, l: int, clock: Clock, deadline: float) -> None:
    """Stage 1 on layer ``l`` (docs/placement.md §5.1): sets ``s.node_LE[l]``."""
    inp, st, blocks = s.inp, s.stats, s.blocks
    E, N, nB, n_steps, tscale = blocks.size, s.num_nodes, s.size_B.size, inp.num_steps, s.sample.tscale
    ids_Tk = s.sample.ids_LTk[l]
    src_node_T = s.sample.src_T // s.gpn
    w_B = np.bincount(blocks, weights=s.weight_LE[l], minlength=nB)
    warm_B = _warm_blocks(s, l, w_B)
    s.node_LE[l] = warm_B[blocks]
    # rank locality: a token from node v that picks block b needs no inter-node copy for it when
    # b is on v, so placing b on v saves λ_copy · A_bv (tokens per step)
    A_BN = block_sources(ids_Tk, blocks, nB, src_node_T, N) * tscale / n_steps
    local = bool(np.ptp(A_BN, axis=1).max() > LOCALITY_MIN * max(A_BN.max(), 1e-12))
    if nB == N and s.mig_w <= 0 and not local:
        # one block per node, sources spread evenly: every bijection has the same node loads,
        # copies and (no) shared pairs, so EPLB's (or the packing's) assignment is optimal
        st.layers_solved += 1
        st.optimal += 1
        return
    pairs, cnt = block_pairs(ids_Tk, blocks, nB, max_pairs=4 * nB)
    size = (nB + len(cnt)) * N  # MILP variables: decided by sizes only (reproducible)
    if nB == E or size > STAGE1_MAX_VARS or s.milp_vars + size > STAGE1_TOTAL_VARS:
        st.skipped += 1
        return
    if clock.elapsed() > s.budget_s or time.perf_counter() > deadline:  # safety stop only
        st.time_limited = True
        return
    s.milp_vars += size
    cnt = cnt * tscale / n_steps
    mig = _block_migration(s, l)
    lin = -s.lam_copy * A_BN if local else None
    if mig is not None:
        lin = mig if lin is None else lin + mig
    per_layer = max(0.05, s.budget_s - clock.elapsed())
    nb, status, _obj, _bnd = stage1_layer(w_B, s.size_B, pairs, cnt, N, warm_B, s.lam_node, s.lam_copy, lin,
                                          per_layer)
    st.layers_solved += 1
    st.optimal += status == "optimal"
    # keep the MILP's answer only if it is better on the exact expected copies and loads
    lam_tok = s.lam_node * n_steps / tscale
    sc_new, sc_old = (
        node_score(ids_Tk, src_node_T, nodes[blocks], s.weight_LE[l], N, lam_tok, s.lam_copy)
        + (float(mig[np.arange(nB), nodes].sum()) * n_steps / tscale if mig is not None else 0.0)
        for nodes in (nb, warm_B)
    )
    if sc_new < sc_old:
        s.node_LE[l] = nb[blocks]
    else:
        st.kept_eplb += 1


def assign_nodes(
    inp: PlacementInputs, sample: TokenSample, weight_LE: np.ndarray, warm_LP: np.ndarray,
    previous_LP: np.ndarray | None, mig_w: float, clock: Clock, *, time_limit: float, deadline: float,
    swaps: bool = True,
) -> tuple[np.ndarray | None, Stage1Stats]:
    """Stages 1 and 1b (docs/placement.md §5.1, §5.1b): the node of every expert, int [L, E], or
    None when nodes are not used (one node, or experts / slots that do not split evenly over
    the nodes: EPLB's global placement is then the start), and the statistics.

    ``inp.gpus_per_node`` must divide ``inp.num_gpus`` into ``N > 1`` nodes for nodes to be used.
    ``swaps=False`` leaves stage 1b to the caller (:mod:`planner.solve.layer_map` runs it per layer).
    """
    L, E, G, P = inp.num_layers, inp.num_experts, inp.num_gpus, inp.num_physical
    gpn = inp.gpus_per_node
    N = nodes_of(G, gpn)
    blocks = node_blocks(E, N, inp.n_group) if N > 1 else None
    if not (N > 1 and blocks is not None and P % N == 0 and P // N >= E // N):
        st = Stage1Stats()
        if N > 1:
            st.note = f"{E} experts or {P} slots do not split evenly over {N} nodes: EPLB's global placement is the start"
        st.time_s = round(clock.elapsed(), 3)
        return None, st
    groups = inp.token_groups
    nB = int(blocks.max()) + 1
    _c0, c1 = curve_slope(inp.cost, weight_LE.sum(1).mean() / P / groups)
    # one more inter-node copy in a group's step (the counts are per group: groups run side by
    # side on their own GPUs and NICs)
    lam_copy = 2.0 * (1.0 - inp.cost.overlap) * inp.cost.token_bytes * inp.cost.nic.ms_per_byte / gpn
    s = _Stage1(inp, sample, weight_LE, warm_LP, previous_LP, mig_w, blocks, np.bincount(blocks, minlength=nB),
                lam_node=c1 / gpn / groups, lam_copy=lam_copy, budget_s=0.15 * time_limit,
                node_LE=np.zeros((L, E), dtype=np.int64))
    s.stats.blocks = "groups" if nB < E else "experts"
    for l in range(L):
        _layer_nodes(s, l, clock, deadline)
    if swaps:
        s.stats.swaps = swap_nodes(s.node_LE, sample, weight_LE, N, inp, previous_LP, mig_w,
                                   time_limit=time_limit, deadline=deadline)
    s.stats.time_s = round(clock.elapsed(), 3)
    return s.node_LE, s.stats


def swap_nodes(node_LE: np.ndarray, sample: TokenSample, weight_LE: np.ndarray, num_nodes: int,
               inp: PlacementInputs, previous_LP: np.ndarray | None, mig_w: float, *, time_limit: float,
               deadline: float, budget_layers: int | None = None) -> SwapTotals:
    """Stage 1b (docs/placement.md §5.1b, :mod:`planner.solve.nodeswap`) on every layer, in place
    on ``node_LE`` [L, E]: at most :data:`SWAP_MAX_TOKENS` sampled tokens per layer and a number
    of rounds from a work budget of :data:`SWAP_SHARE` of the time limit (sizes only: reproducible),
    shared by ``budget_layers`` layers (default: these ``L``; some layers of a larger problem pass
    its count)."""
    ids_LTk, src_node_T = sample.ids_LTk, sample.src_T // inp.gpus_per_node
    L, T, k = ids_LTk.shape
    E, N = node_LE.shape[1], num_nodes
    if E > SWAP_MAX_EXPERTS:  # the gain matrix is E × E
        return SwapTotals(skipped=f"{E} experts > {SWAP_MAX_EXPERTS}")
    stride = max(1, math.ceil(T / SWAP_MAX_TOKENS))
    ids_sub, src_sub = ids_LTk[:, ::stride], src_node_T[::stride]
    per_round = round_elements(ids_sub.shape[1], k, E, N)
    max_rounds = max(1, int(SWAP_SHARE * time_limit * SWAP_ELEMENTS_PER_S / per_round / (budget_layers or L)))
    # ms per step of one inter-node copy per step of an expert-data-parallel group, spread over
    # a node's GPUs (the groups run side by side)
    lam_copy = (2.0 * (1.0 - inp.cost.overlap) * inp.cost.token_bytes * inp.cost.nic.ms_per_byte
                / (inp.num_gpus // N))
    out = SwapTotals(max_rounds=max_rounds)
    for l in range(L):
        mig_EN = None
        if mig_w > 0 and previous_LP is not None and lam_copy > 0:
            prev = first_node_of_experts(previous_LP[l], inp.slots_per_gpu, inp.num_gpus // N, E)
            ms = inp.cost.expert_bytes * inp.cost.nic.ms_per_byte * mig_w  # per moved expert, per step
            # in sampled copies: a sampled token stands for tscale · stride tokens of one group over
            # the n_steps planning steps, so its copy costs lam_copy · tscale · stride / n_steps ms per step
            mig_EN = (prev[:, None] != np.arange(N)[None, :]) * ms * inp.num_steps / (lam_copy * sample.tscale * stride)
        w = weight_LE[l]
        node_LE[l], info = swap_experts(
            ids_sub[l], src_sub, node_LE[l], w, N,
            max_load=max(float(np.bincount(node_LE[l], weights=w, minlength=N).max()),
                         float(w.sum()) / N * (1.0 + SWAP_LOAD_SLACK)),
            max_rounds=max_rounds, mig_EN=mig_EN, deadline=deadline,
        )
        out.swaps += info["swaps"]
        out.rounds += info["rounds"]
        out.copies_before += info["copies_before"]
        out.copies_after += info["copies_after"]
    return out
