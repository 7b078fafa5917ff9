"""Multi-rank validation: the EP-sharded layer over real ``torch.distributed`` all-to-all.

``moe-planner validate --plan plan.json --world-size N``. N local processes (started here with ``torch.multiprocessing``: ``forkserver`` with torch
preloaded where the platform has it, else ``spawn``; or, under ``torchrun``, this process is one
of them: ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` are read from the
environment) form one EP group of the plan (N must equal the plan's ``ep``; ``etp`` 1). Backend
gloo on CPU, NCCL on GPUs (rank r on ``cuda:LOCAL_RANK``).

What runs, for each evaluated (step, layer) (``steps`` first evaluated steps, default 1;
``layers`` MoE layers evenly spaced, default 1):

1. **Tokens and routing**, prepared once in the parent from the plan's trace (the held-out steps
   of the plan's own trace, as :mod:`planner.validate`): the tokens of the first
   expert-data-parallel group, each starting on EP rank ``(g mod ep·etp) // etp`` of its source
   GPU g (:func:`planner.score.stage_source_gpus`), their top-k experts from the trace, their gate
   weights from the trace (or seeded random positive weights normalised to 1 when the trace has
   none), and the physical slot of every (token, choice) pair from
   :func:`planner.simulator.choose_slots` with the plan's dispatch policy over replicas — the
   counts :func:`planner.validate.rank_slot_tokens` gives (checked: ``dispatch_matches_plan``).
   ``max_tokens`` keeps N of a step's tokens, evenly spaced (so every source rank keeps some).
2. **Weights and inputs**, generated on every rank's device from a seed (per layer, per step),
   so that every rank builds the same layer: rank r runs the weights of its slots
   (``physical_to_logical[l][r·S:(r+1)·S]``) in the sharded layer, and the whole layer for the
   reference (so each rank needs memory for one whole layer).
3. **The sharded layer**: :func:`planner_kernels.distributed.ep_forward` (dispatch by uneven
   ``all_to_all_single``, local expert FFN, reverse all-to-all and weighted combine, shared
   experts on the token's rank), ``warmup`` untimed and ``reps`` timed calls, a barrier before
   each; per rank the median of each phase (dispatch, expert compute, combine, shared).
4. **Check**: each rank's output against the unsharded layer
   (:func:`planner_kernels.moe_layer.moe_forward` with the same top-k, same dtype) on its own
   tokens: ``max_abs_err`` is the largest absolute difference over every rank, layer and step
   (also given against a float64 run of the unsharded layer on the CPU when the layer takes at
   most 512 MB in float64, else None). Above ``tol`` the command exits 1.
   Rows received per slot are compared with what the plan's dispatch sends there.
5. **Prediction** beside it: each rank's predicted expert compute
   (:func:`planner.validate.predict_rank_ms` on the received rows, the plan's hardware profile).

Called from Python (:func:`validate_distributed`), the calling script needs the usual
``if __name__ == "__main__":`` guard: the ranks are new processes that import the main module.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import InputError
from planner.kernel_loader import load_kernels
from planner.score import ep_ranks_per_node, stage_source_gpus
from planner.simulator import choose_slots
from planner.specs.hardware import load_hardware
from planner.specs.plan import Plan
from planner.validate import (
    BACKENDS,
    plan_trace,
    predict_rank_ms,
    provenance,
    rank_slot_tokens,
    spread,
)

#: Default tolerance on max_abs_err per dtype (outputs are O(1): weights scaled by 1/sqrt(fan_in)).
DEFAULT_TOL = {"float64": 1e-9, "float32": 1e-4, "bfloat16": 5e-2}
DTYPES = tuple(DEFAULT_TOL)


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher setting its env vars)."""
    return all(k in os.environ for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT"))


# ---- the parent: what each rank gets ---------------------------------------------------------


def build_cases(
    plan: Plan, trace: Any, steps: int, layers: int | None, max_tokens: int | None, seed: int
) -> tuple[list[dict[str, Any]], str]:
    """Tokens, routing and slots of every evaluated (step, layer), for EP group 0 (module docstring, 1)."""
    par, pl, m = plan.parallel, plan.placement, plan.model
    p2l_LP = np.asarray(pl.physical_to_logical, dtype=np.int64)
    L = p2l_LP.shape[0]
    stage_gpus = plan.cluster.num_gpus // par.pp
    group_size = par.ep * par.etp
    gpu_T = stage_source_gpus(trace, stage_gpus)
    mask = gpu_T // group_size == 0
    src_T = (gpu_T[mask] % group_size) // par.etp
    _, step_all = np.unique(trace.step, return_inverse=True)
    step_T = step_all[mask]
    S = int(step_all.max()) + 1
    s_sel = list(range(min(S, steps)))
    l_sel = spread(L, layers)
    planned = rank_slot_tokens(plan, trace) if max_tokens is None else None
    step_ids = [int(v) for v in trace.steps]
    cases = []
    rng = np.random.default_rng(seed)
    for l in l_sel:
        ids_Tk = trace.topk_ids[l][mask]
        slot_Tk = choose_slots(ids_Tk, src_T, p2l_LP[l], pl.slots_per_gpu, m.num_experts, plan.dispatch,
                               ep_ranks_per_node(plan.cluster, par))
        for s in s_sel:
            sel = np.nonzero(step_T == s)[0]
            if max_tokens is not None:
                sel = sel[spread(sel.size, max_tokens)]  # evenly spaced: every source rank keeps some
            if trace.topk_weights is not None:
                wts = np.asarray(trace.topk_weights[l][mask][sel], dtype=np.float64)
                wts = wts / np.maximum(wts.sum(axis=1, keepdims=True), 1e-30)
            else:
                wts = rng.uniform(0.1, 1.0, size=(sel.size, m.top_k))
                wts = wts / wts.sum(axis=1, keepdims=True)
            rows_P = np.bincount(slot_Tk[sel].reshape(-1), minlength=p2l_LP.shape[1])
            case = {
                "step": step_ids[s], "step_index": s, "layer": l,
                "ids": ids_Tk[sel].astype(np.int64), "weights": wts, "slots": slot_Tk[sel].astype(np.int64),
                "src": src_T[sel].astype(np.int64), "phy2log": p2l_LP[l], "expected_rows": rows_P,
                "dispatch_matches_plan": None if planned is None else bool(
                    np.array_equal(rows_P.reshape(par.ep, -1), planned[s, l, 0])),
            }
            cases.append(case)
    which = f"{len(s_sel)} step(s) x {len(l_sel)} layer(s), tokens of expert-data-parallel group 0"
    return cases, which


# ---- the ranks -------------------------------------------------------------------------------


def _worker(rank: int, world: int, init_method: str, job: dict[str, Any], result_path: str) -> None:
    """One EP rank (module docstring, 2-4); rank 0 writes every rank's results to ``result_path``."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    kernels = load_kernels()
    ml = importlib.import_module(f"{kernels.__name__}.moe_layer")
    dk = importlib.import_module(f"{kernels.__name__}.distributed")

    cuda = job["device"] == "cuda"
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", rank))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if not dist.is_initialized():
        if init_method == "env://":
            dist.init_process_group("nccl" if cuda else "gloo")
        else:
            dist.init_process_group("nccl" if cuda else "gloo", init_method=init_method, rank=rank, world_size=world)
    dtype = getattr(torch, job["dtype"])
    cfg = ml.MoEConfig(**job["cfg"])
    S = job["slots_per_rank"]
    out_cases = []
    for k, case in enumerate(job["cases"]):
        l = case["layer"]
        if rank == 0 and job.get("progress"):  # the slow part: one line per case on stderr
            print(f"validate: case {k + 1}/{len(job['cases'])} (MoE layer {l}, step {case['step']})", file=sys.stderr,
                  flush=True)
        # every rank draws the same layer and tokens from the same seeds, on its own device
        gen = torch.Generator(device=dev).manual_seed(job["seed"] * 100_003 + l)
        w_dev = ml.init_weights(cfg, dtype=dtype, device=dev, generator=gen)
        gx = torch.Generator(device=dev).manual_seed(job["seed"] * 100_003 + 7919 * (case["step"] + 1) + l)
        x_all = torch.randn(len(case["src"]), cfg.hidden, generator=gx, device=dev).to(dtype)
        mine = torch.from_numpy(np.nonzero(case["src"] == rank)[0])
        x = x_all[mine.to(dev)]
        ids = torch.from_numpy(case["ids"])[mine]
        wts64 = torch.from_numpy(case["weights"])[mine]
        slots = torch.from_numpy(case["slots"])[mine]
        experts_S = torch.from_numpy(case["phy2log"][rank * S : (rank + 1) * S]).to(dev)
        wts = wts64.to(device=dev, dtype=torch.float32 if dtype != torch.float64 else dtype)
        w13_S, w2_S = w_dev.w13_E2FD[experts_S], w_dev.w2_EDF[experts_S]
        phases: list[Any] = []
        out = rows_S = None
        for i in range(job["warmup"] + job["reps"]):
            dist.barrier()
            out, rows_S, times = dk.ep_forward(
                x, wts, slots.to(dev), S, w13_S, w2_S, w_dev, backend=job["backend"], impl=job["a2a"]
            )
            if i >= job["warmup"]:
                phases.append(times)
        assert out is not None and rows_S is not None
        ref = ml.moe_forward(x, w_dev, cfg, topk=(ids.to(dev), wts), backend=job["backend"])
        err = float((out.double() - ref.double()).abs().max()) if len(mine) else 0.0
        scale = float(ref.double().abs().max()) if len(mine) else 0.0
        err64 = None  # the same layer in float64 on the CPU, when it is small enough to copy there
        n_params = sum(t.numel() for t in vars(w_dev).values() if isinstance(t, torch.Tensor))
        if len(mine) and n_params * 8 <= job["float64_max_bytes"]:
            w64 = ml.MoEWeights(**{k: (v.double().cpu() if isinstance(v, torch.Tensor) else v)
                                   for k, v in vars(w_dev).items()})
            ref64 = ml.moe_forward(x.double().cpu(), w64, cfg, topk=(ids, wts64), backend="loop")
            err64 = float((out.double().cpu() - ref64).abs().max())
        elif not len(mine):
            err64 = 0.0
        med = {k: statistics.median(getattr(p, k) for p in phases)
               for k in ("dispatch_ms", "compute_ms", "combine_ms", "shared_ms", "total_ms")}
        out_cases.append({
            "step": case["step"], "layer": l, "rank": rank, "source_tokens": int(len(mine)),
            "pairs_sent": int(len(mine) * cfg.top_k), "rows_per_slot": [int(v) for v in rows_S.tolist()],
            "expected_rows_per_slot": [int(v) for v in case["expected_rows"][rank * S : (rank + 1) * S]],
            "max_abs_err": err, "max_abs_err_vs_float64": err64, "max_abs_output": scale, **med,
            "reps": job["reps"],
        })
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, out_cases)
    if rank == 0:
        Path(result_path).write_text(json.dumps([c for part in gathered for c in part]))
    dist.barrier()
    dist.destroy_process_group()


def _max_or_none(values: Any) -> float | None:
    """The largest value, or None when any is None (not computed)."""
    vals = list(values)
    return None if any(v is None for v in vals) else max(vals, default=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(world: int, job: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Run :func:`_worker` on ``world`` ranks; every rank's results (None on torchrun ranks > 0)."""
    fd, path = tempfile.mkstemp(prefix="moe-planner-dist-", suffix=".json")
    os.close(fd)
    try:
        if under_torchrun():
            rank = int(os.environ["RANK"])
            _worker(rank, int(os.environ["WORLD_SIZE"]), "env://", job, path)
            if rank != 0:
                return None
        else:
            import torch.multiprocessing as mp  # noqa: PLC0415

            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            if method == "forkserver":
                # one torch import in the server instead of one per rank (seconds each on a busy host)
                mp.set_forkserver_preload(["torch", "torch.distributed", "planner.validate", "planner_kernels.distributed"])
            init = f"tcp://127.0.0.1:{_free_port()}"
            mp.start_processes(_worker, args=(world, init, job, path), nprocs=world, join=True, start_method=method)
        return json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)


