"""Prefill/decode disaggregation: size a prefill pool and a decode pool, and compare them with a
colocated deployment of the same GPUs (docs/serving.md has the model in full).

Legend: P prompt tokens, O output tokens per request, C prefill tokens per GPU in one prefill step
(SGLang's ``--max-prefill-tokens`` / chunked-prefill budget per data-parallel rank), λ requests/s,
dp the attention data-parallel ranks of a pool, r sequences per rank, B = r·dp.

**Pools** (as DeepSeek's and SGLang's large-scale deployments run them: prefill nodes and decode
nodes, each pool with its own parallel layout, KV caches copied from prefill to decode over RDMA):

- *prefill pool*: steps of ``max(1, C // P)`` whole prompts per GPU; the parallelism search
  (:func:`planner.solve.parallel.search`, mode prefill) picks the degrees. Capacity
  ``μ = input tokens/s ÷ P``. A request waits for the step in flight and for the queue before
  its own: with deterministic steps of ``t`` ms its mean time to first token at utilisation ρ is
  ``t·(1 + ρ / (2(1 − ρ)))`` (M/D/1 mean wait plus service) plus the KV copy to decode (a step's
  k prompts leave a GPU's link together: (k + 1)/2 copies on average), so the TTFT target allows
  ``ρ* = 2s / (1 + 2s)`` with ``s = (target − copy)/t − 1``; goodput ``ρ*·μ``;
- *decode pool*: the largest decode batch within memory and the TPOT target (the search, mode
  decode); goodput ``B / (O · t_step)`` (every slot busy: a request holds a slot for O steps);
- *KV copy*: ``P × kv_bytes_per_token`` (whole model, one copy, in the KV dtype) over the
  inter-node NIC of one GPU (each prefill rank sends its requests' caches from its own NIC; NVLink
  when both pools split one node), at most ``min(GPUs_p, GPUs_d) × bandwidth ÷ bytes`` requests/s;
- *disaggregated goodput*: the smallest of the two pools' goodputs and the KV bound.

**Colocated** (today's one engine doing both on all the GPUs, SGLang/vLLM chunked prefill): a step
runs the decode batch and, in a share ``f`` of steps, a prefill chunk of C tokens per rank.
Steady state admits as many prompt tokens as the decode batch finishes: ``f = r·P / (O·C)``
(``f ≥ 1``: prefill cannot keep up). A step that carries a chunk costs
``t_mix = t_d(r) + t_p(C) − t_0`` (the decode step and the chunk as a prompt of C tokens, less
``t_0``, a one-token-per-rank decode step at context 1: the weight reads and fixed costs both
passes share, counted once; at least the larger of the two), so the mean time per output token is
``t_d + f·(t_mix − t_d)`` — every chunk stalls every sequence in flight, the interference
disaggregation removes — and the time to first token ``⌈P/C⌉·t_mix·(1 + f/(2(1 − f)))``. Goodput
``B / (O · TPOT)`` at the largest r meeting both targets (r within the decode search's memory
and TPOT batch). Without a target, utilisation is capped at :data:`MAX_UTILIZATION`.

**Two-batch overlap** (:mod:`planner.cost.serve_step`, SGLang ``--enable-two-batch-overlap``):
``ServeTargets.two_batch_overlap`` ``auto`` (the default) prices every candidate's step with and
without it and keeps the faster, so each pool says whether it runs with it (``detail``); ``on`` /
``off`` force it. A colocated engine runs its decode and chunk steps with its decode step's choice.

**Routing imbalance** (``ServeTargets.routing``): ``eplb`` (the default) prices every step at its
busiest GPU, the imbalance derived from routing at the step's tokens per GPU with DeepSeek's EPLB
placement and the pool's redundant experts (:mod:`planner.solve.serve_imbalance`: the model's trace, or
``ServeTargets.trace``); ``uniform`` every GPU at the mean (imbalance 1). Each pool's ``detail``
holds the factors of its step (``imbalance_experts``, ``imbalance_alltoall``).

Everything is deterministic: the searches are, and pools are compared in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from planner.cost.comm import nic, nvlink
from planner.cost.memory import GIB, kv_bytes_per_token
from planner.cost.serve_step import TBO_MODES, serve_step
from planner.errors import InfeasibleError, InputError
from planner.progress import stage
from planner.solve.candidates import Candidate
from planner.solve.parallel import search
from planner.solve.serve_imbalance import ROUTINGS, imbalance_at, imbalance_fn
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.workload import DEFAULT_PREFILL_TOKENS

#: Highest share of a pool's capacity (prefill) or of steps carrying a chunk (colocated) taken
#: when no TTFT target bounds it: the queue stays finite.
MAX_UTILIZATION = 0.95


@dataclass(frozen=True)
class ServeTargets:
    """What every pool serves: lengths, targets, KV dtype, replicas, the prefill step budget."""

    prompt_len: int
    output_len: int
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    kv_dtype: str = "bf16"
    redundant: int = 0
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS
    request_rate: float | None = None
    two_batch_overlap: str = "auto"  #: serve_step's mode: off, on, or auto (the faster per candidate)
    routing: str = "eplb"  #: :data:`ROUTINGS`: the step's routing imbalance (module docstring)
    trace: Any = field(default=None, compare=False)  #: routing to derive it from (None: the model's)

    def check(self) -> None:
        for name in ("prompt_len", "output_len", "prefill_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise InputError(f"{name} must be an integer > 0 (got {v!r})", field=name)
        for name in ("ttft_ms", "tpot_ms", "request_rate"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise InputError(f"{name} must be > 0 (got {v!r})", field=name)
        if self.two_batch_overlap not in TBO_MODES:
            raise InputError(f"two_batch_overlap must be one of {', '.join(TBO_MODES)} (got {self.two_batch_overlap!r})",
                             field="two_batch_overlap")
        if self.routing not in ROUTINGS:
            raise InputError(f"routing must be one of {', '.join(ROUTINGS)} (got {self.routing!r})", field="routing")
        if self.redundant < 0:
            raise InputError(f"redundant_experts must be >= 0 (got {self.redundant})", field="redundant_experts")


@dataclass(frozen=True)
class PoolFigures:
    """One pool (or the colocated deployment) sized and timed: ``goodput_rps`` requests/s meet
    both targets; ``reason`` says why it is zero (nothing fits, the target is missed)."""

    role: str
    gpus: int
    cluster: ClusterSpec
    candidate: Candidate | None = None
    step_ms: float = 0.0
    capacity_rps: float = 0.0
    goodput_rps: float = 0.0
    utilization: float = 0.0
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    binding: str = ""
    reason: str = ""
    detail: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class KVCopy:
    """The KV cache a request's prefill hands to decode, and the link that carries it."""

    bytes_per_token: float
    bytes_per_request: float
    bandwidth_gbps: float
    ms_per_request: float
    link: str = "nic"

    def max_rps(self, gpus: int) -> float:
        """Requests/s ``gpus`` GPUs' links carry (each at its full bandwidth)."""
        return gpus * self.bandwidth_gbps * 1e9 / self.bytes_per_request if self.bytes_per_request else math.inf


