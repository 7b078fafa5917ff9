"""Communication cost: expert-parallel dispatch/combine traffic and time, and collectives.

Legend: T tokens of one step, k = top-k, G GPUs of an expert-parallel group (numbered node by
node: GPU g is on node g // n, n = GPUs per node), S slots per GPU. Bytes, GB/s (1e9 B/s), µs
for latencies, ms for times. Shapes are name suffixes (``traffic_GG`` is [source, destination]).
Formulas in full: docs/cost_model.md §2.

Why one module: every caller (the simulator, the placement search, ``predict``, the step model)
prices the same two things, so they live here once:

- **links** — :class:`Link` owns the alpha-beta time ``α + bytes / BW`` and its units;
  :func:`group_link` picks NVLink for a group inside one NVLink domain, else the NIC;
- **traffic** — :func:`dispatch_copies` is the one kernel from per-token destination GPUs to
  copies. What a token costs depends on the dispatcher (docs/facts.md §3-4): ``pairs`` sends
  every (token, expert) pair (Megatron's ``alltoall``), ``gpu`` once per distinct destination
  GPU, ``deepep`` once per destination GPU inside its node and once per destination *node*
  outside it, forwarded over that node's NVLink (DeepEP normal kernels). A token already on its
  destination GPU moves nothing; combine moves the same bytes back;
- **time** — the busiest GPU's larger direction decides each path, NVLink and NIC run together::

      t_link  = α_link + max_g max(send_g, recv_g) / BW_link      (0 when no byte moves)
      exposed = 2 · max(t_nvlink, t_nic) · (1 − overlap)           (dispatch + combine)

- **uniform routing** — :func:`uniform_remote_fractions` / :func:`uniform_copies`, the expected
  copies per token when no trace says where tokens go (``predict``, the step model);
- **collectives** (nccl-tests bus-bandwidth factors, docs/facts.md §3): all-reduce
  ``α + nbytes · 2(n−1)/n / busBW``, all-gather / reduce-scatter / all-to-all
  ``α + nbytes · (n−1)/n / busBW``, p2p ``α + nbytes / BW``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from planner.errors import InputError
from planner.specs.hardware import HardwareProfile

DISPATCHERS = ("pairs", "gpu", "deepep")


# ---- links -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """One kind of link: achievable bandwidth per GPU per direction and per-message latency.

    The one home of the alpha-beta arithmetic. Two unit spellings of ``bytes / BW`` exist
    because the figures were fixed with both and must stay bit-identical: the array methods
    (:meth:`time_ms`, :meth:`phase_ms`) compute ``bytes / (GB/s · 1e9) · 1e3``, the scalar ones
    (:meth:`transfer_ms`, :meth:`message_ms`, used by the step model) ``bytes / (GB/s · 1e6)``.
    """

    bandwidth_gbps: float  #: GB/s (1e9 bytes per second) per GPU per direction
    latency_us: float  #: per-message latency, µs

    @property
    def latency_ms(self) -> float:
        return self.latency_us * 1e-3

    @property
    def ms_per_byte(self) -> float:
        """1 / bandwidth in ms per byte (the incremental placement tables work in these units)."""
        return 1e3 / (self.bandwidth_gbps * 1e9)

    def time_ms(self, nbytes: ArrayLike) -> np.ndarray:
        """α + bytes / BW in ms for an array of byte counts; 0 where no byte moves."""
        b = np.asarray(nbytes, dtype=np.float64)
        return np.where(b > 0, self.latency_us * 1e-3 + b / (self.bandwidth_gbps * 1e9) * 1e3, 0.0)

    def table_ms(self, nbytes: np.ndarray) -> np.ndarray:
        """α + bytes · ms_per_byte for the placement search's incremental byte tables (any shape);
        0 below 1e-9 bytes, where the tables' rounding leaves a trace of traffic that is not there."""
        return np.where(nbytes > 1e-9, self.latency_ms + nbytes * self.ms_per_byte, 0.0)

    def phase_ms(self, send_G: ArrayLike, recv_G: ArrayLike) -> np.ndarray:
        """One all-to-all phase on this link, per-GPU bytes ``[..., G]`` → ``[...]`` ms: the
        busiest GPU's larger direction decides; 0 when no GPU sends or receives a byte."""
        worst = np.maximum(np.asarray(send_G, dtype=np.float64).max(axis=-1),
                           np.asarray(recv_G, dtype=np.float64).max(axis=-1))
        return self.time_ms(worst)

    def transfer_ms(self, nbytes: float) -> float:
        """bytes / BW in ms for one scalar (no latency)."""
        return nbytes / (self.bandwidth_gbps * 1e6)

    def message_ms(self, nbytes: float) -> float:
        """α + bytes / BW in ms for one scalar message (charged even for 0 bytes)."""
        return self.latency_us * 1e-3 + nbytes / (self.bandwidth_gbps * 1e6)


