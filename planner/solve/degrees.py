"""Parallel degrees for a placement plan: the user's fixed degrees, checked, defaults filled.

It checks the degrees the user fixed, with messages that name the numbers and what would be
valid; omitted degrees default to TP = PP = ETP = 1, EP = GPUs per pipeline stage, DP = GPUs /
(TP · PP). :func:`planner.api.prepare` calls it to validate the fixed degrees, then lets the
parallelism search (:mod:`planner.solve.parallel`) choose the omitted ones.
"""

from __future__ import annotations

from planner.errors import InputError
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec
from planner.specs.plan import Parallel


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


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
    for flag, v in (("--ep", ep), ("--tp", tp), ("--pp", pp), ("--dp", dp), ("--etp", etp), ("--vpp", vpp)):
        if v is not None and v <= 0:
            raise InputError(f"{flag} must be > 0 (got {v})")
    if redundant < 0:
        raise InputError(f"--redundant-experts must be >= 0 (got {redundant})")
    tp = tp or 1
    pp = pp or 1
    etp = etp or 1
    vpp = vpp or 1
    if n % (tp * pp):
        raise InputError(
            f"--tp × --pp ({tp} × {pp} = {tp * pp}) must divide the cluster's {n} GPUs; valid products: {_divisors(n)}"
        )
    if pp > model.num_layers:
        raise InputError(f"--pp ({pp}) must be <= the model's layers ({model.num_layers})")
    stage = n // pp
    if dp is None:
        dp = n // (tp * pp)
    elif dp * tp * pp != n:
        raise InputError(f"--dp × --tp × --pp ({dp} × {tp} × {pp}) must equal the cluster's {n} GPUs")
    if ep is None:
        ep = stage // etp
        if stage % etp:
            raise InputError(f"--etp ({etp}) must divide the GPUs of a pipeline stage ({stage})")
        slots = model.num_experts + redundant
        if slots % ep:
            # fall back to the largest EP that divides both the stage and the slots
            ep = max(d for d in _divisors(stage // etp) if slots % d == 0)
    if stage % (ep * etp):
        raise InputError(
            f"--ep × --etp ({ep} × {etp}) must divide the {stage} GPUs of a pipeline stage; "
            f"valid ep: {[d for d in _divisors(stage // etp)]}"
        )
    slots = model.num_experts + redundant
    if slots % ep:
        ok = [d for d in _divisors(stage // etp) if slots % d == 0]
        raise InputError(
            f"--ep {ep}: experts + redundant experts ({model.num_experts} + {redundant} = {slots}) must divide by ep "
            f"so every EP rank holds the same number of experts; valid ep here: {ok}"
        )
    if model.expert_intermediate_size % etp:
        raise InputError(
            f"--etp ({etp}) must divide the expert FFN width ({model.expert_intermediate_size})"
        )
    return Parallel(dp=dp, tp=tp, pp=pp, ep=ep, etp=etp, vpp=vpp)
