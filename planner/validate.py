"""Validation on one device: execute each EP rank's share of a plan and compare with the prediction.

What is executed (docs/contracts.md, ``validate``), on one device. For each evaluated trace
step s and MoE layer l:

1. **Dispatch, as the simulator does it.** The step's tokens start on the pipeline stage's GPUs
   (:func:`planner.score.stage_source_gpus`), form ``X = stage GPUs / (ep · etp)`` expert-data-
   parallel groups, and inside group x a token starting on GPU g is sent from EP rank
   ``(g mod (ep · etp)) // etp``; :func:`planner.simulator.choose_slots` (the plan's ``dispatch``
   policy over replicas) picks the physical slot of every (token, choice) pair. Counting pairs
   per slot gives ``tokens_SLXRP`` [steps, layers, groups, EP ranks, slots per rank] — exactly
   the counts ``planner.score.simulate_stage`` costs (a test checks that the straggler predicted here
   equals the simulator's ``compute_ms``).
2. **Prediction** per rank: ``pred[s,l,x,r] = Σ_p expert_ffn_ms(hw, h, f / etp, dtype, tokens[s,l,x,r,p])``
   (:func:`planner.cost.compute.expert_ffn_ms`, the simulator's compute term), with the plan's
   hardware profile. The layer's straggler: ``max over (x, r)``.
3. **Measurement** per rank: :func:`kernels.moe_layer.run_local_experts` on the rank's
   ``slots_per_gpu`` slots with those row counts, random bf16 weights of the expert shape
   ``(h, f / etp)`` rotated so that the L2 does not hold them, timed by
   :func:`kernels.timing.bench` (CUDA events, warm-up, median of repeats, minimum over runs).
   Each ``--backend`` is measured (``auto``: the layer's own choice, ``torch._grouped_mm`` for
   CUDA bf16, else a loop of per-expert matmuls). A rank with no rows costs 0 on both sides.
   Only the expert FFN is timed — dispatch, permute and combine are not part of this figure.
4. **Comparison**: ``error % = 100 · (predicted − measured) / measured``; MAPE = the mean of
   ``|error %|`` over every (step, layer, group, rank) with rows (``ranks``), and over every
   (step, layer) straggler (``straggler``); ``sum`` compares the summed straggler times (the
   compute part of the predicted MoE time per step, over the evaluated layers).

Which steps: the plan's held-out steps (``predicted.evaluated_on`` names them: "the last N of
S") of the plan's own trace (the shipped or synthetic trace named in ``provenance.trace``, or
the file given with ``--trace`` when it is the one the plan was made from); any other ``--trace``
is evaluated on all its steps. ``steps`` keeps the first N of them; ``layers`` N MoE layers
evenly spaced. (step, layer) pairs run in a fixed shuffled order (seed 0) so that a time budget
(``budget_s``: no new pair starts after it; at least one runs) leaves a spread sample; the
report says how many ran. ``max_tokens`` caps every slot's rows (both sides use the capped
counts) so that a CPU run stays small.

The module is torch-free at import; :func:`planner.kernel_loader.load_kernels` imports the layer
when needed. Offload plans go to :mod:`planner.offload_validate`.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from planner.cost.compute import expert_ffn_ms, grouped_experts_ms
from planner.errors import InputError
from planner.kernel_loader import load_kernels
from planner.offload_validate import validate_offload
from planner.provenance import version
from planner.resolve import resolve_trace
from planner.score import ep_ranks_per_node, stage_source_gpus
from planner.simulator import choose_slots
from planner.specs.hardware import HardwareProfile, load_hardware
from planner.specs.plan import Plan
from planner.traces import Trace, check_against_model
from planner.traces.steps import workload_steps

__all__ = [
    "BACKENDS", "TimingOptions", "error_pct", "load_kernels", "plan_trace", "predict_rank_ms", "provenance",
    "rank_slot_tokens", "spread", "summarize", "validate",
]

#: Backends ``validate`` accepts (kernels.moe_layer.BACKENDS).
BACKENDS = ("auto", "grouped", "loop", "padded", "triton")
_HELD_OUT_RE = re.compile(r"the last (\d+) of (\d+)")


# ---- which tokens -----------------------------------------------------------------------------


def plan_trace(plan: Plan, trace_path: str | Path | None) -> tuple[Trace, str, str]:
    """The trace to replay, a label, and which steps: ``(trace, label, note)``.

    Without ``trace_path`` the plan's own trace is rebuilt from ``provenance.trace`` (a shipped
    or synthetic trace); with it, that file. The plan's held-out steps are kept when the trace
    is the plan's own, all steps otherwise.
    """
    label = plan.provenance.trace or ""
    model = plan.model
    tps = plan.workload.tokens_per_step
    if trace_path is None:
        if not (label.startswith("shipped:") or label.startswith("synthetic(")):
            raise InputError(
                f"the plan was made from trace {label or '(unknown)'!r}, which validate cannot rebuild; pass `trace` FILE",
                mentions=("trace",),
            )
        tr, got, counts = resolve_trace(None, model, plan.provenance.seed, tps)
        if got != label:
            raise InputError(
                f"the plan was made from trace {label!r} but this install provides {got!r}; pass `trace` FILE",
                mentions=("trace",),
            )
        own = True
    else:
        tr, got, counts = resolve_trace(str(trace_path), model, plan.provenance.seed, tps)
        own = got == label
    check_against_model(tr, model, got)
    tr.refuse_nulls(f"validate (trace {got})")
    # the plan's steps: as planner.api.prepare forms them (regrouped unless sampled from counts)
    tr, _how = workload_steps(tr, plan.workload, plan.cluster.num_gpus, plan.provenance.seed, regroup=counts is None)
    pred = plan.predicted
    m = _HELD_OUT_RE.search(pred.evaluated_on) if (own and pred is not None) else None
    if m and int(m.group(2)) == tr.num_steps:
        n = int(m.group(1))
        sub = tr.select_steps(slice(tr.num_steps - n, None))
        return sub, got, f"the plan's held-out steps: the last {n} of {tr.num_steps} steps of {got}"
    if own:
        return tr, got, f"all {tr.num_steps} steps of {got} (the plan names no held-out steps)"
    return tr, got, f"all {tr.num_steps} steps of {got} (not the plan's trace {label!r})"


def rank_slot_tokens(plan: Plan, trace: Trace) -> np.ndarray:
    """Rows each physical slot receives, per step: int64 ``tokens_SLXRP`` (module docstring, 1).

    Mirrors ``planner.score.simulate_stage``: same source GPUs, same groups, same ``choose_slots``.
    """
    par, pl = plan.parallel, plan.placement
    p2l_LP = np.asarray(pl.physical_to_logical, dtype=np.int64)
    L, P = p2l_LP.shape
    slots = pl.slots_per_gpu
    stage_gpus = plan.cluster.num_gpus // par.pp
    group_size = par.ep * par.etp
    X = stage_gpus // group_size
    gpu_T = stage_source_gpus(trace, stage_gpus)
    _, step_T = np.unique(trace.step, return_inverse=True)
    S = int(step_T.max()) + 1
    out = np.zeros((S, L, X, par.ep, slots), dtype=np.int64)
    for x in range(X):
        mask = gpu_T // group_size == x
        src_T = (gpu_T[mask] % group_size) // par.etp
        st_T = step_T[mask]
        for l in range(L):
            slot_Tk = choose_slots(trace.topk_ids[l][mask], src_T, p2l_LP[l], slots, plan.model.num_experts, plan.dispatch,
                                   ep_ranks_per_node(plan.cluster, par))
            flat = (st_T[:, None] * P + slot_Tk).reshape(-1)
            out[:, l, x] = np.bincount(flat, minlength=S * P).reshape(S, par.ep, slots)
    return out


def predict_rank_ms(
    hw: HardwareProfile, hidden: int, ffn: int, dtype: str, tokens_SLXRP: np.ndarray, kernel: str = "loop"
) -> np.ndarray:
    """Predicted expert time of every rank: ``[S, L, X, R]`` = Σ over its slots of expert_ffn_ms
    (``kernel="loop"``) or one grouped-GEMM launch over its slots (``"grouped"``,
    :func:`planner.cost.compute.grouped_experts_ms`)."""
    tok = np.asarray(tokens_SLXRP)
    if kernel == "loop":
        return expert_ffn_ms(hw, hidden, ffn, dtype, tok).sum(axis=-1)
    flat = tok.reshape(-1, tok.shape[-1])
    return grouped_experts_ms(hw, hidden, ffn, dtype, flat, kernel=kernel).reshape(tok.shape[:-1])


def spread(n_total: int, n: int | None) -> list[int]:
    """``n`` indices of ``range(n_total)`` evenly spaced (all when ``n`` is None or >= n_total)."""
    if n is None or n >= n_total:
        return list(range(n_total))
    return sorted({int(round(v)) for v in np.linspace(0, n_total - 1, n)})


# ---- comparison -------------------------------------------------------------------------------


def error_pct(predicted: float, measured: float) -> float | None:
    """100 · (predicted − measured) / measured; None when nothing was measured."""
    if measured <= 0:
        return None
    return 100.0 * (predicted - measured) / measured


def summarize(pairs: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """MAPE, mean signed error and totals of (predicted, measured) pairs with measured > 0."""
    errs = [e for p, m in pairs if (e := error_pct(p, m)) is not None]
    if not errs:
        return {"n": 0, "mape_pct": None, "mean_error_pct": None, "max_abs_error_pct": None}
    a = np.abs(np.asarray(errs))
    return {
        "n": len(errs),
        "mape_pct": float(a.mean()),
        "mean_error_pct": float(np.mean(errs)),
        "max_abs_error_pct": float(a.max()),
        "predicted_mean_ms": float(np.mean([p for p, m in pairs if m > 0])),
        "measured_mean_ms": float(np.mean([m for _, m in pairs if m > 0])),
    }


# ---- provenance -------------------------------------------------------------------------------


def provenance(device: str, argv: Sequence[str] | None) -> dict[str, Any]:
    """Device, driver (nvidia-smi when present), library versions, date, command line."""
    import torch  # noqa: PLC0415

    timing = importlib.import_module("planner_kernels.timing")
    out: dict[str, Any] = {
        "device": timing.device_name(device),
        "device_kind": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "moe_planner": version(),
        "date_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command_line": " ".join(["moe-planner", "validate", *argv]) if argv is not None else None,
    }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()
        name, _, driver = smi.splitlines()[0].partition(",") if smi else ("", "", "")
        out["nvidia_smi_name"], out["driver_version"] = name.strip() or None, driver.strip() or None
    except (OSError, subprocess.SubprocessError):
        out["nvidia_smi_name"] = out["driver_version"] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out["sms"] = p.multi_processor_count
        out["compute_capability"] = f"{p.major}.{p.minor}"
        try:
            import triton  # noqa: PLC0415

            out["triton"] = triton.__version__
        except ImportError:
            out["triton"] = None
    return out


# ---- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimingOptions:
    """How each rank is timed (kernels.timing.bench)."""

    warmup: int = 3
    reps: int = 10
    runs: int = 3
    lead: bool = True


def validate(
    plan: Plan,
    *,
    trace: str | Path | None = None,
    device: str = "cpu",
    steps: int | None = None,
    layers: int | None = None,
    max_tokens: int | None = None,
    backends: Sequence[str] = ("auto",),
    timing: TimingOptions = TimingOptions(),
    budget_s: float | None = None,
    argv: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Execute the plan's per-rank expert work on ``device`` and compare with the prediction.

    Returns the report (a JSON-ready dict; see the module docstring for every figure).
    """
    _check_options(device, steps, layers, max_tokens, budget_s, timing, backends)
    if plan.cache is not None:  # offload plans: the offloaded stack (planner.offload_validate)
        return validate_offload(plan, trace=trace, device=device, steps=steps, layers=layers, progress=progress)
    say = progress or (lambda _msg: None)

    kernels = load_kernels()
    import torch  # noqa: PLC0415

    timing_mod = importlib.import_module(f"{kernels.__name__}.timing")
    layer_mod = importlib.import_module(f"{kernels.__name__}.moe_layer")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda: torch sees no CUDA device here; use --device cpu", field="device")

    m, par = plan.model, plan.parallel
    hw = load_hardware(plan.cluster.hardware)
    ffn = m.expert_intermediate_size // par.etp
    exec_dtype = "bf16"
    notes: list[str] = []
    if m.expert_dtype != exec_dtype:
        notes.append(
            f"the plan's experts are {m.expert_dtype}; validation executes bf16 GEMMs and predicts bf16 to match"
        )

    if device == "cpu":
        notes.append(
            f"measured on the CPU against a prediction for {hw.name}: the errors check the pipeline, not the cost model"
        )
    tr, trace_label, which = plan_trace(plan, trace)
    tokens_SLXRP = rank_slot_tokens(plan, tr)
    S_all, L_all, X, R, P = tokens_SLXRP.shape
    step_ids = [int(s) for s in tr.steps]
    s_sel = list(range(min(S_all, steps))) if steps is not None else list(range(S_all))
    l_sel = spread(L_all, layers)
    if max_tokens is not None:
        tokens_SLXRP = np.minimum(tokens_SLXRP, max_tokens)
        notes.append(f"every slot's rows capped at --max-tokens {max_tokens} (prediction and measurement alike)")
    pred_SLXR = predict_rank_ms(hw, m.hidden_size, ffn, exec_dtype, tokens_SLXRP, plan.workload.expert_kernel)

    try:
        resolved = {b: layer_mod.resolve_backend(b, torch.empty(0, device=device, dtype=torch.bfloat16)) for b in backends}
    except RuntimeError as exc:  # e.g. triton without triton, or on a CPU tensor
        raise InputError(f"backend: {exc}", field="backend") from None
    max_rows = int(tokens_SLXRP[s_sel][:, l_sel].sum(axis=-1).max()) if s_sel and l_sel else 1
    rank = timing_mod.RankBench(P, m.hidden_size, ffn, device=device, dtype=torch.bfloat16, max_rows=max_rows)
    say(
        f"{m.name}: {len(s_sel)} step(s) x {len(l_sel)} layer(s) x {X * R} rank(s), {P} slots of "
        f"({m.hidden_size}, {ffn}) per rank, backends {', '.join(f'{b}->{v}' for b, v in resolved.items())}, "
        f"device {device}, {rank.copies} weight copies of {rank.weight_bytes / 2**20:.1f} MB"
    )
    checks = _numerical_checks(rank, tokens_SLXRP, s_sel, l_sel, resolved)
    pairs = [(s, l) for s in s_sel for l in l_sel]
    meas, elapsed = _measure_pairs(
        rank, tokens_SLXRP, pred_SLXR, pairs, resolved, backends, timing, budget_s, step_ids, say
    )
    done = sorted(meas)
    rank_rows, straggler_rows = _result_rows(done, meas, tokens_SLXRP, pred_SLXR, step_ids, backends)
    return {
        "what": "moe-planner validate: each EP rank's expert FFN executed with the plan's per-slot token "
        "counts, predicted (planner.cost.compute.expert_ffn_ms summed over the rank's slots) against measured",
        "plan": {
            "model": m.name, "hardware": hw.name, "num_nodes": plan.cluster.num_nodes,
            "gpus_per_node": plan.cluster.gpus_per_node, "parallel": par.model_dump(),
            "slots_per_gpu": P, "dispatch": plan.dispatch, "solver": plan.solver.name,
            "input_hash": plan.provenance.input_hash, "trace": trace_label,
        },
        "evaluated": {
            "which": which,
            "steps": [step_ids[s] for s in s_sel],
            "layers": l_sel,
            "groups": X,
            "ranks": R,
            "pairs_planned": len(pairs),
            "pairs_measured": len(done),
            "complete": len(done) == len(pairs),
            "max_tokens": max_tokens,
        },
        "shape": {"hidden": m.hidden_size, "ffn": ffn, "etp": par.etp, "slots_per_rank": P,
                  "dtype_executed": exec_dtype, "dtype_plan": m.expert_dtype},
        "prediction": {
            "model": "planner.cost.compute.expert_ffn_ms summed over each rank's slots",
            "hardware_profile": hw.name,
            "profile_measured": getattr(getattr(hw, "measured", None), "date", None),
            "measured_table_for_shape": hw.table_for(m.hidden_size, ffn, exec_dtype) is not None,
        },
        "device": provenance(device, argv),
        "method": {
            "timing": timing_mod.method(device, warmup=timing.warmup, reps=timing.reps, runs=timing.runs,
                                        lead=timing.lead, rotate_bytes=rank.rotate_bytes),
            "weight_copies": rank.copies,
            "scope": "expert FFN of each rank only (gate/up GEMM, SiLU*up, down GEMM); dispatch, permute, "
            "combine and shared experts are not timed",
            "error": "error_pct = 100 * (predicted - measured) / measured; MAPE = mean |error_pct| over rows "
            "with measured > 0",
            "elapsed_s": elapsed,
        },
        "backends": {b: resolved[b] for b in backends},
        "checks": checks,
        "summary": _summary(rank_rows, straggler_rows, backends, resolved),
        "straggler": straggler_rows,
        "ranks": rank_rows,
        "notes": notes,
    }


