"""Auxiliary-loss-free load balancing (DeepSeek-V3's per-expert bias) simulated over training
steps: the expert and GPU imbalance a run sees as the bias learns, for a given update rate and
placement (``moe-planner trace bias-sim``).

**The rule** (DeepSeek-V3, arXiv 2412.19437 §2.1.2; Loss-Free Balancing, Wang et al., arXiv
2408.15664): each routed expert i carries a bias ``b_i`` added to its affinity score for top-k
selection only (the gate weight still uses the score); after each step ``b_i ← b_i + γ·sign(mean
load − load_i)`` (overloaded experts go down, underloaded up; γ the bias update speed: V3 used
0.001, Megatron-Core's ``--moe-router-bias-update-rate`` defaults to 1e-3). Han & Zhong (arXiv
2512.03915, "A Theoretical Framework for Auxiliary-Loss-Free Load Balancing") read it as a
one-step-per-iteration primal-dual method for the balanced assignment problem: the bias is the
dual price of each expert's capacity, and with a fixed step the loads stay within a band around
balance whose width grows with γ.

**The router model** (what is assumed, per MoE layer): token t's logits ``u_t,i = μ_i + σ·z_t,i``
with ``z`` independent standard normals, fresh tokens every step (no drift of the router itself:
the weights' own training is not modelled). The score is ``sigmoid(u)`` (DeepSeek-V3),
``softmax(u)`` over the experts, or ``u`` itself (``logits``); a token takes the top-k of
``score + b``. ``μ`` comes from

- :func:`synthetic_router`: ``μ_i = skew · N(0, 1)`` (seeded), or
- :func:`fit_router`: per-expert mean logits fitted to a trace's counts: the ``μ`` whose
  top-k shares at ``b = 0`` equal the trace's shares (fixed-point iteration
  ``μ ← μ + ½·log(target / model)`` on a common sample). A trace holds choices, not logits, so
  the fit reproduces its per-expert loads, not its token-to-token correlations, and ``σ`` (the
  spread of a token's logits around the expert's mean) stays the user's input.

**Known fixed point** (the test): with ``logits`` scoring ``b_i = −μ_i + c`` makes every expert's
logit distribution the same, so the expected loads are equal and the sign rule stops moving
``b`` on average: the bias converges to ``−μ`` up to a constant and an O(γ) band.

**Placement**: a placement ``phy2log_LP`` (a plan's ``physical_to_logical``, physical slot p on
GPU ``p // (P / G)``) turns expert loads into GPU loads, a replicated expert's tokens split evenly
over its replicas (``even`` dispatch); GPU imbalance = max / mean GPU tokens.
:func:`placements_for` gives contiguous slots and EPLB placed on the loads before balancing
(with and without redundant slots): once the bias has balanced the experts, replicas and packings
chosen for the early skew no longer fit, and the figures show by how much.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.errors import InputError
from planner.solve.baselines import contiguous, eplb

SCORINGS = ("sigmoid", "softmax", "logits")
#: Tokens of the common sample :func:`fit_router` fits on.
FIT_TOKENS = 8192
#: Fixed-point iterations of :func:`fit_router`.
FIT_ITERS = 60


@dataclass(frozen=True)
class RouterModel:
    """Per MoE layer the experts' mean logits ``mean_logits_LE`` [L, E]; ``noise`` σ of a token's
    logits around them; ``scoring`` and ``top_k`` of the router; ``source`` how ``μ`` was made."""

    mean_logits_LE: np.ndarray
    noise: float
    scoring: str
    top_k: int
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        L, E = self.mean_logits_LE.shape
        return L, E


def _check(scoring: str, noise: float, top_k: int, num_experts: int) -> None:
    if scoring not in SCORINGS:
        raise InputError(f"scoring must be one of {', '.join(SCORINGS)} (got {scoring!r})", field="scoring")
    if not (np.isfinite(noise) and noise > 0):
        raise InputError(f"noise must be a finite number > 0 (got {noise})", field="noise")
    if not 1 <= top_k <= num_experts:
        raise InputError(f"top_k must be in [1, {num_experts}] (got {top_k})", field="top_k")


def synthetic_router(
    num_layers: int, num_experts: int, top_k: int, *, skew: float = 1.0, noise: float = 1.0, scoring: str = "sigmoid",
    seed: int = 0,
) -> RouterModel:
    """A router with ``μ_i = skew · N(0, 1)`` per layer and expert (module docstring)."""
    if num_layers <= 0 or num_experts <= 0:
        raise InputError(f"layers and experts must be > 0 (got {num_layers}, {num_experts})", field="num_experts")
    if not (np.isfinite(skew) and skew >= 0):
        raise InputError(f"skew must be a finite number >= 0 (got {skew})", field="skew")
    _check(scoring, noise, top_k, num_experts)
    mu = skew * np.random.default_rng(seed).standard_normal((num_layers, num_experts))
    return RouterModel(mu, float(noise), scoring, int(top_k), f"synthetic: mu ~ {skew:g}·N(0, 1), seed {seed}")


def fit_router(
    counts_LE: np.ndarray, top_k: int, *, noise: float = 1.0, scoring: str = "sigmoid", seed: int = 0,
    tokens: int = FIT_TOKENS, iters: int = FIT_ITERS,
) -> RouterModel:
    """Mean logits whose top-k shares at ``b = 0`` match ``counts_LE`` [L, E] (module docstring)."""
    c = np.asarray(counts_LE, np.float64)
    if c.ndim != 2 or c.shape[1] < 1:
        raise InputError(f"counts must be [layers, experts] (got shape {c.shape})", field="trace")
    if (c < 0).any() or not np.isfinite(c).all() or (c.sum(axis=1) <= 0).any():
        raise InputError("counts must be finite, >= 0, with tokens in every layer", field="trace")
    L, E = c.shape
    _check(scoring, noise, top_k, E)
    floor = 1.0 / (10.0 * tokens * top_k)
    target = np.maximum(c / c.sum(axis=1, keepdims=True), floor)
    target /= target.sum(axis=1, keepdims=True)
    z = np.random.default_rng(seed).standard_normal((L, tokens, E))
    mu = np.log(target)
    for _ in range(iters):
        share = np.maximum(_loads(_scores(mu[:, None, :] + noise * z, scoring), np.zeros((L, E)), top_k), 0.5) / (tokens * top_k)
        mu = mu + 0.5 * (np.log(target) - np.log(share))
        mu -= mu.mean(axis=1, keepdims=True)
    return RouterModel(mu, float(noise), scoring, int(top_k), f"fitted to a trace's counts ({int(c.sum())} choices)")


def _scores(u_LTE: np.ndarray, scoring: str) -> np.ndarray:
    if scoring == "sigmoid":
        return 1.0 / (1.0 + np.exp(-u_LTE))
    if scoring == "softmax":
        e = np.exp(u_LTE - u_LTE.max(axis=2, keepdims=True))
        return e / e.sum(axis=2, keepdims=True)
    return u_LTE


def _loads(score_LTE: np.ndarray, bias_LE: np.ndarray, top_k: int) -> np.ndarray:
    """Tokens per expert [L, E] when each token takes the top-k of score + bias."""
    L, T, E = score_LTE.shape
    s = score_LTE + bias_LE[:, None, :]
    if top_k == 1:
        pick = s.argmax(axis=2)[:, :, None]
    else:
        pick = np.argpartition(-s, top_k - 1, axis=2)[:, :, :top_k]
    flat = (pick + (np.arange(L) * E)[:, None, None]).ravel()
    return np.bincount(flat, minlength=L * E).reshape(L, E).astype(np.float64)


def gpu_loads(load_LE: np.ndarray, phy2log_LP: np.ndarray, num_gpus: int) -> np.ndarray:
    """GPU tokens [L, G] of expert loads ``load_LE`` under a placement: each physical slot gets its
    expert's load divided by the expert's replicas in the layer (even dispatch)."""
    L, E = load_LE.shape
    p2l = np.asarray(phy2log_LP, np.int64)
    if p2l.ndim != 2 or p2l.shape[0] != L or p2l.shape[1] % num_gpus or p2l.min() < 0 or p2l.max() >= E:
        raise InputError(f"placement must be [{L}, G·slots] with ids in [0, {E}) over {num_gpus} GPUs (got {p2l.shape})",
                         field="placement")
    reps = np.zeros((L, E))
    np.add.at(reps, (np.arange(L)[:, None], p2l), 1.0)
    if (reps == 0).any():
        raise InputError("placement: every expert needs a slot in every layer", field="placement")
    slot = np.take_along_axis(load_LE / reps, p2l, axis=1)
    return slot.reshape(L, num_gpus, -1).sum(axis=2)


def _imbalance(x_LN: np.ndarray) -> np.ndarray:
    mean = x_LN.mean(axis=1)
    return np.where(mean > 0, x_LN.max(axis=1) / np.maximum(mean, 1e-300), 1.0)


@dataclass
class BiasSimResult:
    """Per step and layer ([S, L]): expert imbalance (max / mean tokens per expert) and, per
    placement name, GPU imbalance; the bias after the last step [L, E]."""

    imbalance_SL: np.ndarray
    gpu_imbalance_SL: dict[str, np.ndarray]
    bias_LE: np.ndarray
    mean_load_LE: np.ndarray  #: mean tokens per expert over the last quarter of the steps
    update_rate: float
    tokens_per_step: int
    router: RouterModel
    notes: list[str] = field(default_factory=list)

    def summary(self, points: tuple[int, ...] = (1, 10, 100, 1000)) -> dict[str, Any]:
        """JSON-ready figures: mean over layers at a few steps, steady state (mean of the last
        quarter), the first step within 10% of it (moving mean of 10 steps)."""
        S = self.imbalance_SL.shape[0]
        series = {"experts": self.imbalance_SL.mean(axis=1)}
        series.update({f"gpus ({k})": v.mean(axis=1) for k, v in self.gpu_imbalance_SL.items()})
        at = [p for p in points if p <= S] + ([S] if S not in points else [])
        out: dict[str, Any] = {
            "router": self.router.source, "scoring": self.router.scoring, "noise": self.router.noise,
            "top_k": self.router.top_k, "layers": self.router.shape[0], "experts": self.router.shape[1],
            "update_rate": self.update_rate, "tokens_per_step": self.tokens_per_step, "steps": S, "at_steps": at,
            "notes": self.notes, "series": {},
        }
        tail = slice(S - max(S // 4, 1), S)
        for name, v in series.items():
            steady = float(v[tail].mean())
            smooth = np.convolve(v, np.ones(10) / 10, mode="valid") if S >= 10 else v
            hit = np.flatnonzero(smooth <= steady * 1.1)
            out["series"][name] = {
                "imbalance_at": [float(v[p - 1]) for p in at], "first_step": float(v[0]), "steady_state": steady,
                "steps_to_steady": int(hit[0]) + (10 if S >= 10 else 1) if hit.size else None,
            }
        return out


def simulate_bias(
    router: RouterModel, *, steps: int, tokens_per_step: int, update_rate: float,
    placements: dict[str, tuple[np.ndarray, int]] | None = None, seed: int = 0,
) -> BiasSimResult:
    """Run the bias rule for ``steps`` steps of ``tokens_per_step`` fresh tokens (module docstring).
    ``placements``: name → (``phy2log_LP``, GPUs) whose GPU imbalance is followed."""
    if steps <= 0:
        raise InputError(f"steps must be > 0 (got {steps})", field="steps")
    if tokens_per_step <= 0:
        raise InputError(f"tokens_per_step must be > 0 (got {tokens_per_step})", field="tokens_per_step")
    if not (np.isfinite(update_rate) and update_rate >= 0):
        raise InputError(f"update_rate must be a finite number >= 0 (got {update_rate})", field="update_rate")
    L, E = router.shape
    rng = np.random.default_rng(seed)
    bias = np.zeros((L, E))
    placements = placements or {}
    for p2l, g in placements.values():
        gpu_loads(np.ones((L, E)), p2l, g)  # check the shape once, before the run
    imb = np.zeros((steps, L))
    gimb = {k: np.zeros((steps, L)) for k in placements}
    tail_from = steps - max(steps // 4, 1)
    acc = np.zeros((L, E))
    mean = tokens_per_step * router.top_k / E
    for s in range(steps):
        z = rng.standard_normal((L, tokens_per_step, E))
        load = _loads(_scores(router.mean_logits_LE[:, None, :] + router.noise * z, router.scoring), bias, router.top_k)
        imb[s] = load.max(axis=1) / mean
        for k, (p2l, g) in placements.items():
            gimb[k][s] = _imbalance(gpu_loads(load, p2l, g))
        if s >= tail_from:
            acc += load
        bias += update_rate * np.sign(mean - load)
    notes = [] if update_rate > 0 else ["update_rate 0: the bias never moves (the router's own imbalance)"]
    return BiasSimResult(imb, gimb, bias, acc / (steps - tail_from), float(update_rate), int(tokens_per_step), router, notes)


def expected_loads(router: RouterModel, bias_LE: np.ndarray, *, tokens: int = FIT_TOKENS, seed: int = 0) -> np.ndarray:
    """Tokens per expert per token routed [L, E] (shares × top_k) with bias ``bias_LE``, from a
    sample of ``tokens`` tokens."""
    L, E = router.shape
    z = np.random.default_rng(seed).standard_normal((L, tokens, E))
    return _loads(_scores(router.mean_logits_LE[:, None, :] + router.noise * z, router.scoring), bias_LE, router.top_k) / tokens


def placements_for(router: RouterModel, num_gpus: int, redundant: int = 0, *, seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    """Placements to follow: contiguous slots, and EPLB planned on the expected loads before any
    balancing (``b = 0``), without and (``redundant`` > 0) with redundant slots."""
    L, E = router.shape
    if num_gpus <= 0 or E % num_gpus:
        raise InputError(f"gpus must divide the {E} experts (got {num_gpus})", field="gpus")
    if redundant < 0 or redundant % num_gpus:
        raise InputError(f"redundant slots must be >= 0 and divide by the {num_gpus} GPUs (got {redundant})",
                         field="redundant_experts")
    w = expected_loads(router, np.zeros((L, E)), seed=seed)
    out = {"contiguous": (contiguous(L, E, num_gpus), num_gpus),
           "eplb on unbalanced loads": (eplb(w, E, 1, 1, num_gpus), num_gpus)}
    if redundant:
        out[f"eplb on unbalanced loads, +{redundant} replicas"] = (eplb(w, E + redundant, 1, 1, num_gpus), num_gpus)
    return out
