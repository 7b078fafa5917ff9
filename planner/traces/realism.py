"""Statistics that describe real routing: batch skew, temporal reuse, working sets, held-out
cross-layer prediction, co-activation lift and data-parallel rank locality.

Legend: L = MoE layers, T = tokens, k = top_k, E = experts per layer, N = sequences. A token's
*choices* are its k experts at a layer. The *stream* lists the tokens sequence by sequence
(sequences in arrival order, i.e. the order of their first token in the file; a sequence's tokens
in ``pos`` order), as :func:`planner.traces.steps.sequences` gives it. Every figure is per MoE
layer; summaries average over layers unless said otherwise.

1. ``skew`` (batch imbalance): busiest expert / mean expert load (over the whole trace it is
   ``imbalance`` of :mod:`planner.traces.stats`), max_e c_e / (B k / E) in a batch of B tokens,
   averaged over batches: (a) *random*: the tokens in a seeded random order,
   cut into ⌊T / B⌋ batches; (b) *seq*: the stream cut into ⌊T / B⌋ batches of B consecutive
   tokens. Sequences are concatenated, not skipped: a batch longer than a sequence holds that
   sequence whole and its neighbours in arrival order (what a server prefilling whole prompts in
   arrival order sees; skipping short sequences would leave nothing at B = 4096 on a trace of
   chat prompts). The rest of the stream (< B tokens) is left out.
2. ``entropy``: normalized entropy of the layer's expert counts (:mod:`planner.traces.stats`).
3. ``reuse`` (temporal reuse): for each token with a predecessor in its sequence, the share of
   its k experts that the previous token of the sequence also chose; averaged over those
   tokens. Random baseline: k / E (independent choices).
4. ``working_set_W``: distinct experts chosen by W consecutive tokens of one sequence, averaged
   over the windows: each sequence is cut from its first token into windows of W tokens; a
   shorter rest, and sequences shorter than W, are left out.
5. ``xlayer`` (held-out cross-layer prediction, l -> l+1): sequences are dealt into two halves
   by a seeded random permutation (tokens, when the trace has no sequences); on the first half
   M_l[e, e'] counts the tokens choosing e at l and e' at l+1 (row sums r_e, column sums c_e').
   For each token of the other half with layer-l experts S, score(e') = Σ_{e ∈ S} M_l[e, e'] /
   (r_e c_e'), a sum of lifts P(e' | e) / P(e') up to a constant (summed raw counts favour the
   popular experts: on the real DeepSeek-V2-Lite trace their top guess is right 0.06 less often
   and their k-set recall is 0.03 lower);
   ``top1_precision``: share of tokens whose best-scored expert is among its k experts at l+1;
   ``set_recall``: share of its k experts at l+1 found among the k best-scored. Ties go to the
   lower expert id.
   ``popularity_*``: the same when always guessing the experts most chosen at l+1 on the first
   half; ``random``: k / E for both (a random guess).
6. ``lift`` (co-activation within a layer): C[i, j] = tokens choosing both i and j; expected
   if a token chose i and j independently, X[i, j] = T (c_i / T)(c_j / T) = c_i c_j / T;
   lift = C / X. A token's k choices are distinct, so without any structure the lift is below 1:
   (k - 1) E / (k (E - 1)) for uniform choices (0.85 for k = 6 of 64). Percentiles p50 / p99 /
   max are over the pairs i < j with X >= ``MIN_EXPECTED`` (5; rarer pairs are noise), per
   layer, and pooled over layers for the summary.
7. ``rank_locality``: R = 8 data-parallel ranks, each decoding n concurrent sequences
   (:func:`planner.traces.steps.decode_steps` with batch R n, ``deal="least-loaded"``: a rank's
   finished sequence is replaced on that rank). Steps are cut into windows of ``RANK_WINDOW``
   (16) decode steps; for each window w >= 1, rank r and layer l, the rank's *own* top-16
   experts are the 16 it chose most in window w - 1 and the *all* top-16 the 16 all ranks chose
   most in window w - 1 (ties: lower id). Coverage is the share of rank r's choices in window w
   that fall in that set, pooled over windows, ranks and layers (a choice counts once).

Per-token statistics need a :class:`~planner.traces.Trace`; 3, 4, 1b and 7 need sequences
(``seq_id``). Missing inputs give None, and :func:`unavailable_reasons` says why.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from planner.traces.steps import decode_steps, sequences
from planner.traces.trace import Trace

#: Batch sizes of the skew statistic.
SKEW_BATCHES: tuple[int, ...] = (16, 256, 4096)
#: Window lengths (tokens of one sequence) of the working-set statistic.
WORKING_SET_WINDOWS: tuple[int, ...] = (4, 16, 64)
#: Pairs whose expected count under independence is below this are left out of lift percentiles.
MIN_EXPECTED = 5.0
#: Data-parallel ranks, sequences per rank, top experts and window length (decode steps) of the
#: rank-locality statistic.
RANKS = 8
SEQS_PER_RANK: tuple[int, ...] = (1, 4, 16)
RANK_TOP = 16
RANK_WINDOW = 16
#: Rows of the [rows, E] score table built at once by the cross-layer prediction.
_CHUNK_CELLS = 1 << 18

NO_SEQUENCES = "the trace has no seq_id: sequences are needed"


def num_sequences(trace: Any) -> int | None:
    """Distinct ``seq_id`` values of a per-token trace (None without sequences)."""
    if not getattr(trace, "has_sequences", False):
        return None
    return int(np.unique(trace.seq_id).size)


def stream_order(trace: Trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(token order [T], sequence of each stream position [T], first stream position of that
    sequence [T]) — the stream of the module docstring."""
    order, starts, lengths = sequences(trace)
    seq = np.repeat(np.arange(starts.size, dtype=np.int64), lengths)
    return order, seq, starts[seq]


