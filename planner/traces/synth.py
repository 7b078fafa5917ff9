"""Synthetic routing traces with the structure real MoE routing shows.

Each property is one parameter, reproducible from ``seed``. Structure parameters left at None
take the values fitted to real routing for the model (:mod:`planner.traces.synth_defaults`,
``planner/data/synth_defaults.json``: DeepSeek-V2-Lite per token, Qwen3-30B-A3B, OLMoE,
Mixtral-8x7B and DeepSeek-V3 from published counts; other models their family's entry or the
generic one, DeepSeek-V2-Lite's fit).

- ``skew`` — per-layer expert popularity. Layer l has Zipf exponent
  ``s_l = skew · exp(0.35 · z_l)`` (so layers differ; z_l the L quantiles of N(0, 1) in random
  order, so that the layers' spread, and the median layer, are the same for every seed) over a
  random ranking of its experts (which experts are hot differs by layer): log-popularity
  ``-s_l · log(1 + rank)``.
- ``affinity`` — cross-layer affinity. Each layer l has a random permutation
  ``next_l: E -> E`` (an expert's preferred successor, mapping co-activation clusters onto
  clusters); each of a token's k experts e at layer l is followed at layer l+1 by its successor
  with probability ``a_l(e)``, drawn per expert uniformly over the widest range in [0, 1] whose
  mean is ``affinity`` (some experts have near-certain successors, others none: the best guess
  of the next layer is more reliable than the rest, as in real routing).
- ``coactivation`` — experts come in clusters of ``cluster_size`` (within a routing group when
  groups exist), and each cluster has a position in a latent space (a unit vector of
  :data:`LATENT_DIM` dimensions, uniform on the sphere). Each token has a centre u there (a
  unit vector) and adds ``coactivation · sqrt(d) · <u, x_c>`` (standard deviation
  ``coactivation``) to the logits of cluster c's experts: its k experts come from one
  neighbourhood, so nearby pairs are picked together far more often than at random and the many
  distant pairs less (real routing's median pair lift is below independence and its top pairs
  several times above). Successor clusters take their predecessors' positions at the next
  layer, and a token's centre at layer l+1 is ``affinity · (its layer-l centre) +
  sqrt(1 - affinity²) · fresh``, normalized, so that the experts it picks freely agree with those
  it follows. A per-layer offset per cluster (:func:`_even_latent`) makes the latent
  preferences (tokens' and requests') popularity-neutral: each cluster keeps its share of the
  layer's popularity, and an isolated cluster is not hot.
- ``drift`` — popularity moves over steps: a Gaussian random walk on the log-popularity whose
  total standard deviation from the first to the last step is ``drift``.
- sequences — tokens belong to requests (``seq_id``, ``pos`` in the trace) of log-normal length
  (median ``seq_len``, log-spread ``seq_len_spread``). ``topic``: each sequence has per-layer
  log-popularity offsets of that standard deviation, drifting along the sequence
  (``topic_drift``); ``topic_geometry`` (in [0, 1]): that share of the topic is latent, the
  preferences of a sequence centre (carried across layers like a token's) rather than
  independent per expert, so a request favours a neighbourhood of experts; ``reuse``: offsets of that standard deviation shared by runs of about
  ``reuse_span`` consecutive tokens, so that a token re-picks the experts its sequence just
  used; ``repick``: a token at an odd position re-picks each expert of a neighbour with this
  probability (tokens at even positions are drawn first). All three scale with depth (weaker
  at the first layers, :data:`_SEQ_STRENGTH`); a run of ``reuse_span`` tokens also shares its
  affinity coins (a segment follows alike). Details:
  :mod:`planner.traces.synth_seq`. Per-sequence topics are also what makes small batches more
  skewed than large ones, and ranks holding few sequences differ.
- ``rank_mix`` — data-parallel ranks see different inputs. There are ``num_domains`` input
  domains with their own log-popularity offsets (N(0, domain_spread²) per layer and expert,
  centred so that an even mix of domains has the layer's Zipf popularity); each sequence
  belongs to one domain, drawn from the mixture of the rank and step it starts on:
  ``(1 - rank_mix) · uniform + rank_mix · Dirichlet(0.3)``, drawn afresh each step
  (sequences are reassigned to ranks every step, docs/facts.md §6). ``rank_mix = 0``: every rank
  sees the same mixture. ``sticky_ranks``: each rank keeps its mixture for every step instead
  (decode serving, where a request stays on its data-parallel rank until it finishes, or a
  front end that routes by tenant or language); ``rank_groups = G`` gives the G consecutive
  ranks of a block (e.g. the GPUs of a node) one shared mixture — locality at node level.
- ``n_group`` / ``topk_group`` — group-limited routing (DeepSeek): a token first keeps the
  ``topk_group`` groups with the highest best score, then picks its k experts inside them.

Sampling (:func:`_sample_layer`) is Plackett-Luce by the Gumbel-top-k trick.

Steps and ranks: sequences in arrival order fill steps of ``tokens_per_step`` tokens (whole
sequences, or chunks of a long one); the tokens of a step are laid out rank by rank in equal
contiguous blocks (the default of :meth:`planner.traces.Trace.source_ranks`) and
``source_rank`` is stored explicitly. A workload can re-form steps from ``seq_id`` / ``pos``
(:mod:`planner.traces.steps`).

The structure (popularity, successors, clusters, domains) depends only on the seed and the
model shape, not on the number of tokens: a longer trace with the same seed has the same
experts hot.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from planner.errors import InputError
from planner.specs.model import ModelSpec
from planner.traces import synth_defaults
from planner.traces.synth_seq import Layout, build_layout, segment_table, seq_lengths, topic_table
from planner.traces.trace import Trace

#: Logit bonus that makes an affinity-forced expert win its top-k slot (perturbed scores are
#: O(10), so anything above BOOST / 2 was boosted).
_BOOST = np.float32(1.0e4)
#: Spread of the per-layer Zipf exponent around ``skew`` (log-normal sigma).
_SKEW_SPREAD = 0.35
_NORMAL = NormalDist()
#: Strength of the sequence structure (topic, reuse, repick) by relative depth l / (L - 1):
#: linear between these points, the shape of DeepSeek-V2-Lite's per-layer temporal reuse on
#: Puffin prompts (arXiv 2508.17137's recording: 0.14 at the first MoE layer, ~0.33 at 40% depth,
#: 0.20 at the last).
_SEQ_DEPTH = (0.0, 0.4, 1.0)
_SEQ_STRENGTH = (0.2, 1.0, 0.6)
#: Dimension of the latent space of co-activation (experts' positions, tokens' and sequences'
#: centres). Small, so that a centre favours a neighbourhood and most pairs of experts are far
#: apart: on DeepSeek-V2-Lite's routing (tools/calibrate_synth.py) 4 matched the pair-lift
#: percentiles best among 2, 3, 4, 6 and 8 (2-3: too few pairs stand out, 6-8: the median pair
#: is not pushed below independence).
LATENT_DIM = 4
#: Sampled centres and fixed-point steps of the latent popularity correction (:func:`_even_latent`).
_EVEN_SAMPLES, _EVEN_STEPS = 2048, 30
#: Dirichlet concentration of a rank's domain mixture at rank_mix = 1 (small: 1-2 domains).
_RANK_DIRICHLET = 0.3


def _pick(name: str, given: int | None, from_model: int | None) -> int | None:
    if given is not None and from_model is not None and int(given) != int(from_model):
        raise InputError(f"synth: {name} {given} conflicts with the model's {from_model}")
    return given if given is not None else from_model


def _check_range(name: str, value: float, lo: float, hi: float | None = None) -> float:
    v = float(value)
    if not np.isfinite(v) or v < lo or (hi is not None and v > hi):
        rule = f"in [{lo:g}, {hi:g}]" if hi is not None else f">= {lo:g}"
        raise InputError(f"synth: {name} must be {rule} (got {value})")
    return v


def _topk_desc(score_TE: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of each row of float32 [T, E], in descending order: (ids [T, k], scores [T, k]).

    Fast path: map each float to an order-preserving int32, overwrite its lowest
    ceil(log2 E) bits with the column index and sort the rows (a SIMD sort is several times
    faster than argpartition + argsort). The returned scores lose those low mantissa bits
    (relative error < 2**-10 for E <= 4096), and exact ties break by index.
    """
    T, E = score_TE.shape
    bits = max(1, int(E - 1).bit_length())
    if bits > 12:
        top = np.argpartition(score_TE, E - k, axis=1)[:, E - k :]
        val = np.take_along_axis(score_TE, top, axis=1)
        order = np.argsort(-val, axis=1)
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(val, order, axis=1)
    b = np.ascontiguousarray(score_TE, dtype=np.float32).view(np.int32)
    key = b >> 31  # -1 for negative floats, 0 otherwise
    key &= np.int32(0x7FFFFFFF)
    key ^= b  # negative floats: flip magnitude bits so that int order = float order
    key &= np.int32(~((1 << bits) - 1))
    key |= np.arange(E, dtype=np.int32)
    key.sort(axis=1)  # in place: key is a fresh array
    top = key[:, : E - k - 1 : -1]  # largest k, descending
    ids = top & np.int32((1 << bits) - 1)
    top &= np.int32(~((1 << bits) - 1))
    m = top >> 31
    m &= np.int32(0x7FFFFFFF)
    top ^= m
    return ids, top.view(np.float32)


