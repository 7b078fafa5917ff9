"""Per-expert precision under a GPU memory budget (offload mode): an exact ILP over each expert's
precision and residency, and the replay that scores its answer.

MC# (arXiv 2510.10962) and its predecessor MC-MoE (arXiv 2410.06270) allocate a bit-width per
expert by a linear program over expert importance; QuantMoE-Bench (arXiv 2406.08155) finds that
MoE structures need different bits. Here the program is the offload planner's: each expert is kept
in one precision (in host memory and, when resident, on the GPU), the GPU holds what fits the
budget, and the objective is the predicted decode step time under a cap on the accuracy cost.

Legend: S planning steps, L MoE layers, E experts per layer, i = (l, e) one expert, p a precision
of :data:`PRECISIONS`. Per precision: ``B_p`` bytes of one expert (:data:`planner.specs.model.DTYPE_BYTES`),
``c_p`` its host-to-device copy, ``K_p(M)`` its FFN at M tokens and ``K_cpu,p(M)`` on the host CPU
(the caller's :class:`~planner.cachesim.OffloadTiming` per precision: int4 is weight-only, priced by
the cost model's device model at 0.516 bytes per weight with bf16 math, docs/cost_model.md §1),
``a_p`` the user's accuracy cost of the precision (0 for the model's own expert dtype). Per expert,
from the planning steps: ``f_i`` the share of steps that need it, ``T_i,p`` the mean over steps of
``K_p(M_i,s)``, ``U_i,p`` the mean of ``K_cpu,p(M_i,s)``, ``w_i`` its share of all routed tokens
(Σ w = 1).

**Options** of an expert: resident at p (GPU bytes ``B_p``, time ``T_i,p``), or offloaded at p
(0 bytes, time ``T_i,p + f_i·c_p``: copied on demand; with CPU execution ``min(that, U_i,p)``).

**ILP** (§1 variables, §2 objective, §3 constraints)::

    §1  x_i,o ∈ {0, 1}                              expert i takes option o
    §2  minimise  Σ_i,o x_i,o · (t_i,o + ε·w_i·a_p(o))        ε = 1e-6: ties go to the lower cost
    §3  Σ_o x_i,o = 1                                one option per expert
        Σ_i,o x_i,o · mem_o <= R                     R: the budget's bytes for experts
        Σ_i,o x_i,o · w_i · a_p(o) <= A              the accuracy cap (when given)

The plan's **accuracy cost** is ``Σ_i w_i·a_p(i)``: the routed-token-weighted mean of the experts'
costs, so all experts at p cost ``a_p``. That a subset's cost is linear in the tokens it serves is
an assumption (MC-MoE ranks experts by activation frequency and routing weight for the same reason).
The time model is linear: every miss waits for its copy; the replay (:func:`replay_precision`, the
cache simulator's closed form with per-expert copy and FFN times) scores the answer. Experts with
equal statistics are interchangeable, so the ILP has one integer ``n_g,o`` per group g of equal
experts and option (Σ_o n_g,o = |g|): the same optimum with far fewer variables; experts never
needed on the planning steps stay offloaded in the model's dtype. Solved by PuLP with HiGHS (CBC
fallback, :func:`planner.solve.milp.solve_milp`), warm-started at "everything offloaded".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pulp

from planner.cachesim import CacheConfig, CacheSimResult, OffloadTiming
from planner.errors import InputError
from planner.solve.milp import solve_milp, variable
from planner.specs.model import DTYPE_BYTES

#: Precisions an expert may take (the hardware profile prices them: bf16 and fp8 from measured
#: tables, int4 from the device model with bf16 math).
PRECISIONS = ("bf16", "fp8", "int4")
#: Weight of the accuracy cost in the objective: breaks ties between equally fast answers.
TIE_WEIGHT = 1e-6


@dataclass(frozen=True)
class PrecisionSpec:
    """The precisions an expert may take with their accuracy costs (user's unit, e.g. accuracy
    points or % perplexity), the model's own expert dtype (cost 0) and the cap on the plan's cost."""

    costs: dict[str, float]
    native: str
    max_cost: float | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.costs)

    def options(self) -> dict[str, object]:
        """The spec as plan options (provenance)."""
        text = ",".join(f"{p}={a:g}" for p, a in self.costs.items())
        return {"expert_precisions": text, "max_accuracy_cost": self.max_cost}


def parse_precisions(text: str | None, native: str, max_cost: float | None = None) -> PrecisionSpec | None:
    """``"fp8,int4=2.9"`` → a :class:`PrecisionSpec` (``None`` for ``None``). Each precision is one
    of :data:`PRECISIONS` and no wider than the model's expert dtype ``native``; ``native`` costs 0
    (listed or not); every other precision needs its stated cost ``p=a`` with a >= 0."""
    if text is None:
        if max_cost is not None:
            raise InputError("max_accuracy_cost needs expert_precisions", field="max_accuracy_cost")
        return None
    if max_cost is not None and not (np.isfinite(max_cost) and max_cost >= 0):
        raise InputError(f"max_accuracy_cost must be a finite number >= 0 (got {max_cost})", field="max_accuracy_cost")
    costs: dict[str, float] = {native: 0.0}
    for part in (s.strip() for s in str(text).split(",")):
        name, _, val = part.partition("=")
        name = name.strip()
        if name not in PRECISIONS:
            raise InputError(f"expert_precisions: {name!r} is not one of {', '.join(PRECISIONS)}", field="expert_precisions")
        if DTYPE_BYTES[name] > DTYPE_BYTES.get(native, 2.0):
            raise InputError(f"expert_precisions: {name} is wider than the model's expert dtype {native}", field="expert_precisions")
        if name == native and not val.strip():
            continue
        try:
            a = float(val)
        except ValueError:
            raise InputError(f"expert_precisions: {name} needs its accuracy cost as {name}=<number >= 0> (got {part!r});"
                             " no default: the published figures differ by model and method", field="expert_precisions") from None
        if not (np.isfinite(a) and a >= 0):
            raise InputError(f"expert_precisions: {name}'s accuracy cost must be a finite number >= 0 (got {val})",
                             field="expert_precisions")
        costs[name] = a
    return PrecisionSpec(costs, native, max_cost)


@dataclass(frozen=True)
class ExpertStats:
    """Per expert (float [L, E]) from the planning steps: ``f`` share of steps needing it, ``w``
    share of routed tokens; per precision (float [P, L, E]): ``T`` mean FFN ms, ``U`` mean CPU ms."""

    f: np.ndarray
    w: np.ndarray
    T: np.ndarray
    U: np.ndarray | None


def expert_stats(counts_SLE: np.ndarray, timings: list[OffloadTiming]) -> ExpertStats:
    """:class:`ExpertStats` of ``counts_SLE`` (planning steps) under the per-precision timings."""
    need = counts_SLE > 0
    tot = max(int(counts_SLE.sum()), 1)
    S = counts_SLE.shape[0]
    top = int(counts_SLE.max()) if counts_SLE.size else 0
    # steps with m tokens per expert, m = 1..top (decode batches are small): [top, L, E]
    hist = np.stack([(counts_SLE == m).sum(axis=0) for m in range(1, top + 1)]) if 0 < top <= 64 else None

    def mean_of(tab: np.ndarray) -> np.ndarray:
        tab = np.asarray(tab, np.float64)
        if hist is None:
            return tab[np.minimum(counts_SLE, tab.size - 1)].mean(axis=0)
        return np.tensordot(tab[np.minimum(np.arange(1, top + 1), tab.size - 1)], hist, axes=1) / S

    T = np.stack([mean_of(t.ffn_ms_M) for t in timings])
    has_cpu = all(t.cpu_ms_M is not None for t in timings)
    U = np.stack([mean_of(t.cpu_ms_M) for t in timings]) if has_cpu else None
    return ExpertStats(need.mean(axis=0), counts_SLE.sum(axis=0) / tot, T, U)


@dataclass(frozen=True)
class PrecisionAnswer:
    """One ILP answer: per expert its precision (index into the spec's names) and residency."""

    precision_LE: np.ndarray  #: int [L, E]
    resident_LE: np.ndarray  #: bool [L, E]
    objective_ms: float  #: the linear model's time per step (experts' part)
    accuracy_cost: float
    resident_bytes: float
    status: str  #: optimal / feasible / none (warm start kept)
    bound: float | None
    groups: int
    variables: int
    time_s: float


def solve_ilp(
    stats: ExpertStats, timings: list[OffloadTiming], spec: PrecisionSpec, budget_bytes: float, expert_params: float, *,
    cpu: bool = False, time_limit: float = 60.0,
) -> PrecisionAnswer:
    """The module docstring's ILP over grouped experts. ``timings`` follow ``spec.names``."""
    t0 = time.perf_counter()
    names = spec.names
    P = len(names)
    L, E = stats.f.shape
    native = names.index(spec.native)
    a = np.array([spec.costs[p] for p in names])
    mem = np.array([expert_params * DTYPE_BYTES[p] for p in names]) / 1e9  # GB
    copy = np.array([t.copy_ms for t in timings])
    f, w = stats.f.ravel(), stats.w.ravel()
    T = stats.T.reshape(P, -1)
    off = T + f[None, :] * copy[:, None]
    if cpu and stats.U is not None:
        off = np.minimum(off, stats.U.reshape(P, -1))
    used = np.flatnonzero(f > 0)
    # options o = p (resident at p) and P + p (offloaded at p): time [n, 2P], memory and cost [2P]
    t_io = np.concatenate([T.T, off.T], axis=1)[used]
    mem_o = np.r_[mem, np.zeros(P)]
    a_o = np.r_[a, a]
    key = np.column_stack([w[used], t_io])
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    inv = inv.ravel()
    size = np.bincount(inv, minlength=len(uniq))
    G, O = len(uniq), 2 * P
    prob = pulp.LpProblem("expert_precision", pulp.LpMinimize)
    n = [[variable(prob, f"n_{g}_{o}", 0, int(size[g]), "Integer") for o in range(O)] for g in range(G)]
    for g in range(G):  # warm start: everything offloaded in the native dtype
        for o in range(O):
            n[g][o].setInitialValue(int(size[g]) if o == P + native else 0)
    wg, tg = uniq[:, 0], uniq[:, 1:]
    prob += pulp.lpSum(n[g][o] * float(tg[g, o] + TIE_WEIGHT * wg[g] * a_o[o]) for g in range(G) for o in range(O))
    for g in range(G):
        prob += pulp.lpSum(n[g]) == int(size[g])
    prob += pulp.lpSum(n[g][o] * float(mem_o[o]) for g in range(G) for o in range(P)) <= budget_bytes / 1e9
    if spec.max_cost is not None:
        prob += pulp.lpSum(n[g][o] * float(wg[g] * a_o[o]) for g in range(G) for o in range(O) if a_o[o] > 0) <= spec.max_cost
    status, bound = solve_milp(prob, time_limit) if G else ("optimal", 0.0)
    take = np.zeros((G, O), np.int64)
    for g in range(G):
        for o in range(O):
            v = n[g][o].varValue
            take[g, o] = int(round(v)) if v is not None else (size[g] if o == P + native else 0)
    opt = _expand(inv, take)  # option of each used expert
    prec = np.full(L * E, native, np.int64)
    res = np.zeros(L * E, bool)
    prec[used] = opt % P
    res[used] = opt < P
    t_obj = float(t_io[np.arange(used.size), opt].sum())
    return PrecisionAnswer(
        precision_LE=prec.reshape(L, E), resident_LE=res.reshape(L, E), objective_ms=t_obj,
        accuracy_cost=float((w * a[prec]).sum()), resident_bytes=float((mem[prec] * res).sum() * 1e9), status=status,
        bound=bound, groups=G, variables=G * O, time_s=time.perf_counter() - t0,
    )


def _expand(inv: np.ndarray, take: np.ndarray) -> np.ndarray:
    """Option of each member of each group: the group's members (in expert order) take its
    options in option order, ``take[g, o]`` of option o."""
    out = np.empty(inv.size, np.int64)
    order = np.argsort(inv, kind="stable")
    pos = 0
    for g in range(take.shape[0]):
        opts = np.repeat(np.arange(take.shape[1]), take[g])
        out[order[pos:pos + opts.size]] = opts
        pos += opts.size
    return out


# ---- replay -----------------------------------------------------------------------------------

#: Steps replayed at once (memory of the packed [C, L, k] arrays).
CHUNK_STEPS = 2048


def replay_precision(
    counts_SLE: np.ndarray, resident_LE: np.ndarray, precision_LE: np.ndarray, timings: list[OffloadTiming],
    cpu: str = "off", *, record_from: int = 0, batch: float = 1.0,
) -> CacheSimResult:
    """Static residency with a precision per expert, replayed step by step: the closed form of
    :mod:`planner.cachesim_fast` with each expert's own copy time ``c_p`` and FFN ``K_p(M)``::

        copied misses in id order; the i-th is ready at pre + Σ_{copied j <= i} c_j
        t = max(pre + Σ_hits K + Σ_copied K,  max_i (pre + Σ_{copied j <= i} c_j + Σ_{copied j >= i} K_j))
        t = max(t, pre + Σ_cpu K_cpu)                 (when some miss ran on the CPU)
        layer = t + (1 − ov) · min(Σ_copied c, pre + Σ_GPU K)

    ``cpu``: ``off`` copies every miss; ``fastest`` runs a miss on the host CPU when that ends
    before its copy and kernel would (Fiddler's rule with both queues, miss by miss in id order,
    as the simulator). With one precision for all experts it equals
    :func:`planner.cachesim_fast.replay_fast` of the same static cache (a test checks it).
    ``pre``, ``other`` and ``overlap`` are the first timing's (they do not depend on the experts'
    precision)."""
    S, L, E = counts_SLE.shape
    if resident_LE.shape != (L, E) or precision_LE.shape != (L, E):
        raise InputError(f"resident / precision shapes {resident_LE.shape} / {precision_LE.shape} do not match [L={L}, E={E}]")
    if cpu not in ("off", "fastest"):
        raise InputError(f"cpu must be off or fastest (got {cpu!r})", field="cpu_execution")
    if cpu == "fastest" and any(t.cpu_ms_M is None for t in timings):
        raise InputError("cpu execution of missed experts needs the timings' cpu_ms_M")
    if not 0 <= record_from < S:
        raise InputError(f"record_from must be in [0, {S}) (got {record_from})")
    t0 = timings[0]
    width = max(t.ffn_ms_M.size for t in timings)
    ffn = np.stack([np.pad(np.asarray(t.ffn_ms_M, float), (0, width - t.ffn_ms_M.size), mode="edge") for t in timings])
    cpu_t = (np.stack([np.pad(np.asarray(t.cpu_ms_M, float), (0, width - t.cpu_ms_M.size), mode="edge") for t in timings])
             if cpu == "fastest" else None)
    copy = np.array([t.copy_ms for t in timings])
    nbytes = np.array([t.expert_bytes for t in timings])
    R = S - record_from
    out = {k: np.zeros((R, L), np.int32) for k in ("need", "hit", "demand", "cpu")}
    lay, comp = np.zeros((R, L)), np.zeros((R, L))
    moved = 0.0
    for a in range(record_from, S, CHUNK_STEPS):
        b = min(S, a + CHUNK_STEPS)
        r = slice(a - record_from, b - record_from)
        parts = _chunk(counts_SLE[a:b], resident_LE, precision_LE, ffn, cpu_t, copy, t0)
        for k in ("need", "hit", "demand", "cpu"):
            out[k][r] = parts[k]
        lay[r], comp[r] = parts["layer"], parts["compute"]
        moved += float((parts["copied_by_p"] * nbytes).sum())
    n_copy = int(out["demand"].sum())
    zero = np.zeros((R, L), np.int32)
    return CacheSimResult(
        need_SL=out["need"], hit_SL=out["hit"], demand_SL=out["demand"], cpu_SL=out["cpu"], prefetch_SL=zero,
        prefetch_used_SL=zero.copy(), layer_ms_SL=lay, compute_ms_SL=comp, stall_ms_SL=np.maximum(lay - comp, 0.0),
        step_ms_S=lay.sum(axis=1) + t0.other_ms, batch=float(batch),
        expert_bytes=moved / n_copy if n_copy else float(nbytes[0]),
    )


def _chunk(
    cnt: np.ndarray, res_LE: np.ndarray, prec_LE: np.ndarray, ffn_PM: np.ndarray, cpu_PM: np.ndarray | None,
    copy_P: np.ndarray, t0: OffloadTiming,
) -> dict[str, np.ndarray]:
    """:func:`replay_precision` on the steps ``cnt`` [C, L, E]: per (step, layer) counts and times.
    Works on the needed experts packed in id order into [C, L, k]."""
    C, L, E = cnt.shape
    c_i, l_i, e_i = np.nonzero(cnt > 0)
    n_cl = np.bincount(c_i * L + l_i, minlength=C * L)
    k = max(int(n_cl.max()) if n_cl.size else 0, 1)
    j_i = np.arange(c_i.size) - np.r_[0, np.cumsum(n_cl)[:-1]][c_i * L + l_i]
    valid = np.zeros((C, L, k), bool)
    valid[c_i, l_i, j_i] = True
    m = np.zeros((C, L, k), np.int64)
    m[c_i, l_i, j_i] = cnt[c_i, l_i, e_i]
    p = np.zeros((C, L, k), np.int64)
    p[c_i, l_i, j_i] = prec_LE[l_i, e_i]
    hit = np.zeros((C, L, k), bool)
    hit[c_i, l_i, j_i] = res_LE[l_i, e_i]
    miss = valid & ~hit
    M = np.minimum(m, ffn_PM.shape[1] - 1)
    K = np.where(valid, ffn_PM[p, M], 0.0)
    c = np.where(miss, copy_P[p], 0.0)
    on_cpu = np.zeros_like(miss)
    if cpu_PM is not None:  # Fiddler's rule, miss by miss in id order
        kc = np.where(miss, cpu_PM[p, M], 0.0)
        cpu_q, copy_q = np.zeros((C, L)), np.zeros((C, L))
        for j in range(k):
            go = miss[:, :, j] & (cpu_q + kc[:, :, j] < copy_q + c[:, :, j] + K[:, :, j])
            on_cpu[:, :, j] = go
            cpu_q += np.where(go, kc[:, :, j], 0.0)
            copy_q += np.where(miss[:, :, j] & ~go, c[:, :, j], 0.0)
    cp = miss & ~on_cpu
    pre, ov = t0.pre_ms, t0.overlap
    c_cp = np.where(cp, c, 0.0)
    k_cp = np.where(cp, K, 0.0)
    ready = np.cumsum(c_cp, axis=2)
    tail = np.cumsum(k_cp[:, :, ::-1], axis=2)[:, :, ::-1]
    late = np.where(cp, pre + ready + tail, -np.inf).max(axis=2)
    kern = np.where(hit, K, 0.0).sum(axis=2) + k_cp.sum(axis=2)
    t = np.maximum(pre + kern, late)
    if cpu_PM is not None and on_cpu.any():
        t = np.where(on_cpu.any(axis=2), np.maximum(t, pre + np.where(on_cpu, kc, 0.0).sum(axis=2)), t)
    t = t + (1.0 - ov) * np.minimum(c_cp.sum(axis=2), pre + kern)
    copied_by_p = np.bincount(p[cp], minlength=copy_P.size)
    return {"need": valid.sum(axis=2), "hit": hit.sum(axis=2), "demand": cp.sum(axis=2), "cpu": on_cpu.sum(axis=2),
            "layer": t, "compute": pre + kern, "copied_by_p": copied_by_p}


# ---- the driver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionSolution:
    """The chosen per-expert precision and residency, and how they were chosen (the attributes
    :class:`planner.solve.cache.CacheSolution` has, so a plan is built the same way)."""

    config: CacheConfig  #: the static cache (resident sets, CPU mode); no dynamic slots, no prefetch
    answer: PrecisionAnswer
    planning: CacheSimResult  #: the chosen answer replayed on the planning steps
    candidates: dict[str, float]  #: mean step ms on the planning steps by candidate name
    transfers: dict[str, int]
    chosen: str
    time_s: float
    threshold: float | None = None
    prefetch_count: int = 0
    stopped_by_time: bool = False
    sampled_steps: int | None = None
    sample_error: float | None = None
    skipped: tuple[str, ...] = field(default=())


def solve_precision(
    counts_SLE: np.ndarray, timings: list[OffloadTiming], spec: PrecisionSpec, budget_bytes: float, expert_params: float, *,
    cpu_modes: tuple[str, ...] = ("off", "fastest"), batch: float = 1.0, time_limit: float = 60.0,
) -> PrecisionSolution:
    """Solve the ILP once per CPU mode on the planning steps ``counts_SLE``, replay each answer on
    them and keep the fastest (then the fewest copies). ``timings`` follow ``spec.names``."""
    t0 = time.perf_counter()
    if len(timings) != len(spec.names):
        raise InputError(f"{len(timings)} timings for {len(spec.names)} precisions")
    if budget_bytes < 0:
        raise InputError(f"the expert budget must be >= 0 bytes (got {budget_bytes:g})", field="gpu_memory_gb")
    stats = expert_stats(counts_SLE, timings)
    modes = [c for c in cpu_modes if c == "off" or stats.U is not None]
    results: dict[str, tuple[PrecisionAnswer, CacheSimResult, str]] = {}
    for cpu in modes:
        left = max(0.01, time_limit - (time.perf_counter() - t0))
        ans = solve_ilp(stats, timings, spec, budget_bytes, expert_params, cpu=cpu == "fastest", time_limit=left)
        sim = replay_precision(counts_SLE, ans.resident_LE, ans.precision_LE, timings, cpu, batch=batch)
        results[f"precision-ilp(cpu={cpu})"] = (ans, sim, cpu)
    ms = {k: float(v[1].step_ms_S.mean()) for k, v in results.items()}
    chosen = min(ms, key=lambda k: (ms[k], results[k][1].transfers, k))
    ans, sim, cpu = results[chosen]
    L = ans.resident_LE.shape[0]
    cfg = CacheConfig(ans.resident_LE, np.zeros(L, np.int64), "lru", None, cpu)  # type: ignore[arg-type]
    return PrecisionSolution(
        config=cfg, answer=ans, planning=sim, candidates=ms, transfers={k: v[1].transfers for k, v in results.items()},
        chosen=chosen, time_s=time.perf_counter() - t0,
    )


def precision_index(expert_precision: list[list[str]]) -> tuple[tuple[str, ...], np.ndarray]:
    """A plan's per-expert precision names [L][E] as (the precisions used, int [L, E] into them)."""
    arr = np.asarray(expert_precision)
    names, idx = np.unique(arr, return_inverse=True)
    return tuple(str(x) for x in names), idx.reshape(arr.shape)


def resident_bytes(resident: list[list[int]], expert_precision: list[list[str]], expert_params: float) -> float:
    """GPU bytes of a plan's resident experts, each in its own precision."""
    return float(sum(expert_params * DTYPE_BYTES[expert_precision[i][e]] for i, row in enumerate(resident) for e in row))


def describe(answer: PrecisionAnswer, spec: PrecisionSpec) -> str:
    """``"; experts in bf16 1330 (70 resident), int4 334 (334 resident); accuracy cost 1.44"``."""
    parts = [f"{p} {int((answer.precision_LE == j).sum())} ({int(((answer.precision_LE == j) & answer.resident_LE).sum())} resident)"
             for j, p in enumerate(spec.names)]
    cap = "" if spec.max_cost is None else f" (cap {spec.max_cost:g})"
    return f"; experts in {', '.join(parts)}; accuracy cost {answer.accuracy_cost:.3g}{cap}"