# ---- 1. skew ----------------------------------------------------------------------------------


def batch_skew(trace: Trace, batch: int, order: np.ndarray) -> np.ndarray:
    """Mean busiest/mean expert load over the ⌊T / batch⌋ batches of ``batch`` consecutive
    tokens of ``order``, per layer [L] (NaN when T < batch)."""
    L, E, k = trace.num_layers, trace.num_experts, trace.top_k
    nb = order.size // batch
    if nb == 0:
        return np.full(L, np.nan)
    per_chunk = max(1, (1 << 22) // E)  # batches counted at once: about 2^22 (batch, expert) cells
    top = np.zeros(L)
    for b0 in range(0, nb, per_chunk):
        nc = min(per_chunk, nb - b0)
        idx = order[b0 * batch: (b0 + nc) * batch]
        b_of = np.repeat(np.arange(nc, dtype=np.int64) * E, batch * k)
        for layer in range(L):
            ids = trace.topk_ids[layer, idx].ravel()
            c = np.bincount((b_of + ids)[ids >= 0], minlength=nc * E)  # -1: no expert
            top[layer] += c.reshape(nc, E).max(axis=1).sum()
    return top / nb / (batch * k / E)


def skew_table(trace: Trace, seed: int = 0) -> dict[str, np.ndarray]:
    """``random_B`` and (with sequences) ``seq_B`` per layer [L] for B in :data:`SKEW_BATCHES`."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(trace.num_tokens)
    out = {f"random_{b}": batch_skew(trace, b, perm) for b in SKEW_BATCHES}
    if trace.has_sequences:
        order = stream_order(trace)[0]
        out |= {f"seq_{b}": batch_skew(trace, b, order) for b in SKEW_BATCHES}
    return out


# ---- 3, 4. reuse and working sets -------------------------------------------------------------


def _previous_use(a_Tk: np.ndarray) -> np.ndarray:
    """For each choice of ``a_Tk`` (flattened, [T k]): the last earlier token (row) that chose the
    same expert, or -1."""
    flat = a_Tk.ravel()
    k = a_Tk.shape[1]
    srt = np.argsort(flat, kind="stable")  # by expert, then by token
    prev = np.full(flat.size, -1, dtype=np.int64)
    same = (flat[srt[1:]] == flat[srt[:-1]]) & (flat[srt[1:]] >= 0)  # -1 (no expert) is never reused
    prev[srt[1:][same]] = srt[:-1][same] // k
    return prev


def sequence_locality(trace: Trace, windows: tuple[int, ...] = WORKING_SET_WINDOWS) -> dict[str, np.ndarray]:
    """``reuse`` [L] and ``working_set_W`` [L] for W in ``windows`` (module docstring 3, 4);
    needs sequences."""
    order, seq, first = stream_order(trace)
    L, T, k = trace.num_layers, trace.num_tokens, trace.top_k
    t = np.arange(T, dtype=np.int64)
    offset = t - first
    seq_len = np.bincount(seq)[seq]
    has_prev = offset > 0
    t_k = np.repeat(t, k)
    win: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}
    for w in windows:
        start = t - offset % w
        full = (start - first + w) <= seq_len  # the window lies inside the sequence
        n_win = int((full & (offset % w == 0)).sum())
        win[w] = (np.repeat(start, k), np.repeat(full, k), n_win)
    reuse = np.full(L, np.nan)
    ws = {w: np.full(L, np.nan) for w in windows}
    n_prev = int(has_prev.sum())
    for layer in range(L):
        prev = _previous_use(trace.topk_ids[layer, order])
        if n_prev:
            hit = (prev == t_k - 1).reshape(T, k).sum(axis=1)
            reuse[layer] = hit[has_prev].sum() / (n_prev * k)
        for w, (start_k, full_k, n_win) in win.items():
            if n_win:
                ws[w][layer] = ((prev < start_k) & full_k).sum() / n_win
    return {"reuse": reuse} | {f"working_set_{w}": ws[w] for w in windows}


# ---- 5. cross-layer prediction ----------------------------------------------------------------


def _halves(trace: Trace, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks [T] (fit, test): sequences (else tokens) dealt by a seeded permutation."""
    rng = np.random.default_rng(seed)
    if trace.has_sequences:
        _, inv = np.unique(trace.seq_id, return_inverse=True)
        n = int(inv.max()) + 1
        fit_unit = rng.permutation(n) < (n + 1) // 2
        fit = fit_unit[inv]
    else:
        T = trace.num_tokens
        fit = rng.permutation(T) < (T + 1) // 2
    return fit, ~fit


def _top(key: np.ndarray, n: int) -> np.ndarray:
    """Column indices of the n largest entries of each row of integer ``key`` (distinct per row)."""
    if n >= key.shape[-1]:
        return np.broadcast_to(np.arange(key.shape[-1]), key.shape)
    return np.argpartition(-key, n - 1, axis=-1)[..., :n]


def _top_mask(score: np.ndarray, n: int) -> np.ndarray:
    """Boolean [rows, E]: the n highest scores of each row, ties to the lower column."""
    if n >= score.shape[1]:
        return np.ones(score.shape, dtype=bool)
    thr = np.partition(score, score.shape[1] - n, axis=1)[:, score.shape[1] - n, None]
    above = score > thr
    tied = score == thr
    room = n - above.sum(axis=1)
    over = np.nonzero(tied.sum(axis=1) > room)[0]  # rows with more ties than room: lower ids first
    above |= tied
    if over.size:
        t = tied[over]
        above[over] = (above[over] & ~t) | (t & (np.cumsum(t, axis=1) <= room[over, None]))
    return above


def cross_layer_prediction(
    trace: Trace, seed: int = 0, fit: np.ndarray | None = None
) -> dict[str, np.ndarray] | None:
    """Held-out prediction of layer l+1's experts from layer l's (module docstring 5): arrays
    [L - 1] ``top1_precision``, ``set_recall``, ``popularity_precision``, ``popularity_recall``.
    ``fit``: boolean [T], the tokens the table is fitted on (the rest are tested); default the
    seeded halves. None when the trace has one layer, or fewer than 2 sequences (tokens)."""
    L, E, k = trace.num_layers, trace.num_experts, trace.top_k
    fit, test = _halves(trace, seed) if fit is None else (np.asarray(fit, dtype=bool), ~np.asarray(fit, dtype=bool))
    if L < 2 or not fit.any() or not test.any():
        return None
    tie = np.arange(E - 1, -1, -1, dtype=np.int64)  # lower id wins a tie
    names = ("top1_precision", "set_recall", "popularity_precision", "popularity_recall")
    out = {n: np.empty(L - 1) for n in names}
    n_test = int(test.sum())
    rows = max(1, _CHUNK_CELLS // E)
    for layer in range(L - 1):
        a, b = trace.topk_ids[layer].astype(np.int64), trace.topk_ids[layer + 1].astype(np.int64)
        af, bf = a[fit], b[fit]
        both = (af[:, :, None] >= 0) & (bf[:, None, :] >= 0)  # -1 (no expert) pairs with nothing
        m = np.bincount((af[:, :, None] * E + bf[:, None, :])[both], minlength=E * E).reshape(E, E)
        lift = m / np.maximum(m.sum(axis=1, keepdims=True), 1) / np.maximum(m.sum(axis=0, keepdims=True), 1)
        pop = np.bincount(bf[bf >= 0], minlength=E) * E + tie
        pop_top = _top(pop, k)
        at, bt = a[test], b[test]
        top1_hits = set_hits = 0
        for lo in range(0, n_test, rows):
            sa, sb = at[lo: lo + rows], bt[lo: lo + rows]
            n = sa.shape[0]
            onehot = np.zeros((n, E + 1))  # column E catches -1 (no expert), then is dropped
            np.put_along_axis(onehot, np.where(sa >= 0, sa, E), 1.0, axis=1)
            score = onehot[:, :E] @ lift  # [rows, E]
            truth = np.zeros((n, E + 1), dtype=bool)
            np.put_along_axis(truth, np.where(sb >= 0, sb, E), True, axis=1)
            truth = truth[:, :E]
            top1_hits += int(truth[np.arange(n), score.argmax(axis=1)].sum())
            set_hits += int((truth & _top_mask(score, k)).sum())
        out["top1_precision"][layer] = top1_hits / n_test
        n_true = max(int((bt >= 0).sum()), 1)  # the test tokens' real choices (-1 is none)
        out["set_recall"][layer] = set_hits / n_true
        out["popularity_precision"][layer] = float((bt == int(pop.argmax())).any(axis=1).mean())
        out["popularity_recall"][layer] = float(np.isin(bt, pop_top).sum() / n_true)
    return out


# ---- 6. co-activation lift --------------------------------------------------------------------


def pair_lifts(trace: Trace) -> list[np.ndarray]:
    """Per layer, the lifts of the expert pairs i < j whose expected count is >= MIN_EXPECTED
    (module docstring 6); empty arrays when k = 1."""
    L, T, k = trace.topk_ids.shape
    E = trace.num_experts
    if k < 2:
        return [np.empty(0) for _ in range(L)]
    ia, ib = np.triu_indices(k, 1)
    iu, ju = np.triu_indices(E, 1)
    out = []
    for layer in range(L):
        ids = trace.topk_ids[layer].astype(np.int64)
        x, y = ids[:, ia], ids[:, ib]
        lo = np.minimum(x, y)
        code = (lo * E + np.maximum(x, y))[lo >= 0]  # pairs with -1 (no expert) skipped
        cij = np.bincount(code, minlength=E * E).reshape(E, E)[iu, ju].astype(np.float64)
        c = np.bincount(ids[ids >= 0], minlength=E).astype(np.float64)
        expected = c[iu] * c[ju] / T
        keep = expected >= MIN_EXPECTED
        out.append(cij[keep] / expected[keep])
    return out


# ---- 7. rank locality -------------------------------------------------------------------------


def _window_coverage(dec: Trace, w0: int, w1: int, ranks: int, window: int, n: int) -> np.ndarray:
    """(own hits, all hits, choices) of windows w0+1 .. w1-1 by their previous window, over
    all layers: int64 [3]. ``dec`` is sorted by step."""
    E = dec.num_experts
    lo, hi = np.searchsorted(dec.step, [w0 * window, w1 * window])
    cell = (dec.step[lo:hi] // window - w0) * ranks + dec.source_rank[lo:hi]  # (window, rank)
    cell_k = np.repeat(cell, dec.top_k) * E
    tie = np.arange(E - 1, -1, -1, dtype=np.int64)
    out = np.zeros(3, dtype=np.int64)
    for layer in range(dec.num_layers):
        ids = dec.topk_ids[layer, lo:hi].ravel()
        c = np.bincount((cell_k + ids)[ids >= 0], minlength=(w1 - w0) * ranks * E)
        c = c.reshape(w1 - w0, ranks, E)
        hist, nxt = c[:-1], c[1:]
        own = _top(hist * E + tie, n)
        every = np.repeat(_top(hist.sum(axis=1) * E + tie, n)[:, None, :], ranks, axis=1)
        out += (np.take_along_axis(nxt, own, axis=2).sum(), np.take_along_axis(nxt, every, axis=2).sum(), nxt.sum())
    return out


def rank_locality(
    trace: Trace, per_rank: int, ranks: int = RANKS, top: int = RANK_TOP, window: int = RANK_WINDOW
) -> tuple[float | None, float | None]:
    """(own, all) coverage of a rank's next window by the top-``top`` experts of its own / all
    ranks' previous window (module docstring 7); None when there are fewer than 2 windows.
    Windows are counted in chunks of about 2^22 (window, rank, expert) cells."""
    dec = decode_steps(trace, batch=ranks * per_rank, ranks=ranks, deal="least-loaded")
    nw = int(dec.step.max()) // window + 1
    if nw < 2:
        return None, None
    per_chunk = max(1, (1 << 22) // (ranks * dec.num_experts))
    tot = np.zeros(3, dtype=np.int64)
    for w0 in range(0, nw - 1, per_chunk):  # chunks overlap by one window (the history)
        tot += _window_coverage(dec, w0, min(w0 + per_chunk + 1, nw), ranks, window, min(top, dec.num_experts))
    if tot[2] == 0:
        return None, None
    return float(tot[0] / tot[2]), float(tot[1] / tot[2])


def unavailable_reasons(trace: Any) -> dict[str, str]:
    """Statistic -> why it is missing for ``trace`` (empty when all are available)."""
    if not trace.has_tokens:
        why = "counts-only trace: needs per-token routing (topk_ids)"
        return {n: why for n in ("skew", "reuse", "working_set", "xlayer", "lift", "rank_locality")}
    out: dict[str, str] = {}
    if not trace.has_sequences:
        for n in ("skew_seq", "reuse", "working_set", "rank_locality"):
            out[n] = NO_SEQUENCES
    if trace.num_layers < 2:
        out["xlayer"] = "the trace has a single MoE layer"
    elif (num_sequences(trace) or trace.num_tokens) < 2:
        unit = "sequence" if trace.has_sequences else "token"
        out["xlayer"] = f"the trace has one {unit}: none is left to test the fitted table on"
    if trace.top_k < 2:
        out["lift"] = "top_k is 1: a token picks no pairs of experts"
    return out


def per_layer(trace: Trace, seed: int = 0, pair_stats: bool = True) -> dict[str, np.ndarray]:
    """Every per-layer statistic the trace allows, name -> array [L] (``xlayer_*``: [L - 1], row
    l predicting l+1). Names: ``skew_random_B``, ``skew_seq_B``, ``reuse``, ``working_set_W``,
    ``xlayer_top1_precision`` / ``_set_recall`` / ``_popularity_precision`` /
    ``_popularity_recall``, ``lift_p50`` / ``_p99`` / ``_max`` (NaN for a layer without pairs).
    ``pair_stats=False`` leaves out the statistics that hold [E, E] tables (xlayer, lift)."""
    out = {f"skew_{n}": v for n, v in skew_table(trace, seed).items()}
    if trace.has_sequences:
        out |= sequence_locality(trace)
    if not pair_stats:
        return out
    xl = cross_layer_prediction(trace, seed)
    if xl is not None:
        out |= {f"xlayer_{n}": v for n, v in xl.items()}
    if trace.top_k >= 2:
        lifts = pair_lifts(trace)
        for name, q in (("p50", 50), ("p99", 99), ("max", 100)):
            out[f"lift_{name}"] = np.array([np.percentile(x, q) if x.size else np.nan for x in lifts])
        out["_lifts"] = np.concatenate(lifts)
    return out