def _check_options(
    device: str, steps: int | None, layers: int | None, max_tokens: int | None, budget_s: float | None,
    timing: TimingOptions, backends: Sequence[str],
) -> None:
    """Every option rule of :func:`validate`; errors name the keyword (the CLI shows its flag)."""
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cuda' or 'cpu' (got {device!r})", field="device")
    for name, v in (("steps", steps), ("layers", layers), ("max_tokens", max_tokens)):
        if v is not None and v <= 0:
            raise InputError(f"{name} must be > 0 (got {v})", field=name)
    if budget_s is not None and budget_s <= 0:
        raise InputError(f"budget_s must be > 0 seconds (got {budget_s})", field="budget_s")
    if timing.reps < 1 or timing.runs < 1 or timing.warmup < 0:
        raise InputError(
            f"reps and `runs` must be >= 1 and `warmup` >= 0 (got {timing.reps}, {timing.runs}, {timing.warmup})",
            field="reps", mentions=("runs", "warmup"),
        )
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)} (got {bad[0] if bad else 'none'!r})",
                         field="backend")


def _numerical_checks(
    rank: Any, tokens_SLXRP: np.ndarray, s_sel: list[int], l_sel: list[int], resolved: dict[str, str]
) -> list[dict[str, Any]]:
    """Every backend at small row counts (at most 8 per slot) against float64 on the CPU."""
    _, _, X, R, P = tokens_SLXRP.shape
    checks = []
    first = tokens_SLXRP[s_sel[0], l_sel[0]].reshape(X * R, P) if s_sel and l_sel else np.zeros((1, P), np.int64)
    small = np.minimum(first[int(np.argmax(first.sum(1)))], 8)
    if small.sum() == 0:
        small[0] = 1
    for b, be in resolved.items():
        checks.append({"backend": b, "resolved": be, "rows": int(small.sum()),
                       "rel_err_vs_float64": rank.check(small.tolist(), be)})
    return checks


