"""The planning objective and the final choice among candidate placements (docs/placement.md §3, §5.6).

Every stage optimises a stand-in or a part of the objective; the last word is the simulator on
the planning steps. The solver's placement and the candidates (EPLB, the contiguous and
round-robin baselines, the placement in service) are scored there and the best is kept, so a
plan is never worse than EPLB on the planning steps. Scoring is started only while the time
limit leaves room for it (:func:`reserve_s` is kept for it from the start).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from planner.simulator import SimResult, combine_groups, simulate_arrays
from planner.solve.migration import migration_ms
from planner.solve.problem import Clock, PlacementInputs

SOLVER = "placement-ilp"  #: the name of the solver's own candidate


def planning_objective(phy2log_LP: np.ndarray, inp: PlacementInputs) -> float:
    """Predicted MoE ms per step of a placement [L, P] on ``inp``'s planning tokens (the simulator)."""
    return simulated_ms(inp, phy2log_LP, inp.ids_LTk, inp.step_T, inp.src_T, inp.group_T, inp.num_steps)


def simulated_ms(inp: PlacementInputs, phy2log_LP: np.ndarray, ids_LTk: np.ndarray, step_T: np.ndarray,
                 src_T: np.ndarray, group_T: np.ndarray | None, num_steps: int) -> float:
    """Predicted MoE ms per step of ``phy2log_LP`` [L, P] on the given tokens (``ids_LTk`` [L, T, k]
    for the same L layers, ``step_T`` / ``src_T`` / ``group_T`` [T]), with ``inp``'s cost model,
    dispatch and relay (the simulator)."""
    return float(simulated(inp, phy2log_LP, ids_LTk, step_T, src_T, group_T, num_steps).step_ms_S.mean())


def simulated_time_imbalance(inp: PlacementInputs, phy2log_LP: np.ndarray, ids_LTk: np.ndarray,
                             step_T: np.ndarray, src_T: np.ndarray, group_T: np.ndarray | None,
                             num_steps: int) -> tuple[float, float]:
    """(:func:`simulated_ms`, the mean per-GPU token imbalance over steps and layers) of one simulation."""
    sim = simulated(inp, phy2log_LP, ids_LTk, step_T, src_T, group_T, num_steps)
    return float(sim.step_ms_S.mean()), float(sim.imbalance_SL.mean())


def simulated(inp: PlacementInputs, phy2log_LP: np.ndarray, ids_LTk: np.ndarray, step_T: np.ndarray,
              src_T: np.ndarray, group_T: np.ndarray | None, num_steps: int) -> SimResult:
    """The simulation behind :func:`simulated_ms` (groups combined)."""
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
    return combine_groups(results)


def reserve_s(inp: PlacementInputs, time_limit: float) -> float:
    """Seconds kept for scoring the candidates with the simulator at the end (about 1e-7 s per
    (layer, token, choice) per run on one core, three runs), at most half the limit."""
    pairs = inp.num_layers * inp.ids_LTk.shape[1] * inp.ids_LTk.shape[2]
    return min(0.5 * time_limit, 3 * 1.2e-7 * pairs + 0.05 * time_limit)


def score_candidates(
    placements: dict[str, np.ndarray], evaluate: Callable[[np.ndarray], float], inp: PlacementInputs,
    previous_LP: np.ndarray | None, mig_w: float, clock: Clock, reserve: float,
) -> tuple[dict[str, float], str, bool]:
    """Score the placements (name -> int [L, P], EPLB's first) on the planning objective plus
    migration (docs/placement.md §5.6): (objective by name, in ``placements``' order; the
    best name, ties to the earlier; whether the solver's placement went unscored for lack of time).

    EPLB is always scored; the solver's placement is scored when the slowest evaluation so far
    still fits in the time left; the others also need the reserve's 60 %.
    """
    candidates: dict[str, float] = {}
    unscored = False
    slowest = 0.0  # the longest evaluation so far: the next one is started only if it fits
    for name in ["eplb", SOLVER] + [n for n in placements if n not in ("eplb", SOLVER)]:
        if candidates and clock.left() < max(1.2 * slowest, 0.0 if name == SOLVER else 0.6 * reserve):
            if name == SOLVER:
                unscored = True  # not even scored: EPLB's placement is kept
            continue
        t_eval = time.perf_counter()
        candidates[name] = float(evaluate(placements[name])) + migration_ms(placements[name], previous_LP, inp, mig_w)
        slowest = max(slowest, time.perf_counter() - t_eval)
    order = list(placements)
    candidates = {n: candidates[n] for n in order if n in candidates}
    chosen = min(candidates, key=lambda n: (candidates[n], order.index(n)))
    return candidates, chosen, unscored