def kv_copy(model: ModelSpec, hw: HardwareProfile, prompt_len: int, kv_dtype: str, same_node: bool = False) -> KVCopy:
    """KV cache of one prompt (all layers, one copy: the MLA latent is the same on every TP rank,
    GQA heads are split, so whole = TP 1) and its time over one GPU's inter-node NIC, or over
    NVLink when both pools share one node (``same_node``)."""
    per_tok = kv_bytes_per_token(model, 1, 1, kv_dtype)
    nbytes = prompt_len * per_tok
    link = nvlink(hw) if same_node else nic(hw)
    return KVCopy(per_tok, nbytes, link.bandwidth_gbps, link.message_ms(nbytes), "nvlink" if same_node else "nic")


def queue_factor(rho: float) -> float:
    """Mean time in system over the service time of an M/D/1 queue at utilisation ``rho``."""
    if rho >= 1.0:
        return math.inf
    return 1.0 + rho / (2.0 * (1.0 - rho))


def max_utilization(service_ms: float, budget_ms: float | None) -> float:
    """The largest ρ with ``service_ms · queue_factor(ρ) <= budget_ms`` (capped at
    :data:`MAX_UTILIZATION`; 0 when one service alone misses the budget)."""
    if budget_ms is None:
        return MAX_UTILIZATION
    if service_ms <= 0:
        return MAX_UTILIZATION
    s = budget_ms / service_ms - 1.0
    if s < 0:
        return 0.0
    return min(MAX_UTILIZATION, 2.0 * s / (1.0 + 2.0 * s))


