"""Plots of a sweep's ``results.csv``: the ones that fit its grid (PNG, matplotlib Agg).

Made from the CSV alone (cells as text), so they can be redrawn from any results file. Only
rows with status ``ok`` are drawn; an empty cell (a figure a plan does not have) leaves its
point out. A plot is drawn when its x axis takes at least two values:

==============================  ==================================================================
``step_time_vs_gpus.png``       step time against GPUs (nodes × GPUs per node): ``step_time_ms``
                                when the plans predict it, else the summed MoE-layer time
``throughput_vs_gpus.png``      ``tokens_per_s`` against GPUs, when the plans predict it
``imbalance_vs_ep.png``         load imbalance (max/mean GPU tokens) against the EP degree
``pareto_gpus_throughput.png``  every plan as GPUs against throughput, the Pareto front (fewest
                                GPUs for the most throughput) joined: ``tokens_per_s`` when every
                                plan has it, otherwise the MoE layers' own throughput
                                (``moe_tokens_per_s``: tokens per step / summed MoE time)
``cache_sizing.png``            offload rows: a cache figure (a column named ``*hit*``, else the
                                MoE time) against the GPU memory budget
``step_time_vs_<option>.png``   the same time against each other grid option (categories
                                in grid order when the values are not numbers)
==============================  ==================================================================

One line per combination of the grid's other options (at most :data:`MAX_SERIES`; the rest are
left out and the title says so).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from planner.io import atomic_write_bytes
from planner.specs.sweep import SweepSpec, format_cell

MAX_SERIES = 12
GPU_OPTIONS = ("nodes", "gpus_per_node")


def num(v: Any) -> float | None:
    """A CSV cell as a finite float, or None."""
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    return path


def _series(rows: list[dict[str, str]], spec: SweepSpec, exclude: tuple[str, ...]) -> tuple[list[tuple[str, list[dict[str, str]]]], int]:
    """Rows grouped by the values of the grid options not in ``exclude``, in first-seen order;
    and how many groups were left out beyond :data:`MAX_SERIES`."""
    others = [o for o in spec.grid if o not in exclude and len(spec.grid[o]) > 1]
    groups: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        label = " ".join(f"{o}={r.get(o, '') or 'none'}" for o in others) or "all"
        groups.setdefault(label, []).append(r)
    items = list(groups.items())
    return items[:MAX_SERIES], max(0, len(items) - MAX_SERIES)


def _line_plot(rows, spec, path, x_col, y_col, title, xlabel, ylabel, exclude, categorical=None) -> Path | None:
    series, dropped = _series(rows, spec, exclude)
    fig, ax = _figure(title + (f" ({dropped} series not shown)" if dropped else ""), xlabel, ylabel)
    drawn = 0
    for label, rs in series:
        pts = []
        for r in rs:
            y = num(r.get(y_col))
            if categorical is not None:
                x = categorical.index(r.get(x_col, "")) if r.get(x_col, "") in categorical else None
            else:
                x = num(r.get(x_col))
            if x is not None and y is not None:
                pts.append((x, y))
        if not pts:
            continue
        pts.sort()
        # several plans at one x (other options not in the grid) draw as points joined by the mean
        xs = sorted({p[0] for p in pts})
        means = [sum(p[1] for p in pts if p[0] == x) / sum(1 for p in pts if p[0] == x) for x in xs]
        ax.plot(xs, means, marker="o", label=label)
        drawn += 1
    if not drawn:
        return None
    if categorical is not None:
        ax.set_xticks(range(len(categorical)))
        ax.set_xticklabels(categorical, rotation=20 if max(len(c) for c in categorical) > 8 else 0)
    if drawn > 1 or series[0][0] != "all":
        ax.legend(fontsize=7)
    return _save(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated when fewer GPUs (x) and more throughput (y) are better, by x."""
    front: list[tuple[float, float]] = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _distinct(rows: list[dict[str, str]], col: str) -> set[float]:
    return {v for v in (num(r.get(col)) for r in rows) if v is not None}