# ---- the run ---------------------------------------------------------------------------------


def validate_distributed(
    plan: Plan,
    *,
    world_size: int,
    trace: str | Path | None = None,
    device: str = "cpu",
    steps: int | None = None,
    layers: int | None = None,
    max_tokens: int | None = None,
    dtype: str | None = None,
    tol: float | None = None,
    backend: str = "auto",
    a2a: str = "native",
    warmup: int = 1,
    reps: int = 3,
    seed: int = 0,
    argv: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Run the EP-sharded layer on ``world_size`` ranks and check it (module docstring).

    Returns the report (None on a torchrun rank other than 0).
    """
    say = progress if (progress is not None and int(os.environ.get("RANK", "0")) == 0) else (lambda _msg: None)
    par = plan.parallel
    dtype, tol = _check_options(plan, world_size, device, steps, layers, max_tokens, reps, warmup, backend, a2a,
                                dtype, tol)

    kernels = load_kernels()
    import torch  # noqa: PLC0415

    ml = __import__(f"{kernels.__name__}.moe_layer", fromlist=["MoEConfig"])
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise InputError(
            f"world_size {world_size} with device cuda needs {world_size} GPUs; torch sees {torch.cuda.device_count()}",
            field="world_size",
        )
    if device == "cpu" and not torch.distributed.is_gloo_available():
        raise InputError("world_size on CPU needs torch.distributed with gloo, which this torch lacks", field="world_size")
    tr, label, which_steps = plan_trace(plan, trace)
    cases, which = build_cases(plan, tr, steps or 1, layers or 1, max_tokens, seed)
    cfg = ml.MoEConfig.from_model(plan.model)
    job = {
        "device": device, "dtype": dtype, "backend": backend, "a2a": a2a, "warmup": warmup, "reps": reps,
        "seed": seed, "slots_per_rank": plan.placement.slots_per_gpu, "cases": cases, "progress": progress is not None, "float64_max_bytes": 512 << 20,
        "cfg": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    }
    say(
        f"{plan.model.name}: {world_size} ranks ({'nccl' if device == 'cuda' else 'gloo'}, {device}, {dtype}), "
        f"{plan.placement.slots_per_gpu} slots per rank, {which}"
    )
    t0 = time.perf_counter()
    rows = launch(world_size, job)
    if rows is None:
        return None
    elapsed = time.perf_counter() - t0

    hw = load_hardware(plan.cluster.hardware)
    m = plan.model
    case_rows, per_rank = _collect(rows, cases, hw, m, world_size)
    max_err = max((c["max_abs_err"] for c in case_rows), default=0.0)
    notes = []
    if device == "cpu":
        notes.append(f"run on the CPU with gloo: timings check the pipeline; predictions are for {hw.name}")
    if max_tokens is not None:
        notes.append(f"{max_tokens} tokens of each step (evenly spaced over group 0's tokens; --max-tokens)")
    return {
        "what": "moe-planner validate --world-size: the EP-sharded MoE layer on real torch.distributed ranks "
        "(uneven all_to_all_single dispatch and combine), checked against the unsharded layer",
        "plan": {"model": m.name, "hardware": hw.name, "parallel": par.model_dump(),
                 "slots_per_gpu": plan.placement.slots_per_gpu, "dispatch": plan.dispatch, "trace": label},
        "world_size": world_size,
        "launcher": "torchrun" if under_torchrun() else "torch.multiprocessing",
        "dist_backend": "nccl" if device == "cuda" else "gloo",
        "all_to_all": {"native": "torch.distributed.all_to_all_single with uneven split sizes",
                       "p2p": "isend/irecv pairs per peer (the local share copied)"}[a2a],
        "device": provenance(device, argv),
        "dtype": dtype,
        "expert_backend": backend,
        "evaluated": {"which": which, "steps_from": which_steps, "max_tokens": max_tokens},
        "tolerance": tol,
        "max_abs_err": max_err,
        "max_abs_err_vs_float64": _max_or_none(c["max_abs_err_vs_float64"] for c in case_rows),
        "passed": bool(max_err <= tol),
        "rows_match_dispatch": all(c["rows_match_dispatch"] for c in case_rows),
        "method": {
            "timing": f"wall clock per phase (CUDA synchronised at phase boundaries), a barrier before each call; "
            f"{warmup} warm-up and {reps} timed calls, the median per rank",
            "check": "max |sharded - unsharded| over every rank's tokens; the unsharded layer is moe_forward with the "
            "same top-k and weights in the same dtype (and in float64)",
            "elapsed_s": elapsed,
        },
        "per_rank": per_rank,
        "cases": case_rows,
        "notes": notes,
    }


def _check_options(
    plan: Plan, world_size: int, device: str, steps: int | None, layers: int | None, max_tokens: int | None,
    reps: int, warmup: int, backend: str, a2a: str, dtype: str | None, tol: float | None,
) -> tuple[str, float]:
    """Every option rule of :func:`validate_distributed`; the dtype and tolerance in effect.

    Errors name the keyword (the CLI shows its flag)."""
    par = plan.parallel
    if device not in ("cpu", "cuda"):
        raise InputError(f"device must be 'cuda' or 'cpu' (got {device!r})", field="device")
    if plan.cache is not None:
        raise InputError(
            "world_size: multi-rank validation runs expert-parallel plans, not offload plans (the plan has a cache section)",
            field="world_size",
        )
    if under_torchrun() and int(os.environ["WORLD_SIZE"]) != world_size:
        raise InputError(f"world_size ({world_size}) must equal torchrun's WORLD_SIZE ({os.environ['WORLD_SIZE']})",
                         field="world_size")
    if world_size < 1:
        raise InputError(f"world_size must be >= 1 (got {world_size})", field="world_size")
    if world_size != par.ep:
        raise InputError(
            f"world_size ({world_size}) must equal the plan's ep ({par.ep}): the ranks form one expert-parallel group",
            field="world_size",
        )
    if par.etp != 1:
        raise InputError(f"world_size: multi-rank validation runs plans with etp 1 (the plan has etp {par.etp})",
                         field="world_size")
    for name, v in (("steps", steps), ("layers", layers), ("max_tokens", max_tokens), ("reps", reps)):
        if v is not None and v <= 0:
            raise InputError(f"{name} must be > 0 (got {v})", field=name)
    if warmup < 0:
        raise InputError(f"warmup must be >= 0 (got {warmup})", field="warmup")
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)} (got {backend!r})", field="backend")
    if a2a not in ("native", "p2p"):
        raise InputError(f"a2a must be 'native' or 'p2p' (got {a2a!r})", field="a2a")
    dtype = dtype or ("bfloat16" if device == "cuda" else "float32")
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {', '.join(DTYPES)} (got {dtype!r})", field="dtype")
    tol = DEFAULT_TOL[dtype] if tol is None else tol
    if not tol > 0:
        raise InputError(f"tol must be > 0 (got {tol})", field="tol")
    return dtype, tol


def _collect(
    rows: list[dict[str, Any]], cases: list[dict[str, Any]], hw: Any, m: Any, world_size: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every rank's results with their prediction, grouped by (step, layer), and the median per rank."""
    for r in rows:
        r["predicted_compute_ms"] = float(
            predict_rank_ms(hw, m.hidden_size, m.expert_intermediate_size, "bf16", np.asarray(r["rows_per_slot"]))
        )
        r["rows_match_dispatch"] = r["rows_per_slot"] == r["expected_rows_per_slot"]
    by_case: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for r in rows:
        by_case.setdefault((r["step"], r["layer"]), []).append(r)
    case_rows = []
    for c in cases:
        rk = sorted(by_case[(c["step"], c["layer"])], key=lambda r: r["rank"])
        case_rows.append({
            "step": c["step"], "layer": c["layer"], "tokens": int(len(c["src"])),
            "max_abs_err": max(r["max_abs_err"] for r in rk),
            "max_abs_err_vs_float64": _max_or_none(r["max_abs_err_vs_float64"] for r in rk),
            "rows_match_dispatch": all(r["rows_match_dispatch"] for r in rk),
            "dispatch_matches_plan": c["dispatch_matches_plan"],
            "straggler_compute_ms": max(r["compute_ms"] for r in rk),
            "straggler_predicted_compute_ms": max(r["predicted_compute_ms"] for r in rk),
            "ranks": rk,
        })
    per_rank = []
    for q in range(world_size):
        mine = [r for c in case_rows for r in c["ranks"] if r["rank"] == q]
        per_rank.append({"rank": q, **{k: statistics.median(r[k] for r in mine)
                                       for k in ("dispatch_ms", "compute_ms", "combine_ms", "shared_ms", "total_ms",
                                                 "predicted_compute_ms")}})
    return case_rows, per_rank