def synth_trace(
    model: ModelSpec | None = None,
    *,
    num_layers: int | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    num_tokens: int = 8192,
    tokens_per_step: int = 512,
    num_ranks: int = 8,
    skew: float | None = None,
    affinity: float | None = None,
    coactivation: float | None = None,
    drift: float = 0.3,
    rank_mix: float = 0.5,
    sticky_ranks: bool = False,
    rank_groups: int = 1,
    n_group: int | None = None,
    topk_group: int | None = None,
    num_domains: int = 8,
    domain_spread: float | None = None,
    cluster_size: int | None = None,
    weights: bool = True,
    model_name: str | None = None,
    seed: int = 0,
    seq_len: float | None = None,
    seq_len_spread: float | None = None,
    topic: float | None = None,
    topic_drift: float | None = None,
    topic_geometry: float | None = None,
    reuse: float | None = None,
    reuse_span: float | None = None,
    repick: float | None = None,
    sequences: bool = True,
) -> Trace:
    """A synthetic per-token :class:`Trace` with sequences (properties and parameters: module
    docstring).

    ``model`` fills ``num_layers`` (its MoE layers), ``num_experts``, ``top_k``, ``n_group``,
    ``topk_group`` and the name; explicit values must agree with it. Structure parameters left
    at None take the values fitted for the model (:func:`synth_defaults`). ``cluster_size``
    defaults to the largest divisor of the experts per group that is <= max(2, top_k // 2).
    ``weights=False`` leaves ``topk_weights`` out; ``model_name`` names a trace made without
    a model. ``sequences=False`` leaves ``seq_id`` / ``pos`` out (same routing): the planner then
    keeps the trace's steps instead of forming steps from its sequences for a workload.
    """
    L, E, k, G, TG = _shape(model, num_layers, num_experts, top_k, n_group, topk_group,
                            num_tokens, tokens_per_step, num_ranks, num_domains)
    name = model_name if model_name is not None else (model.name if model is not None else None)
    p = _params(model, name, dict(skew=skew, affinity=affinity, coactivation=coactivation,
                                  domain_spread=domain_spread, seq_len=seq_len, seq_len_spread=seq_len_spread,
                                  topic=topic, topic_drift=topic_drift, topic_geometry=topic_geometry,
                                  reuse=reuse, reuse_span=reuse_span, repick=repick))
    drift = _check_range("drift", drift, 0.0)
    rank_mix = _check_range("rank_mix", rank_mix, 0.0, 1.0)
    T, tps, R, D = int(num_tokens), int(tokens_per_step), int(num_ranks), int(num_domains)
    S = -(-T // tps)
    cs = _cluster_size(cluster_size, k, E // G)
    if rank_groups <= 0 or R % rank_groups:
        raise InputError(f"synth: rank_groups must be > 0 and divide num_ranks {R} (got {rank_groups})")

    # One generator per concern, drawn in this order: structure, drift, rank mixtures, tokens,
    # sequences (lengths, layout, then each layer's topics and reuse offsets).
    ss = np.random.SeedSequence(int(seed))
    s_struct, s_drift, s_mix, s_tok, s_seq, s_even = (np.random.default_rng(s) for s in ss.spawn(6))
    st = _structure(s_struct, L, E, G, cs, D, p["skew"], p["domain_spread"], p["affinity"])
    walk_SLE = _drift_walk(s_drift, S, L, E, drift)
    lens = seq_lengths(s_seq, T, p["seq_len"], p["seq_len_spread"])
    lay = build_layout(s_seq, T, tps, R, lens, p["reuse_span"], p["topic_drift"])
    dom_N = _seq_domains(s_mix, s_tok, lay, S, R, D, int(rank_groups), rank_mix, sticky_ranks)
    row_G = lay.step_T[lay.seg_first_G] * D + dom_N[lay.seq_T[lay.seg_first_G]]

    ids_LTk, w_LTk = _route(st, lay, p, s_seq, s_tok, s_even, walk_SLE, row_G, L, E, k, S, D, G, TG, weights)

    return Trace(
        ids_LTk,
        E,
        topk_weights=w_LTk,
        step=lay.step_T,
        source_rank=lay.rank_T,
        model=name,
        source="synth",
        seq_id=lay.seq_T if sequences else None,
        pos=lay.pos_T if sequences else None,
    )


def _route(
    st: _Structure, lay: Layout, p: dict[str, float], s_seq: np.random.Generator, s_tok: np.random.Generator,
    s_even: np.random.Generator, walk_SLE: np.ndarray, row_G: np.ndarray, L: int, E: int, k: int, S: int, D: int, G: int, TG: int,
    weights: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every layer's choices (published ids [L, T, k]) and gate weights ([L, T, k] or None).

    With ``repick`` > 0 the tokens at even positions are drawn first, then those at odd
    positions, which re-pick each expert a neighbour (same sequence, either side) chose at this
    layer with probability ``repick`` (forced like an affinity successor): each pair of
    consecutive tokens shares experts beyond what their segment and topic give.
    """
    T = len(lay.seq_T)
    ids_LTk = np.empty((L, T, k), dtype=np.int32)
    w_LTk = np.empty((L, T, k), dtype=np.float32) if weights else None
    affinity, coactivation, repick = p["affinity"], p["coactivation"], p["repick"]
    if repick > 0.0:
        odd = lay.pos_T % 2 == 1
        parts = [np.flatnonzero(~odd), np.flatnonzero(odd)]
        left = parts[1] - 1  # an odd position has its predecessor in its sequence
        right = np.minimum(parts[1] + 1, T - 1)
        right = np.where((parts[1] + 1 < T) & (lay.seq_T[right] == lay.seq_T[parts[1]]), right, left)
        rows = np.arange(len(parts[1]))[:, None]
    else:
        parts = [np.arange(T)]
    prev: list[np.ndarray | None] = [None] * len(parts)
    pref: list[np.ndarray | None] = [None] * len(parts)
    geometry, u_seq = p["topic_geometry"], None
    even_LE = _even_latent(s_even, st, L, coactivation, [p["topic"] * geometry * _depth(i, L) for i in range(L)])
    top_T = np.empty((T, k), dtype=np.int32)
    val_T = np.empty((T, k), dtype=np.float32)
    for layer in range(L):
        # logits [T, E] = popularity at the step + domain + topic + reuse offsets of the token's segment
        table = (st.logpop_LE[layer] + even_LE[layer] + walk_SLE[:, layer])[:, None, :] + st.domain_DLE[None, :, layer, :]
        h = _depth(layer, L)
        geo_NE = None
        if p["topic"] > 0.0 and geometry > 0.0:  # the sequences' centres, carried like the tokens'
            u_seq = _centres(s_seq, lay.num_seq, u_seq, st, affinity)
            geo_NE = _per_expert(_latent_preferences(u_seq, st, layer, 1.0), st)
        topic_BE = topic_table(s_seq, lay, E, h * p["topic"], p["topic_drift"], geo_NE, geometry)
        seg_GE = segment_table(s_seq, lay, row_G, table.reshape(S * D, E), topic_BE, h * p["reuse"])
        for j, idx in enumerate(parts):
            seg = lay.seg_T[idx]
            logits = seg_GE[seg]
            if coactivation > 0.0:
                pref[j] = _add_cluster_preferences(s_tok, logits, pref[j], st, layer, coactivation, affinity)
            if j == 1:  # odd positions: re-pick the neighbours' experts
                tgt = np.concatenate([top_T[left], top_T[right]], axis=1)
                _force(logits, (rows * E + tgt)[s_tok.random(tgt.shape) < h * repick])
            top, val = _sample_layer(s_tok, logits, prev[j], st, layer, k, affinity, G, TG, seg, len(seg_GE))
            top_T[idx], val_T[idx], prev[j] = top, val, top
        ids_LTk[layer] = st.relabel_LE[layer][top_T]
        if w_LTk is not None:
            e = np.exp(val_T - val_T.max(axis=1, keepdims=True))
            w_LTk[layer] = e / e.sum(axis=1, keepdims=True)
    return ids_LTk, w_LTk


def _params(model: ModelSpec | None, name: str | None, given: dict[str, float | None]) -> dict[str, float]:
    """The structure parameters: given values, checked, else the model's fitted defaults."""
    base = synth_defaults.defaults_for(name, model.family if model is not None else None)
    return {p: synth_defaults.check(p, v if v is not None else base[p]) for p, v in given.items()}


def _shape(
    model: ModelSpec | None, num_layers: int | None, num_experts: int | None, top_k: int | None,
    n_group: int | None, topk_group: int | None, num_tokens: int, tokens_per_step: int,
    num_ranks: int, num_domains: int,
) -> tuple[int, int, int, int, int]:
    """(layers L, experts E, top-k k, groups G, groups kept TG) from the model and the arguments."""
    m_layers = model.num_moe_layers if model is not None else None
    L = _pick("num_layers", num_layers, m_layers)
    E = _pick("num_experts", num_experts, model.num_experts if model is not None else None)
    k = _pick("top_k", top_k, model.top_k if model is not None else None)
    if n_group is None and topk_group is None and model is not None:
        n_group, topk_group = model.n_group, model.topk_group
    if L is None or E is None or k is None:
        raise InputError("synth: give a model or all of num_layers, num_experts and top_k")
    L, E, k = int(L), int(E), int(k)
    for name, v in (("num_layers", L), ("num_experts", E), ("top_k", k), ("num_tokens", num_tokens),
                    ("tokens_per_step", tokens_per_step), ("num_ranks", num_ranks), ("num_domains", num_domains)):
        if int(v) <= 0:
            raise InputError(f"synth: {name} must be > 0 (got {v})")
    if k > E:
        raise InputError(f"synth: top_k ({k}) must be <= num_experts ({E})")
    if (n_group is None) != (topk_group is None):
        raise InputError("synth: n_group and topk_group must be given together")
    G = int(n_group) if n_group is not None else 1
    TG = int(topk_group) if topk_group is not None else 1
    if n_group is not None:
        if G <= 0 or TG <= 0 or E % G:
            raise InputError(f"synth: n_group ({G}) must be > 0 and divide num_experts ({E})")
        if TG > G:
            raise InputError(f"synth: topk_group ({TG}) must be <= n_group ({G})")
        if k > TG * (E // G):
            raise InputError(f"synth: top_k ({k}) must be <= topk_group × experts per group ({TG} × {E // G})")
    return L, E, k, G, TG


def _cluster_size(cluster_size: int | None, k: int, epg: int) -> int:
    """The co-activation cluster size (default: largest divisor of ``epg`` <= max(2, k // 2))."""
    if cluster_size is None:
        target = min(max(2, k // 2), epg)
        return max(d for d in range(1, target + 1) if epg % d == 0)
    cs = int(cluster_size)
    if not 0 < cs <= epg:
        raise InputError(f"synth: cluster_size must be in [1, {epg}] (got {cluster_size})")
    return cs


@dataclass(frozen=True)
class _Structure:
    """What depends only on the seed and the model shape (L layers, E experts, C clusters).

    Experts are generated in an internal order in which each cluster is a contiguous block of
    ``cs`` ids inside its group (so a token's cluster preferences add by broadcasting);
    ``relabel_LE`` maps internal ids to the published ids, shuffling within each group.
    """

    relabel_LE: np.ndarray  # [L, E] internal id -> published id
    logpop_LE: np.ndarray  # [L, E] Zipf log-popularity
    domain_DLE: np.ndarray  # [D, L, E] domain offsets
    cluster_E: np.ndarray  # [E] cluster of each internal id
    cnext_LC: np.ndarray | None  # [L-1, C] cluster successor map (contiguous clusters only)
    pos_LCd: np.ndarray  # [L, C, LATENT_DIM] float32 latent position of each cluster (unit vectors)
    next_LE: np.ndarray  # [L-1, E] expert successor permutation, layer l -> l+1
    follow_LE: np.ndarray  # [L-1, E] probability that an expert is followed by its successor
    C: int  # clusters
    cs: int  # cluster size
    contiguous: bool  # clusters tile every group exactly


def _structure(
    rng: np.random.Generator, L: int, E: int, G: int, cs: int, D: int, skew: float,
    domain_spread: float, affinity: float,
) -> _Structure:
    """Popularity, domains, clusters and successors, drawn from ``rng`` in a fixed order."""
    epg = E // G
    relabel_LE = np.stack(
        [np.concatenate([g * epg + rng.permutation(epg) for g in range(G)]) for _ in range(L)]
    )
    # the layers' exponents are the L quantiles of the log-normal in random order: the spread
    # between layers is the same for every seed (a random draw moves the median layer's skew)
    z_L = np.array([_NORMAL.inv_cdf((i + 0.5) / L) for i in range(L)])[rng.permutation(L)]
    exponent_L = skew * np.exp(_SKEW_SPREAD * z_L)
    rank_LE = np.argsort(rng.random((L, E)), axis=1)  # popularity rank of each expert
    logpop_LE = -exponent_L[:, None] * np.log1p(rank_LE)
    # domain offsets, centred so that an even mix of domains keeps the popularity exp(logpop)
    domain_DLE = domain_spread * rng.standard_normal((D, L, E))
    domain_DLE -= np.log(np.exp(domain_DLE).mean(axis=0, keepdims=True))
    cpg = -(-epg // cs)  # clusters per group
    C = G * cpg
    cluster_E = (np.arange(E) // epg) * cpg + (np.arange(E) % epg) // cs
    contiguous = epg % cs == 0
    # successor permutations next_LE[l]: layer l -> l+1. With equal clusters they map whole
    # clusters onto clusters, so experts co-selected at l have co-selected successors.
    cnext_LC = None
    if contiguous:
        cnext_LC = np.stack([rng.permutation(C) for _ in range(max(L - 1, 1))])
        next_LE = np.stack(
            [(cnext_LC[i][:, None] * cs + rng.permutation(cs)[None, :]).ravel() for i in range(max(L - 1, 1))]
        )
    else:
        next_LE = np.argsort(rng.random((max(L - 1, 1), E)), axis=1)
    # follow probabilities: uniform, as wide as [0, 1] allows, with mean ``affinity``
    u = rng.random((max(L - 1, 1), E))
    follow_LE = np.where(affinity <= 0.5, 2.0 * affinity * u, 1.0 - 2.0 * (1.0 - affinity) * u)
    # an expert whose predecessor is often followed gets many forced picks: lower its free picks
    # by log(1 - a_pred) so that unequal follow probabilities leave the popularity as it was
    for i in range(L - 1):
        pred = np.argsort(next_LE[i])  # pred[f]: the expert whose successor is f
        comp = np.log(np.maximum(1.0 - follow_LE[i][pred], 0.02))
        logpop_LE[i + 1] += comp - comp.mean()
    pos_LCd = _latent_positions(rng, L, C, cnext_LC)
    return _Structure(relabel_LE, logpop_LE, domain_DLE, cluster_E, cnext_LC, pos_LCd, next_LE, follow_LE, C, cs,
                      contiguous)


def _latent_positions(rng: np.random.Generator, L: int, C: int, cnext_LC: np.ndarray | None) -> np.ndarray:
    """Each cluster's latent position per layer, unit vectors float32 [L, C, LATENT_DIM]: uniform
    on the sphere at the first layer; a cluster's successor (``cnext_LC``) takes its position at
    the next layer (fresh positions per layer when clusters do not map onto clusters)."""
    pos = np.empty((L, C, LATENT_DIM), dtype=np.float32)
    for layer in range(L):
        if layer and cnext_LC is not None:
            pos[layer][cnext_LC[layer - 1]] = pos[layer - 1]
        else:
            x = rng.standard_normal((C, LATENT_DIM))
            pos[layer] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return pos


def _drift_walk(rng: np.random.Generator, S: int, L: int, E: int, drift: float) -> np.ndarray:
    """Log-popularity offsets [S, L, E]: a random walk over steps with total std ``drift``."""
    inc_SLE = rng.standard_normal((S, L, E)) * (drift / np.sqrt(max(S - 1, 1)))
    inc_SLE[0] = 0.0
    return np.cumsum(inc_SLE, axis=0)


def _seq_domains(
    s_mix: np.random.Generator, s_tok: np.random.Generator, lay: Layout, S: int, R: int, D: int,
    rank_groups: int, rank_mix: float, sticky_ranks: bool,
) -> np.ndarray:
    """Each sequence's input domain [N], drawn from the mixture of the step and rank it starts on."""
    blocks = R // rank_groups
    mix = s_mix.dirichlet(np.full(D, _RANK_DIRICHLET), size=(1 if sticky_ranks else S, blocks))
    mix = np.repeat(np.broadcast_to(mix, (S, blocks, D)), rank_groups, axis=1)
    mix_SRD = (1.0 - rank_mix) / D + rank_mix * mix
    cum_SRD = np.cumsum(mix_SRD, axis=-1)
    first = lay.seq_first_N
    u_N = s_tok.random(len(first))
    cum_ND = cum_SRD[lay.step_T[first], lay.rank_T[first]]
    return np.minimum((u_N[:, None] > cum_ND).sum(axis=1), D - 1)


def _centres(
    rng: np.random.Generator, n: int, prev_nd: np.ndarray | None, st: _Structure, affinity: float
) -> np.ndarray:
    """``n`` latent centres, unit vectors float32 [n, LATENT_DIM]: uniform on the sphere, or mixed
    with the previous layer's centres ``prev_nd`` with weight ``affinity`` (the successor clusters
    sit where their predecessors were, so a centre carried on keeps its neighbourhood)."""
    d = LATENT_DIM
    u = rng.standard_normal((n, d), dtype=np.float32)
    if prev_nd is not None and st.contiguous and affinity > 0.0:
        u *= np.float32(np.sqrt(1.0 - affinity**2) / np.sqrt(d))
        u += np.float32(affinity) * prev_nd
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), np.float32(1e-12))
    return u


def _latent_preferences(u_nd: np.ndarray, st: _Structure, layer: int, scale: float) -> np.ndarray:
    """Preference of each centre for each cluster, ``scale · sqrt(d) · <u, x_c>`` (standard
    deviation ``scale`` over uniform centres), float32 [n, C]."""
    w_dC = st.pos_LCd[layer].T * np.float32(scale * np.sqrt(LATENT_DIM))
    return sum(u_nd[:, d : d + 1] * w_dC[d] for d in range(LATENT_DIM))  # a BLAS product this thin waits on threads


def _depth(layer: int, L: int) -> float:
    """Strength of the sequence structure at ``layer`` of ``L`` (:data:`_SEQ_STRENGTH`)."""
    return float(np.interp(layer / max(L - 1, 1), _SEQ_DEPTH, _SEQ_STRENGTH))


def _even_latent(
    rng: np.random.Generator, st: _Structure, L: int, coactivation: float, seq_scale_L: list[float]
) -> np.ndarray:
    """Per-layer offsets [L, E] that leave every cluster's share of the layer's popularity as
    it is under the latent preferences (zeros without them).

    Clusters sit at random on the sphere, so some are isolated: a centre near one has no
    rivals, and without a correction such clusters come out hot in a way that depends on the
    seed (popularity is ``skew``'s job). With w_c the log of cluster c's total popularity
    (sum of exp(logpop) over its experts) and P_c = softmax(w)_c its share, the offset b_c
    solves mean over centres of softmax(w + pref + b)_c = P_c by fixed-point steps
    b <- b - log(mean share / P) on
    :data:`_EVEN_SAMPLES` sampled pairs of a token centre (scale ``coactivation``) and a
    request centre (scale ``seq_scale_L[l]``).
    """
    out = np.zeros((L, st.C), dtype=np.float32)
    if _EVEN_STEPS and (coactivation > 0.0 or max(seq_scale_L, default=0.0) > 0.0):
        u_tok = _centres(rng, _EVEN_SAMPLES, None, st, 0.0)
        u_seq = _centres(rng, _EVEN_SAMPLES, None, st, 0.0)
        for layer in range(L):
            pref = _latent_preferences(u_tok, st, layer, coactivation)
            pref += _latent_preferences(u_seq, st, layer, seq_scale_L[layer])
            w_C = _cluster_logsumexp(st.logpop_LE[layer], st)
            target = np.exp(w_C - w_C.max())
            target /= target.sum()
            # softmax(pref + a)_c = P_c exp(a_c) / (P · exp(a)), P = exp(pref) once per layer
            P = np.exp(pref - pref.max(axis=1, keepdims=True), dtype=np.float64)
            b = out[layer]
            for _ in range(_EVEN_STEPS):
                a = w_C + b
                v = np.exp(a - a.max(), dtype=np.float64)
                share = v * (P.T @ (1.0 / (P @ v))) / len(P)
                b -= np.log(share / target).astype(np.float32)
            b -= b.mean()
    return _per_expert(out, st)


def _cluster_logsumexp(logpop_E: np.ndarray, st: _Structure) -> np.ndarray:
    """log of each cluster's total popularity, sum of exp(logpop) over its experts [C]."""
    m = float(logpop_E.max())
    return (np.log(np.bincount(st.cluster_E, weights=np.exp(logpop_E - m), minlength=st.C)) + m).astype(np.float32)


def _per_expert(pref_nC: np.ndarray, st: _Structure) -> np.ndarray:
    """Cluster preferences [n, C] spread to the clusters' experts (internal ids) [n, E]."""
    return np.repeat(pref_nC, st.cs, axis=1) if st.contiguous else np.take(pref_nC, st.cluster_E, axis=1)


def _add_cluster_preferences(
    rng: np.random.Generator, logits_TE: np.ndarray, u_Td: np.ndarray | None,
    st: _Structure, layer: int, coactivation: float, affinity: float,
) -> np.ndarray:
    """Add each token's latent preference (a fresh centre, mixed with its previous layer's) to
    ``logits_TE`` in place; return the centres [T, LATENT_DIM]."""
    T = logits_TE.shape[0]
    u = _centres(rng, T, u_Td, st, affinity)
    pref = _latent_preferences(u, st, layer, coactivation)
    if st.contiguous:
        logits_TE.reshape(T, st.C, st.cs)[...] += pref[:, :, None]
    else:
        logits_TE += np.take(pref, st.cluster_E, axis=1)
    return u


def _force(score_TE: np.ndarray, flat: np.ndarray) -> None:
    """Give the flat positions ``flat`` of ``score_TE`` the bonus that wins a top-k slot (once,
    even when named twice or already forced)."""
    view = score_TE.reshape(-1)
    cur = view[flat]
    view[flat] = np.where(cur > _BOOST / 2, cur, cur + _BOOST)


def _sample_layer(
    rng: np.random.Generator, logits_TE: np.ndarray, prev_Tk: np.ndarray | None, st: _Structure,
    layer: int, k: int, affinity: float, G: int, TG: int, seg_T: np.ndarray, num_seg: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k of ``logits_TE`` (overwritten): internal ids [T, k] and scores [T, k].

    Sampling: a token's k experts at a layer are drawn without replacement with probability
    proportional to exp(logit) (Plackett-Luce), vectorized over tokens as the top k of
    ``logit + Gumbel noise`` (the Gumbel-top-k trick, noise ``-log X``, X ~ Exp(1)); experts forced by
    affinity get a large bonus so they are kept. Gate weights are the softmax of the selected experts' perturbed
    scores (positive, summing to 1 per token), and each token's ids are ordered by descending
    weight, as a router's ``topk`` returns them.

    Experts that follow the previous layer's picks (``prev_Tk``) by affinity (a coin per reuse
    segment and expert, ``seg_T`` [T]) are boosted to win; with group-limited routing only the
    ``TG`` best groups of ``G`` stay eligible.
    """
    T, E = logits_TE.shape
    rows_T = np.arange(T)[:, None]
    # logit - log X, X ~ Exp(1), is logit + Gumbel noise (X floored: float32 draws can be 0)
    u = rng.standard_exponential((T, E), dtype=np.float32)
    np.maximum(u, np.float32(1e-30), out=u)
    np.log(u, out=u)
    score = np.subtract(logits_TE, u, out=logits_TE)
    if prev_Tk is not None and affinity > 0.0:
        # one coin per (reuse segment, expert): the tokens of a segment follow alike
        coin = rng.random((num_seg, E), dtype=np.float32)
        follow = coin[seg_T[:, None], prev_Tk] < st.follow_LE[layer - 1][prev_Tk]
        target = st.next_LE[layer - 1][prev_Tk]
        _force(score, (rows_T * E + target)[follow])
    if G > 1 and TG < G:
        epg = E // G
        group_TG = score.reshape(T, G, epg).max(axis=2)
        keep = np.argpartition(group_TG, G - TG, axis=1)[:, G - TG :]
        allowed = np.zeros((T, G), dtype=bool)
        allowed[rows_T, keep] = True
        score.reshape(T, G, epg)[~allowed] = -np.inf
    top, val = _topk_desc(score, k)
    boosted = val > _BOOST / 2
    if boosted.any():  # forced experts sorted first; order by the token's own scores
        val = np.where(boosted, val - _BOOST, val)
        order = np.argsort(-val, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        val = np.take_along_axis(val, order, axis=1)
    return top, val
