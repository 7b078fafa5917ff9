"""Statistics of a routing trace: what a placement or a cache can exploit.

Per MoE layer l (E experts, counts c_e, T tokens, k experts per token):

- ``imbalance``: max_e c_e / mean_e c_e over the whole trace (1 = perfectly even);
  ``step_imbalance``: the same per step, averaged over steps (what one batch sees).
- ``entropy``: normalized entropy of the expert distribution, H(c / Σc) / log E (1 = uniform).
- cross-layer (l -> l+1), from the transition counts M[e, e'] = #(token, e chosen at l,
  e' chosen at l+1):
  ``next_top1``: in-sample accuracy of predicting, for each of a token's experts e at l, that
  succ(e) = argmax_e' M[e, e'] is among the token's experts at l+1;
  ``next_top1_baseline``: the same when always predicting the most popular expert at l+1
  (= max_e c_{l+1, e} / T);
  ``next_mi_bits``: mutual information of the pair distribution M / ΣM in bits (0 when the
  layers are independent, up to log2 E).
- co-activation inside a token's top-k (needs k >= 2), from the pair counts
  C[i, j] = #tokens choosing both i and j: lift(i, j) = P(i, j) / (P(i) P(j)) =
  C[i, j] · T / (c_i c_j);
  ``pair_lift``: the lift averaged over all token pairs (≈ 1 for independent choices);
  ``top_pair_share``: fraction of token pairs that fall in the E most frequent pairs
  (``top_pair_share_uniform`` is that fraction of all pairs, the share under uniform routing);
  ``top_pair_lift``: the mean lift of those E pairs.

These are in-sample descriptions of the trace, not held-out scores. Counts-only traces report
imbalance and entropy only; ``unavailable`` says why the rest is missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from planner.traces.trace import CountsTrace, Trace

UNAVAILABLE_COUNTS = "counts-only trace: needs per-token routing (topk_ids)"


def _imbalance(c: np.ndarray) -> np.ndarray:
    """max / mean over the last axis; NaN where the total is 0."""
    c = c.astype(np.float64)
    mean = c.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, c.max(axis=-1) / np.where(mean > 0, mean, 1.0), np.nan)


def _entropy(c_LE: np.ndarray) -> np.ndarray:
    """Normalized entropy per row of [L, E] counts (NaN for an empty row)."""
    c = c_LE.astype(np.float64)
    tot = c.sum(axis=1, keepdims=True)
    E = c.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = c / np.where(tot > 0, tot, 1.0)
        h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=1)
    out = h / np.log(E) if E > 1 else np.ones(c.shape[0])
    return np.where(tot[:, 0] > 0, out, np.nan)


def _mi_bits(m: np.ndarray) -> float:
    p = m / m.sum()
    pr = p.sum(axis=1, keepdims=True)
    pc = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pr @ pc)[nz])).sum())


def _cross_layer(trace: Trace, counts_LE: np.ndarray) -> list[dict[str, float]]:
    ids = trace.topk_ids.astype(np.int64)
    L, T, k = ids.shape
    E = trace.num_experts
    out = []
    for layer in range(L - 1):
        a, b = ids[layer], ids[layer + 1]
        m = np.bincount((a[:, :, None] * E + b[:, None, :]).ravel(), minlength=E * E).reshape(E, E)
        succ = m.argmax(axis=1)
        hit = (succ[a][:, :, None] == b[:, None, :]).any(axis=2)
        out.append(
            {
                "next_top1": float(hit.mean()),
                "next_top1_baseline": float(counts_LE[layer + 1].max() / T),
                "next_mi_bits": _mi_bits(m),
            }
        )
    return out


def _coactivation(trace: Trace, counts_LE: np.ndarray) -> list[dict[str, float]]:
    ids = trace.topk_ids.astype(np.int64)
    L, T, k = ids.shape
    E = trace.num_experts
    ia, ib = np.triu_indices(k, 1)
    n_pairs = E * (E - 1) // 2
    n_top = min(E, n_pairs)
    out = []
    for layer in range(L):
        x, y = ids[layer][:, ia], ids[layer][:, ib]
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        c_pair = np.bincount((lo * E + hi).ravel(), minlength=E * E).reshape(E, E)
        iu, ju = np.triu_indices(E, 1)
        cij = c_pair[iu, ju].astype(np.float64)
        ci = counts_LE[layer].astype(np.float64)
        denom = ci[iu] * ci[ju]
        with np.errstate(invalid="ignore", divide="ignore"):
            lift = np.where(denom > 0, cij * T / np.where(denom > 0, denom, 1.0), 0.0)
        total = cij.sum()
        top = np.argpartition(cij, n_pairs - n_top)[n_pairs - n_top :]
        out.append(
            {
                "pair_lift": float((cij * lift).sum() / total),
                "top_pair_lift": float(lift[top].mean()),
                "top_pair_share": float(cij[top].sum() / total),
            }
        )
    return out


def _nanmean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def trace_stats(trace: Trace | CountsTrace) -> dict[str, Any]:
    """Summary statistics of ``trace`` as a JSON-ready dict (definitions: module docstring).

    Keys: ``kind`` ("tokens" or "counts"), ``model``, ``num_layers``, ``num_experts``,
    ``top_k`` and ``num_tokens`` (None for counts), ``num_steps``, ``num_ranks`` (from
    ``source_rank``, else None), ``layers`` (one dict per MoE layer), ``summary`` (means over
    layers; ``cross_layer`` / ``coactivation`` are None when unavailable) and ``unavailable``
    (statistic -> reason).
    """
    counts_SLE = trace.counts_per_step()
    counts_LE = counts_SLE.sum(axis=0)
    L = counts_LE.shape[0]
    imb = _imbalance(counts_LE)
    step_imb_SL = _imbalance(counts_SLE)
    with np.errstate(invalid="ignore"):
        step_imb = np.array(
            [np.nanmean(col) if np.isfinite(col).any() else np.nan for col in step_imb_SL.T]
        )
    ent = _entropy(counts_LE)
    layers: list[dict[str, Any]] = [
        {"layer": i, "imbalance": _f(imb[i]), "step_imbalance": _f(step_imb[i]), "entropy": _f(ent[i])}
        for i in range(L)
    ]
    unavailable: dict[str, str] = {}
    cross = coact = None
    if isinstance(trace, Trace):
        if L >= 2:
            rows = _cross_layer(trace, counts_LE)
            for i, row in enumerate(rows):
                layers[i].update(row)
            cross = {
                "next_top1": _nanmean([r["next_top1"] for r in rows]),
                "next_top1_baseline": _nanmean([r["next_top1_baseline"] for r in rows]),
                "next_mi_bits": _nanmean([r["next_mi_bits"] for r in rows]),
            }
        else:
            unavailable["cross_layer"] = "the trace has a single MoE layer"
        if trace.top_k >= 2 and trace.num_experts >= 2:
            rows = _coactivation(trace, counts_LE)
            for i, row in enumerate(rows):
                layers[i].update(row)
            n_pairs = trace.num_experts * (trace.num_experts - 1) // 2
            coact = {
                "pair_lift": _nanmean([r["pair_lift"] for r in rows]),
                "top_pairs": min(trace.num_experts, n_pairs),
                "top_pair_lift": _nanmean([r["top_pair_lift"] for r in rows]),
                "top_pair_share": _nanmean([r["top_pair_share"] for r in rows]),
                "top_pair_share_uniform": min(trace.num_experts, n_pairs) / n_pairs,
            }
        else:
            unavailable["coactivation"] = "top_k is 1: a token picks no pairs of experts"
    else:
        unavailable["cross_layer"] = UNAVAILABLE_COUNTS
        unavailable["coactivation"] = UNAVAILABLE_COUNTS

    is_tokens = isinstance(trace, Trace)
    ranks = None
    if is_tokens and trace.source_rank is not None:
        ranks = int(trace.source_rank.max()) + 1
    return {
        "kind": "tokens" if is_tokens else "counts",
        "model": trace.model,
        "num_layers": L,
        "num_experts": trace.num_experts,
        "top_k": trace.top_k if is_tokens else None,
        "num_tokens": trace.num_tokens if is_tokens else None,
        "num_steps": trace.num_steps,
        "num_ranks": ranks,
        "layers": layers,
        "summary": {
            "imbalance_mean": _nanmean(list(imb)),
            "imbalance_max": _f(np.nanmax(imb)) if np.isfinite(imb).any() else None,
            "step_imbalance_mean": _nanmean(list(step_imb)),
            "entropy_mean": _nanmean(list(ent)),
            "entropy_min": _f(np.nanmin(ent)) if np.isfinite(ent).any() else None,
            "cross_layer": cross,
            "coactivation": coact,
        },
        "unavailable": unavailable,
    }
