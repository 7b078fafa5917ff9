"""What-if sweeps: plan and score every combination of a grid of ``plan`` options.

:func:`run_sweep` reads a sweep spec (:mod:`planner.specs.sweep`), plans every combination with
:func:`planner.api.plan` (which scores each plan on the held-out steps of its trace, as
``moe-planner plan`` does) and writes ``OUT/results.csv``, one row per combination, then the
plots that fit the grid (:mod:`planner.sweep_plots`), and ``OUT/sweep-spec.json``, the spec as
it was read.

Rows (:data:`HEAD_COLUMNS`, the grid's options, :func:`columns`): the combination's index and
key, the grid values, ``status`` (``ok``, ``infeasible``, ``input_error`` or ``error``) and the
one-line ``error`` of a failed combination (a failure is recorded, never fatal), the effective
inputs (model, hardware, mode, nodes, GPUs per node, GPUs), the chosen degrees and slots, every
scalar figure of :class:`planner.specs.plan.Predicted` (fields added to it later appear as
columns by themselves; an absent figure is an empty cell), ``moe_tokens_per_s`` (tokens per
step over the summed MoE-layer time: throughput of the MoE layers alone), the offload cache when
there is one, and the solver's report and wall time.

Resuming: a row's ``key`` is a hash of its options (base and grid values as written in the
spec), so rows already in ``results.csv`` are kept and their combinations skipped; adding values
to the grid plans only the new combinations. Rows whose key belongs to no combination of the
spec (its base or grid changed) make the run stop with a message unless ``restart`` is given.
The CSV is rewritten atomically (temporary file, then rename) at most once a second while the
sweep runs and once at the end, also when it is interrupted: a run killed at any point leaves
the previous complete file or a newer complete one. Rows are always in grid order, whatever
order the workers finish in, so the same spec gives the same file apart from the timing
columns (:data:`TIMING_COLUMNS`).

Executors: ``local`` runs ``jobs`` worker processes on this machine (``jobs=1`` plans in this
process); ``ray`` submits each combination as a Ray task (connecting to the cluster named by
``RAY_ADDRESS``, or starting a local one), for grids too large for one machine.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, TextIO, Union, get_args, get_origin

from planner.api import plan
from planner.errors import InfeasibleError, InputError
from planner.io import atomic_write_text, check_writable
from planner.ray_map import connect, import_ray
from planner.specs.base import one_line
from planner.specs.options import PlanOptions
from planner.specs.plan import Predicted
from planner.specs.sweep import SweepSpec, check_spec_file, format_cell, resolve_paths
from planner.sweep_plots import plot_sweep

RESULTS = "results.csv"
STATUSES = ("ok", "infeasible", "input_error", "error")
EXECUTORS = ("local", "ray")

#: Inputs every row states, with their default (:class:`planner.specs.options.PlanOptions`).
INPUT_DEFAULTS: dict[str, Any] = {
    name: PlanOptions.model_fields[name].default for name in ("model", "hardware", "mode", "nodes", "gpus_per_node")
}
HEAD_COLUMNS = ["index", "key"]
STATUS_COLUMNS = ["status", "error"]
INPUT_COLUMNS = [*INPUT_DEFAULTS, "gpus"]
PLAN_COLUMNS = ["dp", "tp", "pp", "ep", "etp", "vpp", "slots_per_gpu", "redundant_experts", "dispatch"]
CACHE_COLUMNS = ["cache_budget_gib", "cache_resident_experts", "cache_dynamic_slots", "cache_policy"]
SOLVER_COLUMNS = ["solver_name", "solver_status", "solver_objective", "solver_gap", "solver_time_s", "wall_s"]
#: Columns that differ between two runs of the same spec.
TIMING_COLUMNS = ("solver_time_s", "wall_s")


def _is_scalar(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


def predicted_columns() -> list[str]:
    """Scalar figures of :class:`~planner.specs.plan.Predicted`, in its field order."""
    return [name for name, f in Predicted.model_fields.items() if _is_scalar(f.annotation)]


def columns(spec: SweepSpec) -> list[str]:
    """The CSV header for ``spec``: the grid's options after the index and key; an input the
    grid varies is not repeated among the input columns."""
    grid = list(spec.grid)
    cols = [*HEAD_COLUMNS, *grid, *STATUS_COLUMNS]
    rest = [*INPUT_COLUMNS, *PLAN_COLUMNS, *predicted_columns(), "moe_tokens_per_s", *CACHE_COLUMNS, *SOLVER_COLUMNS]
    return cols + [c for c in rest if c not in cols]


def combination_key(options: dict[str, Any]) -> str:
    """Stable key of a combination: sha256 of its options as canonical JSON (16 hex digits)."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Task:
    """One combination to plan: ``options`` are base and grid values, paths resolved."""

    index: int
    key: str
    combo: dict[str, Any]
    options: dict[str, Any]


