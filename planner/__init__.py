"""moe-planner: plan Mixture-of-Experts deployments from a calibrated cost model and routing traces.

The Python API (docs/contracts.md): ``plan`` (its options: ``PlanOptions``), ``load_model``,
``load_hardware``, ``load_trace``, ``synth_trace``, ``trace_stats``, ``Plan``. Names are looked up
on first use (PEP 562) because every ``import planner.<module>`` runs this file first: importing
them here would load the solvers for a caller that wants a spec. (``solve`` is not among them: ``planner.solve`` is the solvers' subpackage; use
``from planner.api import prepare, solve``.)
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Plan",
    "PlanOptions",
    "ModelSpec",
    "HardwareProfile",
    "InputError",
    "InfeasibleError",
    "plan",
    "plan_serving",
    "prepare",
    "load_model",
    "load_hardware",
    "load_trace",
    "save_trace",
    "synth_trace",
    "trace_stats",
    "export",
    "simulate",
    "rebalance",
    "RoutingRecorder",
]

_WHERE = {
    "Plan": "planner.specs.plan",
    "PlanOptions": "planner.specs.options",
    "ModelSpec": "planner.specs.model",
    "HardwareProfile": "planner.specs.hardware",
    "InputError": "planner.errors",
    "InfeasibleError": "planner.errors",
    "plan": "planner.api",
    "plan_serving": "planner.serve_plan",
    "prepare": "planner.api",
    "load_model": "planner.specs.model_io",
    "load_hardware": "planner.specs.hardware",
    "load_trace": "planner.traces",
    "save_trace": "planner.traces",
    "synth_trace": "planner.traces",
    "trace_stats": "planner.traces",
    "export": "planner.exports",
    "simulate": "planner.api",
    "rebalance": "planner.solve.rebalance",
    "RoutingRecorder": "planner.recorder",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'planner' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