def plot_sweep(rows: list[dict[str, str]], spec: SweepSpec, out_dir: str | Path) -> list[Path]:
    """Draw the plots that fit ``spec``'s grid from ``rows`` (CSV cells); the files written."""
    out = Path(out_dir)
    ok = [r for r in rows if r.get("status") == "ok"]
    name = f"{spec.name}: " if spec.name else ""
    written: list[Path | None] = []
    covered: set[str] = set()
    # the whole step's time when the plans predict it, otherwise the MoE layers' part of it
    if any(num(r.get("step_time_ms")) is not None for r in ok):
        t_col, t_what, t_label = "step_time_ms", "step time", "step time, ms (held-out)"
    else:
        t_col, t_what, t_label = "moe_time_per_step_ms", "MoE time per step", "MoE layers per step, ms (held-out)"
    if len(_distinct(ok, "gpus")) >= 2:
        covered.update(GPU_OPTIONS)
        written.append(_line_plot(ok, spec, out / "step_time_vs_gpus.png", "gpus", t_col,
                                  f"{name}{t_what} against GPUs", "GPUs (nodes × GPUs per node)",
                                  t_label, GPU_OPTIONS))
        if any(num(r.get("tokens_per_s")) is not None for r in ok):
            written.append(_line_plot(ok, spec, out / "throughput_vs_gpus.png", "gpus", "tokens_per_s",
                                      f"{name}throughput against GPUs", "GPUs (nodes × GPUs per node)",
                                      "tokens per second", GPU_OPTIONS))
        written.append(_pareto(ok, out / "pareto_gpus_throughput.png", name))
    if len(_distinct(ok, "ep")) >= 2:
        covered.add("ep")
        written.append(_line_plot(ok, spec, out / "imbalance_vs_ep.png", "ep", "imbalance",
                                  f"{name}load imbalance against EP", "EP degree",
                                  "imbalance (max / mean GPU tokens)", ("ep", *GPU_OPTIONS)))
    offload = [r for r in ok if r.get("mode") == "offload"]
    if offload:
        x_col = "gpu_memory_gb" if len(_distinct(offload, "gpu_memory_gb")) >= 2 else "cache_budget_gib"
        if len(_distinct(offload, x_col)) >= 2:
            covered.add("gpu_memory_gb")
            hit = [c for c in offload[0] if "hit" in c and any(num(r.get(c)) is not None for r in offload)]
            y_col = hit[0] if hit else "moe_time_per_step_ms"
            written.append(_line_plot(offload, spec, out / "cache_sizing.png", x_col, y_col,
                                      f"{name}cache sizing", "GPU memory budget, GB" if x_col == "gpu_memory_gb"
                                      else "expert cache, GiB", y_col.replace("_", " "), ("gpu_memory_gb",)))
    for opt, values in spec.grid.items():
        if opt in covered or len(values) < 2:
            continue
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        # categories in grid order; an empty cell (null in the spec) is the category 'none'
        cats = None if numeric else ["none" if v is None else format_cell(v) for v in values]
        rows_opt = [dict(r, **{opt: (r.get(opt) or "none")}) for r in ok] if cats is not None else ok
        written.append(_line_plot(rows_opt, spec, out / f"step_time_vs_{opt}.png", opt, t_col,
                                  f"{name}{t_what} against {opt}", opt, t_label, (opt,), categorical=cats))
    return [p for p in written if p is not None]


def _pareto(ok: list[dict[str, str]], path: Path, name: str) -> Path | None:
    col = "tokens_per_s" if ok and all(num(r.get("tokens_per_s")) is not None for r in ok) else "moe_tokens_per_s"
    pts = [(num(r.get("gpus")), num(r.get(col))) for r in ok]
    pts = [(x, y) for x, y in pts if x is not None and y is not None]
    if len({x for x, _ in pts}) < 2:
        return None
    label = "tokens per second" if col == "tokens_per_s" else "MoE-layer throughput, tokens/s (MoE layers only)"
    fig, ax = _figure(f"{name}Pareto front: GPUs against throughput", "GPUs", label)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, alpha=0.6, label="plans")
    front = pareto_front(pts)
    ax.plot([p[0] for p in front], [p[1] for p in front], color="C3", marker="o", label="Pareto front")
    ax.legend(fontsize=7)
    return _save(fig, path)
