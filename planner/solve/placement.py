"""Expert placement: replica counts and slot-to-GPU assignment that minimise predicted MoE time.

For every MoE layer choose how many physical slots each logical expert gets and which EP rank
(GPU) holds each slot, so that the MoE layer's predicted time on the planning steps of a trace —
the slowest GPU's expert compute plus exposed dispatch and combine time, as
:mod:`planner.simulator` computes it — is minimal. Shapes: ``L`` MoE layers, ``T`` planning
tokens, ``k`` top-k, ``E`` logical experts, ``R`` redundant slots, ``P = E + R`` physical slots,
``G`` EP ranks (GPUs), ``N`` nodes of ``g = G / N`` GPUs, ``S = P / G`` slots per GPU, ``s`` a
planning step (``n_s`` of them), ``B`` bytes of one token's activation.

What the simulator charges, per step ``s`` and layer (docs/facts.md §3, §6)::

    compute_s = max_gpu Σ_{slots p on gpu} f(n_sp)               f = planner.cost.compute.expert_ffn_ms
    comm_s    = 2·(1 − overlap)·max(t_nvlink, t_nic)              dispatch + combine
    t_link    = α_link + max_gpu max(send, recv)·B / BW_link      (0 when no byte moves)

A token is sent once per distinct destination GPU of its own node (NVLink) and once per distinct
remote node (NIC). Where the inter-node copy lands is the simulator's ``relay`` convention
(:mod:`planner.simulator`): on the GPU of the source's local rank with NVLink forwarding
(``same-rank``, the default, DeepEP's normal kernels as :func:`planner.cost.comm.dispatch_traffic` models them: NIC receives
are then fixed by the node assignment, forwarding is NVLink traffic), or on the lowest-numbered
GPU the token needs on that node (``first-destination``, kept for comparison: which GPU of a node
comes first is then a placement decision, an artefact of that convention). Tokens start on their
source rank at every layer (attention is data parallel), so traffic does not depend on where a
token was served at the previous layer: cross-layer transitions (MoETuner, ExFlow) carry no
weight in this objective and are not a term here (they matter to prefetch in offload mode).

The problem is decomposed into stages; the MILP of stage 1 is solved with PuLP, the others are
exact combinatorial steps or a local search on the exact objective (section 5).

1. Variables
------------

Stage 1 MILP, per layer (only when the EP ranks span ``N > 1`` nodes):

- ``x_{b,v} ∈ {0,1}``: block ``b`` on node ``v``. A block is a routing group of a model with
  group-limited routing whose groups divide over the nodes (DeepSeek ``n_group`` /
  ``topk_group``: node-aligned groups cap a token's destination nodes at ``topk_group``); the
  formulation also holds for single-expert blocks, where it is not run (section 5);
- ``y_{p,v} ∈ [0,1]``: both blocks of a co-activated pair ``p = (b, b')`` on node ``v`` (such a
  pair then costs a token one inter-node copy, not two); the ``4 · #blocks`` pairs that the most
  planning tokens pick together;
- ``z_node ≥ 0``: the largest node load (tokens per step).

Later stages decide, per node: the replica count ``r_e ≥ 1`` of each of its experts (stage 2)
and the GPU ``u_i`` of each replica item ``i = (e, j)`` (stage 3, 4).

2. Warm start
-------------

DeepSeek EPLB (:func:`planner.solve.baselines.eplb`, hierarchical when the groups divide by the
nodes) on the planning counts: its node of each block is HiGHS's starting incumbent
(``setSolution``) and the assignment the MILP's answer must beat; its placement is a candidate
the result is compared with at the end.

3. Objective
------------

The planning objective is the simulator's predicted MoE time on the planning steps,
``Σ_layers mean_s (compute_s + comm_s)``, plus, when a previous placement is given,
``migration_weight · Σ moved copies · expert_bytes / BW`` (``BW``: the NIC when the node did not
hold the expert before, else NVLink; ``migration_weight`` amortises the one-time copy over the
steps until the next re-plan, e.g. 0.01 = 100 steps).

Stage 1 minimises, in ms per step::

    λ_node · z_node + λ_copy · Σ_p C_p · (1 − Σ_v y_{p,v}) + Σ_{b,v} (M_{b,v} − λ_copy · A_{b,v}) · x_{b,v}

with ``C_p`` the planning tokens per step that pick both blocks of ``p``, ``A_{b,v}`` those
from node ``v`` that pick block ``b`` (rank locality: on their own node they need no inter-node
copy for it; the term is left out when every block's sources are even over the nodes to within
:data:`LOCALITY_MIN`), ``λ_copy = 2(1 −
overlap) · B · (ms per NIC byte) / g`` (one more inter-node copy, spread over a node's GPUs),
``λ_node = c₁ / g`` (``c₁`` the slope of the expert-time curve at the mean slot load: a token's
compute; :func:`curve_slope`), ``M_{b,v}`` the migration cost of block ``b`` on node ``v``.

4. Constraints
--------------

Stage 1::

    Σ_v x_{b,v} = 1                          every block on one node
    Σ_b |b| · x_{b,v} = E / N                equal experts per node (each node has P / N slots)
    Σ_b W_b · x_{b,v} ≤ z_node               node load (W_b tokens per step of block b)
    y_{p,v} ≤ x_{b,v},  y_{p,v} ≤ x_{b',v}   a pair shares node v only if both blocks are there
    x_{0,v₀} = 1                             symmetry breaking (no migration term: nodes interchangeable)

Everywhere: every expert at least once per layer, every GPU exactly ``S`` slots (memory), all
``P`` slots used; replicas stay on their expert's node (with even dispatch a replica on another
node adds that node to its tokens' destinations) until stage 5, which runs only under
``nearest`` dispatch. Token share per replica follows the dispatch
policy: ``even`` sends token ``t``'s ``j``-th choice to replica ``(t·k + j) mod r_e`` (what the
search models); ``local-first`` uses a replica on the token's own GPU when there is one,
``nearest`` one on its GPU, else on its node (the candidates are scored by the simulator under
the plan's policy). Balance guard in the search:
each node's largest GPU token load (mean over the planning steps) stays within
``balance_tolerance`` (2%: the imbalance a plan may give up against EPLB) of EPLB's packing.

5. What is solved, exact or heuristic
-------------------------------------

1. *Experts → nodes* (``N > 1``): the stage-1 MILP per layer over routing-group blocks, HiGHS
   through PuLP (CBC with a logged warning when highspy is missing), ``threads=1``, a node
   limit, :data:`MILP_GAP`, at most 15% of the time limit in all. With one group per node and
   no rank locality every bijection is optimal and no MILP is needed (with locality it is an
   assignment problem, which the MILP solves). Exact for its linear objective when HiGHS proves
   optimality, but the pairwise term is a stand-in for "distinct remote nodes per token", so the
   answer is kept only when it beats EPLB's node assignment on the exact expected copies and
   node loads of the planning tokens. With single-expert blocks (no usable groups) the pairwise
   MILP was slow (≈1 s per layer at 16 experts) and its node sets scored worse after the search
   than EPLB's on our traces (top-k ≥ 4 touches most nodes whatever the pairs), so EPLB's
   node sets (or an equal-count packing when EPLB splits an expert's replicas over nodes) are
   the start there.

   1b. *Single experts between nodes* (:mod:`planner.solve.nodeswap`), every layer after 1:
   best-improvement swaps of two experts on different nodes on the exact inter-node copies of
   (up to :data:`SWAP_MAX_TOKENS`) planning tokens, no node's load above the largest one before,
   plus the migration cost when re-planning. This is where rank locality and co-activation
   count for models without node-aligned groups (with them it finds nothing on our traces).
   Heuristic; a deterministic number of rounds; skipped above :data:`SWAP_MAX_EXPERTS` experts
   (its gain matrix is E × E).
2. *Replica counts* inside each node: water-filling (the next replica to the expert of largest
   load per replica) — exact for ``min max_e w_e / r_e`` (EPLB's rule).
3. *Replicas → GPUs* inside each node: every assignment enumerated when a node has at most
   :data:`EXHAUSTIVE_LIMIT` (exact for the per-node objective below), otherwise EPLB's
   longest-processing-time packing (heuristic) followed by
4. *local search* on the per-node objective: best-improvement swaps. For the node's costliest
   GPU first, every swap of one of its replicas with a replica on another GPU is scored at once
   from per-move tables (a swap is two moves plus a correction for the tokens that need both
   replicas), the best improving swap (by at least :data:`MIN_GAIN`) is taken, else the next
   GPU is tried; when no GPU has one, swaps of two GPUs' whole slot sets (positions matter under
   ``first-destination``). Deterministic; a work budget of :func:`search_seconds` converted to a
   number of evaluations from the problem's sizes (never from a clock), so the same inputs
   give the same placement — the time limit is only a safety stop (status ``time_limit``).
   Heuristic. Large traces are subsampled for the traffic part (:data:`SEARCH_MAX_TOKENS`);
   loads always come from every planning token.
5. *Replicas on other nodes* (``nearest`` dispatch only, ``R > 0``, node-aligned experts):
   :mod:`planner.solve.xnode` — per layer, variants that move part of each node's redundant
   slots to replicas of other nodes' experts (a node's tokens then reach them over NVLink),
   each scored by the simulator on whole planning steps, the input kept when none is faster.
   Heuristic candidates, exact scoring.
6. The solver's placement and the candidates (EPLB; contiguous and round-robin when ``R = 0``;
   the previous placement) are scored with the planning objective (the simulator) and the best
   is returned: the plan is never worse than EPLB on the planning steps.

Per-node objective (the simulator's charges restricted to one node's GPUs; the layer's time is
the maximum over nodes, which the search approaches by lowering every node)::

    J_v = mean_s max_{u∈v} Σ_{i on u} f(n_si) + 2(1−overlap)·mean_s' max(t_nvl(s'), t_nic(s'))
          + Σ_i migration(i, u_i)

with traffic scored per step (``s' = s``) when a node's planning tokens are few
(:data:`EXACT_ROWS_LIMIT`) or for the mean step otherwise; NVLink terms are dropped where they
cannot bind (below a quarter of the NIC time, or their bandwidth part under 5% of the
compute). With a single node, no redundant slot, one expert-data-parallel group, even dispatch,
no subsampling and per-step traffic, ``J`` is exactly the simulator's layer time; stage 3 then
enumerates all assignments without the balance guard and the result is optimal for the
planning objective (status ``optimal``, ``bound = objective``).

6. Bound and gap
----------------

``bound`` is a lower bound valid for every placement with these slots, on the planning
objective: per step, layer and expert-data-parallel group, compute ≥ the mean GPU time with
each expert's tokens costed at ``max(f(1), c_min · n)`` (``c_min = min_n f(n)/n``: splitting over
replicas never costs less), and communication ≥ the latency plus the NVLink time of the copies
every token needs because ``k`` experts do not fit in ``S`` slots of one GPU (``⌈k/S⌉ − 1``). It
is tight where compute dominates and loose where inter-node traffic does (no
placement-independent argument bounds a token's destination nodes without solving the
placement itself). ``gap = (objective − bound) / objective``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from planner.errors import InfeasibleError, InputError
from planner.solve import baselines
from planner.solve.nodeswap import node_copies, round_elements, swap_experts

log = logging.getLogger(__name__)

#: Relative gap at which the stage-1 MILP stops (its answer is a candidate checked on the exact
#: copies anyway); with the node limit it keeps the MILP from running into its time limit.
MILP_GAP = 0.005
_MILP_LOG = False
#: Stage-1 MILPs are solved only up to this many variables each and in all (layers beyond are
#: left with EPLB's node sets): decided from sizes, so results do not depend on machine speed.
STAGE1_MAX_VARS = 1200
STAGE1_TOTAL_VARS = 40000
#: Largest number of distinct slot assignments of one node that stage 3 enumerates exactly, and
#: the most array elements that enumeration may touch (else the local search runs).
EXHAUSTIVE_LIMIT = 3000
EXHAUSTIVE_WORK = 5e6
#: Largest number of planning tokens the search keeps per layer (evenly strided subsample).
SEARCH_MAX_TOKENS = 16384
#: Tokens using a node below which the per-node search scores traffic step by step (exact mode).
EXACT_ROWS_LIMIT = 4096
#: Smallest relative gain of the node objective for the swap search to take a move (smaller
#: gains are noise on a held-out trace and only cost time).
MIN_GAIN = 2e-5
#: Stage 1b (expert swaps between nodes): planning tokens kept per layer, share of the time
#: limit its work budget may use, and array elements it processes per second on one core
#: (measured on a 2-core x86 VM; converts the budget into a deterministic number of rounds).
SWAP_MAX_TOKENS = 16384
SWAP_MAX_EXPERTS = 2048
SWAP_SHARE = 0.2
SWAP_ELEMENTS_PER_S = 3e8
#: Relative spread of a block's tokens over source nodes above which stage 1 models rank
#: locality (below it the sources are even up to sampling noise and every node is alike).
LOCALITY_MIN = 0.05
#: Array elements the search processes per second on one core (measured on a 2-core x86 VM);
#: converts the search's time budget into a deterministic number of evaluations.
ELEMENTS_PER_S = 5e7


def search_seconds(instances: int, time_limit: float) -> float:
    """Estimated seconds of local search: 2 s + 0.06 s per (layer, node) instance, at most half
    the time limit (small problems stay fast: the default plan runs in a few seconds)."""
    return min(0.5 * time_limit, 2.0 + 0.06 * instances)


# ---- inputs and outputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCost:
    """One kind of link in the alpha-beta model: fixed cost and time per byte."""

    alpha_ms: float  #: latency of one all-to-all phase on this link, ms
    ms_per_byte: float  #: 1 / bandwidth, ms per byte


@dataclass(frozen=True)
class PlacementCost:
    """The cost model the placement is optimised for (what the simulator charges).

    Links as in the hardware profile: bandwidth in GB/s, latency in µs (``planner.cost.comm``).
    """

    ffn_ms: Callable[[np.ndarray], np.ndarray]  #: one expert's FFN time (ms) at each token count
    token_bytes: float  #: bytes of one token's activation sent per copy (B)
    nvlink_gbps: float
    nvlink_latency_us: float
    nic_gbps: float
    nic_latency_us: float
    overlap: float = 0.0  #: fraction of dispatch/combine hidden by compute
    expert_bytes: float = 0.0  #: bytes of one expert's weights (migration cost)

    @property
    def nvlink(self) -> LinkCost:
        return LinkCost(self.nvlink_latency_us * 1e-3, 1e3 / (self.nvlink_gbps * 1e9))

    @property
    def nic(self) -> LinkCost:
        return LinkCost(self.nic_latency_us * 1e-3, 1e3 / (self.nic_gbps * 1e9))

    def comm_ms(self, i_s: np.ndarray, i_r: np.ndarray, x_s: np.ndarray, x_r: np.ndarray) -> np.ndarray:
        """Exposed dispatch + combine ms from per-GPU bytes (:func:`planner.cost.comm.dispatch_combine_ms`)."""
        from planner.cost.comm import dispatch_combine_ms

        return dispatch_combine_ms(
            i_s, i_r, x_s, x_r, nvlink_gbps=self.nvlink_gbps, nvlink_latency_us=self.nvlink_latency_us,
            nic_gbps=self.nic_gbps, nic_latency_us=self.nic_latency_us, overlap=self.overlap,
        )


@dataclass(frozen=True)
class PlacementInputs:
    """Arrays of one placement problem (the planning part of a trace).

    ``ids_LTk`` int [L, T, k] experts chosen by each planning token; ``step_T`` int [T] step index
    in ``[0, num_steps)``; ``src_T`` int [T] EP rank each token starts on; ``tok_index_T`` int [T]
    the token's index in the dispatch rule ``(t·k + j) mod r_e`` (its position in its
    expert-data-parallel group); ``token_groups`` how many expert-data-parallel groups the tokens
    come from (loads are divided by it for the expert-time curve).
    """

    ids_LTk: np.ndarray
    step_T: np.ndarray
    src_T: np.ndarray
    tok_index_T: np.ndarray
    num_steps: int
    num_experts: int
    num_gpus: int
    gpus_per_node: int
    slots_per_gpu: int
    cost: PlacementCost
    n_group: int | None = None
    topk_group: int | None = None
    dispatch: str = "even"
    group_T: np.ndarray | None = None
    relay: str = "same-rank"

    @property
    def token_groups(self) -> int:
        return 1 if self.group_T is None else int(self.group_T.max()) + 1

    @property
    def num_layers(self) -> int:
        return int(self.ids_LTk.shape[0])

    @property
    def num_physical(self) -> int:
        return self.num_gpus * self.slots_per_gpu

    @property
    def num_nodes(self) -> int:
        return max(1, self.num_gpus // self.gpus_per_node)

    def counts_LE(self) -> np.ndarray:
        """Planning tokens per expert: float [L, E]."""
        L, E = self.num_layers, self.num_experts
        flat = (self.ids_LTk.astype(np.int64) + (np.arange(L, dtype=np.int64) * E)[:, None, None]).ravel()
        return np.bincount(flat, minlength=L * E).reshape(L, E).astype(np.float64)


@dataclass
class PlacementResult:
    """A placement and how it was found."""

    phy2log_LP: np.ndarray  #: int [L, P] logical expert of each physical slot
    objective: float  #: planning objective (ms per step, migration penalty included)
    bound: float  #: lower bound on the planning objective
    gap: float  #: (objective − bound) / objective
    status: str  #: optimal, feasible or time_limit
    time_s: float  #: wall time, model building included
    chosen: str  #: which candidate won ("placement-ilp", "eplb", …)
    candidates: dict[str, float] = field(default_factory=dict)  #: planning objective by candidate
    stages: dict[str, object] = field(default_factory=dict)  #: per-stage statistics


# ---- checks --------------------------------------------------------------------------------


def check_problem(num_experts: int, num_physical: int, num_gpus: int, gpus_per_node: int) -> None:
    """Raise :class:`InfeasibleError` / :class:`InputError` (with numbers) when no placement exists."""
    if num_gpus <= 0 or num_physical % num_gpus:
        raise InputError(
            f"placement: the physical slots ({num_physical}) must divide evenly over the {num_gpus} EP ranks"
        )
    if num_physical < num_experts:
        raise InfeasibleError(
            f"placement: {num_experts} experts need at least {num_experts} physical slots but there are "
            f"{num_physical} ({num_gpus} EP ranks × {num_physical // num_gpus} slots); every expert needs a slot "
            f"in every layer: add {num_experts - num_physical} slots (more GPUs or --redundant-experts)"
        )
    if gpus_per_node <= 0:
        raise InputError(f"placement: gpus_per_node must be > 0 (got {gpus_per_node})")


# ---- small helpers --------------------------------------------------------------------------


class _Clock:
    def __init__(self, limit: float) -> None:
        self.t0 = time.perf_counter()
        self.limit = float(limit)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.limit - self.elapsed()


def curve_slope(cost: PlacementCost, tokens: float) -> tuple[float, float]:
    """(c₀, c₁): fixed cost and slope of the expert-time curve around ``tokens`` per slot."""
    n = max(1.0, float(tokens))
    lo, hi = max(1.0, 0.5 * n), 2.0 * n
    f = np.asarray(cost.ffn_ms(np.array([lo, hi])), dtype=np.float64)
    c1 = max(0.0, (f[1] - f[0]) / (hi - lo))
    c0 = max(0.0, float(cost.ffn_ms(np.array([n]))[0]) - c1 * n)
    return c0, c1


def _nodes_of(num_gpus: int, gpus_per_node: int) -> int:
    """Nodes the EP ranks span (1 when they fit in one)."""
    return num_gpus // gpus_per_node if num_gpus >= gpus_per_node and num_gpus % gpus_per_node == 0 else 1


def eplb_warm_start(weight_LE: np.ndarray, inp: PlacementInputs) -> np.ndarray:
    """EPLB on the planning counts, hierarchical when the groups divide by the nodes."""
    nodes = _nodes_of(inp.num_gpus, inp.gpus_per_node)
    return baselines.eplb(weight_LE, inp.num_physical, inp.n_group or 1, nodes, inp.num_gpus)


# ---- MILP plumbing (PuLP + HiGHS, CBC fallback) --------------------------------------------


def milp_solver_name() -> str:
    """'HiGHS' (highspy through PuLP) when available, else 'CBC'."""
    import pulp

    try:
        if pulp.HiGHS(msg=False).available():
            return "HiGHS"
    except Exception:  # pragma: no cover - depends on the installed highspy
        pass
    log.warning("placement: HiGHS (highspy) is not available to PuLP; falling back to CBC")
    return "CBC"


def _var(prob, name: str, low: float | None, up: float | None, cat: str = "Continuous"):
    """A PuLP variable (``prob.add_variable`` where this PuLP has it: ``LpVariable`` is deprecated there)."""
    import pulp

    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, lowBound=low, upBound=up, cat=cat)
    return pulp.LpVariable(name, lowBound=low, upBound=up, cat=cat)


def _solve_milp(prob, time_limit: float, node_limit: int | None = None) -> tuple[str, float | None]:
    """Solve a PuLP problem whose variables carry warm-start values (``setInitialValue``).

    Returns (status, dual bound or None): status is 'optimal', 'feasible' (stopped by a limit
    with an incumbent) or 'none'. A solver that fails (HiGHS raising, a CBC binary that crashes
    or is missing) never fails the plan: HiGHS falls back to CBC, and a failing CBC gives
    'none' (the caller keeps the EPLB warm start), each with a warning.
    """
    time_limit = max(0.01, float(time_limit))
    if milp_solver_name() == "HiGHS":
        t0 = time.perf_counter()
        try:
            return _solve_highs(prob, time_limit, node_limit)
        except Exception as e:  # noqa: BLE001 - any solver failure falls back
            log.warning("placement: HiGHS failed (%s: %s); falling back to CBC", type(e).__name__, e)
            time_limit = max(0.01, time_limit - (time.perf_counter() - t0))
    try:
        return _solve_cbc(prob, time_limit)
    except Exception as e:  # noqa: BLE001
        log.warning("placement: CBC failed (%s: %s); keeping the EPLB warm start for this MILP", type(e).__name__, e)
        return "none", None


def _solve_highs(prob, time_limit: float, node_limit: int | None) -> tuple[str, float | None]:
    import highspy

    solver = _WarmHiGHS(msg=_MILP_LOG, timeLimit=time_limit, threads=1, gapRel=MILP_GAP)
    if node_limit is not None:
        solver.optionsDict["mip_max_nodes"] = int(node_limit)
    # pseudo-costs without strong-branching reliability: ~3× faster here, same answers
    solver.optionsDict["mip_pscost_minreliable"] = 0
    prob.solve(solver)
    h = prob.solverModel
    info = h.getInfo()
    status = h.getModelStatus()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
    if status == highspy.HighsModelStatus.kOptimal:
        return "optimal", bound
    return ("feasible" if has_sol else "none"), bound


def _solve_cbc(prob, time_limit: float) -> tuple[str, float | None]:
    import pulp

    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, warmStart=True, threads=1, gapRel=MILP_GAP)
    prob.solve(solver)
    st = pulp.LpStatus[prob.status]
    if st == "Optimal":  # the caller adds the objective's constant, as for HiGHS
        return "optimal", float(pulp.value(prob.objective)) - float(prob.objective.constant)
    return ("feasible" if prob.sol_status in (1, 2) else "none"), None


def _warm_highs_class():
    import pulp

    class WarmHiGHS(pulp.HiGHS):
        """PuLP's HiGHS with the variables' initial values passed as a starting solution."""

        def callSolver(self, lp):  # noqa: N802 (PuLP's name)
            import highspy

            values = [v.varValue for v in lp.variables()]
            if all(v is not None for v in values):
                sol = highspy.HighsSolution()
                sol.col_value = [float(v) for v in values]
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
            lp.solverModel.run()

        def findSolutionValues(self, lp):  # noqa: N802 (PuLP's name)
            try:
                return super().findSolutionValues(lp)
            except KeyError:  # a status PuLP does not map (e.g. the node limit): keep the incumbent
                import pulp

                values = list(lp.solverModel.getSolution().col_value)
                for var in lp.variables():
                    var.varValue = values[var.index]
                return pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible

    return WarmHiGHS


class _WarmHiGHSProxy:
    _cls = None

    def __call__(self, **kw):
        if _WarmHiGHSProxy._cls is None:
            _WarmHiGHSProxy._cls = _warm_highs_class()
        return _WarmHiGHSProxy._cls(**kw)


_WarmHiGHS = _WarmHiGHSProxy()


# ---- stage 1: experts -> nodes --------------------------------------------------------------


def node_blocks(num_experts: int, num_nodes: int, n_group: int | None) -> np.ndarray | None:
    """Block of each expert for stage 1 (int [E]): routing groups when they divide over the
    nodes, else one block per expert; None when the experts cannot split evenly over nodes."""
    if num_experts % num_nodes:
        return None
    if n_group and n_group > 1 and n_group % num_nodes == 0 and num_experts % n_group == 0:
        return np.arange(num_experts) // (num_experts // n_group)
    return np.arange(num_experts)


def _block_pairs(ids_Tk: np.ndarray, block_E: np.ndarray, num_blocks: int, max_pairs: int) -> tuple[np.ndarray, np.ndarray]:
    """Co-activated block pairs: (pairs [K, 2], tokens choosing both [K]), largest first."""
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


def _node_score(
    ids_Tk: np.ndarray, src_node_T: np.ndarray, node_E: np.ndarray, w_E: np.ndarray, num_nodes: int,
    lam_node: float, lam_copy: float,
) -> float:
    """Exact expected stage-1 cost on the planning tokens: λ_node·max node load + λ_copy·copies."""
    copies = float(node_copies(ids_Tk, src_node_T, node_E))
    load = np.bincount(node_E, weights=w_E, minlength=num_nodes)
    return lam_node * float(load.max()) + lam_copy * copies


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
    """The stage-1 MILP of one layer (module docstring §1-4): blocks onto nodes.

    ``w_B`` load per block (tokens per step), ``size_B`` experts per block, ``pairs_K2`` / ``c_K``
    co-activated block pairs and their tokens per step, ``mig_BN`` linear cost (ms) of block b
    on node v: migration, minus the copies rank locality saves there. Returns (node of each block, status, objective, bound).
    """
    import pulp

    B, N = w_B.size, num_nodes
    per_node = int(size_B.sum()) // N
    prob = pulp.LpProblem("experts_to_nodes", pulp.LpMinimize)
    # 1. variables
    x = [[_var(prob, f"x_{b}_{v}", 0, 1, "Binary") for v in range(N)] for b in range(B)]
    y = [[_var(prob, f"y_{p}_{v}", 0, 1) for v in range(N)] for p in range(len(c_K))]
    z = _var(prob, "z_node", 0, None)
    # 2. warm start: EPLB's node of each block
    for b in range(B):
        for v in range(N):
            x[b][v].setInitialValue(1 if warm_node_B[b] == v else 0)
    for p, (b1, b2) in enumerate(pairs_K2):
        for v in range(N):
            y[p][v].setInitialValue(1 if warm_node_B[b1] == v and warm_node_B[b2] == v else 0)
    z.setInitialValue(float(np.bincount(warm_node_B, weights=w_B, minlength=N).max()))
    # 3. objective: node load, split co-activated pairs (one more inter-node copy), migration
    split = pulp.lpSum(float(c_K[p]) * (1 - pulp.lpSum(y[p])) for p in range(len(c_K)))
    obj = lam_node * z + lam_copy * split
    if mig_BN is not None:
        obj += pulp.lpSum(float(mig_BN[b, v]) * x[b][v] for b in range(B) for v in range(N) if mig_BN[b, v])
    prob += obj
    # 4. constraints
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
    status, bound = _solve_milp(prob, time_limit, node_limit)
    if bound is not None:  # the solver's bound leaves out the objective's constant term
        bound += float(prob.objective.constant)
    if status == "none":
        return warm_node_B.copy(), status, None, bound
    node_B = np.array([int(np.argmax([x[b][v].varValue or 0 for v in range(N)])) for b in range(B)])
    return node_B, status, float(pulp.value(prob.objective)), bound


def _node_swaps(node_LE: np.ndarray, ids_LTk: np.ndarray, src_node_T: np.ndarray, weight_LE: np.ndarray,
                num_nodes: int, inp: PlacementInputs, previous_LP: np.ndarray | None, mig_w: float,
                tscale: float, n_steps: int, time_limit: float, deadline: float) -> dict[str, object]:
    """Stage 1b (:mod:`planner.solve.nodeswap`) on every layer, in place on ``node_LE``: at most
    :data:`SWAP_MAX_TOKENS` planning tokens per layer and a number of rounds from a work budget of
    :data:`SWAP_SHARE` of the time limit (sizes only: reproducible)."""
    L, T, k = ids_LTk.shape
    E, N = node_LE.shape[1], num_nodes
    if E > SWAP_MAX_EXPERTS:  # the gain matrix is E × E
        return {"skipped": f"{E} experts > {SWAP_MAX_EXPERTS}"}
    stride = max(1, math.ceil(T / SWAP_MAX_TOKENS))
    ids_sub, src_sub = ids_LTk[:, ::stride], src_node_T[::stride]
    per_round = round_elements(ids_sub.shape[1], k, E, N)
    max_rounds = max(1, int(SWAP_SHARE * time_limit * SWAP_ELEMENTS_PER_S / per_round / L))
    # ms per step of one inter-node copy per step of an expert-data-parallel group, spread over
    # a node's GPUs (the groups run side by side)
    lam_copy = (2.0 * (1.0 - inp.cost.overlap) * inp.cost.token_bytes * inp.cost.nic.ms_per_byte
                / (inp.num_gpus // N))
    out: dict[str, int] = {"swaps": 0, "rounds": 0, "copies_before": 0, "copies_after": 0, "max_rounds": max_rounds}
    for l in range(L):
        mig_EN = None
        if mig_w > 0 and previous_LP is not None and lam_copy > 0:
            prev = _first_node_of_experts(previous_LP[l], inp.slots_per_gpu, inp.num_gpus // N, E)
            ms = inp.cost.expert_bytes * inp.cost.nic.ms_per_byte * mig_w  # per moved expert, per step
            # in sampled copies: a sampled token stands for tscale · stride tokens of one group over
            # the n_steps planning steps, so its copy costs lam_copy · tscale · stride / n_steps ms per step
            mig_EN = (prev[:, None] != np.arange(N)[None, :]) * ms * n_steps / (lam_copy * tscale * stride)
        w = weight_LE[l]
        node_LE[l], info = swap_experts(
            ids_sub[l], src_sub, node_LE[l], w, N,
            max_load=float(np.bincount(node_LE[l], weights=w, minlength=N).max()),
            max_rounds=max_rounds, mig_EN=mig_EN, deadline=deadline,
        )
        for key in ("swaps", "rounds", "copies_before", "copies_after"):
            out[key] += info[key]
    return out


# ---- stage 2 / 3: replicas inside nodes, replicas -> GPUs ----------------------------------


def replicas_in_nodes(weight_LE: np.ndarray, node_LE: np.ndarray, num_nodes: int, slots_per_node: int) -> list[list[np.ndarray]]:
    """Stage 2: water-filling replica counts inside each node.

    Returns ``items[l][v]`` int [slots_per_node] the expert of each replica item of node v (each
    expert of the node once, then the added replicas; an expert's replicas in order).
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


def count_assignments(n_items: int, positions: int, per_position: int) -> int:
    """Distinct ways to put ``n_items`` distinct items on ``positions`` ordered GPUs, ``per_position`` each."""
    return math.factorial(n_items) // (math.factorial(per_position) ** positions)


def _all_assignments(n_items: int, positions: int, per_position: int) -> np.ndarray:
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


# ---- stage 4: the per-node evaluator and local search ---------------------------------------


def _csr(rows_by_item: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverted index item -> (row, column) occurrences of a [rows, K] table of item ids
    (pad = n_items): ``ptr`` [n_items + 1], ``row``, ``col``."""
    r, c = np.nonzero(rows_by_item < n_items)
    it = rows_by_item[r, c]
    order = np.argsort(it, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(it, minlength=n_items))])
    return ptr, r[order], c[order]


class NodeSearch:
    """Exact per-node objective of the module docstring and the swap local search over it.

    Items ``i`` (replica items of this node) sit at positions ``gpos[i]`` (the node's GPUs
    0..g-1, ``S`` items each). Tokens that use the node are kept as weights: *remote* tokens
    (from other nodes: one NIC copy, received at the lowest position they need) and *intra*
    tokens (from GPU ``src`` of this node: one NVLink copy per other position they need). A token
    that needs a single item of the node is a weight on that item (``r1`` [nl, nT], ``i1``
    [nl, g, nT] by source position); tokens needing several items are rows of distinct
    signatures (``rsig`` / ``isig`` [rows, K] item ids padded with ``nl``, their step and weight).
    Traffic is per step (``nT = nS``, exact) or for one mean step (``nT = 1``).
    """

    def __init__(
        self,
        gpos: np.ndarray,
        gpn: int,
        F_iS: np.ndarray,
        tok_iS: np.ndarray,
        r1: np.ndarray,
        rsig: np.ndarray,
        rstep: np.ndarray,
        rw: np.ndarray,
        i1: np.ndarray,
        isig: np.ndarray,
        isrc: np.ndarray,
        istep: np.ndarray,
        iw: np.ndarray,
        xsend_Tg: np.ndarray,
        cost: PlacementCost,
        mig_ig: np.ndarray | None = None,
    ) -> None:
        self.gpos = gpos.astype(np.int64).copy()
        self.g = gpn
        self.nl = gpos.size
        self.F = F_iS  # [nl, nS]
        self.tok = tok_iS
        self.r1, self.rsig, self.rstep, self.rw = r1, rsig, rstep, rw
        self.i1, self.isig, self.isrc, self.istep, self.iw = i1, isig, isrc, istep, iw
        self.i1tot = i1.sum(axis=1)  # [nl, nT]
        self.nT = xsend_Tg.shape[0]
        self.xsend_max = xsend_Tg.max(axis=1) if xsend_Tg.size else np.zeros(self.nT)
        self.cost = cost
        self.k2 = 2.0 * (1.0 - cost.overlap)
        self.mig = mig_ig
        self.rptr, self.rrow, self.rcol = _csr(rsig, self.nl)
        self.iptr, self.irow, self.icol = _csr(isig, self.nl)
        self.cap = np.inf
        self._recompute()

    def drop_intra(self) -> None:
        """Stop modelling NVLink traffic (used when it cannot bind next to the NIC)."""
        self.i1 = np.zeros_like(self.i1)
        self.i1tot = np.zeros_like(self.i1tot)
        self.isig = self.isig[:0]
        self.isrc, self.istep, self.iw = self.isrc[:0], self.istep[:0], self.iw[:0]
        self.iptr, self.irow, self.icol = _csr(self.isig, self.nl)
        self._recompute()

    # -- full evaluation ----------------------------------------------------------------------

    def _state(self, gpos_M: np.ndarray) -> tuple[np.ndarray, ...]:
        """Per-candidate (comp, tok, recv, isend, irecv, rfirst) for positions ``gpos_M`` [M, nl]."""
        M, g, nT = gpos_M.shape[0], self.g, self.nT
        onehot = np.zeros((M, self.nl, g))
        onehot[np.arange(M)[:, None], np.arange(self.nl)[None, :], gpos_M] = 1.0
        comp = np.einsum("mig,is->msg", onehot, self.F)
        tok = np.einsum("mig,is->msg", onehot, self.tok)
        recv = np.einsum("mig,it->mtg", onehot, self.r1)
        ext = np.concatenate([gpos_M, np.full((M, 1), g)], axis=1)  # pad -> g
        rfirst = np.zeros((M, 0), dtype=np.int64)
        if self.rsig.size:
            rfirst = ext[:, self.rsig].min(axis=2)  # [M, rows]
            key = (np.arange(M)[:, None] * nT + self.rstep[None, :]) * g + rfirst
            recv += np.bincount(key.ravel(), weights=np.tile(self.rw, M), minlength=M * nT * g).reshape(M, nT, g)
        # intra singles: item i at p, tokens from src: a copy src -> p when src != p
        isend = self.i1.sum(axis=0).T[None] - np.einsum("mis,ist->mts", onehot, self.i1)
        irecv = np.einsum("mig,it->mtg", onehot, self.i1tot) - np.einsum("mig,igt->mtg", onehot, self.i1)
        if self.isig.size:
            pos = ext[:, self.isig]  # [M, rows, K]
            seg = (np.arange(M)[:, None] * nT + self.istep[None, :]).ravel()
            snd, rcv = self._intra(pos.reshape(-1, pos.shape[2]), np.tile(self.isrc, M), np.tile(self.iw, M), seg, M * nT)
            isend += snd.reshape(M, nT, g)
            irecv += rcv.reshape(M, nT, g)
        return comp, tok, recv, isend, irecv, rfirst

    def _intra(self, pos: np.ndarray, src: np.ndarray, w: np.ndarray, seg: np.ndarray, nseg: int):
        """NVLink copies sent / received per (segment, position) by rows at positions ``pos``."""
        g = self.g
        sp = np.sort(pos, axis=1)
        valid = (sp < g) & (sp != src[:, None])
        valid[:, 1:] &= sp[:, 1:] != sp[:, :-1]
        send = np.bincount(seg * g + src, weights=w * valid.sum(axis=1), minlength=nseg * g)
        r_rows, r_cols = np.nonzero(valid)
        recv = np.bincount(seg[r_rows] * g + sp[r_rows, r_cols], weights=w[r_rows], minlength=nseg * g)
        return send, recv

    def _objective(self, comp, tok, recv, isend, irecv, mig) -> tuple[np.ndarray, np.ndarray]:
        """(objective [M], balance [M]) from per-candidate arrays."""
        c = self.cost
        compute = comp.max(axis=2).mean(axis=1)
        w_nic = np.maximum(recv.max(axis=2), self.xsend_max[None, :]) * c.token_bytes
        t_nic = np.where(w_nic > 1e-9, c.nic.alpha_ms + w_nic * c.nic.ms_per_byte, 0.0)
        w_nvl = np.maximum(isend.max(axis=2), irecv.max(axis=2)) * c.token_bytes
        t_nvl = np.where(w_nvl > 1e-9, c.nvlink.alpha_ms + w_nvl * c.nvlink.ms_per_byte, 0.0)
        comm = self.k2 * np.maximum(t_nic, t_nvl).mean(axis=1)
        return compute + comm + mig, tok.mean(axis=1).max(axis=1)

    def link_ms(self) -> tuple[float, float]:
        """Mean (t_nvlink, t_nic) of the current state, ms."""
        c = self.cost
        w_nic = np.maximum(self.recv.max(axis=1), self.xsend_max) * c.token_bytes
        w_nvl = np.maximum(self.isend.max(axis=1), self.irecv.max(axis=1)) * c.token_bytes
        return float((w_nvl * c.nvlink.ms_per_byte).mean()), float((w_nic * c.nic.ms_per_byte).mean())

    def _mig_total(self, gpos_M: np.ndarray) -> np.ndarray:
        if self.mig is None:
            return np.zeros(len(gpos_M))
        return self.mig[np.arange(self.nl)[None, :], gpos_M].sum(axis=1)

    def evaluate(self, gpos_M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        comp, tok, recv, isend, irecv, _ = self._state(gpos_M)
        return self._objective(comp, tok, recv, isend, irecv, self._mig_total(gpos_M))

    def _recompute(self) -> None:
        comp, tok, recv, isend, irecv, rfirst = self._state(self.gpos[None, :])
        self.comp, self.tokl, self.recv, self.isend, self.irecv = comp[0], tok[0], recv[0], isend[0], irecv[0]
        self.rfirst = rfirst[0]
        self._rows_cache = None
        val, bal = self._objective(comp, tok, recv, isend, irecv, self._mig_total(self.gpos[None, :]))
        self.value, self.balance = float(val[0]), float(bal[0])

    # -- swap tables -----------------------------------------------------------------------------
    #
    # Swapping a (at p*) with b (at p_b) is two moves, a -> p_b and b -> p*. For a move of item i
    # to position q, the change of every traffic vector is tabulated from the rows holding i
    # ("others" = the row's other items, where they are now); the rows holding both a and b get a
    # correction (a swap inside a row leaves its set of positions unchanged).

    def _entries(self, ptr: np.ndarray, rr: np.ndarray, cc: np.ndarray, items: np.ndarray):
        """(row, column, index into ``items``) of every occurrence of ``items`` in the rows."""
        lens = ptr[items + 1] - ptr[items]
        seg = np.repeat(np.arange(items.size), lens)
        starts = np.repeat(ptr[items], lens)
        off = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
        return rr[starts + off], cc[starts + off], seg

    def _row_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Cached for the current positions: ``mex`` [remote rows, K] the lowest position of a
        row's other items (without the item in that column), ``cnt`` [intra rows, g] items of a
        row per position."""
        if self._rows_cache is None:
            g = self.g
            ext = np.append(self.gpos, g)
            mex = np.zeros((0, self.rsig.shape[1]), dtype=np.int64)
            if self.rsig.size:
                pos = ext[self.rsig]
                rmin = self.rfirst[:, None]
                cnt_min = (pos == rmin).sum(axis=1, keepdims=True)
                second = np.where(pos > rmin, pos, g).min(axis=1, keepdims=True)
                mex = np.where((pos == rmin) & (cnt_min == 1), second, rmin)
            cnt = np.zeros((0, g))
            if self.isig.size:
                pos = ext[self.isig]
                ni, K = pos.shape
                cnt = np.bincount((np.arange(ni)[:, None] * (g + 1) + pos).ravel(), minlength=ni * (g + 1))
                cnt = cnt.reshape(ni, g + 1)[:, :g].astype(np.float64)
            self._rows_cache = (mex, cnt)
        return self._rows_cache

    def _swap_tables(self, pstar: int, A: np.ndarray, B: np.ndarray):
        """Traffic after every swap (a in A at p*, b in B elsewhere): arrays [|A|, |B|, nT, g]."""
        g, nT, nl = self.g, self.nT, self.nl
        nA, nB = A.size, B.size
        posB = self.gpos[B]
        idxB = np.full(nl, -1)
        idxB[B] = np.arange(nB)
        inA = np.zeros(nl + 1, dtype=bool)
        inA[A] = True
        q_all = np.arange(g)

        # remote rows: received at the lowest position a row needs
        DRA = np.zeros((nA, g, nT, g))  # a -> q
        DRB = np.zeros((nB, nT, g))  # b -> p*
        CR = np.zeros((nA, nB, nT, g))
        # singles
        r1A, r1B = self.r1[A], self.r1[B]
        DRA[:, :, :, pstar] -= r1A[:, None, :]
        for q in range(g):
            DRA[:, q, :, q] += r1A
        DRA[:, pstar] = 0.0
        DRB[np.arange(nB), :, posB] -= r1B
        DRB[:, :, pstar] += r1B
        mex, cnt = self._row_stats()
        if self.rsig.size:
            rmin = self.rfirst
            w, t = self.rw, self.rstep
            # a -> q for every q
            r, c, ai = self._entries(self.rptr, self.rrow, self.rcol, A)
            if r.size:
                nf = np.minimum(mex[r, c][:, None], q_all[None, :])  # [n, g]
                base = ((ai[:, None] * g + q_all[None, :]) * nT + t[r][:, None]) * g
                ww = np.repeat(w[r][:, None], g, axis=1)
                d = np.bincount((base + nf).ravel(), weights=ww.ravel(), minlength=nA * g * nT * g)
                d -= np.bincount((base + rmin[r][:, None]).ravel(), weights=ww.ravel(), minlength=nA * g * nT * g)
                DRA += d.reshape(nA, g, nT, g)
                DRA[:, pstar] = 0.0
                # corrections: rows holding a and some b
                rows_k = np.repeat(r, self.rsig.shape[1])
                cols_k = np.tile(np.arange(self.rsig.shape[1]), r.size)
                ai_k = np.repeat(ai, self.rsig.shape[1])
                ca_k = np.repeat(c, self.rsig.shape[1])
                items_k = self.rsig[rows_k, cols_k]
                ok = (items_k < nl) & ~inA[items_k]
                rows_k, cols_k, ai_k, ca_k, items_k = rows_k[ok], cols_k[ok], ai_k[ok], ca_k[ok], items_k[ok]
                if rows_k.size:
                    bi = idxB[items_k]
                    key = ((ai_k * nB + bi) * nT + t[rows_k]) * g
                    wk = w[rows_k]
                    n = nA * nB * nT * g
                    cr = 2.0 * np.bincount(key + rmin[rows_k], weights=wk, minlength=n)
                    cr -= np.bincount(key + mex[rows_k, ca_k], weights=wk, minlength=n)
                    cr -= np.bincount(key + mex[rows_k, cols_k], weights=wk, minlength=n)
                    CR += cr.reshape(nA, nB, nT, g)
            # b -> p* for every b
            r, c, bi = self._entries(self.rptr, self.rrow, self.rcol, B)
            if r.size:
                nf = np.minimum(mex[r, c], pstar)
                key = (bi * nT + t[r]) * g
                d = np.bincount(key + nf, weights=w[r], minlength=nB * nT * g)
                d -= np.bincount(key + rmin[r], weights=w[r], minlength=nB * nT * g)
                DRB += d.reshape(nB, nT, g)

        # intra rows (NVLink): one copy per distinct other position
        DSA = np.zeros((nA, g, nT, g))
        DVA = np.zeros((nA, g, nT, g))
        DSB = np.zeros((nB, nT, g))
        DVB = np.zeros((nB, nT, g))
        CS = np.zeros((nA, nB, nT, g))
        CV = np.zeros((nA, nB, nT, g))
        if self.i1tot.any():
            i1, tot = self.i1, self.i1tot  # [nl, g(src), nT], [nl, nT]
            for q in range(g):
                if q == pstar:
                    continue
                DSA[:, q, :, pstar] += i1[A, pstar]
                DSA[:, q, :, q] -= i1[A, q]
                DVA[:, q, :, pstar] -= tot[A] - i1[A, pstar]
                DVA[:, q, :, q] += tot[A] - i1[A, q]
            ar = np.arange(nB)
            DSB[ar, :, posB] += i1[B, posB]
            DSB[:, :, pstar] -= i1[B, pstar]
            DVB[ar, :, posB] -= tot[B] - i1[B, posB]
            DVB[:, :, pstar] += tot[B] - i1[B, pstar]
        if self.isig.size:
            w, t, src = self.iw, self.istep, self.isrc
            r, c, ai = self._entries(self.iptr, self.irow, self.icol, A)
            if r.size:
                removed = (cnt[r, pstar] == 1) & (src[r] != pstar)  # p* leaves the row's set
                added = (cnt[r] == 0) & (q_all[None, :] != src[r][:, None])  # [n, g]: q joins
                added[:, pstar] = False
                n = nA * g * nT * g
                base = ((ai[:, None] * g + q_all[None, :]) * nT + t[r][:, None]) * g  # [n, g]
                wr = w[r][:, None] * np.ones((1, g))
                rem_w = (removed[:, None] * wr).ravel()
                DSA += (np.bincount((base + src[r][:, None]).ravel(), weights=added.ravel() * wr.ravel() - rem_w,
                                    minlength=n)).reshape(nA, g, nT, g)
                DVA += (np.bincount((base + q_all[None, :]).ravel(), weights=(added * wr).ravel(), minlength=n)
                        - np.bincount((base + pstar).ravel(), weights=rem_w, minlength=n)).reshape(nA, g, nT, g)
                DSA[:, pstar] = 0.0
                DVA[:, pstar] = 0.0
                # corrections: rows holding a and some b (the swap keeps the row's positions)
                K = self.isig.shape[1]
                rows_k = np.repeat(r, K)
                cols_k = np.tile(np.arange(K), r.size)
                ai_k = np.repeat(ai, K)
                items_k = self.isig[rows_k, cols_k]
                ok = (items_k < nl) & ~inA[items_k]
                rows_k, ai_k, items_k = rows_k[ok], ai_k[ok], items_k[ok]
                if rows_k.size:
                    bi = idxB[items_k]
                    pbk = self.gpos[items_k]
                    sk = src[rows_k]
                    wk = w[rows_k]
                    rem_a = ((cnt[rows_k, pstar] == 1) & (sk != pstar)) * wk
                    rem_b = ((cnt[rows_k, pbk] == 1) & (sk != pbk)) * wk
                    key = ((ai_k * nB + bi) * nT + t[rows_k]) * g
                    n = nA * nB * nT * g
                    CS += np.bincount(key + sk, weights=rem_a + rem_b, minlength=n).reshape(nA, nB, nT, g)
                    CV += (np.bincount(key + pstar, weights=rem_a, minlength=n)
                           + np.bincount(key + pbk, weights=rem_b, minlength=n)).reshape(nA, nB, nT, g)
            r, c, bi = self._entries(self.iptr, self.irow, self.icol, B)
            if r.size:
                pb_r = self.gpos[B][bi]
                removed = (cnt[r, pb_r] == 1) & (src[r] != pb_r)
                added = (cnt[r, pstar] == 0) & (src[r] != pstar)
                key = (bi * nT + t[r]) * g
                n = nB * nT * g
                DSB += (np.bincount(key + src[r], weights=(added.astype(float) - removed) * w[r], minlength=n)).reshape(nB, nT, g)
                DVB += (np.bincount(key + pstar, weights=added * w[r], minlength=n)
                        - np.bincount(key + pb_r, weights=removed * w[r], minlength=n)).reshape(nB, nT, g)
        recv = self.recv[None, None] + DRA[:, posB] + DRB[None] + CR
        isend = self.isend[None, None] + DSA[:, posB] + DSB[None] + CS
        irecv = self.irecv[None, None] + DVA[:, posB] + DVB[None] + CV
        return recv, isend, irecv

    def _swap_eval(self, pstar: int) -> tuple[float, int, int]:
        """Best feasible swap between an item on p* and an item elsewhere: (value, a, b)."""
        A = np.nonzero(self.gpos == pstar)[0]
        B = np.nonzero(self.gpos != pstar)[0]
        if A.size == 0 or B.size == 0:
            return np.inf, -1, -1
        nA, nB = A.size, B.size
        posB = self.gpos[B]
        recv, isend, irecv = self._swap_tables(pstar, A, B)
        M = nA * nB
        comp = np.repeat(self.comp[None], M, axis=0).reshape(nA, nB, *self.comp.shape)
        tok = np.repeat(self.tokl[None], M, axis=0).reshape(nA, nB, *self.tokl.shape)
        ia = np.repeat(np.arange(nA), nB)
        ib = np.tile(np.arange(nB), nA)
        dF = self.F[B][ib] - self.F[A][ia]  # [M, nS]
        dT = self.tok[B][ib] - self.tok[A][ia]
        comp = comp.reshape(M, *self.comp.shape)
        tok = tok.reshape(M, *self.tokl.shape)
        ar = np.arange(M)
        comp[ar, :, pstar] += dF
        comp[ar, :, posB[ib]] -= dF
        tok[ar, :, pstar] += dT
        tok[ar, :, posB[ib]] -= dT
        if self.mig is not None:
            a_, b_ = A[ia], B[ib]
            mig = (self.mig[np.arange(self.nl), self.gpos].sum() + self.mig[a_, posB[ib]] + self.mig[b_, pstar]
                   - self.mig[a_, pstar] - self.mig[b_, posB[ib]])
        else:
            mig = np.zeros(M)
        val, bal = self._objective(comp, tok, recv.reshape(M, self.nT, self.g), isend.reshape(M, self.nT, self.g),
                                   irecv.reshape(M, self.nT, self.g), mig)
        val = self._feasible(val, bal)
        j = int(np.argmin(val))
        jj = (j // nB, j % nB)
        self._pending = (comp[j], tok[j], recv[jj], isend[jj], irecv[jj], float(val[j]), float(bal[j]))
        return float(val[j]), int(A[ia[j]]), int(B[ib[j]])

    def _apply_swap(self, a: int, b: int) -> None:
        """Take the swap the last :meth:`_swap_eval` found best (its arrays are kept)."""
        self.gpos[a], self.gpos[b] = self.gpos[b], self.gpos[a]
        self.comp, self.tokl, self.recv, self.isend, self.irecv, self.value, self.balance = (
            x.copy() if isinstance(x, np.ndarray) else x for x in self._pending
        )
        if self.rsig.size:
            self.rfirst = np.append(self.gpos, self.g)[self.rsig].min(axis=1)
        self._rows_cache = None

    # -- search -------------------------------------------------------------------------------

    def _feasible(self, val: np.ndarray, bal: np.ndarray) -> np.ndarray:
        return np.where(bal <= self.cap * (1 + 1e-12) + 1e-9, val, np.inf)

    def _improves(self, val: float, rel: float = 1e-12) -> bool:
        return val < self.value - rel * max(1e-12, abs(self.value))

    def exhaustive(self, all_gpos: np.ndarray, chunk: int = 512, guard: bool = True) -> None:
        """Score every assignment in ``all_gpos`` [M, nl] and keep the best (within the balance
        cap when ``guard``)."""
        best_val, best = (self.value if guard or self.balance <= self.cap else np.inf), None
        for c0 in range(0, len(all_gpos), chunk):
            val, bal = self.evaluate(all_gpos[c0:c0 + chunk])
            if guard:
                val = self._feasible(val, bal)
            j = int(np.argmin(val))
            if val[j] < best_val - 1e-12 * max(1.0, abs(best_val)):
                best_val, best = float(val[j]), all_gpos[c0 + j]
        if best is not None:
            self.gpos = best.copy()
            self._recompute()

    def position_pass(self) -> bool:
        """Try every swap of two positions' whole slot sets; take the best if it improves."""
        g = self.g
        if g < 2:
            return False
        pairs = list(itertools.combinations(range(g), 2))
        cand = np.repeat(self.gpos[None], len(pairs), axis=0)
        for m, (p, q) in enumerate(pairs):
            row = cand[m]
            mp, mq = row == p, row == q
            row[mp], row[mq] = q, p
        val = self._feasible(*self.evaluate(cand))
        j = int(np.argmin(val))
        if self._improves(float(val[j])):
            self.gpos = cand[j]
            self._recompute()
            return True
        return False

    def _position_order(self) -> list[int]:
        """GPUs by how much they cost now (largest NIC receive / compute / NVLink first)."""
        c = self.cost
        nic = self.recv.mean(axis=0) * c.token_bytes * c.nic.ms_per_byte
        nvl = np.maximum(self.isend, self.irecv).mean(axis=0) * c.token_bytes * c.nvlink.ms_per_byte
        score = self.comp.mean(axis=0) + self.k2 * np.maximum(nic, nvl)
        return [int(p) for p in np.argsort(-score, kind="stable")]

    def full_elements(self) -> int:
        """Array elements one full evaluation of a candidate touches."""
        return int(self.rsig.size + 4 * self.isig.size + self.nl * self.g * (self.F.shape[1] + 3 * self.nT) + 100)

    def eval_elements(self) -> int:
        """Array elements one neighbourhood evaluation touches (the work estimate)."""
        per_pos = self.nl // self.g
        rows = 3 * self.rsig.size + 10 * self.isig.size  # intra rows sort and scatter more
        return int(rows + per_pos * (self.nl - per_pos) * (self.F.shape[1] + 3 * self.nT) * self.g + 1000)

    def eval_budget(self, seconds: float) -> int:
        """Neighbourhood evaluations that fit in ``seconds`` at :data:`ELEMENTS_PER_S`."""
        return int(np.clip(seconds * ELEMENTS_PER_S / self.eval_elements(), 4, 400))

    def run(self, max_evals: int, deadline: float) -> int:
        """Best-improvement swap search: for the costliest GPU first, every swap of one of its
        items with an item elsewhere; take the best improving swap, else try the next GPU; when
        no GPU has one, try swapping whole GPUs. Deterministic; returns accepted moves."""
        if self.nl < 2 or self.g < 2:
            return 0
        accepted = 0
        evals = 0
        self.evals = 0
        self.position_pass()
        while evals < max_evals and time.perf_counter() < deadline:
            moved = False
            for pstar in self._position_order():
                if evals >= max_evals or time.perf_counter() > deadline:
                    break
                evals += 1
                val, a, b = self._swap_eval(pstar)
                if self._improves(val, MIN_GAIN):
                    self._apply_swap(a, b)
                    accepted += 1
                    if accepted % 16 == 0:  # refresh from scratch now and then (rounding drift)
                        self._recompute()
                    moved = True
                    break
            if not moved:
                evals += 1
                if not self.position_pass():
                    break
        self.evals = evals
        return accepted


# ---- building the per-node problems of a layer ----------------------------------------------


@dataclass
class _Layer:
    """Items of one layer: expert, node and GPU of each replica item, and the pairs' items."""

    item_exp: np.ndarray  # [P]
    item_node: np.ndarray  # [P]
    item_gpu: np.ndarray  # [P] global GPU
    item_Tk: np.ndarray  # [T, k] item serving each (token, choice)


def _layer_items(items_by_node: list[np.ndarray], gpu_of_item: list[np.ndarray], ids_Tk: np.ndarray,
                 tok_index_T: np.ndarray, num_experts: int) -> _Layer:
    """Replica items of a layer and which item serves each pair under even dispatch.

    ``items_by_node[v]`` experts of node v's items; ``gpu_of_item[v]`` their global GPUs. Replica
    ``j`` of expert ``e`` is its ``j``-th item (in node order); pair (t, c) goes to replica
    ``(tok_index_t · k + c) mod r_e``.
    """
    item_exp = np.concatenate(items_by_node)
    item_gpu = np.concatenate(gpu_of_item)
    item_node = np.concatenate([np.full(len(x), v) for v, x in enumerate(items_by_node)])
    cnt = np.bincount(item_exp, minlength=num_experts)
    order = np.argsort(item_exp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    k = ids_Tk.shape[1]
    rep = (tok_index_T[:, None].astype(np.int64) * k + np.arange(k)[None, :]) % cnt[ids_Tk]
    item_Tk = order[starts[ids_Tk] + rep]
    return _Layer(item_exp, item_node, item_gpu, item_Tk)


def _unique_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of a non-negative int table and their counts (rows in lexicographic order)."""
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


def build_node_search(
    lay: _Layer, v: int, inp: PlacementInputs, step_T: np.ndarray, src_T: np.ndarray, n_steps: int,
    tok_SP: np.ndarray, F_SP: np.ndarray, xsend_SG: np.ndarray, exact: bool | None,
    mig_P_g: np.ndarray | None, balance_tolerance: float, row_scale: float = 1.0, keep_nvlink: bool = False,
) -> tuple[NodeSearch, np.ndarray]:
    """The :class:`NodeSearch` of node ``v`` and the (layer) item ids of its items.

    ``tok_SP`` / ``F_SP`` tokens and compute ms of every item per step, ``xsend_SG`` the
    inter-node copies each GPU sends (and, under same-rank relay, receives) per step, which the
    search cannot change; ``row_scale`` tokens each planning token stands for.
    ``exact``: score traffic step by step (None: when the node's tokens are few);
    ``keep_nvlink``: never drop the NVLink terms (exact mode).
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
    ru, rc = _unique_rows(np.concatenate([st[multi][mr][:, None], sorted_li[mr]], axis=1))
    iu, ic = _unique_rows(np.concatenate([st[multi][mi][:, None], src_pos[multi][mi][:, None], sorted_li[mi]], axis=1))
    empty_sig = np.zeros((0, K), dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    xs = xsend_SG[:, v * gpn:(v + 1) * gpn]
    if not exact:
        xs = xs.mean(axis=0, keepdims=True)
    ns = NodeSearch(
        gpos=lay.item_gpu[items] - v * gpn, gpn=gpn,
        F_iS=F_SP[:, items].T.copy(), tok_iS=tok_SP[:, items].T.copy(),
        r1=r1, rsig=ru[:, 1:] if ru.size else empty_sig, rstep=ru[:, 0] if ru.size else empty, rw=rc * scale,
        i1=i1, isig=iu[:, 2:] if iu.size else empty_sig, isrc=iu[:, 1] if iu.size else empty,
        istep=iu[:, 0] if iu.size else empty, iw=ic * scale,
        xsend_Tg=xs, cost=inp.cost, mig_ig=None if mig_P_g is None else mig_P_g[items],
    )
    t_nvl, t_nic = ns.link_ms()  # bandwidth parts, ms
    if (ns.isig.size or ns.i1tot.any()) and not keep_nvlink:
        # skip NVLink bookkeeping where it cannot matter: far below the NIC (which then binds),
        # or its bandwidth part a few % of the compute (its latency does not depend on placement)
        if (inp.num_nodes > 1 and t_nvl < 0.25 * t_nic) or ns.k2 * t_nvl < 0.05 * float(ns.comp.max(axis=1).mean()):
            ns.drop_intra()
    ns.cap = ns.balance * (1.0 + balance_tolerance)
    return ns, items


# ---- lower bound ---------------------------------------------------------------------------


def lower_bound(inp: PlacementInputs) -> float:
    """Placement-independent lower bound on the planning objective (module docstring §6)."""
    c = inp.cost
    L, E, G, S = inp.num_layers, inp.num_experts, inp.num_gpus, inp.slots_per_gpu
    n_steps = inp.num_steps
    k = inp.ids_LTk.shape[2]
    group_T = np.zeros(inp.ids_LTk.shape[1], dtype=np.int64) if inp.group_T is None else inp.group_T
    f1 = float(np.asarray(c.ffn_ms(np.array([1.0])))[0])
    need = max(0, math.ceil(k / S) - 1)  # copies every token needs: k experts do not fit in S slots
    per_group_SL = []
    for grp in range(int(group_T.max()) + 1):
        m = group_T == grp
        step = inp.step_T[m].astype(np.int64)
        ids = inp.ids_LTk[:, m].astype(np.int64)
        flat = ((step[None, :, None] * L + np.arange(L)[:, None, None]) * E + ids).ravel()
        n_SLE = np.bincount(flat, minlength=n_steps * L * E).reshape(n_steps, L, E).astype(np.float64)
        top = max(1.0, float(n_SLE.max()))
        grid = np.unique(np.concatenate([np.geomspace(1.0, top, 256), [top]]))
        c_min = float((np.asarray(c.ffn_ms(grid), dtype=np.float64) / grid).min())
        h = np.where(n_SLE > 0, np.maximum(f1, c_min * n_SLE), 0.0)
        lb_SL = h.sum(axis=2) / G
        if need and G > 1:
            per_gpu = np.bincount(step * G + inp.src_T[m].astype(np.int64), minlength=n_steps * G).reshape(n_steps, G)
            worst = per_gpu.max(axis=1) * need * c.token_bytes
            t = np.where(worst > 0, c.nvlink.alpha_ms + worst * min(c.nvlink.ms_per_byte, c.nic.ms_per_byte), 0.0)
            lb_SL = lb_SL + 2.0 * (1.0 - c.overlap) * t[:, None]
        per_group_SL.append(lb_SL)
    return float(np.max(per_group_SL, axis=0).sum(axis=1).mean())


# ---- migration -----------------------------------------------------------------------------


def migration_ms(phy2log_LP: np.ndarray, previous_LP: np.ndarray, inp: PlacementInputs, weight: float) -> float:
    """Amortised migration penalty (ms per step) of moving from ``previous_LP`` to ``phy2log_LP``."""
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


def _mig_item_cost(item_exp: np.ndarray, item_node: np.ndarray, prev_LP_row: np.ndarray, inp: PlacementInputs,
                   weight: float) -> np.ndarray:
    """[items, g] migration cost of placing each item on each GPU position of its node."""
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


# ---- the solver -------------------------------------------------------------------------------


def _phy2log_from_items(item_exp: np.ndarray, item_gpu: np.ndarray, num_gpus: int, slots: int) -> np.ndarray:
    """Row of phy2log: items of GPU u fill slots [u·S, (u+1)·S), in item order."""
    order = np.argsort(item_gpu, kind="stable")
    row = item_exp[order]
    assert np.array_equal(np.bincount(item_gpu, minlength=num_gpus), np.full(num_gpus, slots)), "equal slots per GPU"
    return row.astype(np.int64)


def keep_slots(row_P: np.ndarray, prev_P: np.ndarray, slots: int) -> np.ndarray:
    """Reorder the slots inside each GPU so that an expert that stays on a GPU keeps its
    previous slot index (the order inside a GPU changes nothing else; fewer weight copies)."""
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


def _first_node_of_experts(phy2log_P: np.ndarray, slots: int, gpn: int, num_experts: int) -> np.ndarray:
    """Node of each expert's first slot: int [E] (-1 for an expert with no slot)."""
    node = np.full(num_experts, -1, dtype=np.int64)
    p = np.arange(phy2log_P.size)[::-1]
    node[phy2log_P[::-1]] = (p // slots) // gpn
    return node


def solve_placement(
    inp: PlacementInputs,
    *,
    time_limit: float = 60.0,
    seed: int = 0,
    previous_LP: np.ndarray | None = None,
    migration_weight: float = 0.0,
    evaluate: Callable[[np.ndarray], float] | None = None,
    extra_candidates: dict[str, np.ndarray] | None = None,
    balance_tolerance: float = 0.02,
    search_evals: int | None = None,
) -> PlacementResult:
    """Place experts for ``inp`` (module docstring); returns within ``time_limit`` seconds.

    ``evaluate(phy2log_LP) -> ms per step`` scores a placement on the planning steps (default:
    :func:`planning_objective`, the simulator on ``inp``'s tokens); ``extra_candidates`` are
    further placements to compare (e.g. contiguous). ``previous_LP`` [L, P] with
    ``migration_weight`` > 0 adds the migration penalty. ``search_evals`` bounds the local
    search per node (swap neighbourhoods scored; default: :func:`search_seconds` of estimated
    work, converted to a count from the problem's sizes — never from a clock, so the result is
    reproducible). ``seed`` is accepted for interface stability: every stage is deterministic.
    """
    if not time_limit > 0:
        raise InputError(f"time_limit must be > 0 seconds (got {time_limit})")
    clock = _Clock(time_limit)
    L, E, G, S = inp.num_layers, inp.num_experts, inp.num_gpus, inp.slots_per_gpu
    P = inp.num_physical
    check_problem(E, P, G, inp.gpus_per_node)
    N = _nodes_of(G, inp.gpus_per_node)
    gpn = G // N
    if previous_LP is not None:
        previous_LP = np.asarray(previous_LP, dtype=np.int64)
        if previous_LP.shape != (L, P):
            raise InputError(
                f"previous placement has shape {tuple(previous_LP.shape)}, this problem needs "
                f"[layers, slots] = [{L}, {P}]"
            )
        if previous_LP.min() < 0 or previous_LP.max() >= E:
            raise InputError(f"previous placement holds expert ids outside [0, {E})")
    mig_w = float(migration_weight) if previous_LP is not None else 0.0
    if mig_w < 0:
        raise InputError(f"migration_weight must be >= 0 (got {migration_weight})")
    if evaluate is None:
        evaluate = _default_evaluator(inp)
    reserve = _reserve_s(inp, time_limit)
    deadline = clock.t0 + time_limit - reserve
    stages: dict[str, object] = {"nodes": N, "gpus_per_node": gpn}

    n_steps = inp.num_steps
    groups = inp.token_groups
    weight_LE = inp.counts_LE() / n_steps  # tokens per step
    warm = eplb_warm_start(weight_LE, inp)
    # tokens for the search (an evenly strided subsample when there are many)
    T = inp.ids_LTk.shape[1]
    stride = max(1, math.ceil(T / SEARCH_MAX_TOKENS))
    sel = np.arange(0, T, stride)
    ids_LTk = inp.ids_LTk[:, sel].astype(np.int64)
    step_T = inp.step_T[sel].astype(np.int64)
    src_T = inp.src_T[sel].astype(np.int64)
    tok_index_T = inp.tok_index_T[sel].astype(np.int64)
    tscale = float(stride) / groups  # one kept token stands for `stride` tokens, split over groups

    # ---- stage 1: experts -> nodes (blocks: groups or experts), MILP per layer
    blocks = node_blocks(E, N, inp.n_group) if N > 1 else None
    use_nodes = N > 1 and blocks is not None and P % N == 0 and P // N >= E // N
    s1: dict[str, object] = {"layers_solved": 0, "optimal": 0, "kept_eplb": 0}
    node_LE = np.zeros((L, E), dtype=np.int64)
    if use_nodes:
        assert blocks is not None
        nB = int(blocks.max()) + 1
        size_B = np.bincount(blocks, minlength=nB)
        s1["blocks"] = "groups" if nB < E else "experts"
        _c0, c1 = curve_slope(inp.cost, weight_LE.sum(1).mean() / P / groups)
        lam_node = c1 / gpn / groups
        # one more inter-node copy in a group's step (the counts below are per group: groups run
        # side by side on their own GPUs and NICs)
        lam_copy = 2.0 * (1.0 - inp.cost.overlap) * inp.cost.token_bytes * inp.cost.nic.ms_per_byte / gpn
        src_node_T = src_T // gpn
        budget1 = 0.15 * time_limit
        milp_vars = 0
        for l in range(L):
            w_B = np.bincount(blocks, weights=weight_LE[l], minlength=nB)
            warm_node_E = _first_node_of_experts(warm[l], S, gpn, E)
            # EPLB's node of each block (the node holding most of its experts)
            vote = np.zeros((nB, N))
            np.add.at(vote, (blocks, warm_node_E), 1.0)
            warm_B = np.argmax(vote, axis=1)
            aligned = bool((warm_node_E == warm_B[blocks]).all()) and bool(
                (np.bincount(warm_B, weights=size_B, minlength=N) == E // N).all()
            )
            if not aligned:  # EPLB split blocks: start from an equal-count packing of whole blocks
                pk, _ = baselines.balanced_packing(w_B[None, :], N)
                warm_B = pk[0]
            node_LE[l] = warm_B[blocks]
            # rank locality: a token from node v that picks block b needs no inter-node copy for
            # it when b is on v, so placing b on v saves λ_copy · A_bv (tokens per step)
            A_BN = block_sources(ids_LTk[l], blocks, nB, src_node_T, N) * tscale / n_steps
            local = bool(np.ptp(A_BN, axis=1).max() > LOCALITY_MIN * max(A_BN.max(), 1e-12))
            if nB == N and mig_w <= 0 and not local:
                # one block per node, sources spread evenly: every bijection has the same node
                # loads, copies and (no) shared pairs, so EPLB's (or the packing's) assignment is optimal
                s1["layers_solved"] = int(s1["layers_solved"]) + 1
                s1["optimal"] = int(s1["optimal"]) + 1
                continue
            pairs, cnt = _block_pairs(ids_LTk[l], blocks, nB, max_pairs=4 * nB)
            size = (nB + len(cnt)) * N  # MILP variables: decided by sizes only (reproducible)
            if nB == E or size > STAGE1_MAX_VARS or milp_vars + size > STAGE1_TOTAL_VARS:
                s1["skipped"] = int(s1.get("skipped", 0)) + 1
                continue
            if clock.elapsed() > budget1 or time.perf_counter() > deadline:  # safety stop only
                s1["time_limited"] = True
                continue
            milp_vars += size
            cnt = cnt * tscale / n_steps
            mig = None
            if mig_w > 0:
                assert previous_LP is not None
                prev_node_E = _first_node_of_experts(previous_LP[l], S, gpn, E)
                mig = np.zeros((nB, N))
                for v in range(N):
                    moved = np.bincount(blocks, weights=(prev_node_E != v).astype(float), minlength=nB)
                    mig[:, v] = moved * inp.cost.expert_bytes * inp.cost.nic.ms_per_byte * mig_w
            lin = -lam_copy * A_BN if local else None
            if mig is not None:
                lin = mig if lin is None else lin + mig
            per_layer = max(0.05, budget1 - clock.elapsed())
            nb, status, _obj, _bnd = stage1_layer(
                w_B, size_B, pairs, cnt, N, warm_B, lam_node, lam_copy, lin, per_layer,
            )
            s1["layers_solved"] = int(s1["layers_solved"]) + 1
            s1["optimal"] = int(s1["optimal"]) + (status == "optimal")
            # keep the MILP's answer only if it is better on the exact expected copies and loads
            lam_tok = lam_node * n_steps / tscale

            sc_new, sc_old = (
                _node_score(ids_LTk[l], src_node_T, nodes[blocks], weight_LE[l], N, lam_tok, lam_copy)
                + (float(mig[np.arange(nB), nodes].sum()) * n_steps / tscale if mig is not None else 0.0)
                for nodes in (nb, warm_B)
            )
            if sc_new < sc_old:
                node_LE[l] = nb[blocks]
            else:
                s1["kept_eplb"] = int(s1["kept_eplb"]) + 1
    elif N > 1:
        s1["note"] = f"{E} experts or {P} slots do not split evenly over {N} nodes: EPLB's global placement is the start"
    if use_nodes:  # ---- stage 1b: single experts exchanged between nodes (exact copies)
        s1["swaps"] = _node_swaps(node_LE, ids_LTk, src_T // gpn, weight_LE, N, inp, previous_LP,
                                  mig_w, tscale, n_steps, time_limit, deadline)
    s1["time_s"] = round(clock.elapsed(), 3)
    stages["stage1"] = s1
    N_eff = N if use_nodes else 1
    gpn_eff = G // N_eff
    per_node = P // N_eff

    # ---- stage 2 (replicas inside nodes) + stage 3 (LPT onto the node's GPUs)
    item_exp_rows: list[list[np.ndarray]] = []
    item_gpu_rows: list[list[np.ndarray]] = []
    if use_nodes:
        items = replicas_in_nodes(weight_LE, node_LE, N, per_node)
    for l in range(L):
        ex_rows, gpu_rows = [], []
        for v in range(N_eff):
            if use_nodes:
                ex = items[l][v]
                cnt = np.bincount(ex, minlength=E)
                load = weight_LE[l, ex] / cnt[ex]
                pack, _ = baselines.balanced_packing(load[None, :], gpn_eff)
                gpu = v * gpn_eff + pack[0]
            else:  # EPLB's global placement
                ex = warm[l]
                gpu = np.arange(P) // S
            order = np.argsort(gpu, kind="stable")  # replica j of an expert = its j-th slot
            ex_rows.append(ex[order])
            gpu_rows.append(gpu[order])
        item_exp_rows.append(ex_rows)
        item_gpu_rows.append(gpu_rows)

    # ---- stage 3 exhaustive / stage 4 local search, node by node
    exhaustive = count_assignments(per_node, gpn_eff, S) <= EXHAUSTIVE_LIMIT
    instances = L * N_eff
    search_s = search_seconds(instances, time_limit)
    sinfo: dict[str, object] = {"exhaustive": exhaustive, "accepted": 0, "instances": 0, "evals": 0,
                                "search_budget_s": round(search_s, 2), "stopped_by_time": False}
    # the per-node objective is the simulator's layer time exactly in this setting
    exact_setting = (N_eff == 1 and P == E and groups == 1 and stride == 1 and inp.dispatch == "even"
                     and not mig_w)
    new = np.empty((L, P), dtype=np.int64)
    inp_eff = _with_nodes(inp, gpn_eff)
    accepted = 0
    for l in range(L):
        lay = _layer_items(item_exp_rows[l], item_gpu_rows[l], ids_LTk[l], tok_index_T, E)
        # inter-node copies each GPU sends (fixed once the nodes are fixed)
        xfix_SG = np.zeros((n_steps, G))
        if N_eff > 1:
            nd = np.sort((lay.item_gpu // gpn_eff)[lay.item_Tk], axis=1)
            fo = np.ones_like(nd, dtype=bool)
            fo[:, 1:] = nd[:, 1:] != nd[:, :-1]
            copy = fo & (nd != (src_T // gpn_eff)[:, None])  # one NIC copy per distinct remote node
            xfix_SG = np.bincount(step_T * G + src_T, weights=copy.sum(axis=1) * tscale,
                                  minlength=n_steps * G).reshape(n_steps, G)
            if inp.relay == "same-rank":  # received by the source's local rank there: fixed too
                relay = nd * gpn_eff + (src_T % gpn_eff)[:, None]
                key = (step_T[:, None] * G + relay)[copy]
                xfix_SG = np.maximum(xfix_SG, np.bincount(key, minlength=n_steps * G).reshape(n_steps, G) * tscale)
        # item loads from every planning token (the balance guard must not see sampling noise)
        full_Tk = lay.item_Tk if stride == 1 else _layer_items(
            item_exp_rows[l], item_gpu_rows[l], inp.ids_LTk[l].astype(np.int64), inp.tok_index_T, E
        ).item_Tk
        full_step = inp.step_T.astype(np.int64) if stride > 1 else step_T
        tok_SP = np.bincount((full_step[:, None] * P + full_Tk).ravel(), minlength=n_steps * P).reshape(n_steps, P)
        tok_SP = tok_SP / groups
        F_SP = np.asarray(inp.cost.ffn_ms(tok_SP.reshape(-1)), dtype=np.float64).reshape(n_steps, P)
        mig_P_g = None
        if mig_w > 0:
            assert previous_LP is not None
            mig_P_g = _mig_item_cost(lay.item_exp, lay.item_gpu // gpn_eff, previous_LP[l], inp_eff, mig_w)
        for v in range(N_eff):
            if time.perf_counter() > deadline:
                sinfo["stopped_by_time"] = True
                break
            ns, its = build_node_search(
                lay, v, inp_eff, step_T, src_T, n_steps, tok_SP, F_SP, xfix_SG,
                True if (exhaustive and exact_setting) else None, mig_P_g, balance_tolerance, row_scale=tscale,
                keep_nvlink=exhaustive and exact_setting,
            )
            sinfo["instances"] = int(sinfo["instances"]) + 1
            n_all = count_assignments(ns.nl, ns.g, S)
            if exhaustive and n_all * ns.full_elements() > EXHAUSTIVE_WORK:
                exhaustive = False  # too many rows to score every assignment: search instead
                sinfo["exhaustive"] = False
            if exhaustive:
                ns.exhaustive(_all_assignments(ns.nl, ns.g, S), guard=not exact_setting)
            else:
                budget = search_evals if search_evals is not None else ns.eval_budget(search_s / instances)
                accepted += ns.run(budget, deadline)
                sinfo["evals"] = int(sinfo["evals"]) + ns.evals
            lay.item_gpu[its] = v * gpn_eff + ns.gpos
        new[l] = _phy2log_from_items(lay.item_exp, lay.item_gpu, G, S)
        if previous_LP is not None:
            new[l] = keep_slots(new[l], previous_LP[l], S)
    sinfo["accepted"] = accepted
    sinfo["time_s"] = round(clock.elapsed() - float(s1["time_s"]), 3)
    if time.perf_counter() > deadline:
        sinfo["stopped_by_time"] = True
    stages["search"] = sinfo

    # ---- stage 5 (nearest dispatch): part of each node's redundant slots to other nodes' experts
    if inp.dispatch == "nearest" and use_nodes and P > E and time.perf_counter() < deadline:
        from planner.solve.xnode import cross_node_replicas  # noqa: PLC0415

        # whole planning steps (per-step loads as planned), evenly spaced, about the search's
        # token sample in all
        full_step = inp.step_T.astype(np.int64)
        per_step = max(1, T // n_steps)
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
            flat = (src_node_full[:, None] * E + inp.ids_LTk[l]).ravel()
            w_NLE[:, l] = np.bincount(flat, minlength=N * E).reshape(N, E) / n_steps / groups
        new, xinfo = cross_node_replicas(
            new, ids_LTk, src_T // gpn, w_NLE, N, gpn,
            lambda l, row: simulated_ms(inp, row[None, :], x_ids[l][None], x_step, x_src, x_grp, keep.size),
            deadline,
        )
        stages["cross_node_replicas"] = xinfo

    # ---- score the candidates on the planning objective, keep the best
    placements: dict[str, np.ndarray] = {"placement-ilp": new, "eplb": warm}
    if previous_LP is not None:
        placements["previous"] = previous_LP
    for name, p2l in (extra_candidates or {}).items():
        placements[name] = np.asarray(p2l, dtype=np.int64)
    candidates: dict[str, float] = {}
    slowest = 0.0  # the longest evaluation so far: the next one is started only if it fits
    for name in ["eplb", "placement-ilp"] + [n for n in placements if n not in ("eplb", "placement-ilp")]:
        if candidates and clock.left() < max(1.2 * slowest, 0.0 if name == "placement-ilp" else 0.6 * reserve):
            if name == "placement-ilp":
                sinfo["stopped_by_time"] = True  # not even scored: EPLB's placement is kept
            continue
        t_eval = time.perf_counter()
        candidates[name] = float(evaluate(placements[name])) + migration_ms(placements[name], previous_LP, inp, mig_w)
        slowest = max(slowest, time.perf_counter() - t_eval)
    order = list(placements)
    candidates = {n: candidates[n] for n in order if n in candidates}
    chosen = min(candidates, key=lambda n: (candidates[n], order.index(n)))
    obj = candidates[chosen]
    bound = min(lower_bound(inp), obj)
    optimal = (exhaustive and exact_setting and chosen == "placement-ilp" and not sinfo["stopped_by_time"]
               and int(sinfo["instances"]) == L * N_eff)
    if optimal:
        bound = obj
    gap = max(0.0, (obj - bound) / obj) if obj > 0 else 0.0
    xinfo_stopped = bool(stages.get("cross_node_replicas", {}).get("stopped_by_time"))  # type: ignore[union-attr]
    status = "optimal" if optimal else ("time_limit" if sinfo["stopped_by_time"] or xinfo_stopped else "feasible")
    return PlacementResult(
        phy2log_LP=placements[chosen], objective=obj, bound=bound, gap=gap, status=status,
        time_s=clock.elapsed(), chosen=chosen, candidates=candidates, stages=stages,
    )


def _with_nodes(inp: PlacementInputs, gpn: int) -> PlacementInputs:
    """``inp`` with the node size the search uses (all EP ranks one node when nodes are not used)."""
    if gpn == inp.gpus_per_node:
        return inp
    from dataclasses import replace

    return replace(inp, gpus_per_node=gpn)


def _reserve_s(inp: PlacementInputs, time_limit: float) -> float:
    """Seconds kept for scoring the candidates with the simulator at the end (about 1e-7 s per
    (layer, token, choice) per run on one core, three runs), at most half the limit."""
    pairs = inp.num_layers * inp.ids_LTk.shape[1] * inp.ids_LTk.shape[2]
    return min(0.5 * time_limit, 3 * 1.2e-7 * pairs + 0.05 * time_limit)


def planning_objective(phy2log_LP: np.ndarray, inp: PlacementInputs) -> float:
    """Predicted MoE ms per step of a placement on ``inp``'s planning tokens (the simulator)."""
    return simulated_ms(inp, phy2log_LP, inp.ids_LTk, inp.step_T, inp.src_T, inp.group_T, inp.num_steps)


def simulated_ms(inp: PlacementInputs, phy2log_LP: np.ndarray, ids_LTk: np.ndarray, step_T: np.ndarray,
                 src_T: np.ndarray, group_T: np.ndarray | None, num_steps: int) -> float:
    """Predicted MoE ms per step of ``phy2log_LP`` [L, P] on the given tokens (``ids_LTk`` for the
    same L layers), with ``inp``'s cost model, dispatch and relay (the simulator)."""
    from planner.simulator import combine_groups, simulate_arrays

    group_T = np.zeros(ids_LTk.shape[1], dtype=np.int64) if group_T is None else group_T
    results = []
    for grp in range(int(group_T.max()) + 1):
        m = group_T == grp
        results.append(simulate_arrays(
            phy2log_LP, inp.slots_per_gpu, ids_LTk[:, m], step_T[m], src_T[m],
            ffn_ms=inp.cost.ffn_ms, comm_ms=inp.cost.comm_ms, token_bytes=inp.cost.token_bytes,
            num_experts=inp.num_experts, gpus_per_node=inp.gpus_per_node, dispatch=inp.dispatch,
            num_steps=num_steps, relay=inp.relay,
        ))
    return float(combine_groups(results).step_ms_S.mean())


def _default_evaluator(inp: PlacementInputs) -> Callable[[np.ndarray], float]:
    return lambda p2l: planning_objective(p2l, inp)