def nvlink(hw: HardwareProfile) -> Link:
    return Link(hw.nvlink.bandwidth_gbps, hw.nvlink.latency_us)


def nic(hw: HardwareProfile) -> Link:
    return Link(hw.nic.bandwidth_gbps, hw.nic.latency_us)


def group_link(hw: HardwareProfile, group_size: int, gpus_per_node: int, stride: int = 1) -> Link:
    """The link that limits a collective over ``group_size`` GPUs ``stride`` apart: NVLink when
    the group stays inside one node (and one NVLink domain), else the NIC."""
    if group_size <= 0 or gpus_per_node <= 0 or stride <= 0:
        raise InputError(
            f"group_size, gpus_per_node and stride must be > 0 (got {group_size}, {gpus_per_node}, {stride})"
        )
    span = (group_size - 1) * stride + 1  # GPUs from the group's first to its last (aligned groups)
    return nvlink(hw) if span <= min(gpus_per_node, hw.nvlink.gpus_per_domain) else nic(hw)


# ---- alpha-beta ------------------------------------------------------------------------------


def exposed_alltoall_ms(
    nvlink_link: Link, nic_link: Link, intra_send_G: ArrayLike, intra_recv_G: ArrayLike,
    inter_send_G: ArrayLike, inter_recv_G: ArrayLike, overlap: float,
) -> np.ndarray:
    """Exposed dispatch + combine time in ms for arrays of per-GPU bytes ``[..., G]``: the two
    paths run together, combine moves what dispatch moved (docs/cost_model.md §2)."""
    dispatch = np.maximum(nvlink_link.phase_ms(intra_send_G, intra_recv_G),
                          nic_link.phase_ms(inter_send_G, inter_recv_G))
    return 2.0 * dispatch * (1.0 - overlap)


