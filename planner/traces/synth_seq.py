"""Sequence structure of :func:`planner.traces.synth_trace`: requests, steps, ranks and topics.

Tokens belong to sequences (requests). Lengths are log-normal with median ``seq_len`` and
log-standard deviation ``seq_len_spread``, at least 2 tokens and at most
``seq_len · exp(4 · seq_len_spread)``. Sequences arrive one after the other; their tokens, in
position order, fill the steps (``tokens_per_step`` tokens each: whole sequences or chunks of a
long one, as chunked prefill forms batches) and each step is dealt to ``num_ranks`` ranks in
equal contiguous blocks. A sequence takes its input domain from the mixture of the rank and step
it starts on.

Each sequence has a topic per layer: log-popularity offsets over the experts, of standard
deviation ``topic``, that drift along the sequence (``topic_drift``: a random walk over blocks of
:data:`TOPIC_BLOCK` positions, renormalized to keep the offsets' spread; the correlation of the
topic at position p with the one at position 0 is ``1 / sqrt(1 + topic_drift² · p / 256)``).
Temporal reuse: a sequence is cut into segments of geometric length with mean ``reuse_span``
tokens, each with its own offsets of standard deviation ``reuse``, so that neighbouring tokens
re-pick the same experts. All offsets are drawn per layer; a token's logits are its segment's
row of a table [segments, E] (popularity + step drift + domain + topic + reuse), one gather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Positions per block of the topic's random walk (the topic is constant inside a block).
TOPIC_BLOCK = 32
#: Positions over which ``topic_drift`` is the walk's standard deviation relative to the topic's.
TOPIC_SCALE = 256.0


@dataclass(frozen=True)
class Layout:
    """Token layout: sequences, steps, ranks, segments and topic blocks (arrays [T] unless noted)."""

    seq_T: np.ndarray  # int64 sequence of each token
    pos_T: np.ndarray  # int64 position in its sequence
    step_T: np.ndarray  # int64 step
    rank_T: np.ndarray  # int64 source rank
    seg_T: np.ndarray  # int64 reuse segment of each token
    seg_first_G: np.ndarray  # [segments] first token of each segment
    seg_blk_G: np.ndarray  # [segments] topic block of each segment
    seq_first_N: np.ndarray  # [sequences] first token of each sequence
    blk_seq_B: np.ndarray  # [blocks] sequence of each topic block
    blk_first_B: np.ndarray  # [blocks] bool: first block of its sequence
    blk_norm_B: np.ndarray  # [blocks] float32 1 / sqrt(1 + drift² · start / TOPIC_SCALE)
    num_seq: int


def seq_lengths(rng: np.random.Generator, T: int, median: float, spread: float) -> np.ndarray:
    """Lengths of the sequences that cover ``T`` tokens (the last one cut to fit), int64."""
    hi = max(2.0, median * np.exp(4.0 * spread))
    out: list[np.ndarray] = []
    total = 0
    while total < T:
        n = max(16, int(2 * (T - total) / max(median, 1.0)) + 16)
        lens = np.clip(np.rint(median * np.exp(spread * rng.standard_normal(n))), 2, hi).astype(np.int64)
        out.append(lens)
        total += int(lens.sum())
    lens = np.concatenate(out)
    k = int(np.searchsorted(np.cumsum(lens), T))  # sequences 0..k cover T
    lens = lens[: k + 1].copy()
    lens[-1] -= int(lens.sum()) - T
    return lens


def build_layout(
    rng: np.random.Generator, T: int, tps: int, R: int, lens: np.ndarray, reuse_span: float, topic_drift: float,
) -> Layout:
    """Sequences in arrival order fill steps of ``tps`` tokens, dealt to ``R`` ranks in contiguous
    blocks; reuse segments (geometric, mean ``reuse_span``) never cross a sequence, step, rank or
    topic block boundary."""
    N = len(lens)
    seq_first_N = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    seq_T = np.repeat(np.arange(N, dtype=np.int64), lens)
    pos_T = np.arange(T, dtype=np.int64) - seq_first_N[seq_T]
    step_T = np.arange(T, dtype=np.int64) // tps
    s_starts = np.arange(int(step_T[-1]) + 1) * tps
    sizes = np.minimum(s_starts + tps, T) - s_starts
    rank_T = (np.arange(T) - s_starts[step_T]) * R // sizes[step_T]
    bnew = pos_T % TOPIC_BLOCK == 0 if topic_drift > 0.0 else pos_T == 0  # topic block starts
    new = rng.random(T) < 1.0 / reuse_span  # segment starts
    new |= bnew
    new[s_starts] = True
    new[1:] |= rank_T[1:] != rank_T[:-1]
    seg_T = np.cumsum(new) - 1
    seg_first_G = np.flatnonzero(new)
    blk_T = np.cumsum(bnew) - 1
    bfirst = np.flatnonzero(bnew)
    norm = 1.0 / np.sqrt(1.0 + topic_drift**2 * pos_T[bfirst] / TOPIC_SCALE)
    return Layout(seq_T, pos_T, step_T, rank_T, seg_T, seg_first_G, blk_T[seg_first_G], seq_first_N,
                  seq_T[bfirst], pos_T[bfirst] == 0, norm.astype(np.float32), N)


def topic_table(
    rng: np.random.Generator, lay: Layout, E: int, topic: float, topic_drift: float,
    geo_NE: np.ndarray | None = None, geometry: float = 0.0,
) -> np.ndarray | None:
    """One layer's topic offsets per topic block, float32 [blocks, E] (None when ``topic`` is 0).

    Block b of sequence s: ``topic · (z_s + w · W_b) · norm_b`` with z_s ~ N(0, 1) per sequence
    and expert: ``sqrt(1 - geometry²) ·`` independent draws ``+ geometry · geo_NE[s]`` (the
    sequence's latent preferences [sequences, E], standard deviation 1), W_b the sum of N(0, 1) increments of the sequence's blocks after its first and
    w = drift · sqrt(TOPIC_BLOCK / TOPIC_SCALE).
    """
    if topic <= 0.0:
        return None
    z = rng.standard_normal((lay.num_seq, E), dtype=np.float32)
    if geo_NE is not None and geometry > 0.0:
        z *= np.float32(np.sqrt(1.0 - geometry**2))
        z += np.float32(geometry) * geo_NE
    base = z[lay.blk_seq_B]
    if topic_drift > 0.0:
        inc = rng.standard_normal((len(lay.blk_seq_B), E), dtype=np.float32)
        inc[lay.blk_first_B] = 0.0
        walk = np.cumsum(inc, axis=0)
        first = np.maximum.accumulate(np.where(lay.blk_first_B, np.arange(len(lay.blk_seq_B)), 0))
        walk -= walk[first]  # restart the walk at each sequence's first block
        base += np.float32(topic_drift * np.sqrt(TOPIC_BLOCK / TOPIC_SCALE)) * walk
        base *= lay.blk_norm_B[:, None]
    base *= np.float32(topic)
    return base


def segment_table(
    rng: np.random.Generator, lay: Layout, row_G: np.ndarray, step_domain_XE: np.ndarray,
    topic_BE: np.ndarray | None, reuse: float,
) -> np.ndarray:
    """One layer's logits per reuse segment, float32 [segments, E]: the segment's row ``row_G`` of
    the (step, domain) popularity table + its topic block's offsets + reuse offsets."""
    if reuse > 0.0:
        table = rng.standard_normal((len(row_G), step_domain_XE.shape[1]), dtype=np.float32)
        table *= np.float32(reuse)
        table += step_domain_XE[row_G]
    else:
        table = step_domain_XE[row_G].astype(np.float32)
    if topic_BE is not None:
        table += topic_BE[lay.seg_blk_G]
    return table
