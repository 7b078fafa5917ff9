"""``moe-planner validate`` for offload plans: run the offloaded stack and compare with the prediction.

The plan's trace (its own, or ``--trace``) is put in decode shape at the plan's batch and split
(:func:`planner.offload.decode_split`: by sequences when the trace has them, else by steps);
the prefetch predictor is fitted on the first 75% and the held-out steps are replayed (``steps`` keeps the first N of them,
``layers`` the first N MoE layers) through :func:`planner_kernels.offload_stack.run_offloaded_stack`
with the plan's resident sets, dynamic slots, prefetch and CPU policy.

- ``--device cuda``: real expert shapes of the model in bf16, resident experts on the GPU, the
  others in pinned host memory copied on a side stream; the step time is measured with CUDA
  events. The prediction it is compared with is the simulator's on *the work the executor does*:
  the same steps and layers, with no attention or dense layers (``pre`` and ``other`` = 0),
  because the stack runs the routed experts only.
- ``--device cpu``: the same code path with small shapes (D = 64, F = 32, float32) and the
  simulated clock (:mod:`planner.cachesim`'s figures): measured equals predicted by construction;
  it checks the executor (hits, copies, budget, outputs), not the hardware.

Report: predicted and measured tokens/s and hit rate with % error, copies, prefetch, CPU runs,
peak device expert buffers against the plan's slots.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from planner.cachesim import (
    CacheConfig,
    OffloadTiming,
    fit_predictor,
    prefetch_lists,
    simulate_cache,
    step_counts,
    step_probs,
)
from planner.errors import InputError
from planner.kernel_loader import load_kernels
from planner.offload import DECODE_TOKENS, decode_split, offload_timing, plan_config
from planner.resolve import resolve_hardware, resolve_trace
from planner.specs.plan import Plan
from planner.traces import default_trace_path

TRAIN_FRACTION = 0.75


def _trace(plan: Plan, trace: str | Path | None):
    if trace is None:
        label = plan.provenance.trace or ""
        if label.startswith("shipped:"):
            trace = default_trace_path(plan.model.name)
        if trace is None:
            raise InputError(
                "validate: this offload plan was not made from a shipped trace; give `trace` FILE", mentions=("trace",)
            )
    tr, label, _ = resolve_trace(trace, plan.model, plan.provenance.seed)
    tr.refuse_nulls(f"validate (trace {label})")
    return tr, label


def validate_offload(
    plan: Plan, *, trace: str | Path | None = None, device: str = "cpu", steps: int | None = None,
    layers: int | None = None, progress: Any = None,
) -> dict[str, Any]:
    """Run the plan's offloaded stack on ``device`` and compare with the prediction (module docstring)."""
    if plan.cache is None:
        raise InputError("validate_offload needs an offload plan (with a cache section)")
    say = progress or (lambda _m: None)
    kernels = load_kernels()
    stack = importlib.import_module(f"{kernels.__name__}.offload_stack")
    import torch  # noqa: PLC0415

    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda: torch sees no GPU", field="device")
    m, hw = plan.model, resolve_hardware(plan.cluster.hardware)
    b = plan.workload.micro_batch or 1
    tr, label = _trace(plan, trace)
    tr, P, _how = decode_split(tr, b, TRAIN_FRACTION, DECODE_TOKENS)  # by sequences when the trace has them
    counts = step_counts(tr.topk_ids, tr.step, tr.num_experts)
    S = counts.shape[0]
    _, s_T = np.unique(tr.step, return_inverse=True)
    probs = step_probs(fit_predictor(tr.topk_ids[:, s_T < P], tr.num_experts), tr.topk_ids, tr.step, tr.num_experts)
    cfg = plan_config(plan, probs)
    n_layers = m.num_moe_layers if layers is None else min(layers, m.num_moe_layers)
    last = S if steps is None else min(S, P + steps)
    keep_T = s_T < last
    ids = tr.topk_ids[:n_layers, keep_T]
    step = s_T[keep_T]
    counts = counts[:last, :n_layers]
    sub = CacheConfig(cfg.resident_LE[:n_layers], cfg.dynamic_L[:n_layers], cfg.policy,
                      None if cfg.prefetch is None else type(cfg.prefetch)(cfg.prefetch.prob_SLE[:last, :n_layers],
                                                                          cfg.prefetch.threshold, cfg.prefetch.max_count),
                      cfg.cpu)
    full = offload_timing(m, hw, b, plan.workload.seq_len)
    if device == "cuda":  # the executor runs the routed experts only
        timing = OffloadTiming(full.copy_ms, full.ffn_ms_M, 0.0, 0.0, full.overlap, full.expert_bytes, full.cpu_ms_M)
        hidden, width, clock = m.hidden_size, m.expert_intermediate_size, "cuda"
    else:
        timing, hidden, width, clock = full, 64, 32, "simulated"
    pred = simulate_cache(counts, sub, timing, record_from=P, batch=b)
    st = stack.StackTiming(timing.copy_ms, timing.ffn_ms_M, timing.pre_ms, timing.other_ms, timing.overlap, timing.cpu_ms_M)
    pf = prefetch_lists(sub.prefetch.prob_SLE, sub.prefetch.threshold) if sub.prefetch is not None else None
    say(f"validate (offload): {last - P} held-out decode steps × {n_layers} MoE layers on {device} ({clock} clock)")
    meas, _ = stack.run_offloaded_stack(
        ids, step, sub.resident_LE, sub.dynamic_L, hidden=hidden, ffn_width=width, policy=sub.policy, prefetch_SL=pf,
        prefetch_count=sub.prefetch.max_count if sub.prefetch is not None else 0, cpu=sub.cpu, timing=st, clock=clock,
        record_from=P, seed=plan.provenance.seed,
    )
    mp = meas.as_dict()

    def err(p: float, x: float) -> float | None:
        return None if x == 0 else 100.0 * (p - x) / x

    c = plan.cache
    slots = int(sub.resident_LE.sum() + sub.dynamic_L.sum()) + (c.prefetch.count if c.prefetch else 0) + c.staging_slots
    return {
        "mode": "offload",
        "plan": {"model": m.name, "hardware": hw.name, "gpu_memory_gb": plan.workload.gpu_memory_gb, "decode_batch": b},
        "device": {"device": device, "clock": clock, "hidden": hidden, "ffn": width},
        "evaluated": {"trace": label, "steps": last - P, "layers": n_layers,
                      "which": f"held-out decode steps {P}..{last - 1} of {S}, first {n_layers} MoE layers"},
        "predicted": {"tokens_per_s": pred.tokens_per_s, "hit_rate": pred.hit_rate, "transfers": pred.transfers,
                      "step_ms": float(pred.step_ms_S.mean())},
        "measured": mp,
        "error_pct": {"tokens_per_s": err(pred.tokens_per_s, meas.tokens_per_s), "hit_rate": err(pred.hit_rate, meas.hit_rate)},
        "expert_buffers": {"peak": meas.max_live_buffers, "plan_slots": slots},
        "notes": [
            "cpu: simulated clock with the simulator's figures; measured equals predicted by construction (checks the code path)"
            if clock == "simulated" else
            "cuda: routed experts only (no attention, no dense layers); prefetch copies cannot be cancelled once enqueued",
        ],
    }


