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
  C[i, j] = #tokens choosing both i and j and the counts expected if a token's choices were
  independent, X[i, j] ∝ c_i c_j, scaled so that ΣX = ΣC (a token makes k(k-1)/2 pairs of
  distinct experts; plain P(i)P(j) would put every lift below 1 when k/E is large):
  lift(i, j) = C[i, j] / X[i, j]. The *top pairs* are the E pairs of highest lift among those
  with X >= 5 (rarer pairs are noise):
  ``top_pair_lift``: their mean lift (above 1 from sampling noise alone: about 2 for 8192
  tokens over 128 experts; clusters of co-selected experts raise it);
  ``top_pair_share``: the fraction of a token's pairs that fall in them;
  ``top_pair_share_uniform``: the fraction of all pairs they are (the share without structure).

These are in-sample descriptions of the trace, not held-out scores. Counts-only traces report
imbalance and entropy only; ``unavailable`` says why the rest is missing.

The statistics that describe real routing (batch skew, temporal reuse, working sets, held-out
cross-layer prediction, pair-lift percentiles, rank locality) are defined and computed in
:mod:`planner.traces.realism`; :func:`trace_stats` adds them to its per-layer rows and summary,
and :func:`summary_statistics` gives their headline numbers as a flat dict with stable keys.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from planner.traces.realism import (
    RANK_WINDOW,
    SEQS_PER_RANK,
    SKEW_BATCHES,
    WORKING_SET_WINDOWS,
    num_sequences,
    per_layer,
    rank_locality,
    unavailable_reasons,
)
from planner.traces.trace import CountsTrace, Trace

UNAVAILABLE_COUNTS = "counts-only trace: needs per-token routing (topk_ids)"
#: Pairs whose expected count under independence is below this are too noisy to rank by lift.
_MIN_EXPECTED = 5.0
#: Pair statistics hold dense [E, E] tables (E² counts): above this many experts per layer
#: (a table of 16.8M entries, far above real models) they are reported unavailable instead.
MAX_PAIR_EXPERTS = 4096


def _imbalance(c: np.ndarray) -> np.ndarray:
    """max / mean over the last axis; NaN where the total is 0."""
    c = c.astype(np.float64)
    mean = c.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, c.max(axis=-1) / np.where(mean > 0, mean, 1.0), np.nan)


