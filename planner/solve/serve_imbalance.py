"""Routing imbalance of a serving step, derived from a routing trace (docs/serving.md).

:func:`planner.cost.serve_step.serve_step` prices every GPU at the mean load (uniform routing);
a real step waits for the GPU whose experts received the most tokens, and for its dispatch and
combine. This module measures how far the busiest GPU is above the mean at the step size of a
pool, with the placement the pool would run, by replaying routing through the simulator
(:func:`planner.simulator.simulate_arrays`):

- **placement**: DeepSeek's EPLB (:func:`planner.solve.baselines.eplb`, hierarchical where the
  expert groups divide over the nodes) with the pool's redundant experts, fitted on the expert
  counts of one half of the trace's sequences (a seeded draw, as the realism statistics split
  them: the load an EPLB run recorded before);
- **steps**: drawn from the other half (routing the placement did not see). A step holds
  ``tokens_per_gpu`` tokens on each of the ``ep`` GPUs: prefill — whole sequences drawn with
  replacement, laid end to end (a GPU holds whole prompts, attention data parallelism) and cut
  to the step; decode — single tokens drawn with replacement (one token of each sequence in
  flight), each GPU a contiguous block;
- **figures**: per step and MoE layer, ``experts`` = busiest GPU's expert tokens / mean (what
  :class:`planner.simulator.SimResult` calls imbalance) and ``alltoall`` = busiest GPU's dispatch
  copies (sent or received, whichever is larger) / the mean sent, on the link that bounds the
  phase (the network when any copy leaves a node, else NVLink; DeepEP's copy rule, the
  simulator's ``same-rank`` relay; an EP group that does not fill its last node, e.g. 12 GPUs on
  8-GPU nodes, is replayed on nodes of the largest divisor of ep that fits, 6); each is the mean
  over steps and layers.

Cost is bounded: the experts' figure takes :data:`MAX_STEPS` steps and every layer in closed form
(the simulator's ``even`` rule splits an expert's tokens evenly over its replicas:
:func:`expert_imbalance`, whose cost does not grow with the step); the all-to-all's runs the
simulator on as many of those steps (at least :data:`MIN_STEPS`) and evenly spaced layers (at
least one) as keep steps × layers × tokens within :data:`TOKEN_LAYER_BUDGET`. Results are memoized per (model, ep, redundant experts, tokens per GPU,
mode, GPUs per node); :func:`imbalance_fn` interpolates in log2(tokens per GPU) between the
powers of two it derives, so a batch search reuses them. Deterministic in
``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.errors import InputError
from planner.simulator import simulate_arrays
from planner.solve import baselines
from planner.specs.model import ModelSpec
from planner.traces import Trace, default_trace_path, load_trace, synth_trace
from planner.traces.trace import expert_counts

#: How a serving step's routing is priced: the busiest GPU under EPLB, derived here; or the mean load.
ROUTINGS = ("eplb", "uniform")
#: Opening of the search note that says a step was priced at its busiest GPU (the CLI looks for it).
IMBALANCE_NOTE = "routing imbalance: "
#: Most steps sampled for one figure, fewest, and the bound on steps × layers × step tokens.
MAX_STEPS = 8
MIN_STEPS = 1
TOKEN_LAYER_BUDGET = 1 << 21
#: Tokens of the synthetic trace made for a model that ships none (seed 0). EPLB fitted on half of
#: a finite trace leaves fit noise the steps then pay: DeepSeek-V3's EP72 decode figure at 256 per
#: GPU falls from 1.69 (8,192 tokens) to 1.28 (32,768); in-sample (fit and steps on the whole
#: trace, a lower bound) it is 1.06 at both sizes (docs/serving.md).
TRACE_TOKENS = 32768
#: serve_step's ``imbalance`` callable: (ep, tokens per GPU) -> (experts, alltoall)
ImbalanceFn = Callable[[int, float], tuple[float, float]]


@dataclass(frozen=True)
class Imbalance:
    """Busiest GPU over the mean, averaged over the sampled steps and layers."""

    experts: float
    alltoall: float
    steps: int
    layers: int


def measure(
    phy2log_LP: np.ndarray, slots_per_gpu: int, topk_ids_LTk: np.ndarray, step_T: np.ndarray, src_T: np.ndarray,
    *, num_experts: int, gpus_per_node: int, num_steps: int,
) -> Imbalance:
    """The figures of given steps on a given placement (module docstring): ``topk_ids_LTk``
    [L, T, k], ``step_T`` step indices in ``[0, num_steps)``, ``src_T`` the GPU each token starts
    on."""
    a2a: list[np.ndarray] = []

    def comm(i_s: np.ndarray, i_r: np.ndarray, x_s: np.ndarray, x_r: np.ndarray) -> np.ndarray:
        net = x_s.sum(axis=1) > 0
        s, r = np.where(net[:, None], x_s, i_s), np.where(net[:, None], x_r, i_r)
        mean = s.mean(axis=1)
        busiest = np.maximum(s.max(axis=1), r.max(axis=1))
        a2a.append(np.where(mean > 0, busiest / np.where(mean > 0, mean, 1.0), 1.0))
        return np.zeros(s.shape[0])

    sim = simulate_arrays(phy2log_LP, slots_per_gpu, topk_ids_LTk, step_T, src_T,
                          ffn_ms=lambda t: np.zeros(np.shape(t)), comm_ms=comm, token_bytes=1.0,
                          num_experts=num_experts, gpus_per_node=gpus_per_node, num_steps=num_steps)
    return Imbalance(float(sim.imbalance_SL.mean()), float(np.mean(a2a)), num_steps, phy2log_LP.shape[0])


def _halves(trace: Trace, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks [T] (fit, test): sequences (else tokens) dealt by a seeded permutation."""
    rng = np.random.default_rng(seed)
    if trace.has_sequences:
        _, inv = np.unique(trace.seq_id, return_inverse=True)
        n = int(inv.max()) + 1
        if n >= 2:
            return (fit := (rng.permutation(n) < (n + 1) // 2)[inv]), ~fit
    fit = rng.permutation(trace.num_tokens) < (trace.num_tokens + 1) // 2
    return fit, ~fit


def _step_tokens(trace: Trace, test: np.ndarray, mode: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Token indices [n] of one step of ``n`` tokens from the ``test`` half (module docstring)."""
    idx = np.flatnonzero(test)
    if mode == "decode" or not trace.has_sequences:
        return idx[rng.integers(0, idx.size, size=n)]
    seq = trace.seq_id[idx]
    order = np.lexsort((trace.pos[idx] if trace.pos is not None else np.arange(idx.size), seq))
    idx, seq = idx[order], seq[order]
    starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    ends = np.r_[starts[1:], idx.size]
    out: list[np.ndarray] = []
    got = 0
    while got < n:
        j = int(rng.integers(0, starts.size))
        piece = idx[starts[j]:ends[j]][: n - got]
        out.append(piece)
        got += piece.size
    return np.concatenate(out)


def expert_imbalance(phy2log_LP: np.ndarray, slots_per_gpu: int, ids_LTk: np.ndarray, mult_ST: np.ndarray,
                     num_experts: int) -> float:
    """Mean over steps and layers of the busiest GPU's expert tokens over the mean, step ``s``
    holding token ``t`` of ``ids_LTk`` ``mult_ST[s, t]`` times, each expert's tokens split evenly
    over its replicas: the simulator's ``even`` rule in closed form (exact when every replica
    count divides the expert's tokens, else within one token per replica), so its cost does not
    grow with the step's tokens. Null choices (-1) go nowhere."""
    ids = np.asarray(ids_LTk)
    L, T, _ = ids.shape
    E = int(num_experts)
    P = phy2log_LP.shape[1]
    G = P // slots_per_gpu
    rep_LE = np.stack([np.bincount(phy2log_LP[layer], minlength=E) for layer in range(L)])
    offset = (np.arange(L, dtype=np.int64) * E)[:, None, None]
    null = L * E  # null choices: a bin of their own, dropped

    def bins(sub: np.ndarray) -> np.ndarray:
        return np.where(sub >= 0, sub + offset, null).ravel()

    full = None
    out = []
    for mult in np.asarray(mult_ST, dtype=np.float64):
        t = np.flatnonzero(mult)
        if 2 * t.size < T:  # a small step (decode): bin only its own tokens
            key, w = bins(ids[:, t, :]), mult[t]
        else:  # most of the trace: every token, weighted by its multiplicity
            full = bins(ids) if full is None else full
            key, w = full, mult
        w_all = np.broadcast_to(w[None, :, None], (L, w.size, ids.shape[2])).ravel()
        c_LE = np.bincount(key, weights=w_all, minlength=null + 1)[:null].reshape(L, E)
        share_LP = np.take_along_axis(c_LE / np.maximum(rep_LE, 1), phy2log_LP, axis=1)
        g_LG = share_LP.reshape(L, G, slots_per_gpu).sum(-1)
        mean = g_LG.mean(axis=1)
        out.append(np.where(mean > 0, g_LG.max(axis=1) / np.where(mean > 0, mean, 1.0), 1.0))
    return float(np.mean(out))


def derive(
    trace: Trace, *, num_experts: int, n_group: int | None, ep: int, redundant: int, tokens_per_gpu: int,
    mode: str, gpus_per_node: int = 8, seed: int = 0,
) -> Imbalance:
    """The imbalance of steps of ``tokens_per_gpu`` tokens on each of ``ep`` GPUs, EPLB placement
    with ``redundant`` extra slots fitted on one half of ``trace``, steps from the other (module
    docstring): the experts' figure over :data:`MAX_STEPS` steps and every layer
    (:func:`expert_imbalance`), the all-to-all's by the simulator over the steps and layers the
    budget allows."""
    if mode not in ("prefill", "decode"):
        raise InputError(f"mode must be 'prefill' or 'decode' (got {mode!r})", field="mode")
    if ep < 1 or (num_experts + redundant) % ep:
        raise InputError(f"ep ({ep}) must divide the {num_experts + redundant} expert slots", field="ep")
    if tokens_per_gpu < 1:
        raise InputError(f"tokens_per_gpu must be >= 1 (got {tokens_per_gpu})", field="tokens_per_gpu")
    if ep == 1 or trace.num_tokens < 2:
        return Imbalance(1.0, 1.0, 0, 0)
    fit, test = _halves(trace, seed)
    L = trace.topk_ids.shape[0]
    n = ep * tokens_per_gpu
    slots = (num_experts + redundant) // ep
    weight = expert_counts(trace.topk_ids[:, fit], num_experts).astype(np.float64) + 1e-9
    nodes = ep // gpus_per_node if ep >= gpus_per_node and ep % gpus_per_node == 0 else 1
    phy2log = baselines.eplb(weight, num_experts + redundant, n_group or 1, nodes, ep)
    rng = np.random.default_rng(seed + 1)
    toks = [_step_tokens(trace, test, mode, n, rng) for _ in range(MAX_STEPS)]
    mult = np.stack([np.bincount(t, minlength=trace.num_tokens) for t in toks])
    experts = expert_imbalance(phy2log, slots, trace.topk_ids, mult, num_experts)
    # the all-to-all by the simulator, on as many of those steps and (evenly spaced) layers as the budget allows
    steps = max(MIN_STEPS, min(MAX_STEPS, TOKEN_LAYER_BUDGET // (n * L)))
    n_layers = max(1, min(L, TOKEN_LAYER_BUDGET // (n * steps)))
    layers = np.unique(np.linspace(0, L - 1, n_layers).round().astype(np.int64))
    tok = np.concatenate(toks[:steps])
    ids = trace.topk_ids[layers][:, tok].astype(np.int64)
    within = np.tile(np.arange(n, dtype=np.int64), steps)
    # whole nodes for the simulator's copy rule: an EP group that does not fill its last node is
    # replayed on nodes of the largest divisor of ep that fits one
    gpn = max(d for d in range(1, min(gpus_per_node, ep) + 1) if ep % d == 0)
    a2a = measure(phy2log[layers], slots, ids, np.repeat(np.arange(steps), n), within // tokens_per_gpu,
                  num_experts=num_experts, gpus_per_node=gpn, num_steps=steps)
    return Imbalance(experts, a2a.alltoall, MAX_STEPS, L)


@lru_cache(maxsize=8)
def _model_trace(model: ModelSpec) -> Trace:
    """The model's shipped trace, else its synthetic one of :data:`TRACE_TOKENS` tokens (seed 0)."""
    path = default_trace_path(model.name)
    if path is not None:
        return load_trace(path)
    return synth_trace(model, num_tokens=TRACE_TOKENS, tokens_per_step=512, seed=0)


@lru_cache(maxsize=4096)
def _at(model: ModelSpec, trace: Trace | None, ep: int, redundant: int, tokens: int, mode: str,
        gpus_per_node: int) -> Imbalance:
    tr = _model_trace(model) if trace is None else trace
    return derive(tr, num_experts=model.num_experts, n_group=model.n_group, ep=ep, redundant=redundant,
                  tokens_per_gpu=tokens, mode=mode, gpus_per_node=gpus_per_node)


def imbalance_at(model: ModelSpec, ep: int, redundant: int, tokens_per_gpu: float, mode: str,
                 gpus_per_node: int = 8, trace: Trace | None = None) -> tuple[float, float]:
    """(experts, alltoall) at ``tokens_per_gpu``: interpolated in log2 between the powers of two
    around it (exact at a power of two), each derived once (:func:`derive`) from ``trace``
    or the model's own trace."""
    if ep <= 1 or tokens_per_gpu <= 0 or not model.num_moe_layers:
        return 1.0, 1.0
    x = math.log2(max(1.0, tokens_per_gpu))
    lo, hi = math.floor(x), math.ceil(x)
    a = _at(model, trace, ep, redundant, 2 ** lo, mode, gpus_per_node)
    if hi == lo:
        return a.experts, a.alltoall
    b = _at(model, trace, ep, redundant, 2 ** hi, mode, gpus_per_node)
    w = x - lo
    return (1 - w) * a.experts + w * b.experts, (1 - w) * a.alltoall + w * b.alltoall


def imbalance_fn(model: ModelSpec, redundant: int, mode: str, gpus_per_node: int = 8,
                 trace: Trace | None = None) -> ImbalanceFn:
    """serve_step's ``imbalance`` for one model and pool: (ep, tokens per GPU) -> (experts,
    alltoall), :func:`imbalance_at`."""
    def fn(ep: int, tokens_per_gpu: float) -> tuple[float, float]:
        return imbalance_at(model, ep, redundant, tokens_per_gpu, mode, gpus_per_node, trace)
    return fn