# ---- traffic matrices ------------------------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Dispatch bytes of one layer and step: ``nvlink_GG`` and ``rdma_GG`` are [source GPU,
    destination GPU]; combine is the transpose."""

    nvlink_GG: np.ndarray
    rdma_GG: np.ndarray

    @property
    def total_bytes(self) -> float:
        return float(self.nvlink_GG.sum() + self.rdma_GG.sum())

    def time_ms(self, hw: HardwareProfile, overlap: float | None = None) -> float:
        """Exposed dispatch + combine time (docs/cost_model.md §2)."""
        ov = hw.comm_overlap if overlap is None else overlap
        return float(exposed_alltoall_ms(
            nvlink(hw), nic(hw),
            self.nvlink_GG.sum(1), self.nvlink_GG.sum(0), self.rdma_GG.sum(1), self.rdma_GG.sum(0), ov,
        ))


#: Where an inter-node copy lands: ``same-rank`` (DeepEP's normal kernels: the GPU of the
#: source's local rank on that node, which forwards it over NVLink) or ``first-destination`` (the
#: lowest-numbered GPU the token needs on that node; forwarding not counted).
RELAYS = ("first-destination", "same-rank")


@dataclass(frozen=True)
class Copies:
    """Token copies of one layer's dispatch, one entry per copy: ``token_C`` the token (row of
    ``dest_Tk``), ``src_C`` / ``dst_C`` the GPUs that send / receive it. Shapes ``[C]``."""

    token_C: np.ndarray
    src_C: np.ndarray
    dst_C: np.ndarray


def _first_per_row(sorted_Tk: np.ndarray) -> np.ndarray:
    first = np.ones_like(sorted_Tk, dtype=bool)
    first[:, 1:] = sorted_Tk[:, 1:] != sorted_Tk[:, :-1]
    return first


def _copies(mask_Tk: np.ndarray, src_Tk: np.ndarray, dst_Tk: np.ndarray) -> Copies:
    t, j = np.nonzero(mask_Tk)
    return Copies(t, src_Tk[t, j], dst_Tk[t, j])


def _cat(a: Copies, b: Copies) -> Copies:
    return Copies(*(np.concatenate([getattr(a, f), getattr(b, f)]) for f in ("token_C", "src_C", "dst_C")))


def dispatch_copies(
    dest_Tk: np.ndarray, src_T: np.ndarray, *, num_gpus: int, gpus_per_node: int,
    dispatcher: str = "deepep", relay: str = "same-rank",
) -> tuple[Copies, Copies]:
    """The traffic kernel: per-token destination GPUs ``dest_Tk`` [T, k] and start GPUs
    ``src_T`` [T] → the (NVLink, network) copies of one layer's dispatch (docs/cost_model.md §2).

    ``deepep`` places inter-node copies by ``relay`` (:data:`RELAYS`). Inputs are not checked
    (:func:`dispatch_traffic` checks them).
    """
    G, n = num_gpus, min(gpus_per_node, num_gpus)
    dest = np.asarray(dest_Tk, dtype=np.int64)
    src = np.asarray(src_T, dtype=np.int64)
    srcb = np.broadcast_to(src[:, None], dest.shape)
    if dispatcher == "pairs":
        mask = dest != srcb
    else:  # first occurrence of each destination GPU per token
        dest = np.sort(dest, axis=1)
        mask = _first_per_row(dest) & (dest != srcb)
    node = np.arange(G) // n
    same_node = node[dest] == node[srcb]
    intra = _copies(mask & same_node, srcb, dest)
    remote = mask & ~same_node
    if dispatcher != "deepep":
        return intra, _copies(remote, srcb, dest)
    # outside the node: once per destination node (destinations sorted, so nodes are too) ...
    dn_sorted = np.sort(np.where(remote, node[dest], -1), axis=1)
    nmask = _first_per_row(dn_sorted) & (dn_sorted >= 0)
    if relay == "first-destination":  # ... to the lowest destination GPU there, no forwarding
        low = np.sort(np.where(remote, dest, -1), axis=1)
        return intra, _copies(nmask, srcb, low)
    # ... to the GPU of the source's local rank on that node ...
    rdma = _copies(nmask, srcb, dn_sorted * n + (srcb % n))
    # ... which forwards it over NVLink to each further destination GPU on that node
    relay_of_dest = node[dest] * n + (srcb % n)
    fwd = _copies(remote & (dest != relay_of_dest), relay_of_dest, dest)
    return _cat(intra, fwd), rdma


def dispatch_traffic(
    slot_Tk: ArrayLike,
    src_T: ArrayLike,
    *,
    slots_per_gpu: int,
    num_gpus: int,
    gpus_per_node: int,
    bytes_per_token: float,
    dispatcher: str = "deepep",
) -> Traffic:
    """Dispatch traffic matrices of one layer and step (docs/cost_model.md §2).

    ``slot_Tk``: physical slot serving each (token, choice) pair (e.g.
    :func:`planner.simulator.choose_slots`); ``src_T``: GPU each token starts on.
    """
    if dispatcher not in DISPATCHERS:
        raise InputError(f"dispatcher must be one of {', '.join(DISPATCHERS)} (got {dispatcher!r})", field="dispatcher")
    if num_gpus <= 0 or slots_per_gpu <= 0 or gpus_per_node <= 0:
        raise InputError(
            f"num_gpus, slots_per_gpu and gpus_per_node must be > 0 (got {num_gpus}, {slots_per_gpu}, {gpus_per_node})"
        )
    slot = np.asarray(slot_Tk, dtype=np.int64)
    src = np.asarray(src_T, dtype=np.int64)
    if slot.ndim != 2 or src.shape != (slot.shape[0],):
        raise InputError(f"slot_Tk must be [T, k] and src_T [T] (got {slot.shape} and {src.shape})")
    G = num_gpus
    if slot.size and (slot.min() < 0 or slot.max() >= G * slots_per_gpu):
        raise InputError(f"slot_Tk: slots must be in [0, {G * slots_per_gpu}) (got {slot.min()}..{slot.max()})")
    if src.size and (src.min() < 0 or src.max() >= G):
        raise InputError(f"src_T: GPUs must be in [0, {G}) (got {src.min()}..{src.max()})")
    nvl, net = dispatch_copies(slot // slots_per_gpu, src, num_gpus=G, gpus_per_node=gpus_per_node,
                               dispatcher=dispatcher)

    def matrix(c: Copies) -> np.ndarray:
        return np.bincount(c.src_C * G + c.dst_C, minlength=G * G).reshape(G, G) * float(bytes_per_token)

    return Traffic(matrix(nvl), matrix(net))


def uniform_remote_fractions(num_experts: int, top_k: int, num_gpus: int, gpus_per_node: int) -> dict[str, float]:
    """Expected copies per token under uniform routing (top-k of E without replacement, experts
    contiguous and evenly spread over G GPUs, n per node), for a token starting on some GPU.

    Returns ``pairs_intra``/``pairs_inter`` (pairs to other GPUs of the node / other nodes),
    ``gpu_intra``/``gpu_inter`` (distinct destination GPUs) and ``node_inter`` (distinct other
    nodes). ``P(a group of e experts gets none of the token's k) = C(E−e, k) / C(E, k)``.
    """
    E, k, G = num_experts, top_k, num_gpus
    n = min(gpus_per_node, G)
    if E <= 0 or k <= 0 or k > E or G <= 0 or n <= 0:
        raise InputError(f"need 0 < top_k <= num_experts and num_gpus, gpus_per_node > 0 (got E={E}, k={k}, G={G}, n={n})")

    def p_none(e: float) -> float:
        # C(E−e, k) / C(E, k) = Π_{i<k} (E − e − i) / (E − i), with real e
        p = 1.0
        for i in range(k):
            p *= max(E - e - i, 0.0) / (E - i)
        return p

    e_gpu = E / G
    e_node = E * n / G
    hit_gpu = 1.0 - p_none(e_gpu)
    hit_node = 1.0 - p_none(e_node)
    return {
        "pairs_intra": k * (n - 1) / G,
        "pairs_inter": k * (G - n) / G,
        "gpu_intra": (n - 1) * hit_gpu,
        "gpu_inter": (G - n) * hit_gpu,
        "node_inter": (G // n - 1) * hit_node if G >= n else 0.0,
    }


def uniform_copies(num_experts: int, top_k: int, num_gpus: int, gpus_per_node: int,
                   dispatcher: str) -> tuple[float, float]:
    """Expected (NVLink, network) copies per token under uniform routing for ``dispatcher``
    (:func:`uniform_remote_fractions`; ``deepep``: one copy per remote node, forwarded over
    NVLink there to its further destination GPUs)."""
    fr = uniform_remote_fractions(num_experts, top_k, num_gpus, gpus_per_node)
    if dispatcher == "pairs":
        return fr["pairs_intra"], fr["pairs_inter"]
    if dispatcher == "gpu":
        return fr["gpu_intra"], fr["gpu_inter"]
    return fr["gpu_intra"] + max(fr["gpu_inter"] - fr["node_inter"], 0.0), fr["node_inter"]


# ---- collectives -----------------------------------------------------------------------------

_BUS_FACTOR = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
}


def collective_ms(kind: str, nbytes: ArrayLike, group_size: int, link: Link) -> np.ndarray:
    """Time (ms) of one NCCL collective over ``group_size`` GPUs (docs/cost_model.md §2); 0 for a
    group of one GPU or an empty buffer."""
    if kind not in _BUS_FACTOR:
        raise InputError(f"collective must be one of {', '.join(_BUS_FACTOR)} (got {kind!r})")
    if group_size <= 0:
        raise InputError(f"group_size must be > 0 (got {group_size})")
    b = np.asarray(nbytes, dtype=np.float64)
    if b.size and b.min() < 0:
        raise InputError(f"nbytes must be >= 0 (got {b.min():g})")
    if group_size == 1:
        return np.zeros_like(b)
    return link.time_ms(b * _BUS_FACTOR[kind](group_size))


def p2p_ms(nbytes: ArrayLike, link: Link) -> np.ndarray:
    """Time (ms) of one point-to-point send of ``nbytes`` (pipeline stages); 0 bytes → 0."""
    b = np.asarray(nbytes, dtype=np.float64)
    if b.size and b.min() < 0:
        raise InputError(f"nbytes must be >= 0 (got {b.min():g})")
    return link.time_ms(b)


def exposed_ms(comm_ms: ArrayLike, overlap: float) -> np.ndarray:
    """Communication time left after hiding a fraction ``overlap`` behind compute."""
    if not 0.0 <= overlap <= 1.0:
        raise InputError(f"overlap must be in [0, 1] (got {overlap})")
    return np.asarray(comm_ms, dtype=np.float64) * (1.0 - overlap)


@functools.lru_cache(maxsize=4096)
def collective_line(kind: str, group_size: int, link: Link) -> tuple[float, float]:
    """(latency ms, ms per byte) of :func:`collective_ms` for one (kind, group, link), read off
    two buffer sizes: the step model prices ~10⁵ scalar collectives per search."""
    t1, t2 = collective_ms(kind, np.array([1e9, 2e9]), group_size, link)
    return float(2 * t1 - t2), float(t2 - t1) / 1e9


def collective_scalar_ms(kind: str, nbytes: float, group_size: int, link: Link) -> float:
    """:func:`collective_ms` of one buffer, as a float from :func:`collective_line`."""
    if group_size <= 1 or nbytes <= 0:
        return 0.0
    a, per_byte = collective_line(kind, group_size, link)
    return a + nbytes * per_byte