def tasks(spec: SweepSpec, folder: Path) -> list[Task]:
    """Every combination of ``spec`` as a :class:`Task`, in grid order."""
    out = []
    for i, combo in enumerate(spec.combinations()):
        written = {**spec.base, **combo}
        out.append(Task(index=i, key=combination_key(written), combo=combo, options=resolve_paths(written, folder)))
    return out


# ---- one combination -----------------------------------------------------------------------


def _row_from_plan(p: Any) -> dict[str, Any]:
    par, pl, c = p.parallel, p.placement, p.cluster
    row: dict[str, Any] = {
        "model": p.model.name, "hardware": c.hardware, "mode": p.workload.mode, "nodes": c.num_nodes,
        "gpus_per_node": c.gpus_per_node, "gpus": c.num_gpus,
        "dp": par.dp, "tp": par.tp, "pp": par.pp, "ep": par.ep, "etp": par.etp, "vpp": par.vpp,
        "slots_per_gpu": pl.slots_per_gpu, "redundant_experts": par.ep * pl.slots_per_gpu - p.model.num_experts,
        "dispatch": p.dispatch,
    }
    pred = p.predicted
    if pred is not None:
        for name in predicted_columns():
            row[name] = getattr(pred, name, None)
        ms = pred.moe_time_per_step_ms
        row["moe_tokens_per_s"] = pred.tokens_per_step / (ms / 1e3) if ms > 0 else None
    if p.cache is not None:
        row["cache_budget_gib"] = p.cache.budget_bytes / 2**30
        row["cache_resident_experts"] = sum(len(r) for r in p.cache.resident)
        row["cache_dynamic_slots"] = sum(p.cache.dynamic_slots)
        row["cache_policy"] = p.cache.policy
    s = p.solver
    row.update(solver_name=s.name, solver_status=s.status, solver_objective=s.objective, solver_gap=s.gap,
               solver_time_s=s.time_s)
    return row


def run_combination(task: Task) -> dict[str, Any]:
    """Plan one combination; a row for the CSV. Never raises for a failing combination: the
    status and the one-line error say what went wrong."""
    t0 = time.perf_counter()
    opts = dict(task.options)
    row: dict[str, Any] = {"index": task.index, "key": task.key, **task.combo}
    for name, default in INPUT_DEFAULTS.items():
        row[name] = task.combo.get(name, task.options.get(name, default))
    try:
        row["gpus"] = int(row["nodes"]) * int(row["gpus_per_node"])
    except (TypeError, ValueError):
        row["gpus"] = None
    model = opts.pop("model", INPUT_DEFAULTS["model"])
    hardware = opts.pop("hardware", INPUT_DEFAULTS["hardware"])
    try:
        p = plan(model, hardware, **opts)
    except InfeasibleError as e:
        row.update(status="infeasible", error=one_line(str(e), 500))
    except InputError as e:
        row.update(status="input_error", error=one_line(str(e), 500))
    except Exception as e:  # noqa: BLE001 - one combination's failure is recorded, not fatal
        row.update(status="error", error=one_line(f"{type(e).__name__}: {e}", 500))
    else:
        row.update(_row_from_plan(p))
        row.update(status="ok", error=None)
        for opt, v in task.combo.items():  # the grid value as written (a preset name, not the spec's name)
            row[opt] = v
    row["wall_s"] = round(time.perf_counter() - t0, 3)
    return row


