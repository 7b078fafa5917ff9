"""A map over Ray tasks: :func:`ray_map` returns ``run(fn, items)``, ``[fn(x) for x in items]``
computed as Ray tasks, at most ``num_workers`` at once, results in the order of ``items``.

It connects to the cluster ``RAY_ADDRESS`` names, or starts a local Ray instance when it is unset
and none is running (as ``moe-planner sweep --executor ray`` does, docs/sweep.md). The placement
uses it to solve its layers apart (``solve_placement(..., map_layers=ray_map(4))``,
:mod:`planner.solve.layer_map`; ``benchmarks/ray_placement.py``).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from planner.errors import InputError


def import_ray(missing: InputError) -> Any:
    """The ``ray`` module, or ``missing`` (the caller's one-line error) when it is not installed."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise missing from None


def connect(missing: InputError) -> Any:
    """The ``ray`` module connected to ``RAY_ADDRESS``'s cluster, or to a local instance it starts
    when that is unset and none is running (the sweep's executor and :func:`ray_map` alike)."""
    ray = import_ray(missing)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, ignore_reinit_error=True, log_to_driver=False)
    return ray


def ray_map(num_workers: int | None = None) -> Callable[[Callable[[Any], Any], list[Any]], list[Any]]:
    """``run(fn, items)`` on Ray tasks of one CPU each, at most ``num_workers`` running at once
    (None: as many as the cluster takes)."""
    if num_workers is not None and num_workers < 1:
        raise InputError(f"ray_map: num_workers must be >= 1 (got {num_workers})", field="num_workers")
    ray = connect(InputError("ray_map: the 'ray' package is not installed (pip install 'moe-planner[ray]')"))

    def run(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        remote = ray.remote(num_cpus=1)(fn)
        out: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}
        limit = num_workers or len(items)
        for i, item in enumerate(items):
            if len(pending) >= limit:
                done, _ = ray.wait(list(pending), num_returns=1)
                out[pending.pop(done[0])] = ray.get(done[0])
            pending[remote.remote(item)] = i
        for ref, i in pending.items():
            out[i] = ray.get(ref)
        return out

    return run
