"""Per-token routing sampled from counts-only statistics.

Engines such as SGLang record only how many tokens each expert received per step
(:class:`~planner.traces.trace.CountsTrace`). Balancing needs nothing more, but scoring
dispatch traffic needs tokens. :func:`tokens_from_counts` draws, for every step and layer,
``T_s = round(Σ_e counts / k)`` tokens whose top-k experts are sampled without replacement with
probability ∝ counts (Gumbel-top-k), independently per layer and per token.

What this keeps: per-step, per-layer expert popularity (totals match in expectation). What it
cannot know: co-activation inside a token's top-k and cross-layer affinity — the sampled tokens
have none, so traffic figures from them are those of independent routing.
"""

from __future__ import annotations

import numpy as np

from planner.errors import InputError
from planner.traces.synth import _topk_desc
from planner.traces.trace import CountsTrace, Trace

#: The caveat attached to figures computed from expanded counts.
CAVEAT = (
    "counts-only trace: tokens were sampled independently per layer from the per-step expert counts; "
    "co-activation and cross-layer structure are unavailable, so traffic is that of independent routing"
)


def tokens_from_counts(counts: CountsTrace, top_k: int, seed: int = 0) -> Trace:
    """Sample a per-token :class:`Trace` [L, T, k] matching ``counts`` step by step."""
    c_SLE = counts.counts_per_step().astype(np.float64)
    S, L, E = c_SLE.shape
    if top_k > E:
        raise InputError(f"top_k ({top_k}) must be <= the trace's experts ({E})")
    rng = np.random.default_rng(seed)
    ids_parts, steps = [], []
    for s in range(S):
        per_layer = c_SLE[s].sum(axis=1) / top_k
        T = int(round(float(per_layer.mean())))
        if T == 0:
            continue
        ids = np.empty((L, T, top_k), dtype=np.int32)
        for l in range(L):
            with np.errstate(divide="ignore"):
                logp = np.log(c_SLE[s, l] + 1e-9).astype(np.float32)
            g = rng.gumbel(size=(T, E)).astype(np.float32)
            ids[l], _ = _topk_desc(logp[None, :] + g, top_k)
        ids_parts.append(ids)
        steps.append(np.full(T, s, dtype=np.int64))
    if not ids_parts:
        raise InputError(f"{counts.source}: the counts hold no tokens")
    return Trace(
        np.concatenate(ids_parts, axis=1),
        E,
        step=np.concatenate(steps),
        model=counts.model,
        source=counts.source,
    )
