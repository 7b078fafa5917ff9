"""Real MoE layers for moe-planner (torch): the layer validation executes, and timing helpers.

Installed as the package ``planner_kernels`` (pyproject.toml maps this folder to that name: a
top-level ``kernels`` would clash with other distributions that install a module of that
name, such as Hugging Face's ``kernels``). In a source tree without an install,
``planner.validate.load_kernels()`` loads this folder under the same name.

- :mod:`.moe_layer` — router, permute, grouped expert FFN, combine; one EP rank's share;
  a float64 reference.
- :mod:`.offload_stack` — an offloaded stack of MoE layers replaying a trace.
- :mod:`.timing` — CUDA-event / CPU timers, weight rotation, :class:`~.timing.RankBench`.
- :mod:`.distributed` — the EP-sharded layer over ``torch.distributed`` (uneven all-to-all
  dispatch and combine), run by ``moe-planner validate --world-size N``.
- :mod:`.profiler` — ``moe-planner profile``: measures a device and builds a hardware profile.
- :mod:`.measure_common` — shapes of the presets, weight rotation, copy timing, fp8 FFN (used by
  the profiler and the timers).

Importing this package does not import torch; its submodules do.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MoEConfig": "moe_layer",
    "MoEWeights": "moe_layer",
    "init_weights": "moe_layer",
    "route": "moe_layer",
    "permute": "moe_layer",
    "experts_ffn": "moe_layer",
    "run_local_experts": "moe_layer",
    "combine": "moe_layer",
    "moe_forward": "moe_layer",
    "sharded_forward": "moe_layer",
    "reference_moe": "moe_layer",
    "run_offloaded_stack": "offload_stack",
    "StackTiming": "offload_stack",
    "ep_forward": "distributed",
    "all_to_all_v": "distributed",
    "bench": "timing",
    "RankBench": "timing",
    "BenchResult": "timing",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