def _measure_pairs(
    rank: Any, tokens_SLXRP: np.ndarray, pred_SLXR: np.ndarray, pairs: list[tuple[int, int]],
    resolved: dict[str, str], backends: Sequence[str], timing: TimingOptions, budget_s: float | None,
    step_ids: list[int], say: Callable[[str], None],
) -> tuple[dict[tuple[int, int], dict[str, np.ndarray]], float]:
    """Measured ms of every rank ``{(s, l): {backend: [X, R]}}`` and the seconds it took.

    Pairs run in a fixed shuffled order (seed 0), so that a time budget leaves a spread sample.
    """
    _, _, X, R, P = tokens_SLXRP.shape
    order = np.random.default_rng(0).permutation(len(pairs))
    if pairs:  # one untimed pass over the first pair: library initialisation, autotuning, caches
        s, l = pairs[int(order[0])]
        busiest = tokens_SLXRP[s, l].reshape(X * R, P)
        busiest = busiest[int(np.argmax(busiest.sum(1)))].tolist()
        for be in resolved.values():
            rank.measure(busiest, be, warmup=1, reps=1, runs=1, lead=timing.lead)
    t0 = time.perf_counter()
    meas: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for i, j in enumerate(order):
        if i > 0 and budget_s is not None and time.perf_counter() - t0 > budget_s:
            say(f"time budget of {budget_s:g} s reached after {i} of {len(pairs)} (step, layer) pairs")
            break
        s, l = pairs[j]
        got = {b: np.zeros((X, R)) for b in backends}
        for x in range(X):
            for r in range(R):
                counts = tokens_SLXRP[s, l, x, r].tolist()
                for b, be in resolved.items():
                    res = rank.measure(counts, be, warmup=timing.warmup, reps=timing.reps, runs=timing.runs, lead=timing.lead)
                    got[b][x, r] = res.ms
        meas[(s, l)] = got
        b0 = backends[0]
        say(
            f"[{i + 1}/{len(pairs)}] step {step_ids[s]} layer {l}: straggler predicted "
            f"{pred_SLXR[s, l].max():.4f} ms, measured ({b0}) {got[b0].max():.4f} ms"
        )
    return meas, time.perf_counter() - t0


