"""MILP plumbing for the placement solver: PuLP models solved by HiGHS, warm-started, CBC fallback.

Stage 1 (docs/placement.md §5.1) builds small PuLP models whose variables carry EPLB's answer
as initial values (§2). HiGHS (highspy) takes them as its starting incumbent, runs on one
thread with a node limit and :data:`MILP_GAP`, so results depend on sizes, not machine speed. A
solver failure never fails a plan: HiGHS falls back to CBC, a failing CBC leaves the caller's
warm start in place, each with a logged warning.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import time

import highspy
import numpy as np
import pulp

log = logging.getLogger(__name__)

#: Relative gap at which the stage-1 MILP stops (its answer is a candidate checked on the exact
#: copies anyway); with the node limit it keeps the MILP from running into its time limit.
MILP_GAP = 0.005
_MILP_LOG = False


def milp_solver_name() -> str:
    """'HiGHS' (highspy through PuLP) when available, else 'CBC'."""
    try:
        if pulp.HiGHS(msg=False).available():
            return "HiGHS"
    except Exception:  # pragma: no cover - depends on the installed highspy
        pass
    log.warning("placement: HiGHS (highspy) is not available to PuLP; falling back to CBC")
    return "CBC"


def variable(prob, name: str, low: float | None, up: float | None, cat: str = "Continuous"):
    """A PuLP variable (``prob.add_variable`` where this PuLP has it: ``LpVariable`` is deprecated there)."""
    if hasattr(prob, "add_variable"):
        return prob.add_variable(name, lowBound=low, upBound=up, cat=cat)
    return pulp.LpVariable(name, lowBound=low, upBound=up, cat=cat)


def solve_milp(prob, time_limit: float, node_limit: int | None = None) -> tuple[str, float | None]:
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


class WarmHiGHS(pulp.HiGHS):
    """PuLP's HiGHS with the variables' initial values passed as a starting solution."""

    def callSolver(self, lp):  # noqa: N802 (PuLP's name)
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
            values = list(lp.solverModel.getSolution().col_value)
            for var in lp.variables():
                var.varValue = values[var.index]
            return pulp.LpStatusOptimal, pulp.LpSolutionIntegerFeasible


@functools.cache
def _swallow_highs_banner() -> None:
    """HiGHS writes a copyright banner to descriptor 1 when a process makes its first solver,
    before PuLP can turn its output off: a library call from a trainer would print it. Make that
    first solver here, once, with descriptor 1 on the null device (the CLI also keeps solver
    output off stdout, :mod:`planner.cli.output`)."""
    try:
        saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no descriptor 1: nothing to protect
        return
    try:
        os.dup2(null, 1)
        highspy.Highs()
        try:
            ctypes.CDLL(None).fflush(None)  # C stdio may hold the banner in its buffer
        except (OSError, AttributeError):
            pass
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


def _solve_highs(prob, time_limit: float, node_limit: int | None) -> tuple[str, float | None]:
    _swallow_highs_banner()
    solver = WarmHiGHS(msg=_MILP_LOG, timeLimit=time_limit, threads=1, gapRel=MILP_GAP)
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
    solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, warmStart=True, threads=1, gapRel=MILP_GAP)
    prob.solve(solver)
    st = pulp.LpStatus[prob.status]
    if st == "Optimal":  # the caller adds the objective's constant, as for HiGHS
        return "optimal", float(pulp.value(prob.objective)) - float(prob.objective.constant)
    return ("feasible" if prob.sol_status in (1, 2) else "none"), None