# ---- executors -----------------------------------------------------------------------------


def _failed(task: Task, e: BaseException) -> dict[str, Any]:
    return {"index": task.index, "key": task.key, **task.combo, "status": "error",
            "error": one_line(f"{type(e).__name__}: {e}", 500)}


def run_local(todo: list[Task], jobs: int) -> Iterator[dict[str, Any]]:
    """Rows of ``todo`` as they finish: in this process (``jobs == 1``) or in ``jobs`` worker processes."""
    if jobs <= 1 or len(todo) <= 1:
        for t in todo:
            yield run_combination(t)
        return

    # spawn: a fresh interpreter per worker (no forked solver threads or locks)
    with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=mp.get_context("spawn")) as ex:
        futures = {ex.submit(run_combination, t): t for t in todo}
        try:
            for f in as_completed(futures):
                try:
                    yield f.result()
                except Exception as e:  # noqa: BLE001 - a worker that died (out of memory …)
                    yield _failed(futures[f], e)
        finally:
            for f in futures:
                f.cancel()


def _ray_missing() -> InputError:
    return InputError(
        "executor ray: the 'ray' package is not installed (pip install 'moe-planner[ray]'), "
        "or use `executor` local", field="executor", mentions=("executor",)
    )


def run_ray(todo: list[Task]) -> Iterator[dict[str, Any]]:
    """Rows of ``todo`` as Ray tasks finish (one task per combination)."""
    ray = connect(_ray_missing())
    remote = ray.remote(run_combination)
    pending = {remote.remote(t): t for t in todo}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            t = pending.pop(ref)
            try:
                yield ray.get(ref)
            except Exception as e:  # noqa: BLE001 - a task that failed on its node
                yield _failed(t, e)


# ---- CSV -----------------------------------------------------------------------------------


