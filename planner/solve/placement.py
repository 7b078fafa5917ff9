"""Expert placement: replica counts and slot-to-GPU assignment that minimise predicted MoE time.

For every MoE layer the solver chooses how many physical slots each expert gets and which GPU
holds each slot, so that the simulator's MoE time on the planning steps (slowest GPU's expert
compute plus exposed dispatch and combine) is minimal. The full formulation — variables,
objective, constraints, what is exact and what heuristic, the bound — is docs/placement.md
("Formulation", §1-§6); this module is the driver of its stages, each a module of its own:

- §5.1, §5.1b experts → nodes: :mod:`planner.solve.nodes` (MILP through
  :mod:`planner.solve.milp`, swaps through :mod:`planner.solve.nodeswap`);
- §5.2-§5.4 replicas inside nodes and their GPUs: :mod:`planner.solve.gpus`,
  :mod:`planner.solve.gpusearch`;
- §5.5 replicas on other nodes (``nearest`` and ``static`` dispatch): :mod:`planner.solve.xnode`, with the
  node sets that keep whole tokens on their node from :mod:`planner.solve.cover`;
- §5.6 the final choice among candidates: :mod:`planner.solve.scoring`;
- §6 the bound: :mod:`planner.solve.bound`; migration (§3): :mod:`planner.solve.migration`.

Why stages rather than one model: the exact objective (a maximum over GPUs of per-step loads,
distinct destinations per token) is far too large for one MILP at DeepSeek-V3 scale; each stage
is either exact for its part or a local search on the exact objective, and the simulator has the
last word, so a plan is never worse than EPLB on the planning steps.

The placement is deterministic and seed-free: every budget is a count derived from the
problem's sizes, never from a clock (the time limit is only a safety stop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from planner.errors import InputError
from planner.solve.bound import lower_bound
from planner.solve.gpus import SearchStats
from planner.solve.gpusearch import NodeProblem, NodeSearch
from planner.solve.layer_map import LayerMap, place_layers
from planner.solve.milp import milp_solver_name
from planner.solve.nodes import Stage1Stats, assign_nodes, stage1_layer
from planner.solve.problem import (
    Clock,
    PlacementCost,
    PlacementInputs,
    TokenSample,
    check_problem,
    eplb_warm_start,
    nodes_of,
    search_sample,
)
from planner.solve.scoring import SOLVER, planning_objective, reserve_s, score_candidates
from planner.solve.xnode import NODE_LOCAL_DISPATCH, XNodeStats, nearest_replicas
from planner.specs.options import require_migration_weight, require_time_limit

__all__ = [
    "NodeProblem", "NodeSearch", "PlacementCost", "PlacementInputs", "PlacementResult", "PlacementStats",
    "check_problem", "lower_bound", "milp_solver_name", "planning_objective", "solve_placement", "stage1_layer",
]


@dataclass
class PlacementStats:
    """Per-stage statistics of one solve (:meth:`to_dict` gives the nested dictionary)."""

    nodes: int  #: nodes the EP ranks span
    gpus_per_node: int
    stage1: Stage1Stats
    search: SearchStats
    cross_node_replicas: XNodeStats | None = None  #: only under ``nearest`` / ``static`` dispatch with nodes

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node,
                                  "stage1": self.stage1.to_dict(), "search": self.search.to_dict()}
        if self.cross_node_replicas is not None:
            out["cross_node_replicas"] = self.cross_node_replicas.to_dict()
        return out


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
    stages: PlacementStats | None = None  #: per-stage statistics


def solve_placement(
    inp: PlacementInputs,
    *,
    time_limit: float = 60.0,
    previous_LP: np.ndarray | None = None,
    migration_weight: float = 0.0,
    evaluate: Callable[[np.ndarray], float] | None = None,
    extra_candidates: dict[str, np.ndarray] | None = None,
    balance_tolerance: float = 0.02,
    search_evals: int | None = None,
    map_layers: LayerMap | None = None,
) -> PlacementResult:
    """Place experts for ``inp`` (docs/placement.md §5); returns within ``time_limit`` seconds.

    ``evaluate(phy2log_LP) -> ms per step`` scores a placement on the planning steps (default:
    :func:`planning_objective`, the simulator on ``inp``'s tokens); ``extra_candidates`` are
    further placements to compare (e.g. contiguous). ``previous_LP`` [L, P] with
    ``migration_weight`` > 0 adds the migration penalty. ``search_evals`` bounds the local
    search per node (default: a count derived from the sizes, so the result is reproducible).
    The placement is deterministic and takes no seed. ``map_layers(fn, items)`` solves stages
    1b-4 one task per layer (e.g. :func:`planner.ray_map.ray_map`, Ray workers): the same placement
    (:mod:`planner.solve.layer_map`).
    """
    clock = Clock(require_time_limit(time_limit))
    L, E, G, P = inp.num_layers, inp.num_experts, inp.num_gpus, inp.num_physical
    check_problem(E, P, G, inp.gpus_per_node)
    previous_LP, mig_w = _check_previous(previous_LP, migration_weight, L, P, E)
    evaluate = evaluate or (lambda p2l: planning_objective(p2l, inp))
    reserve = reserve_s(inp, time_limit)
    deadline = clock.t0 + time_limit - reserve
    weight_LE = inp.counts_LE() / inp.num_steps  # tokens per step
    warm = eplb_warm_start(weight_LE, inp)  # §2
    sample = search_sample(inp)
    # §5.1, §5.1b: experts -> nodes
    node_LE, s1 = assign_nodes(inp, sample, weight_LE, warm, previous_LP, mig_w, clock,
                               time_limit=time_limit, deadline=deadline, swaps=map_layers is None)
    n_eff = G // inp.gpus_per_node if node_LE is not None else 1
    exact = _exact_setting(inp, n_eff, sample, mig_w)
    # §5.2-§5.4: replicas inside nodes, their GPUs
    new, search = place_layers(map_layers, inp, sample, weight_LE, warm, node_LE, n_eff, previous_LP, mig_w, exact,
                               time_limit=time_limit, deadline=deadline, balance_tolerance=balance_tolerance,
                               search_evals=search_evals, stage1=s1)
    search.time_s = round(clock.elapsed() - s1.time_s, 3)
    N = nodes_of(G, inp.gpus_per_node)
    stats = PlacementStats(nodes=N, gpus_per_node=G // N, stage1=s1, search=search)
    # §5.5: replicas on other nodes (dispatch that prefers the token's node)
    if inp.dispatch in NODE_LOCAL_DISPATCH and node_LE is not None and P > E:
        new, stats.cross_node_replicas = nearest_replicas(new, inp, sample, deadline, time_limit, warm)
    # §5.6: the best candidate on the planning objective
    placements = {SOLVER: new, "eplb": warm, **({"previous": previous_LP} if previous_LP is not None else {})}
    placements.update({n: np.asarray(p, dtype=np.int64) for n, p in (extra_candidates or {}).items()})
    candidates, chosen, unscored = score_candidates(placements, evaluate, inp, previous_LP, mig_w, clock, reserve)
    search.stopped_by_time |= unscored
    return _result(placements[chosen], candidates, chosen, inp, stats, exact and L * n_eff == search.instances, clock)


def _check_previous(previous_LP: np.ndarray | None, migration_weight: float, L: int, P: int,
                    E: int) -> tuple[np.ndarray | None, float]:
    """The previous placement as int [L, P] (checked) and the migration weight in effect."""
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
    return previous_LP, require_migration_weight(mig_w)


def _exact_setting(inp: PlacementInputs, num_nodes: int, sample: TokenSample, mig_w: float) -> bool:
    """Whether the per-node objective is exactly the simulator's layer time (docs/placement.md §5):
    one node, no redundant slot, one group, even dispatch, no subsampling, no migration."""
    return (num_nodes == 1 and inp.num_physical == inp.num_experts and inp.token_groups == 1
            and sample.stride == 1 and inp.dispatch == "even" and not mig_w)


def _result(phy2log_LP: np.ndarray, candidates: dict[str, float], chosen: str, inp: PlacementInputs,
            stats: PlacementStats, complete_exact: bool, clock: Clock) -> PlacementResult:
    """The result with its bound, gap and status (docs/placement.md §6); ``complete_exact``: the
    per-node objective was the simulator's and every (layer, node) problem was solved."""
    search = stats.search
    obj = candidates[chosen]
    bound = min(lower_bound(inp), obj)
    optimal = search.exhaustive and complete_exact and chosen == SOLVER and not search.stopped_by_time
    if optimal:
        bound = obj
    gap = max(0.0, (obj - bound) / obj) if obj > 0 else 0.0
    xnode = stats.cross_node_replicas
    stopped = search.stopped_by_time or (xnode is not None and xnode.stopped_by_time)
    status = "optimal" if optimal else ("time_limit" if stopped else "feasible")
    return PlacementResult(
        phy2log_LP=phy2log_LP, objective=obj, bound=bound, gap=gap, status=status,
        time_s=clock.elapsed(), chosen=chosen, candidates=candidates, stages=stats,
    )
