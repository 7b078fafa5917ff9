"""Synthetic routing traces with the structure real MoE routing shows.

Each property is one parameter, reproducible from ``seed``:

- ``skew`` — per-layer expert popularity. Layer l has Zipf exponent
  ``s_l = skew · exp(0.35 · N(0, 1))`` (so layers differ) over a random ranking of its experts
  (which experts are hot differs by layer): log-popularity ``-s_l · log(1 + rank)``.
- ``affinity`` — cross-layer affinity. Each layer l has a random permutation
  ``next_l: E -> E`` (an expert's preferred successor, mapping co-activation clusters onto
  clusters); each of a token's k experts at layer l is followed at layer l+1 by its successor
  with probability ``affinity``.
- ``coactivation`` — experts come in clusters of ``cluster_size`` (within a routing group when
  groups exist). Each token has a preference of standard deviation ``coactivation`` per
  cluster, added to the logits of all the cluster's experts, so picking one raises the chance
  of its partners. With affinity, a token's preferences at layer l+1 are
  ``affinity · (its layer-l preferences, moved through the cluster map) + sqrt(1 - affinity²) ·
  fresh`` so that the experts it picks freely agree with those it follows.
- ``drift`` — popularity moves over steps: a Gaussian random walk on the log-popularity whose
  total standard deviation from the first to the last step is ``drift``.
- ``rank_mix`` — data-parallel ranks see different inputs. There are ``num_domains`` input
  domains with their own log-popularity offsets (N(0, domain_spread²) per layer and expert,
  centred so that an even mix of domains has the layer's Zipf popularity); each token
  belongs to one domain, drawn from its rank's mixture for that step:
  ``(1 - rank_mix) · uniform + rank_mix · Dirichlet(0.3)``, drawn afresh each step
  (sequences are reassigned to ranks every step, docs/facts.md §6). ``rank_mix = 0``: every rank
  sees the same mixture. ``sticky_ranks``: each rank keeps its mixture for every step instead
  (decode serving, where a request stays on its data-parallel rank until it finishes, or a
  front end that routes by tenant or language); ``rank_groups = G`` gives the G consecutive
  ranks of a block (e.g. the GPUs of a node) one shared mixture — locality at node level.
- ``n_group`` / ``topk_group`` — group-limited routing (DeepSeek): a token first keeps the
  ``topk_group`` groups with the highest best score, then picks its k experts inside them.

Sampling (:func:`_sample_layer`) is Plackett-Luce by the Gumbel-top-k trick.

Tokens of a step are laid out rank by rank in equal contiguous blocks (the default of
:meth:`planner.traces.Trace.source_ranks`) and ``source_rank`` is stored explicitly.

The structure (popularity, successors, clusters, domains) depends only on the seed and the
model shape, not on the number of tokens: a longer trace with the same seed has the same
experts hot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.errors import InputError
from planner.specs.model import ModelSpec
from planner.traces.trace import Trace

#: Logit bonus that makes an affinity-forced expert win its top-k slot (perturbed scores are
#: O(10), so anything above BOOST / 2 was boosted).
_BOOST = np.float32(1.0e4)
#: Spread of the per-layer Zipf exponent around ``skew`` (log-normal sigma).
_SKEW_SPREAD = 0.35
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
    top = np.sort(key, axis=1)[:, : E - k - 1 : -1]  # largest k, descending
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
    skew: float = 0.4,
    affinity: float = 0.5,
    coactivation: float = 2.0,
    drift: float = 0.3,
    rank_mix: float = 0.5,
    sticky_ranks: bool = False,
    rank_groups: int = 1,
    n_group: int | None = None,
    topk_group: int | None = None,
    num_domains: int = 8,
    domain_spread: float = 1.0,
    cluster_size: int | None = None,
    weights: bool = True,
    model_name: str | None = None,
    seed: int = 0,
) -> Trace:
    """A synthetic per-token :class:`Trace` (properties and parameters: module docstring).

    ``model`` fills ``num_layers`` (its MoE layers), ``num_experts``, ``top_k``, ``n_group``,
    ``topk_group`` and the name; explicit values must agree with it. ``cluster_size`` defaults
    to the largest divisor of the experts per group that is <= max(2, top_k // 2).
    ``weights=False`` leaves ``topk_weights`` out; ``model_name`` names a trace made without
    a model.
    """
    L, E, k, G, TG = _shape(model, num_layers, num_experts, top_k, n_group, topk_group,
                            num_tokens, tokens_per_step, num_ranks, num_domains)
    skew = _check_range("skew", skew, 0.0)
    affinity = _check_range("affinity", affinity, 0.0, 1.0)
    coactivation = _check_range("coactivation", coactivation, 0.0)
    drift = _check_range("drift", drift, 0.0)
    rank_mix = _check_range("rank_mix", rank_mix, 0.0, 1.0)
    domain_spread = _check_range("domain_spread", domain_spread, 0.0)
    T, tps, R, D = int(num_tokens), int(tokens_per_step), int(num_ranks), int(num_domains)
    S = -(-T // tps)
    cs = _cluster_size(cluster_size, k, E // G)

    # One generator per concern, drawn in this order: structure, drift, rank mixtures, tokens.
    ss = np.random.SeedSequence(int(seed))
    s_struct, s_drift, s_mix, s_tok = (np.random.default_rng(s) for s in ss.spawn(4))
    st = _structure(s_struct, L, E, G, cs, D, skew, domain_spread)
    walk_SLE = _drift_walk(s_drift, S, L, E, drift)
    step_T, rank_T, table_index_T = _token_domains(
        s_mix, s_tok, T, tps, S, R, D, int(rank_groups), rank_mix, sticky_ranks
    )

    ids_LTk = np.empty((L, T, k), dtype=np.int32)
    w_LTk = np.empty((L, T, k), dtype=np.float32) if weights else None
    prev: np.ndarray | None = None
    pref_TC: np.ndarray | None = None
    for layer in range(L):
        # logits [T, E] = popularity at the token's step + its domain's offsets
        table = (st.logpop_LE[layer] + walk_SLE[:, layer])[:, None, :] + st.domain_DLE[None, :, layer, :]
        logits = table.reshape(S * D, E).astype(np.float32)[table_index_T]
        if coactivation > 0.0:
            pref_TC = _add_cluster_preferences(s_tok, logits, pref_TC, st, layer, coactivation, affinity)
        top, val = _sample_layer(s_tok, logits, prev, st, layer, k, affinity, G, TG)
        ids_LTk[layer] = st.relabel_LE[layer][top]
        if w_LTk is not None:
            e = np.exp(val - val.max(axis=1, keepdims=True))
            w_LTk[layer] = e / e.sum(axis=1, keepdims=True)
        prev = top

    name = model_name if model_name is not None else (model.name if model is not None else None)
    return Trace(
        ids_LTk,
        E,
        topk_weights=w_LTk,
        step=step_T,
        source_rank=rank_T,
        model=name,
        source="synth",
    )


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
    next_LE: np.ndarray  # [L-1, E] expert successor permutation, layer l -> l+1
    C: int  # clusters
    cs: int  # cluster size
    contiguous: bool  # clusters tile every group exactly


def _structure(
    rng: np.random.Generator, L: int, E: int, G: int, cs: int, D: int, skew: float,
    domain_spread: float,
) -> _Structure:
    """Popularity, domains, clusters and successors, drawn from ``rng`` in a fixed order."""
    epg = E // G
    relabel_LE = np.stack(
        [np.concatenate([g * epg + rng.permutation(epg) for g in range(G)]) for _ in range(L)]
    )
    exponent_L = skew * np.exp(_SKEW_SPREAD * rng.standard_normal(L))
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
    return _Structure(relabel_LE, logpop_LE, domain_DLE, cluster_E, cnext_LC, next_LE, C, cs, contiguous)


def _drift_walk(rng: np.random.Generator, S: int, L: int, E: int, drift: float) -> np.ndarray:
    """Log-popularity offsets [S, L, E]: a random walk over steps with total std ``drift``."""
    inc_SLE = rng.standard_normal((S, L, E)) * (drift / np.sqrt(max(S - 1, 1)))
    inc_SLE[0] = 0.0
    return np.cumsum(inc_SLE, axis=0)


def _token_domains(
    s_mix: np.random.Generator, s_tok: np.random.Generator, T: int, tps: int, S: int, R: int,
    D: int, rank_groups: int, rank_mix: float, sticky_ranks: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each token's step, source rank and row of the (step, domain) logit table, all [T]."""
    step_T = np.arange(T, dtype=np.int64) // tps
    starts = np.arange(S) * tps
    sizes = np.minimum(starts + tps, T) - starts
    pos_T = np.arange(T) - starts[step_T]
    rank_T = pos_T * R // sizes[step_T]
    if rank_groups <= 0 or R % rank_groups:
        raise InputError(f"synth: rank_groups must be > 0 and divide num_ranks {R} (got {rank_groups})")
    blocks = R // rank_groups
    mix = s_mix.dirichlet(np.full(D, _RANK_DIRICHLET), size=(1 if sticky_ranks else S, blocks))
    mix = np.repeat(np.broadcast_to(mix, (S, blocks, D)), rank_groups, axis=1)
    mix_SRD = (1.0 - rank_mix) / D + rank_mix * mix
    cum_SRD = np.cumsum(mix_SRD, axis=-1)
    u_T = s_tok.random(T)
    domain_T = np.minimum((u_T[:, None] > cum_SRD[step_T, rank_T]).sum(axis=1), D - 1)
    return step_T, rank_T, step_T * D + domain_T


def _add_cluster_preferences(
    rng: np.random.Generator, logits_TE: np.ndarray, pref_TC: np.ndarray | None,
    st: _Structure, layer: int, coactivation: float, affinity: float,
) -> np.ndarray:
    """Add one preference per (token, cluster) to ``logits_TE`` in place; return them [T, C].

    Fresh uniform noise of std ``coactivation``, mixed with the previous layer's preferences
    carried through the cluster map.
    """
    T = logits_TE.shape[0]
    fresh = rng.random((T, st.C), dtype=np.float32)
    fresh -= np.float32(0.5)
    fresh *= np.float32(coactivation * np.sqrt(12.0))
    if pref_TC is not None and st.contiguous and affinity > 0.0:
        carried = np.empty_like(pref_TC)
        carried[:, st.cnext_LC[layer - 1]] = pref_TC
        fresh *= np.float32(np.sqrt(1.0 - affinity**2))
        fresh += np.float32(affinity) * carried
    if st.contiguous:
        logits_TE.reshape(T, st.C, st.cs)[...] += fresh[:, :, None]
    else:
        logits_TE += np.take(fresh, st.cluster_E, axis=1)
    return fresh


def _sample_layer(
    rng: np.random.Generator, logits_TE: np.ndarray, prev_Tk: np.ndarray | None, st: _Structure,
    layer: int, k: int, affinity: float, G: int, TG: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k of ``logits_TE`` (overwritten): internal ids [T, k] and scores [T, k].

    Sampling: a token's k experts at a layer are drawn without replacement with probability
    proportional to exp(logit) (Plackett-Luce), vectorized over tokens as the top k of
    ``logit + Gumbel noise`` (the Gumbel-top-k trick, noise ``-log(-log U)``); experts forced by
    affinity get a large bonus so they are kept. Gate weights are the softmax of the selected experts' perturbed
    scores (positive, summing to 1 per token), and each token's ids are ordered by descending
    weight, as a router's ``topk`` returns them.

    Experts that follow the previous layer's picks (``prev_Tk``) by affinity are boosted to
    win; with group-limited routing only the ``TG`` best groups of ``G`` stay eligible.
    """
    T, E = logits_TE.shape
    rows_T = np.arange(T)[:, None]
    # logit - log(-log U) is logit + Gumbel noise (U = 0 gives -inf: never picked)
    u = rng.random((T, E), dtype=np.float32)
    with np.errstate(divide="ignore"):
        np.log(u, out=u)
        np.negative(u, out=u)
        np.log(u, out=u)
    score = np.subtract(logits_TE, u, out=logits_TE)
    if prev_Tk is not None and affinity > 0.0:
        follow = rng.random((T, k)) < affinity
        target = st.next_LE[layer - 1][prev_Tk]
        flat = (rows_T * E + target)[follow]  # distinct within a token: next_LE is a permutation
        score.reshape(-1)[flat] += _BOOST
    if G > 1 and TG < G:
        epg = E // G
        group_TG = score.reshape(T, G, epg).max(axis=2)
        keep = np.argpartition(group_TG, G - TG, axis=1)[:, G - TG :]
        allowed = np.zeros((T, G), dtype=bool)
        allowed[rows_T, keep] = True
        score[~np.repeat(allowed, epg, axis=1)] = -np.inf
    top, val = _topk_desc(score, k)
    boosted = val > _BOOST / 2
    if boosted.any():  # forced experts sorted first; order by the token's own scores
        val = np.where(boosted, val - _BOOST, val)
        order = np.argsort(-val, axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        val = np.take_along_axis(val, order, axis=1)
    return top, val