def _largest(ok: Callable[[int], bool], hi: int) -> int:
    """The largest r in [1, hi] with ``ok(r)`` (``ok`` true then false), 0 when ``ok(1)`` is false."""
    if hi < 1 or not ok(1):
        return 0
    lo = 1
    if ok(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def _tbo(c: Candidate) -> float:
    """1.0 when the candidate's step was priced with two-batch overlap, else 0.0."""
    return float(c.detail.get("two_batch_overlap", 0.0))


def imbalance_of(model: ModelSpec, cluster: ClusterSpec, t: ServeTargets, mode: str) -> Any:
    """serve_step's ``imbalance`` for a pool of ``cluster`` serving ``mode`` (module docstring)."""
    if t.routing == "uniform":
        return 1.0
    return imbalance_fn(model, t.redundant, mode, cluster.gpus_per_node, t.trace)


def _imbalance_detail(model: ModelSpec, cluster: ClusterSpec, t: ServeTargets, mode: str, c: Candidate) -> dict:
    """The factors of a candidate's whole step (tokens per GPU: its step's tokens over the GPUs)."""
    if t.routing == "uniform" or not c.sequences:
        return {"imbalance_experts": 1.0, "imbalance_alltoall": 1.0}
    per_gpu = c.sequences * (t.prompt_len if mode == "prefill" else 1) / cluster.num_gpus * c.pp
    f = imbalance_at(model, c.ep, t.redundant, per_gpu, mode, cluster.gpus_per_node, t.trace)
    return {"imbalance_experts": f[0], "imbalance_alltoall": f[1]}


def _search(model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, **kw: Any) -> tuple[Any, str]:
    try:
        return search(model, hw, cluster, **kw), ""
    except InfeasibleError as e:
        return None, str(e)


def prefill_pool(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, t: ServeTargets, copy: KVCopy,
    fixed: dict[str, Any] | None = None, prompts_per_gpu: int | None = None,
) -> PoolFigures:
    """The prefill pool on ``cluster`` (module docstring): degrees searched (``fixed`` kept) for
    steps of ``k`` prompts per GPU, ``k`` = ``prompts_per_gpu`` or the best for goodput of
    ``max(1, C // P)`` and its halvings (a shorter step leaves more of the TTFT target to the queue)."""
    N = cluster.num_gpus
    if t.ttft_ms is not None and t.ttft_ms <= copy.ms_per_request:
        return PoolFigures("prefill", N, cluster, reason=(
            f"the KV copy alone ({copy.ms_per_request:.1f} ms) exceeds the {t.ttft_ms:g} ms time-to-first-token "
            "target; relax `ttft_ms` or shorten the prompt (`prompt_len`)"))
    top = max(1, t.prefill_tokens // t.prompt_len)
    ks = [prompts_per_gpu] if prompts_per_gpu is not None else sorted({max(1, top >> i) for i in range(top.bit_length())},
                                                                      reverse=True)
    best, why = None, ""
    for k in ks:
        # a step's k prompts leave one GPU's link together: on average a request waits for (k + 1) / 2 copies
        copy_ms = copy.ms_per_request * (k + 1) / 2
        budget = None if t.ttft_ms is None else t.ttft_ms - copy_ms
        if budget is not None and budget <= 0:
            why = why or (f"{k} prompts per GPU: their KV copies ({copy_ms:.1f} ms) exceed the {t.ttft_ms:g} ms "
                          "time-to-first-token target")
            continue
        found, err = _search(model, hw, cluster, mode="prefill", seq_len=t.prompt_len, global_batch=k * N,
                             fixed=fixed, redundant=t.redundant, latency_target_ms=budget,
                             two_batch_overlap=t.two_batch_overlap,
                             imbalance=imbalance_of(model, cluster, t, "prefill"))
        if found is None:
            why = why or err
            continue
        c = found.best
        cap = c.tokens_per_s / t.prompt_len
        rho = max_utilization(c.step_ms, budget)
        ttft = c.step_ms * queue_factor(rho) + copy_ms
        binding = "ttft" if t.ttft_ms is not None and rho < MAX_UTILIZATION else "utilization cap"
        f = PoolFigures("prefill", N, cluster, c, c.step_ms, cap, rho * cap, rho, ttft_ms=ttft, binding=binding,
                        detail={"prompts_per_gpu": k, "tokens_per_s": c.tokens_per_s, "kv_copy_ms": copy_ms,
                                "two_batch_overlap": _tbo(c), **_imbalance_detail(model, cluster, t, "prefill", c)})
        if best is None or f.goodput_rps > best.goodput_rps * (1 + 1e-9):
            best = f
    return best if best is not None else PoolFigures("prefill", N, cluster, reason=why)


def decode_pool(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, t: ServeTargets, fixed: dict[str, Any] | None = None,
    batch: int | None = None,
) -> PoolFigures:
    """The decode pool on ``cluster``: the largest batch within memory and the TPOT target (or
    ``batch``), goodput ``B / (O · step)``."""
    N = cluster.num_gpus
    found, why = _search(model, hw, cluster, mode="decode", seq_len=t.prompt_len, output_len=t.output_len,
                         global_batch=batch, fixed=fixed, redundant=t.redundant, latency_target_ms=t.tpot_ms,
                         kv_dtype=t.kv_dtype, two_batch_overlap=t.two_batch_overlap,
                         imbalance=imbalance_of(model, cluster, t, "decode"))
    if found is None:
        return PoolFigures("decode", N, cluster, reason=why)
    c = found.best
    cap = c.sequences / (t.output_len * c.step_ms * 1e-3)
    return PoolFigures("decode", N, cluster, c, c.step_ms, cap, cap, 1.0, tpot_ms=c.step_ms, binding=c.binding,
                       detail={"tokens_per_s": c.tokens_per_s, "two_batch_overlap": _tbo(c),
                               **_imbalance_detail(model, cluster, t, "decode", c)})


def _mixed(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, c: Candidate, t: ServeTargets, chunk: int
) -> PoolFigures:
    """The colocated figures of one set of degrees and a chunk of ``chunk`` prefill tokens per
    GPU (module docstring), at the largest batch per rank meeting both targets within the
    candidate's batch."""
    N, dp, P, O = cluster.num_gpus, c.dp, t.prompt_len, t.output_len
    tbo = "on" if _tbo(c) else "off"  # one engine: its decode step's choice for every step
    C = chunk * c.tp  # a rank's chunk: ``chunk`` tokens per GPU of its TP group

    imb = {m: imbalance_of(model, cluster, t, m) for m in ("prefill", "decode")}

    def step(mode: str, seqs: int, seq_len: int) -> float:
        return serve_step(model, hw, mode=mode, num_gpus=N, gpus_per_node=cluster.gpus_per_node, tp=c.tp, pp=c.pp,
                          ep=c.ep, etp=c.etp, sequences=seqs, seq_len=seq_len, redundant=t.redundant,
                          kv_dtype=t.kv_dtype, two_batch_overlap=tbo, imbalance=imb[mode]).step_ms

    # a chunk holds max(1, chunk // P) prompts per GPU (attention over each prompt's own tokens);
    # a chunk shorter than the prompt is priced as a prompt of its length
    per_gpu, length = max(1, chunk // P), min(P, chunk)
    t_chunk = step("prefill", dp * c.tp * per_gpu, length)
    t0 = step("decode", dp, 1)
    chunks = math.ceil(P / C)

    def figures(r: int) -> tuple[float, float, float, float]:
        td = step("decode", r * dp, P + O // 2)
        tmix = max(td, t_chunk, td + t_chunk - t0)
        f = r * P / (O * C)
        if f >= 1.0:
            return td, tmix, f, math.inf
        return td, tmix, f, td + f * (tmix - td)

    def ttft(tmix: float, f: float) -> float:
        return chunks * tmix * queue_factor(f)

    def ok(r: int) -> bool:
        _, tmix, f, tpot = figures(r)
        if f > MAX_UTILIZATION or math.isinf(tpot):
            return False
        if t.tpot_ms is not None and tpot > t.tpot_ms:
            return False
        return t.ttft_ms is None or ttft(tmix, f) <= t.ttft_ms

    r_max = max(1, c.sequences // dp)
    r = _largest(ok, r_max)
    detail = {"chunk_tokens_per_gpu": float(chunk), "chunk_step_ms": t_chunk, "fixed_step_ms": t0,
              "two_batch_overlap": _tbo(c)}
    if r == 0:
        td, tmix, f, tpot = figures(1)
        why = (f"one sequence per rank predicts {tpot:.2f} ms per output token (decode {td:.2f} ms, a step with a "
               f"{chunk}-token chunk per GPU {tmix:.2f} ms, {f:.0%} of steps carry one) and {ttft(tmix, f):.1f} ms "
               "to first token" if not math.isinf(tpot) else
               f"prefill cannot keep up: {P}-token prompts for {O}-token outputs need more than one chunk per step")
        return PoolFigures("colocated", N, cluster, c, reason=why, detail=detail)
    td, tmix, f, tpot = figures(r)
    B = r * dp
    if r == r_max:
        binding = "memory" if c.binding == "memory" else ("tpot (decode alone)" if c.binding == "latency" else c.binding)
    else:
        _, tmix2, f2, tpot2 = figures(r + 1)
        binding = ("tpot" if t.tpot_ms is not None and tpot2 > t.tpot_ms else
                   "ttft" if t.ttft_ms is not None and ttft(tmix2, f2) > t.ttft_ms else "utilization cap")
    cand = replace(c, sequences=B, step_ms=tpot, latency_ms=tpot, tokens_per_s=B / (tpot * 1e-3))
    detail.update(decode_step_ms=td, mixed_step_ms=tmix, chunk_share=f)
    return PoolFigures("colocated", N, cluster, cand, tpot, B / (O * td * 1e-3), B / (O * tpot * 1e-3), f,
                       ttft_ms=ttft(tmix, f), tpot_ms=tpot, binding=binding, detail=detail)


#: Prefill chunk sizes (tokens per GPU) the colocated deployment is tried with; the best is kept
#: (SGLang's --chunked-prefill-size defaults lie in this range).
CHUNK_CHOICES = (512, 1024, 2048, 4096, 8192, 16384)


def colocated(
    model: ModelSpec, hw: HardwareProfile, cluster: ClusterSpec, t: ServeTargets, fixed: dict[str, Any] | None = None,
) -> PoolFigures:
    """Prefill and decode on the same GPUs with chunked prefill: the best of the decode search's
    top candidates (degrees and batch within memory and the TPOT target) and of the chunk sizes
    :data:`CHUNK_CHOICES` under the mixed-step model (module docstring)."""
    N = cluster.num_gpus
    found, why = _search(model, hw, cluster, mode="decode", seq_len=t.prompt_len, output_len=t.output_len,
                         fixed=fixed, redundant=t.redundant, latency_target_ms=t.tpot_ms, kv_dtype=t.kv_dtype,
                         two_batch_overlap=t.two_batch_overlap, imbalance=imbalance_of(model, cluster, t, "decode"))
    if found is None:
        return PoolFigures("colocated", N, cluster, reason=why)
    best: PoolFigures | None = None
    chunks = [k for k in CHUNK_CHOICES if k <= t.prefill_tokens] or [t.prefill_tokens]
    for c in found.alternatives:
        for k in chunks:
            f = _mixed(model, hw, cluster, c, t, k)
            if best is None or f.goodput_rps > best.goodput_rps * (1 + 1e-9):
                best = f
    assert best is not None
    return best


def pool_cluster(units: int, cluster: ClusterSpec) -> ClusterSpec:
    """A pool of ``units`` nodes (a multi-node cluster) or GPUs (one node)."""
    if cluster.num_nodes > 1:
        return ClusterSpec(hardware=cluster.hardware, num_nodes=units, gpus_per_node=cluster.gpus_per_node)
    return ClusterSpec(hardware=cluster.hardware, num_nodes=1, gpus_per_node=units)


def units_of(cluster: ClusterSpec) -> int:
    """What pools are made of: whole nodes on a multi-node cluster, GPUs on one node."""
    return cluster.num_nodes if cluster.num_nodes > 1 else cluster.gpus_per_node


@dataclass
class PoolTable:
    """Prefill, decode and colocated figures by pool size (units), computed once each."""

    model: ModelSpec
    hw: HardwareProfile
    cluster: ClusterSpec
    targets: ServeTargets
    copy: KVCopy
    fixed_prefill: dict[str, Any] | None = None
    fixed_decode: dict[str, Any] | None = None
    decode_batch: int | None = None
    _cache: dict[tuple[str, int], PoolFigures] = field(default_factory=dict)

    def get(self, role: str, units: int) -> PoolFigures:
        key = (role, units)
        if key not in self._cache:
            cl = pool_cluster(units, self.cluster)
            m, hw, t = self.model, self.hw, self.targets
            if role == "prefill":
                self._cache[key] = prefill_pool(m, hw, cl, t, self.copy, self.fixed_prefill)
            elif role == "decode":
                self._cache[key] = decode_pool(m, hw, cl, t, self.fixed_decode, self.decode_batch)
            else:
                self._cache[key] = colocated(m, hw, cl, t)
        return self._cache[key]

    def pair_goodput(self, p_units: int, d_units: int) -> tuple[float, str]:
        """Disaggregated goodput of a split and what binds it (prefill, decode, kv copy)."""
        p, d = self.get("prefill", p_units), self.get("decode", d_units)
        kv = self.copy.max_rps(min(p.gpus, d.gpus))
        vals = (("prefill", p.goodput_rps), ("decode", d.goodput_rps), ("kv copy", kv))
        name, g = min(vals, key=lambda x: x[1])
        return g, name


@dataclass(frozen=True)
class Split:
    prefill_units: int
    decode_units: int
    goodput_rps: float
    binding: str


def best_split(table: PoolTable, prefill_units: int | None = None, decode_units: int | None = None) -> tuple[Split, list[Split]]:
    """The split of the cluster's units into a prefill and a decode pool with the highest
    disaggregated goodput (ties: fewer prefill units), and every split compared. Given sizes are kept."""
    total = units_of(table.cluster)
    if prefill_units is not None and decode_units is not None:
        if prefill_units + decode_units > total:
            raise InputError(
                f"prefill_nodes + decode_nodes ({prefill_units} + {decode_units}) exceed the cluster's {total}",
                field="prefill_nodes")
        pairs = [(prefill_units, decode_units)]
    elif prefill_units is not None:
        pairs = [(prefill_units, total - prefill_units)]
    elif decode_units is not None:
        pairs = [(total - decode_units, decode_units)]
    else:
        pairs = [(p, total - p) for p in range(1, total)]
    for p, d in pairs:
        if p < 1 or d < 1:
            raise InputError(
                f"each pool needs at least one {'node' if table.cluster.num_nodes > 1 else 'GPU'} "
                f"(prefill {p}, decode {d} of {total})", field="prefill_nodes" if p < 1 else "decode_nodes")
    splits = []
    for i, (p, d) in enumerate(pairs):
        stage("pool sizes: prefill and decode pools of every split", i, len(pairs))
        g, why = table.pair_goodput(p, d)
        splits.append(Split(p, d, g, why))
    best = max(splits, key=lambda s: (s.goodput_rps, -s.prefill_units))
    return best, splits


def units_for_rate(table: PoolTable, role: str, rate: float, sizes: list[int]) -> tuple[int, int, int] | None:
    """(pool units, copies, GPUs) of the cheapest way to serve ``rate`` requests/s with copies
    of one pool of a size in ``sizes`` (a prefill or decode pool's rate also within its NICs' KV
    copies): fewest GPUs, then the larger pool; None when no size serves any rate."""
    best: tuple[int, int, int] | None = None
    gpn = table.cluster.gpus_per_node if table.cluster.num_nodes > 1 else 1
    for u in sorted(set(sizes)):
        f = table.get(role, u)
        g = f.goodput_rps
        if role in ("prefill", "decode"):
            g = min(g, table.copy.max_rps(f.gpus))
        if g <= 0:
            continue
        copies = math.ceil(rate / g - 1e-9)
        gpus = copies * u * gpn
        if best is None or gpus < best[2] or (gpus == best[2] and u > best[0]):
            best = (u, copies, gpus)
    return best


def memory_gib(c: Candidate | None) -> float:
    return round(c.memory.total / GIB, 2) if c is not None and c.memory is not None else 0.0
