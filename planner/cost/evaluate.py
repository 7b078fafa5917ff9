"""Fast evaluator: predicted MoE time of a whole model from per-slot token counts.

Legend: L = MoE layers, E = logical experts, P = physical slots (``P = G · S``), G = GPUs of one
expert-parallel group, S = slots per GPU (slot p lives on GPU p // S, GPUs numbered node by node,
docs/contracts.md "Plan file"), B = a batch of candidate placements or steps.

For counts ``c[l, p]`` (tokens routed to slot p of layer l in one step)::

    compute[l, g] = Σ_{p on g} t(c[l, p])                         t: expert FFN curve (compute.py);
                                                                  kernel="grouped": c + Σ (D − c)
    tok[l, g]     = Σ_{p on g} c[l, p]
    recv_nvl[l,g] = tok[l, g] · (n − 1)/G · bytes_per_token        n = GPUs per node (the group's)
    recv_nic[l,g] = tok[l, g] · (G − n)/G · bytes_per_token
    send[l]       = Σ_g tok[l, g] / G · (same fractions) <= max_g recv   tokens start evenly
    t_link[l]     = α + max_g recv[l, g] / BW                       (0 when no byte moves)
    comm[l]       = 2 · max(t_nvl[l], t_nic[l]) · (1 − overlap)     dispatch + combine
    layer[l]      = max_g compute[l, g] + comm[l]
    total         = Σ_l layer[l]

No solver uses it (the placement search prices candidates with :mod:`planner.simulator` and
its own incremental tables); it is the counts-only upper bound that ``benchmarks/cost_model.py``
times, kept for callers that have counts and no routing.

Counts alone do not say where a token starts or which of its top-k picks share a GPU, so the
traffic here is the expectation for tokens that start evenly on the GPUs with every (token,
expert) pair sent on its own (no DeepEP de-duplication): an upper bound of the simulator's
dispatch bytes (:mod:`planner.simulator` replays the real routing). Link figures (α, BW) and
``overlap`` come from the profile (docs/facts.md §3), as in :mod:`planner.cost.comm`.

Speed: ``t`` is precomputed as one dense array over M = 0..max_tokens (:meth:`FfnCurve.lookup`),
so one evaluation is a gather, a reshape-sum, a max and a few [L, G] reductions: well over
10,000 full-model evaluations per second for DeepSeek-V3 (58 MoE layers × 320 slots on 64 GPUs)
on one core (``benchmarks/cost_model.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from planner.cost.comm import nic, nvlink
from planner.cost.compute import ACTIVATION_BYTES, KERNELS, device_fit, ffn_curve, grouped_model_ms
from planner.errors import InputError
from planner.specs.hardware import HardwareProfile


@dataclass(frozen=True)
class LayerTimes:
    """Per-layer parts of one evaluation (arrays ``[..., L]``; compute per GPU ``[..., L, G]``)."""

    compute_ms_LG: np.ndarray
    compute_ms_L: np.ndarray
    comm_ms_L: np.ndarray

    @property
    def layer_ms_L(self) -> np.ndarray:
        return self.compute_ms_L + self.comm_ms_L

    @property
    def total_ms(self) -> np.ndarray:
        return self.layer_ms_L.sum(axis=-1)


def slot_counts(counts_LE: ArrayLike, phy2log_LP: ArrayLike) -> np.ndarray:
    """Tokens per physical slot ``[L, P]`` from tokens per logical expert ``[L, E]``.

    An expert's tokens are split evenly over its replicas (``even`` dispatch); the remainder of
    the integer division goes one token each to its first replicas in slot order.
    """
    c_LE = np.asarray(counts_LE)
    p2l = np.asarray(phy2log_LP, dtype=np.int64)
    if c_LE.ndim != 2 or p2l.ndim != 2 or c_LE.shape[0] != p2l.shape[0]:
        raise InputError(
            f"counts_LE [L, E] and phy2log_LP [L, P] must be 2-D with the same L "
            f"(got {c_LE.shape} and {p2l.shape})"
        )
    L, E = c_LE.shape
    if p2l.size and (p2l.min() < 0 or p2l.max() >= E):
        raise InputError(f"phy2log_LP: expert ids must be in [0, {E}) (got {p2l.min()}..{p2l.max()})")
    rows = np.arange(L)[:, None]
    reps_LE = np.zeros((L, E), dtype=np.int64)
    np.add.at(reps_LE, (np.broadcast_to(rows, p2l.shape), p2l), 1)
    if (reps_LE == 0).any():
        l, e = np.argwhere(reps_LE == 0)[0]
        raise InputError(f"phy2log_LP: layer {l} has no slot for expert {e}: every expert needs a slot")
    # rank of each slot among the replicas of its expert (slot order)
    order = np.argsort(p2l, axis=1, kind="stable")
    sorted_e = np.take_along_axis(p2l, order, axis=1)
    first = np.cumsum(reps_LE, axis=1) - reps_LE  # start of each expert's run in the sorted row
    rank_sorted = np.arange(p2l.shape[1])[None, :] - np.take_along_axis(first, sorted_e, axis=1)
    rank_LP = np.empty_like(p2l)
    np.put_along_axis(rank_LP, order, rank_sorted, axis=1)
    c = np.take_along_axis(c_LE.astype(np.int64), p2l, axis=1)
    r = np.take_along_axis(reps_LE, p2l, axis=1)
    return c // r + (rank_LP < c % r)


class MoeEvaluator:
    """Vectorized predicted MoE time of a model for per-slot token counts (module docstring).

    ``max_tokens`` bounds any slot's count (a token goes to a slot at most once: the step's
    tokens is a safe bound); larger counts raise :class:`InputError`.
    """

    def __init__(
        self,
        hw: HardwareProfile,
        *,
        hidden: int,
        ffn: int,
        dtype: str,
        num_gpus: int,
        slots_per_gpu: int,
        gpus_per_node: int,
        max_tokens: int,
        act_bytes: float = ACTIVATION_BYTES,
        include_comm: bool = True,
        kernel: str = "loop",
    ) -> None:
        if num_gpus <= 0 or slots_per_gpu <= 0 or gpus_per_node <= 0:
            raise InputError(
                f"num_gpus, slots_per_gpu and gpus_per_node must be > 0 "
                f"(got {num_gpus}, {slots_per_gpu}, {gpus_per_node})"
            )
        if max_tokens < 1:
            raise InputError(f"max_tokens must be >= 1 (got {max_tokens})")
        self.G, self.S = int(num_gpus), int(slots_per_gpu)
        self.n = min(int(gpus_per_node), self.G)
        self.max_tokens = int(max_tokens)
        if kernel not in KERNELS:
            raise InputError(f"kernel must be one of {', '.join(KERNELS)} (got {kernel!r})")
        #: ms per token count, M = 0..max_tokens (grouped: each expert's share of one launch)
        if kernel == "loop":
            self.table_M = np.ascontiguousarray(ffn_curve(hw, hidden, ffn, dtype).lookup(self.max_tokens))
            self._launch_ms = 0.0
        else:
            grid = np.arange(self.max_tokens + 1, dtype=np.float64)
            self.table_M = grouped_model_ms(hw, hidden, ffn, dtype, grid)
            self._launch_ms = device_fit(hw, dtype).fixed_ms
        self.include_comm = include_comm
        self._ones = np.ones(self.S)
        bpt = hidden * act_bytes
        # per link: (α ms, ms per token of the busiest GPU); a link carrying nothing costs nothing
        links = []
        for frac, link in (((self.n - 1) / self.G, nvlink(hw)), ((self.G - self.n) / self.G, nic(hw))):
            links.append((link.latency_ms, link.transfer_ms(bpt * frac)) if frac > 0 else (0.0, 0.0))
        self._links = tuple(links)
        self._overlap = hw.comm_overlap
        #: rows: time per token count (as ``table_M``) and the count itself, so one gather and one
        #: reduction give both each GPU's time and its tokens
        self._table2 = np.ascontiguousarray(np.stack([self.table_M, np.arange(self.max_tokens + 1, dtype=np.float64)]))

    def _check(self, counts: np.ndarray) -> np.ndarray:
        c = np.asarray(counts)
        if c.ndim < 2 or c.shape[-1] != self.G * self.S:
            raise InputError(f"counts must be [..., L, P] with P = {self.G} GPUs × {self.S} slots (got shape {c.shape})")
        if not np.issubdtype(c.dtype, np.integer):
            raise InputError(f"counts must be integers (got dtype {c.dtype})")
        if c.size and (c.min() < 0 or c.max() > self.max_tokens):
            raise InputError(f"counts must be in [0, max_tokens={self.max_tokens}] (got {c.min()}..{c.max()})")
        return c

    def _comm(self, worst_L: np.ndarray) -> np.ndarray:
        """Exposed dispatch + combine from the busiest GPU's tokens of each layer (its receive
        bounds every GPU's send, whose mean is Σ tok / G)."""
        if not self.include_comm or self.G == 1:
            return np.zeros(worst_L.shape)
        (a1, b1), (a2, b2) = self._links
        t = np.maximum(a1 + worst_L * b1, a2 + worst_L * b2)
        return np.where(worst_L > 0, 2.0 * (1.0 - self._overlap) * t, 0.0)

    def _per_gpu(self, x: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
        # Σ over each GPU's S contiguous slots; a matrix-vector product is the fastest numpy
        # reduction over a short inner axis
        return x.reshape(-1, self.S).dot(self._ones).reshape(lead + (self.G,))

    def layer_times(self, counts_LP: ArrayLike, check: bool = True) -> LayerTimes:
        """Per-layer compute (straggler GPU) and communication of counts ``[..., L, P]``."""
        c = self._check(counts_LP) if check else np.asarray(counts_LP)
        t_LG = self._per_gpu(self.table_M.take(c), c.shape[:-1])
        tok_LG = self._per_gpu(c.astype(np.float64), c.shape[:-1])
        if self._launch_ms:
            t_LG = t_LG + np.where(tok_LG > 0, self._launch_ms, 0.0)
        return LayerTimes(t_LG, t_LG.max(axis=-1), self._comm(tok_LG.max(axis=-1)))

    def __call__(self, counts_LP: ArrayLike, check: bool = True) -> float | np.ndarray:
        """Σ over layers of (straggler compute + communication), ms: a float for ``[L, P]``,
        an array ``[B]`` for a batch ``[B, L, P]``. ``check=False`` skips input checks (hot loops)."""
        c = self._check(counts_LP) if check else np.asarray(counts_LP)
        lead = c.shape[:-1]
        # [2, ..., L, G] per-GPU time and tokens → [2, ..., L] of the busiest GPU
        x = self._table2.take(c, axis=1).reshape(-1, self.S).dot(self._ones).reshape((2, *lead, self.G)).max(axis=-1)
        worst = x[0]
        if self._launch_ms:  # the straggler ran a launch unless the whole layer was empty
            worst = worst + np.where(worst > 0, self._launch_ms, 0.0)
        total = worst.sum(axis=-1) + self._comm(x[1]).sum(axis=-1)
        return float(total) if np.ndim(total) == 0 else total
