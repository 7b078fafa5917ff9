"""The expert-placement problem: its arrays, the cost model it is optimised for, feasibility.

Every placement stage (:mod:`planner.solve.placement` drives them) reads the same
:class:`PlacementInputs`; the cost it optimises is the simulator's (docs/placement.md, the
introduction of "Formulation"), with both links as :class:`planner.cost.comm.Link`, the one home
of the alpha-beta link time. Shapes: ``L`` MoE layers, ``T`` planning tokens, ``k`` top-k,
``E`` logical experts, ``P`` physical slots, ``G`` EP ranks (GPUs), ``N`` nodes, ``S`` slots
per GPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from planner.cost.comm import Link, exposed_alltoall_ms
from planner.errors import InfeasibleError, InputError
from planner.solve import baselines


@dataclass(frozen=True)
class PlacementCost:
    """The cost model the placement is optimised for (what the simulator charges).

    Links as in the hardware profile: bandwidth in GB/s, latency in µs (``planner.cost.comm``).
    """

    ffn_ms: Callable[[np.ndarray], np.ndarray]  #: one expert's FFN time (ms) at each token count
    token_bytes: float  #: bytes of one token's activation sent per copy (B)
    nvlink_gbps: float
    nvlink_latency_us: float
    nic_gbps: float
    nic_latency_us: float
    overlap: float = 0.0  #: fraction of dispatch/combine hidden by compute
    expert_bytes: float = 0.0  #: bytes of one expert's weights (migration cost)

    @cached_property
    def nvlink(self) -> Link:
        return Link(self.nvlink_gbps, self.nvlink_latency_us)

    @cached_property
    def nic(self) -> Link:
        return Link(self.nic_gbps, self.nic_latency_us)

    def comm_ms(self, i_s: np.ndarray, i_r: np.ndarray, x_s: np.ndarray, x_r: np.ndarray) -> np.ndarray:
        """Exposed dispatch + combine ms from per-GPU bytes [..., G] (NVLink send / receive, NIC
        send / receive), as the simulator charges them (:func:`planner.cost.comm.exposed_alltoall_ms`)."""
        return exposed_alltoall_ms(self.nvlink, self.nic, i_s, i_r, x_s, x_r, self.overlap)


@dataclass(frozen=True)
class PlacementInputs:
    """Arrays of one placement problem (the planning part of a trace).

    ``ids_LTk`` int [L, T, k] experts chosen by each planning token; ``step_T`` int [T] step index
    in ``[0, num_steps)``; ``src_T`` int [T] EP rank each token starts on; ``tok_index_T`` int [T]
    the token's index in the dispatch rule ``(t·k + j) mod r_e`` (its position in its
    expert-data-parallel group); ``group_T`` int [T] or None the expert-data-parallel group of
    each token (loads are divided by :attr:`token_groups` for the expert-time curve).
    """

    ids_LTk: np.ndarray
    step_T: np.ndarray
    src_T: np.ndarray
    tok_index_T: np.ndarray
    num_steps: int
    num_experts: int
    num_gpus: int
    gpus_per_node: int
    slots_per_gpu: int
    cost: PlacementCost
    n_group: int | None = None
    topk_group: int | None = None
    dispatch: str = "even"
    group_T: np.ndarray | None = None
    relay: str = "same-rank"

    @property
    def token_groups(self) -> int:
        return 1 if self.group_T is None else int(self.group_T.max()) + 1

    @property
    def num_layers(self) -> int:
        return int(self.ids_LTk.shape[0])

    @property
    def num_physical(self) -> int:
        return self.num_gpus * self.slots_per_gpu

    @property
    def num_nodes(self) -> int:
        return max(1, self.num_gpus // self.gpus_per_node)

    def counts_LE(self) -> np.ndarray:
        """Planning tokens per expert: float [L, E]."""
        L, E = self.num_layers, self.num_experts
        flat = (self.ids_LTk.astype(np.int64) + (np.arange(L, dtype=np.int64) * E)[:, None, None])[self.ids_LTk >= 0]
        return np.bincount(flat, minlength=L * E).reshape(L, E).astype(np.float64)


def check_problem(num_experts: int, num_physical: int, num_gpus: int, gpus_per_node: int) -> None:
    """Raise :class:`InfeasibleError` / :class:`InputError` (with numbers) when no placement exists."""
    if num_gpus <= 0 or num_physical % num_gpus:
        raise InputError(
            f"placement: the physical slots ({num_physical}) must divide evenly over the {num_gpus} EP ranks"
        )
    if num_physical < num_experts:
        raise InfeasibleError(
            f"placement: {num_experts} experts need at least {num_experts} physical slots but there are "
            f"{num_physical} ({num_gpus} EP ranks × {num_physical // num_gpus} slots); every expert needs a slot "
            f"in every layer: add {num_experts - num_physical} slots (more GPUs or `redundant_experts`)",
            mentions=("redundant_experts",),
        )
    if gpus_per_node <= 0:
        raise InputError(f"placement: gpus_per_node must be > 0 (got {gpus_per_node})")


class Clock:
    """Wall time since the solver started, against its limit (a safety stop, never a result)."""

    def __init__(self, limit: float) -> None:
        self.t0 = time.perf_counter()
        self.limit = float(limit)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.limit - self.elapsed()


def curve_slope(cost: PlacementCost, tokens: float) -> tuple[float, float]:
    """(c₀, c₁): fixed cost and slope of the expert-time curve around ``tokens`` per slot."""
    n = max(1.0, float(tokens))
    lo, hi = max(1.0, 0.5 * n), 2.0 * n
    f = np.asarray(cost.ffn_ms(np.array([lo, hi])), dtype=np.float64)
    c1 = max(0.0, (f[1] - f[0]) / (hi - lo))
    c0 = max(0.0, float(cost.ffn_ms(np.array([n]))[0]) - c1 * n)
    return c0, c1


def nodes_of(num_gpus: int, gpus_per_node: int) -> int:
    """Nodes the EP ranks span (1 when they fit in one)."""
    return num_gpus // gpus_per_node if num_gpus >= gpus_per_node and num_gpus % gpus_per_node == 0 else 1


def eplb_warm_start(weight_LE: np.ndarray, inp: PlacementInputs) -> np.ndarray:
    """EPLB on the planning counts ``weight_LE`` [L, E], hierarchical when the groups divide by
    the nodes (docs/placement.md §2): int [L, P]."""
    nodes = nodes_of(inp.num_gpus, inp.gpus_per_node)
    return baselines.eplb(weight_LE, inp.num_physical, inp.n_group or 1, nodes, inp.num_gpus)


#: Largest number of planning tokens the search keeps per layer (evenly strided subsample).
SEARCH_MAX_TOKENS = 16384


@dataclass(frozen=True)
class TokenSample:
    """The planning tokens the stages search on: every ``stride``-th token (int64 arrays).

    ``ids_LTk`` [L, Ts, k], ``step_T`` / ``src_T`` / ``tok_index_T`` [Ts]; ``tscale`` tokens of
    one expert-data-parallel group each kept token stands for (``stride / token_groups``).
    """

    ids_LTk: np.ndarray
    step_T: np.ndarray
    src_T: np.ndarray
    tok_index_T: np.ndarray
    stride: int
    tscale: float


def search_sample(inp: PlacementInputs) -> TokenSample:
    """At most :data:`SEARCH_MAX_TOKENS` planning tokens, evenly strided (loads still come from
    every token where the stages need them exact). A null choice (-1) is shown to the stages as a
    repeat of its token's first real expert, which adds no destination (a token with none: expert
    ``t mod E``); plans are still scored on the real ids."""
    T = inp.ids_LTk.shape[1]
    stride = max(1, math.ceil(T / SEARCH_MAX_TOKENS))
    sel = np.arange(0, T, stride)
    ids = inp.ids_LTk[:, sel].astype(np.int64)
    if (ids < 0).any():  # null choices (-1): the search stages see a repeat of a real expert (no extra destination)
        first = np.take_along_axis(ids, np.argmax(ids >= 0, axis=2)[..., None], axis=2)  # a token's first real expert
        first = np.where(first >= 0, first, (inp.tok_index_T[sel] % inp.num_experts)[None, :, None])  # none: spread
        ids = np.where(ids >= 0, ids, first)
    return TokenSample(
        ids_LTk=ids, step_T=inp.step_T[sel].astype(np.int64),
        src_T=inp.src_T[sel].astype(np.int64), tok_index_T=inp.tok_index_T[sel].astype(np.int64),
        stride=stride, tscale=float(stride) / inp.token_groups,
    )
