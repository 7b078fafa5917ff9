"""Parallel degrees for a placement plan: the user's fixed degrees, checked, defaults filled.

Omitted degrees default to TP = PP = ETP = VPP = 1, DP = GPUs / (TP · PP) and EP = the GPUs of a
pipeline stage / ETP (or the largest divisor of both the stage and the expert slots). The filled
degrees are then checked against the basic rules of :mod:`planner.specs.degrees` (:data:`RULES`);
the most basic broken one is raised, with the values that would be valid. :func:`planner.api.prepare` calls this to
validate the fixed degrees before the parallelism search (:mod:`planner.solve.parallel`) chooses
the omitted ones.
"""

from __future__ import annotations

from planner.errors import InputError
from planner.specs.cluster import ClusterSpec
from planner.specs.degrees import (
    DegreeProblem,
    Degrees,
    divisors,
    iter_degree_problems,
    require_positive,
    require_redundant,
)
from planner.specs.model import ModelSpec
from planner.specs.plan import Parallel

#: The rules checked here, most basic first; the others (attention heads, interleaving, node
#: locality, batch) depend on the mode and are left to the parallelism search.
RULES = ("pp-layers", "product", "edp", "ep-experts", "etp-width")


def _first(problems: list[DegreeProblem]) -> DegreeProblem | None:
    mine = [p for p in problems if p.rule in RULES]
    return min(mine, key=lambda p: RULES.index(p.rule)) if mine else None


def resolve_degrees(
    model: ModelSpec,
    cluster: ClusterSpec,
    *,
    ep: int | None = None,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    etp: int | None = None,
    vpp: int | None = None,
    redundant: int = 0,
) -> Parallel:
    n = cluster.num_gpus
    require_positive(ep=ep, tp=tp, pp=pp, dp=dp, etp=etp, vpp=vpp)
    require_redundant(redundant)
    tp = tp or 1
    pp = pp or 1
    etp = etp or 1
    vpp = vpp or 1
    if n % (tp * pp):
        raise InputError(
            f"tp × pp ({tp} × {pp} = {tp * pp}) must divide the cluster's {n} GPUs; valid products: {divisors(n)}",
            field="tp",
        )
    stage = n // pp
    if dp is None:
        dp = n // (tp * pp)
    slots = model.num_experts + redundant
    if ep is None:
        if stage % etp:
            raise InputError(f"etp ({etp}) must divide the GPUs of a pipeline stage ({stage})", field="etp")
        ep = stage // etp
        if slots % ep:
            # fall back to the largest EP that divides both the stage and the slots
            ep = max(d for d in divisors(stage // etp) if slots % d == 0)
    problems = list(iter_degree_problems(
        model, cluster, Degrees(dp=dp, tp=tp, pp=pp, ep=ep, etp=etp, vpp=vpp), redundant=redundant
    ))
    p = _first(problems)
    if p is not None:
        hint = ""
        if p.rule == "edp":
            hint = f"; valid ep: {divisors(stage // etp)}"
        elif p.rule == "ep-experts":
            hint = f"; valid ep here: {[d for d in divisors(stage // etp) if slots % d == 0]}"
        raise InputError(p.message + hint, field=p.field)
    return Parallel(dp=dp, tp=tp, pp=pp, ep=ep, etp=etp, vpp=vpp)