def render_csv(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in rows:
        w.writerow([format_cell(r.get(c)) for c in cols])
    return buf.getvalue()


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of an existing ``results.csv`` (cells as text); a one-line InputError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the existing results ({type(e).__name__}); pass `restart`", mentions=("restart",)) from None
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as e:
        raise InputError(f"{path}: not a results CSV ({one_line(str(e), 80)}); pass `restart`", mentions=("restart",)) from None
    if rows and ("key" not in rows[0] or "status" not in rows[0]):
        raise InputError(f"{path}: not a sweep results CSV (no 'key' or 'status' column); pass `restart`", mentions=("restart",))
    return rows


# ---- progress ------------------------------------------------------------------------------


class Progress:
    """Progress on stderr: a bar redrawn in place on a terminal, one line per combination otherwise."""

    def __init__(self, total: int, done: int, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.total, self.done, self.failed = total, done, 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.ran = 0

    def update(self, row: dict[str, Any], label: str) -> None:
        self.done += 1
        self.ran += 1
        if row.get("status") != "ok":
            self.failed += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        left = self.total - self.done
        eta = elapsed / self.ran * left if self.ran else 0.0
        fail = f", {self.failed} failed" if self.failed else ""
        if self.tty:
            width = 24
            filled = int(width * self.done / max(1, self.total))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\rsweep [{bar}] {self.done}/{self.total}{fail}, {elapsed:.0f} s, ~{eta:.0f} s left ")
            if left == 0:
                self.stream.write("\n")
        else:
            status = row.get("status")
            self.stream.write(f"sweep {self.done}/{self.total} {label}: {status}{fail}\n")
        self.stream.flush()


def combo_label(combo: dict[str, Any]) -> str:
    return " ".join(f"{k}={'none' if v is None else format_cell(v)}" for k, v in combo.items())


# ---- the sweep -----------------------------------------------------------------------------


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the CSV, the plots, and how many rows ran, were kept or failed."""

    csv_path: Path
    rows: list[dict[str, Any]]
    plots: list[Path] = field(default_factory=list)
    ran: int = 0
    skipped: int = 0
    failed: int = 0


def run_sweep(
    spec: str | Path | SweepSpec,
    out_dir: str | Path,
    *,
    jobs: int | None = None,
    executor: str = "local",
    restart: bool = False,
    retry_failed: bool = False,
    plots: bool = True,
    progress: bool = True,
    stream: TextIO | None = None,
    folder: str | Path | None = None,
    write_every_s: float = 1.0,
    runner: Callable[[list[Task]], Iterator[dict[str, Any]]] | None = None,
) -> SweepResult:
    """Plan every combination of ``spec`` (a spec file, or a :class:`SweepSpec` with relative
    paths taken from ``folder``, default the current folder) into ``out_dir/results.csv`` and
    plots (module docstring). ``jobs``: worker processes (default: the CPU count);
    ``restart``: ignore existing rows; ``retry_failed``: plan again the combinations whose row
    failed. ``runner`` replaces the executor (tests)."""
    if executor not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)} (got {executor!r})", field="executor")
    if jobs is not None and jobs <= 0:
        raise InputError(f"jobs must be >= 1 (got {jobs})", field="jobs")
    if isinstance(spec, SweepSpec):
        sp, base_dir = spec, Path(folder) if folder is not None else Path.cwd()
    else:
        sp, base_dir = check_spec_file(spec), Path(spec).resolve().parent
    if executor == "ray" and runner is None:
        import_ray(_ray_missing())  # fail before anything else when ray is missing
    out = Path(out_dir)
    csv_path = out / RESULTS
    if out.exists() and not out.is_dir():
        raise InputError(f"out {out}: is a file, expected a folder", field="out")
    check_writable(csv_path, force=True)
    cols = columns(sp)
    all_tasks = tasks(sp, base_dir)
    keys = {t.key for t in all_tasks}
    kept: dict[str, dict[str, Any]] = {}
    if csv_path.is_file() and not restart:
        old = read_rows(csv_path)
        stale = [r for r in old if r.get("key") not in keys]
        if stale:
            raise InputError(
                f"{csv_path}: {len(stale)} of its {len(old)} rows are not combinations of this spec (its base or grid "
                "changed); pass `restart` to plan the grid afresh, or choose another `out`", mentions=("restart", "out")
            )
        for r in old:
            if retry_failed and r.get("status") != "ok":
                continue
            kept[r["key"]] = r
    todo = [t for t in all_tasks if t.key not in kept]
    # the spec as planned, beside its results (provenance; the CSV's keys come from it)
    atomic_write_text(out / "sweep-spec.json", json.dumps(sp.model_dump(mode="json"), indent=1) + "\n")
    rows: dict[str, dict[str, Any]] = dict(kept)
    prog = Progress(len(all_tasks), len(kept), stream=stream, enabled=progress)
    order = {t.key: t.index for t in all_tasks}
    labels = {t.key: combo_label(t.combo) for t in all_tasks}

    def write() -> None:
        for r in rows.values():  # indices follow the grid (values may have been added to it)
            r["index"] = order[r["key"]]
        ordered = sorted(rows.values(), key=lambda r: order[r["key"]])
        atomic_write_text(csv_path, render_csv(ordered, cols))

    if runner is None:
        n_jobs = jobs or os.cpu_count() or 1
        runner = run_ray if executor == "ray" else (lambda ts: run_local(ts, n_jobs))
    ran = 0
    last = time.perf_counter()
    try:
        for row in runner(todo):
            rows[row["key"]] = row
            ran += 1
            prog.update(row, labels.get(row["key"], ""))
            if time.perf_counter() - last >= write_every_s:
                write()
                last = time.perf_counter()
    finally:
        write()
    final = sorted(rows.values(), key=lambda r: order[r["key"]])
    result = SweepResult(csv_path=csv_path, rows=final, ran=ran, skipped=len(kept),
                         failed=sum(1 for r in final if r.get("status") != "ok"))
    if plots:
        result.plots = plot_sweep(read_rows(csv_path), sp, out)
    return result
