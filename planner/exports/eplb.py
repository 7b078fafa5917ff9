"""DeepSeek EPLB: ``phy2log``, ``log2phy``, ``logcnt`` as ``rebalance_experts`` returns them.

deepseek-ai/EPLB, ``eplb.py``, ``rebalance_experts(weight, num_replicas, num_groups, num_nodes,
num_gpus)`` returns (docs/facts.md §4):

==============  ==================================  ============================================
``phy2log``     int64 [layers, num_replicas]         logical expert of each physical slot
``log2phy``     int64 [layers, E, maxlogcnt]         slots of each expert, padded with −1
``logcnt``      int64 [layers, E]                    replicas of each expert
==============  ==================================  ============================================

with ``maxlogcnt = logcnt.max()`` (vLLM's copy pads to ``num_redundant + 1`` instead; see
:mod:`planner.exports.vllm`). Slot ``s`` lives on GPU ``s // (num_replicas / num_gpus)``, GPUs
numbered node by node — the planner's convention, so ``phy2log`` is the plan's placement as is.
EPLB fills ``log2phy[l, e, r]`` by replica rank ``r``; a plan does not record which copy was
"first", so replicas are listed here in increasing slot order (one of the orders EPLB can
produce, and the one vLLM and SGLang use when they build the map from ``phy2log``).

Files: ``.pt`` (a dict of the three tensors, ``torch.save``; needs torch) or ``.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import planner.exports._files as _files
from planner.exports._common import ImportedPlacement, phy2log_of, read_maps
from planner.solve.baselines import logical_maps
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan

KEYS = ("phy2log", "log2phy", "logcnt")
SUFFIXES = (".pt", ".npz")
_ALT = "or write .npz"


def build(plan: Plan) -> dict[str, np.ndarray]:
    """``phy2log`` [L, P], ``log2phy`` [L, E, max replicas] (−1 padded), ``logcnt`` [L, E]; int64."""
    phy2log = phy2log_of(plan)
    log2phy, logcnt = logical_maps(phy2log, plan.model.num_experts)
    return {"phy2log": phy2log, "log2phy": log2phy.astype(np.int64), "logcnt": logcnt.astype(np.int64)}


def flags(plan: Plan, path: str | Path | None = None) -> list[str]:
    return []


def notes(plan: Plan) -> list[str]:
    return [
        f"rebalance_experts arguments this placement corresponds to: num_replicas={plan.parallel.ep * plan.placement.slots_per_gpu}, "
        f"num_gpus={plan.parallel.ep}; an expert's replicas are listed by increasing slot"
    ]


def dumps(payload: dict[str, np.ndarray], path: Path) -> bytes:
    suffix = _files.suffix_of(path, SUFFIXES, "EPLB maps")
    if suffix == ".pt":
        return _files.pt_bytes(payload, path.name, _ALT)
    return _files.npz_bytes(payload)


def load(path: str | Path, *, model: ModelSpec | None = None, ep: int | None = None) -> ImportedPlacement:
    """Read the three maps back (``.pt`` or ``.npz``); they must describe one placement."""
    p = Path(path)
    _files.suffix_of(p, SUFFIXES, "EPLB maps")
    raw = _files.read_arrays(p, _ALT)
    return ImportedPlacement(*read_maps(raw, p.name, KEYS, model, ep), "eplb")