def _step_imbalance_tokens(trace: Trace) -> np.ndarray:
    """Per-step imbalance [S, L] of a per-token trace, without the dense [S, L, E] counts.

    A small file can hold many steps of many experts (1000 one-token steps of 65536 experts
    would be 2 GB of counts per layer); only the (step, layer, expert) triples that occur are
    counted here, in memory proportional to the trace. Same figures as ``_imbalance`` of
    ``counts_per_step()``: the mean over experts is the step's choices over E.
    """
    L, E, S = trace.num_layers, trace.num_experts, trace.num_steps
    sl_LT = trace.step_index.astype(np.int64)[None, :] * L + np.arange(L, dtype=np.int64)[:, None]
    codes = (sl_LT[:, :, None] * E + trace.topk_ids)[trace.valid]  # -1 (no expert) skipped
    uniq, cnt = np.unique(codes, return_counts=True)
    sl = uniq // E
    top = np.zeros(S * L, dtype=np.int64)
    np.maximum.at(top, sl, cnt)
    mean = np.bincount(sl, weights=cnt, minlength=S * L) / E
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mean > 0, top / np.where(mean > 0, mean, 1.0), np.nan).reshape(S, L)


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
        both = (a[:, :, None] >= 0) & (b[:, None, :] >= 0)  # -1 (no expert) pairs with nothing
        m = np.bincount((a[:, :, None] * E + b[:, None, :])[both], minlength=E * E).reshape(E, E)
        succ = m.argmax(axis=1)
        hit = ((succ[a][:, :, None] == b[:, None, :]) & both).any(axis=2)[a >= 0]
        out.append(
            {
                "next_top1": float(hit.mean()) if hit.size else float("nan"),
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
    iu, ju = np.triu_indices(E, 1)
    n_top = min(E, iu.size)
    out = []
    for layer in range(L):
        x, y = ids[layer][:, ia], ids[layer][:, ib]
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        cij = np.bincount((lo * E + hi)[lo >= 0], minlength=E * E).reshape(E, E)[iu, ju].astype(np.float64)
        ci = counts_LE[layer].astype(np.float64)
        # pair counts if choices were independent, scaled to the number of pairs tokens made
        prod = ci[iu] * ci[ju]
        expected = prod * (cij.sum() / prod.sum())
        cand = np.nonzero(expected >= _MIN_EXPECTED)[0]
        if cand.size == 0:
            cand = np.nonzero(expected > 0)[0]
        n = min(n_top, cand.size)
        lift = cij[cand] / expected[cand]
        top = np.argpartition(lift, cand.size - n)[cand.size - n :]
        out.append(
            {
                "top_pair_lift": float(lift[top].mean()),
                "top_pair_share": float(cij[cand[top]].sum() / cij.sum()),
            }
        )
    return out


def group_limit_excess(trace: Trace, n_group: int | None, topk_group: int | None, max_tokens: int = 4096) -> float:
    """Share of (token, layer) pairs whose experts fall in more than ``topk_group`` of the
    ``n_group`` equal routing groups (0 when the trace follows group-limited routing; over an
    evenly strided sample of at most ``max_tokens`` tokens). 0.0 for models without groups."""
    if not n_group or not topk_group or n_group <= 1 or trace.num_experts % n_group:
        return 0.0
    ids = trace.topk_ids[:, :: max(1, -(-trace.num_tokens // max_tokens))]
    g = np.sort(np.where(ids >= 0, ids.astype(np.int64) // (trace.num_experts // n_group), -1), axis=-1)
    distinct = (g[..., :1] >= 0).sum(axis=-1) + ((g[..., 1:] != g[..., :-1]) & (g[..., 1:] >= 0)).sum(axis=-1)
    return float((distinct > topk_group).mean()) if distinct.size else 0.0


def _nanmean(values: list[float | None]) -> float | None:
    v = [x for x in values if x is not None and np.isfinite(x)]
    return float(np.mean(v)) if v else None


def _f(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def trace_stats(trace: Trace | CountsTrace, seed: int = 0) -> dict[str, Any]:
    """Summary statistics of ``trace`` as a JSON-ready dict (definitions: module docstring and
    :mod:`planner.traces.realism`).

    Keys: ``kind`` ("tokens" or "counts"), ``model``, ``num_layers``, ``num_experts``,
    ``top_k``, ``num_tokens`` and ``null_fraction`` (share of choices that are -1, no expert;
    None for counts), ``num_steps``, ``num_ranks`` (from
    ``source_rank``, else None), ``num_sequences`` (None without ``seq_id``), ``layers`` (one
    dict per MoE layer, with the per-layer statistics of :func:`realism.per_layer` the trace
    allows), ``summary`` (means over layers; ``cross_layer`` / ``coactivation`` are None when
    unavailable; ``realism``: :func:`summary_statistics`) and ``unavailable`` (statistic ->
    reason). ``seed``: random batches and halves of the realism statistics.
    """
    if isinstance(trace, Trace):
        counts_LE = trace.counts()
        step_imb_SL = _step_imbalance_tokens(trace)
    else:
        counts_SLE = trace.counts_per_step()
        counts_LE = counts_SLE.sum(axis=0)
        step_imb_SL = _imbalance(counts_SLE)
    L = counts_LE.shape[0]
    imb = _imbalance(counts_LE)
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
    if isinstance(trace, Trace) and trace.num_experts > MAX_PAIR_EXPERTS:
        why = f"{trace.num_experts} experts per layer: pair statistics need E² counts (at most {MAX_PAIR_EXPERTS} experts)"
        unavailable["cross_layer"] = unavailable["coactivation"] = why
    elif isinstance(trace, Trace):
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
    rows: dict[str, np.ndarray] = {}
    if is_tokens:
        rows = per_layer(trace, seed, trace.num_experts <= MAX_PAIR_EXPERTS)
        for name, v in rows.items():
            if not name.startswith("_"):
                for i in range(v.size):
                    layers[i][name] = _f(v[i])
        if trace.num_experts > MAX_PAIR_EXPERTS:
            unavailable["xlayer"] = unavailable["lift"] = unavailable["cross_layer"]
    for what, why in unavailable_reasons(trace).items():
        unavailable.setdefault(what, why)
    realism = _summarize(trace, rows, seed)
    if is_tokens and trace.has_sequences and all(realism[f"rank_locality_own_{n}"] is None for n in SEQS_PER_RANK):
        unavailable["rank_locality"] = f"fewer than 2 windows of {RANK_WINDOW} decode steps"
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
        "null_fraction": trace.null_fraction() if is_tokens else None,
        "num_steps": trace.num_steps,
        "num_ranks": ranks,
        "num_sequences": num_sequences(trace),
        "layers": layers,
        "summary": {
            "imbalance_mean": _nanmean(list(imb)),
            "imbalance_max": _f(np.nanmax(imb)) if np.isfinite(imb).any() else None,
            "step_imbalance_mean": _nanmean(list(step_imb)),
            "entropy_mean": _nanmean(list(ent)),
            "entropy_min": _f(np.nanmin(ent)) if np.isfinite(ent).any() else None,
            "cross_layer": cross,
            "coactivation": coact,
            "realism": realism,
        },
        "unavailable": unavailable,
    }


def _agg(x: np.ndarray | None, how: str) -> float | None:
    if x is None:
        return None
    v = np.asarray(x, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return float({"mean": np.mean, "min": np.min, "max": np.max}[how](v))


#: Keys of :func:`summary_statistics`, in order (stable: a synthetic generator is calibrated
#: against them).
SUMMARY_KEYS: tuple[str, ...] = (
    "imbalance_whole_min", "imbalance_whole_max", "imbalance_whole_mean", "entropy_mean",
    *(f"skew_random_{b}" for b in SKEW_BATCHES), *(f"skew_seq_{b}" for b in SKEW_BATCHES),
    "reuse_mean", "reuse_max", "reuse_first_layer", "reuse_last_layer", "reuse_random",
    *(f"working_set_{w}" for w in WORKING_SET_WINDOWS),
    "xlayer_top1_precision", "xlayer_set_recall", "xlayer_popularity_precision",
    "xlayer_popularity_recall", "xlayer_random",
    "lift_p50", "lift_p99", "lift_max",
    *(f"rank_locality_own_{n}" for n in SEQS_PER_RANK), *(f"rank_locality_all_{n}" for n in SEQS_PER_RANK),
)


def _summarize(trace: Trace | CountsTrace, rows: dict[str, np.ndarray], seed: int) -> dict[str, float | None]:
    """The :data:`SUMMARY_KEYS` dict from the per-layer tables ``rows`` (realism.per_layer)."""
    out: dict[str, float | None] = dict.fromkeys(SUMMARY_KEYS)
    counts = trace.counts()
    imb = _imbalance(counts)
    for how in ("min", "max", "mean"):
        out[f"imbalance_whole_{how}"] = _agg(imb, how)
    out["entropy_mean"] = _agg(_entropy(counts), "mean")
    if not isinstance(trace, Trace):
        return out
    for name, v in rows.items():
        if name.startswith(("skew_", "working_set_", "xlayer_")):
            out[name] = _agg(v, "mean")
    kE = trace.top_k / trace.num_experts
    out["reuse_random"] = kE
    if "reuse" in rows:
        reuse = rows["reuse"]
        out["reuse_mean"], out["reuse_max"] = _agg(reuse, "mean"), _agg(reuse, "max")
        out["reuse_first_layer"], out["reuse_last_layer"] = _f(reuse[0]), _f(reuse[-1])
    if "xlayer_top1_precision" in rows:
        out["xlayer_random"] = kE
    lifts = rows.get("_lifts")
    if lifts is not None and lifts.size:
        out["lift_p50"], out["lift_p99"] = (float(x) for x in np.percentile(lifts, [50, 99]))
        out["lift_max"] = float(lifts.max())
    if trace.has_sequences:
        for n in SEQS_PER_RANK:
            out[f"rank_locality_own_{n}"], out[f"rank_locality_all_{n}"] = rank_locality(trace, n)
    return out


def summary_statistics(trace: Trace | CountsTrace, seed: int = 0) -> dict[str, float | None]:
    """The headline numbers of ``trace`` as a flat dict with the keys :data:`SUMMARY_KEYS`
    (definitions: :mod:`planner.traces.realism`); None where the trace cannot give one
    (:func:`planner.traces.realism.unavailable_reasons` says why). Per-layer figures are averaged
    over layers (``imbalance_whole_*``: min / max / mean over layers; ``reuse_max``: the layer
    reusing most; ``lift_*``: percentiles of all layers' pairs pooled). Deterministic for a
    given ``seed`` (random batches, halves)."""
    rows = per_layer(trace, seed, trace.num_experts <= MAX_PAIR_EXPERTS) if isinstance(trace, Trace) else {}
    return _summarize(trace, rows, seed)
