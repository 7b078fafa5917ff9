"""Null choices in a trace: tokens that use fewer than k experts (dynamic top-k).

Two families of routers give a token a variable number of experts:

- threshold (top-p) routing ("Harder Tasks Need More Experts: Dynamic Routing in MoE Models",
  Huang et al., ACL 2024, arXiv:2403.07652): a token takes experts until their gate mass
  passes p, so it uses 1..k of them;
- null experts (AdaMoE, Zeng et al., EMNLP Findings 2024, arXiv:2406.13233): the router picks k
  of E + n slots, and the n null slots do nothing, so a token may use 0..k real experts.

A trace stores either as ``topk_ids`` [L, T, k] with -1 (:data:`~planner.traces.trace.NULL_EXPERT`)
in the unused columns (docs/contracts.md "Routing trace (.npz)"). :func:`with_null_choices`
turns a trace with k experts per token into one with a chosen share of null choices, so a
synthetic trace can stand for such a router.
"""

from __future__ import annotations

import numpy as np

from planner.errors import InputError
from planner.traces.trace import NULL_EXPERT, Trace


def with_null_choices(trace: Trace, fraction: float, seed: int = 0, *, min_experts: int = 0) -> Trace:
    """``trace`` with ``round(fraction · L·T·k)`` of its choices replaced by -1 (no expert).

    The nulled choices are drawn uniformly (seeded by ``seed``, deterministic) among the
    columns ``min_experts .. k-1`` of every (layer, token): ``min_experts`` = 0 lets a token use
    no expert at all (AdaMoE's null experts), 1 keeps its first (highest-gate) choice, as
    threshold routing always does. So ``fraction`` must be at most ``(k - min_experts) / k``.
    Choices already null stay null and count towards the share. A nulled choice's gate weight
    becomes 0; the others keep theirs (not renormalized). Every other array is kept.
    """
    L, T, k = trace.topk_ids.shape
    if not 0 <= min_experts <= k:
        raise InputError(f"null choices: min_experts must be in [0, top_k={k}] (got {min_experts})")
    f = float(fraction)
    if not 0.0 <= f <= (k - min_experts) / k:
        raise InputError(
            f"null choices: fraction must be in [0, {(k - min_experts) / k:g}] with top_k {k} and "
            f"min_experts {min_experts} (got {fraction})"
        )
    ids = trace.topk_ids.copy()
    eligible = np.zeros(ids.shape, dtype=bool)
    eligible[:, :, min_experts:] = True
    need = int(round(f * ids.size)) - int((ids < 0).sum())
    cand = np.flatnonzero(eligible & (ids >= 0))
    if need > cand.size:
        raise InputError(f"null choices: the trace cannot reach a share of {f:g} with min_experts {min_experts}")
    if need > 0:
        rng = np.random.default_rng(seed)
        ids.reshape(-1)[rng.choice(cand, size=need, replace=False)] = NULL_EXPERT
    weights = None
    if trace.topk_weights is not None:
        weights = np.where(ids < 0, 0, trace.topk_weights).astype(trace.topk_weights.dtype)
    return Trace(
        ids, trace.num_experts, topk_weights=weights, step=trace.step, source_rank=trace.source_rank,
        model=trace.model, source=trace.source, seq_id=trace.seq_id, pos=trace.pos,
    )
