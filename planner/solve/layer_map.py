"""Stages 2-4 of the placement (:func:`planner.solve.gpus.place_on_gpus`) with the layers solved
apart: one task per MoE layer, handed to a ``map_layers(fn, items) -> results`` (results in the
order of ``items``) such as :func:`planner.ray_map.ray_map`'s Ray tasks.

Once stage 1 has fixed the experts' nodes, every layer is a problem of its own
(docs/placement.md §5.2-§5.4): its start, its search and its result read only that layer's
tokens. What the layers share is the search budget, a count derived from the whole problem's
sizes; each task is given the whole problem's (layer, node) count (``budget_instances``), so it
searches exactly as it does in one process, and the placement is the same (tests/test_ray.py).
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
from planner.solve.problem import PlacementInputs, TokenSample

#: ``map_layers(fn, items)``: ``[fn(item) for item in items]``, computed anywhere.
LayerMap = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


def _layer(job: dict[str, Any]) -> tuple[np.ndarray, SearchStats]:
    """One task: stages 2-4 on the one layer ``job`` holds (a module-level function: picklable)."""
    left = job.pop("seconds_left")
    return place_on_gpus(**job, deadline=time.perf_counter() + left)


def place_layers(
    map_layers: LayerMap | None, inp: PlacementInputs, sample: TokenSample, weight_LE: np.ndarray,
    warm_LP: np.ndarray, node_LE: np.ndarray | None, num_nodes: int, previous_LP: np.ndarray | None, mig_w: float,
    exact_setting: bool, *, time_limit: float, deadline: float, balance_tolerance: float, search_evals: int | None,
) -> tuple[np.ndarray, SearchStats]:
    """:func:`~planner.solve.gpus.place_on_gpus` (same arguments), its layers through
    ``map_layers`` when given and the problem splits (module docstring)."""
    L = inp.num_layers
    gpn = inp.num_gpus // num_nodes
    args = (inp, sample, weight_LE, warm_LP, node_LE, num_nodes, previous_LP, mig_w, exact_setting)
    kw = {"time_limit": time_limit, "balance_tolerance": balance_tolerance, "search_evals": search_evals}
    enumerable = count_assignments(inp.num_physical // num_nodes, gpn, inp.slots_per_gpu) <= EXHAUSTIVE_LIMIT
    if map_layers is None or L < 2 or enumerable:
        return place_on_gpus(*args, deadline=deadline, **kw)
    left = max(0.0, deadline - time.perf_counter())
    jobs = []
    for l in range(L):
        one = slice(l, l + 1)
        jobs.append({
            "inp": replace(inp, ids_LTk=inp.ids_LTk[one]), "sample": replace(sample, ids_LTk=sample.ids_LTk[one]),
            "weight_LE": weight_LE[one], "warm_LP": warm_LP[one], "node_LE": None if node_LE is None else node_LE[one],
            "num_nodes": num_nodes, "previous_LP": None if previous_LP is None else previous_LP[one], "mig_w": mig_w,
            "exact_setting": exact_setting, "budget_instances": L * num_nodes, "seconds_left": left, **kw,
        })
    results = map_layers(_layer, jobs)
    rows, parts = zip(*results, strict=True)
    stats = SearchStats(exhaustive=all(p.exhaustive for p in parts), search_budget_s=parts[0].search_budget_s,
                        accepted=sum(p.accepted for p in parts), instances=sum(p.instances for p in parts),
                        evals=sum(p.evals for p in parts), stopped_by_time=any(p.stopped_by_time for p in parts))
    return np.concatenate(rows, axis=0), stats
