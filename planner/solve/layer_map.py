"""Stages 1b-4 of the placement (:func:`planner.solve.nodes.swap_nodes`,
:func:`planner.solve.gpus.place_on_gpus`) with the layers solved apart: one task per MoE layer,
handed to a ``map_layers(fn, items) -> results`` (results in the order of ``items``) such as
:func:`planner.ray_map.ray_map`'s Ray tasks.

Once stage 1 has given the experts a start node, every layer is a problem of its own
(docs/placement.md §5.1b-§5.4): its expert swaps between nodes, its start inside the nodes, its
search and its result read only that layer's tokens. What the layers share are the budgets,
counts derived from the whole problem's sizes; each task is given the whole problem's layer and
(layer, node) counts (``budget_layers``, ``budget_instances``), so it searches exactly as it does
in one process, and the placement is the same (tests/test_ray.py).
Not split: problems small enough for stage 3 to enumerate every assignment (that choice can
change from one layer to the next, in layer order) and single-layer problems; they run in one
process as before. The time limit stays a safety stop: each task gets the time left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from planner.solve.gpus import EXHAUSTIVE_LIMIT, SearchStats, count_assignments, place_on_gpus
from planner.solve.nodes import Stage1Stats, SwapTotals, swap_nodes
from planner.solve.problem import PlacementInputs, TokenSample

#: ``map_layers(fn, items)``: ``[fn(item) for item in items]``, computed anywhere.
LayerMap = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def _layer(job: dict[str, Any]) -> tuple[np.ndarray, SearchStats, SwapTotals | None]:
    """One task: stage 1b (when ``swap_layers``) and stages 2-4 on the one layer ``job`` holds (a
    module-level function: picklable)."""
    left, swap_layers = job.pop("seconds_left"), job.pop("swap_layers")
    deadline = time.perf_counter() + left
    swaps = None
    if swap_layers:
        job["node_LE"] = np.array(job["node_LE"])  # swapped in place (Ray hands arrays over read-only)
        swaps = swap_nodes(job["node_LE"], job["sample"], job["weight_LE"], job["num_nodes"], job["inp"],
                           job["previous_LP"], job["mig_w"], time_limit=job["time_limit"], deadline=deadline,
                           budget_layers=swap_layers)
    row, stats = place_on_gpus(**job, deadline=deadline)
    return row, stats, swaps


def splits(map_layers: LayerMap | None, inp: PlacementInputs, num_nodes: int) -> bool:
    """Whether :func:`place_layers` hands the layers to ``map_layers`` (module docstring)."""
    enumerable = count_assignments(inp.num_physical // num_nodes, inp.num_gpus // num_nodes,
                                   inp.slots_per_gpu) <= EXHAUSTIVE_LIMIT
    return map_layers is not None and inp.num_layers > 1 and not enumerable


def _sum_swaps(parts: list[SwapTotals]) -> SwapTotals:
    if parts[0].skipped is not None:
        return parts[0]
    return SwapTotals(swaps=sum(p.swaps for p in parts), rounds=sum(p.rounds for p in parts),
                      copies_before=sum(p.copies_before for p in parts),
                      copies_after=sum(p.copies_after for p in parts), max_rounds=parts[0].max_rounds)


def place_layers(
    map_layers: LayerMap | None, inp: PlacementInputs, sample: TokenSample, weight_LE: np.ndarray,
    warm_LP: np.ndarray, node_LE: np.ndarray | None, num_nodes: int, previous_LP: np.ndarray | None, mig_w: float,
    exact_setting: bool, *, time_limit: float, deadline: float, balance_tolerance: float, search_evals: int | None,
    stage1: Stage1Stats,
) -> tuple[np.ndarray, SearchStats]:
    """:func:`~planner.solve.gpus.place_on_gpus` (same arguments), its layers through
    ``map_layers`` when given and the problem splits (module docstring). With ``map_layers``
    given, stage 1 left stage 1b (the swaps) to this function when it used nodes
    (``node_LE`` not None): it runs here, per layer or on all, and its totals go to ``stage1``."""
    L = inp.num_layers
    kw = {"time_limit": time_limit, "balance_tolerance": balance_tolerance, "search_evals": search_evals}
    deferred_swaps = map_layers is not None and node_LE is not None
    if not splits(map_layers, inp, num_nodes):
        if deferred_swaps:
            assert node_LE is not None
            stage1.swaps = swap_nodes(node_LE, sample, weight_LE, num_nodes, inp, previous_LP, mig_w,
                                      time_limit=time_limit, deadline=deadline)
        return place_on_gpus(inp, sample, weight_LE, warm_LP, node_LE, num_nodes, previous_LP, mig_w, exact_setting,
                             deadline=deadline, **kw)
    left = max(0.0, deadline - time.perf_counter())
    jobs = []
    for l in range(L):
        one = slice(l, l + 1)
        jobs.append({
            "inp": replace(inp, ids_LTk=inp.ids_LTk[one]), "sample": replace(sample, ids_LTk=sample.ids_LTk[one]),
            "weight_LE": weight_LE[one], "warm_LP": warm_LP[one],
            "node_LE": None if node_LE is None else node_LE[one], "num_nodes": num_nodes,
            "previous_LP": None if previous_LP is None else previous_LP[one], "mig_w": mig_w,
            "exact_setting": exact_setting, "budget_instances": L * num_nodes, "seconds_left": left,
            "swap_layers": L if deferred_swaps else 0, **kw,
        })
    rows, parts, swaps = zip(*map_layers(_layer, jobs), strict=True)
    if deferred_swaps:
        stage1.swaps = _sum_swaps(list(swaps))
    stats = SearchStats(exhaustive=all(p.exhaustive for p in parts), search_budget_s=parts[0].search_budget_s,
                        accepted=sum(p.accepted for p in parts), instances=sum(p.instances for p in parts),
                        evals=sum(p.evals for p in parts), stopped_by_time=any(p.stopped_by_time for p in parts))
    return np.concatenate(rows, axis=0), stats