def _result_rows(
    done: list[tuple[int, int]], meas: dict[tuple[int, int], dict[str, np.ndarray]], tokens_SLXRP: np.ndarray,
    pred_SLXR: np.ndarray, step_ids: list[int], backends: Sequence[str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The report's ``ranks`` rows (one per step, layer, group, rank) and ``straggler`` rows."""
    _, _, X, R, _ = tokens_SLXRP.shape
    rank_rows, straggler_rows = [], []
    for s, l in done:
        for x in range(X):
            for r in range(R):
                t_P = tokens_SLXRP[s, l, x, r]
                p = float(pred_SLXR[s, l, x, r])
                row: dict[str, Any] = {
                    "step": step_ids[s], "layer": l, "group": x, "rank": r,
                    "tokens": int(t_P.sum()), "active_slots": int((t_P > 0).sum()),
                    "max_slot_tokens": int(t_P.max()), "predicted_ms": p,
                    "measured_ms": {b: float(meas[(s, l)][b][x, r]) for b in backends},
                }
                row["error_pct"] = {b: error_pct(p, v) for b, v in row["measured_ms"].items()}
                rank_rows.append(row)
        p_max = float(pred_SLXR[s, l].max())
        xr = np.unravel_index(int(np.argmax(pred_SLXR[s, l])), (X, R))
        srow: dict[str, Any] = {
            "step": step_ids[s], "layer": l, "predicted_ms": p_max,
            "predicted_rank": int(xr[0] * R + xr[1]),
            "measured_ms": {b: float(meas[(s, l)][b].max()) for b in backends},
            "measured_rank": {b: int(np.argmax(meas[(s, l)][b])) for b in backends},
        }
        srow["error_pct"] = {b: error_pct(p_max, v) for b, v in srow["measured_ms"].items()}
        straggler_rows.append(srow)
    return rank_rows, straggler_rows


def _summary(
    rank_rows: list[dict[str, Any]], straggler_rows: list[dict[str, Any]], backends: Sequence[str],
    resolved: dict[str, str],
) -> dict[str, Any]:
    """Per backend: MAPE over ranks and over stragglers, and the summed stragglers."""
    summary = {}
    for b in backends:
        rk = [(r["predicted_ms"], r["measured_ms"][b]) for r in rank_rows]
        st = [(r["predicted_ms"], r["measured_ms"][b]) for r in straggler_rows]
        tot_p, tot_m = sum(p for p, _ in st), sum(v for _, v in st)
        summary[b] = {
            "resolved": resolved[b],
            "ranks": summarize(rk),
            "straggler": summarize(st),
            "sum": {"predicted_ms": tot_p, "measured_ms": tot_m, "error_pct": error_pct(tot_p, tot_m)},
        }
    return summary


