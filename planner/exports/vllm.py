"""vLLM: the EPLB state tensors, and vllm-ascend's expert-map JSON.

**vLLM** (vllm-project/vllm, ``vllm/distributed/eplb/eplb_state.py``, class ``EplbState``) keeps,
over MoE layers only:

==============================  ===========================================  =====================
``physical_to_logical_map``     int64 [num_moe_layers, num_physical]          logical id per slot
``logical_to_physical_map``     int64 [num_moe_layers, E, num_redundant + 1]  slots per expert, −1 pad
``logical_replica_count``       int64 [num_moe_layers, E]                     non-−1 count of the above
==============================  ===========================================  =====================

Replicas of an expert are listed in increasing slot order. The file is ``.pt`` (a dict of those
three tensors; needs torch) or ``.npz`` (same names, no torch). vLLM itself loads no initial
placement file today: ``EplbState.build`` starts from the linear map and rebalances at run time;
a file-based initial map exists only in an open pull request (vllm-project/vllm#49572,
``eplb_config.initial_expert_map_path``, a JSON physical-to-logical list per layer). The tensors
are what ``EplbState`` holds once this placement is in force, for a patched build or a
``set_eplb_state`` hook.

Flags (vLLM docs, "Expert Parallel Deployment", and ``vllm/config/parallel.py`` ``EPLBConfig``
with fields ``window_size``, ``step_interval``, ``num_redundant_experts``, ``log_balancedness`` …,
https://docs.vllm.ai/en/latest/api/vllm/config/parallel/): ``--enable-expert-parallel
--enable-eplb --eplb-config '{"num_redundant_experts": R}'``; vLLM's EP size is
``--tensor-parallel-size`` × ``--data-parallel-size``.

**vllm-ascend** (vllm-project/vllm-ascend, ``vllm_ascend/ops/expert_load_balancer.py``,
``ExpertLoadBalancer._expert_file_to_tensor``) reads a JSON file::

    {"moe_layer_count": L,
     "layer_list": [{"layer_id": l, "device_count": G,
                     "device_list": [{"device_id": g, "device_expert": [ids of rank g's slots]}]}]}

``layer_list[l]`` is MoE layer ``l`` (0-based among MoE layers), ``device_list[g]`` EP rank ``g``;
the rows are stacked into one rectangular tensor, so every rank lists the same number of slots
and the flattened order is the physical slot order. Pass it as
``--additional-config '{"eplb_config": {"expert_map_path": FILE}}'`` ("static EPLB" in
https://docs.vllm.ai/projects/ascend/en/latest/user_guide/feature_guide/expert_parallelism_load_balancer/;
releases up to 0.11 took a top-level ``"expert_map_path"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import planner.exports._files as _files
from planner.errors import InputError
from planner.exports._common import (
    ImportedPlacement,
    check_phy2log,
    expect_moe_layers,
    logical_to_physical,
    phy2log_of,
    read_maps,
    redundant_of,
)
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan

P2L, L2P, COUNT = "physical_to_logical_map", "logical_to_physical_map", "logical_replica_count"
KEYS = (P2L, L2P, COUNT)
SUFFIXES = (".pt", ".npz")
ASCEND_SUFFIXES = (".json",)
_ALT = "or write .npz"


# ---- vLLM EPLB tensors -----------------------------------------------------------------------


def build(plan: Plan) -> dict[str, np.ndarray]:
    """The three ``EplbState`` tensors for the plan (MoE layers only)."""
    phy2log = phy2log_of(plan)
    log2phy, count = logical_to_physical(phy2log, plan.model.num_experts, redundant_of(plan) + 1)
    return {P2L: phy2log, L2P: log2phy, COUNT: count}


def flags(plan: Plan, path: str | Path | None = None) -> list[str]:
    par = plan.parallel
    return [
        "--enable-expert-parallel",
        "--tensor-parallel-size", str(par.tp),
        "--data-parallel-size", str(par.dp),
        "--enable-eplb",
        "--eplb-config", json.dumps({"num_redundant_experts": redundant_of(plan)}),
    ]


def notes(plan: Plan) -> list[str]:
    par = plan.parallel
    out = [
        "vLLM loads no initial placement file yet (EplbState starts linear and rebalances at run time; "
        "a file-based initial map is an open pull request, vllm-project/vllm#49572): the tensors are the "
        "EplbState this placement corresponds to"
    ]
    if par.ep != par.dp * par.tp:
        out.append(f"vLLM's EP size is tp × dp = {par.tp * par.dp}; this plan has ep {par.ep}")
    return out


def dumps(payload: dict[str, np.ndarray], path: Path) -> bytes:
    suffix = _files.suffix_of(path, SUFFIXES, "vLLM EPLB state")
    if suffix == ".pt":
        return _files.pt_bytes(payload, path.name, _ALT)
    return _files.npz_bytes(payload)


def load(path: str | Path, *, model: ModelSpec | None = None, ep: int | None = None) -> ImportedPlacement:
    """Read the EPLB tensors back (``.pt`` or ``.npz``); the three maps must agree."""
    p = Path(path)
    _files.suffix_of(p, SUFFIXES, "vLLM EPLB state")
    raw = _files.read_arrays(p, _ALT)
    return ImportedPlacement(*read_maps(raw, p.name, KEYS, model, ep), "vllm")


# ---- vllm-ascend expert map JSON -------------------------------------------------------------


def build_ascend(plan: Plan) -> dict[str, Any]:
    """``{"moe_layer_count", "layer_list": [{"layer_id", "device_count", "device_list": [...]}]}``."""
    phy2log = phy2log_of(plan)
    G, S = plan.parallel.ep, plan.placement.slots_per_gpu
    return {
        "moe_layer_count": int(phy2log.shape[0]),
        "layer_list": [
            {
                "layer_id": l,
                "device_count": G,
                "device_list": [
                    {"device_id": g, "device_expert": row[g * S : (g + 1) * S].tolist()} for g in range(G)
                ],
            }
            for l, row in enumerate(phy2log)
        ],
    }


def flags_ascend(plan: Plan, path: str | Path | None) -> list[str]:
    par = plan.parallel
    return [
        "--enable-expert-parallel",
        "--tensor-parallel-size", str(par.tp),
        "--data-parallel-size", str(par.dp),
        "--additional-config",
        json.dumps({"eplb_config": {"expert_map_path": str(path) if path is not None else "FILE"}}),
    ]


def notes_ascend(plan: Plan) -> list[str]:
    S = plan.placement.slots_per_gpu
    per_rank = phy2log_of(plan).reshape(plan.model.num_moe_layers, plan.parallel.ep, S)
    doubled = [
        (l, g) for l in range(per_rank.shape[0]) for g in range(per_rank.shape[1])
        if len(np.unique(per_rank[l, g])) < S
    ]
    if not doubled:
        return []
    l, g = doubled[0]
    return [
        f"{len(doubled)} (MoE layer, EP rank) pair(s) hold two replicas of one expert (first: layer {l}, rank {g}); "
        "vllm-ascend maps each expert to one local slot per rank, so the extra copy idles"
    ]


def dumps_ascend(payload: dict[str, Any], path: Path) -> bytes:
    _files.suffix_of(path, ASCEND_SUFFIXES, "vllm-ascend expert map")
    return (json.dumps(payload, indent=1) + "\n").encode("utf-8")


def load_ascend(path: str | Path, *, model: ModelSpec | None = None, ep: int | None = None) -> ImportedPlacement:
    """Read a vllm-ascend expert map back; ``device_count`` gives the EP ranks."""
    p = Path(path)
    _files.suffix_of(p, ASCEND_SUFFIXES, "vllm-ascend expert map")
    raw = _files.read_json(p)
    src = p.name
    if not isinstance(raw, dict):
        raise InputError(f"{src}: expected an object with moe_layer_count and layer_list, got {type(raw).__name__}")
    for key in ("moe_layer_count", "layer_list"):
        if key not in raw:
            raise InputError(f"{src}: {key} is required")
    count, layers = raw["moe_layer_count"], raw["layer_list"]
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise InputError(f"{src}: moe_layer_count must be an integer > 0 (got {count!r})")
    if not isinstance(layers, list) or len(layers) != count:
        n = len(layers) if isinstance(layers, list) else type(layers).__name__
        raise InputError(f"{src}: layer_list must be a list of moe_layer_count ({count}) layers (got {n})")
    rows: list[list[int]] = []
    G = S = prev_id = None
    for l, layer in enumerate(layers):
        where = f"{src}: layer_list[{l}]"
        if not isinstance(layer, dict):
            raise InputError(f"{where} must be an object")
        for key in ("layer_id", "device_count", "device_list"):
            if key not in layer:
                raise InputError(f"{where}.{key} is required")
        lid = layer["layer_id"]
        if not isinstance(lid, int) or isinstance(lid, bool) or (prev_id is not None and lid <= prev_id):
            raise InputError(
                f"{where}.layer_id must be an integer above the previous layer's (layers in MoE-layer order; got {lid!r})"
            )
        prev_id = lid
        devices = layer["device_list"]
        if not isinstance(devices, list) or layer["device_count"] != len(devices) or not devices:
            raise InputError(f"{where}.device_list must list device_count ({layer['device_count']!r}) devices")
        if G is None:
            G = len(devices)
        elif len(devices) != G:
            raise InputError(f"{where} has {len(devices)} devices, layer_list[0] has {G}")
        row: list[int] = []
        for g, dev in enumerate(devices):
            dwhere = f"{where}.device_list[{g}]"
            if not isinstance(dev, dict) or "device_expert" not in dev:
                raise InputError(f"{dwhere}.device_expert is required")
            if dev.get("device_id", g) != g:
                raise InputError(f"{dwhere}.device_id must be {g} (got {dev['device_id']!r})")
            ids = dev["device_expert"]
            if not isinstance(ids, list) or not all(isinstance(e, int) and not isinstance(e, bool) for e in ids):
                raise InputError(f"{dwhere}.device_expert must be a list of integer expert ids")
            if S is None:
                S = len(ids)
            elif len(ids) != S:
                raise InputError(f"{dwhere}.device_expert has {len(ids)} experts, device 0 of layer 0 has {S}: every rank needs the same count")
            row += ids
        rows.append(row)
    phy2log = np.asarray(rows, dtype=np.int64)
    expect_moe_layers(phy2log, model, src, "layer_list")
    check_phy2log(phy2log, src, "layer_list", num_experts=model.num_experts if model else None)
    assert G is not None and S is not None
    if ep is not None and ep != G:
        raise InputError(f"{src}: device_count is {G}, ep given is {ep}")
    if S == 0:
        raise InputError(f"{src}: device_expert lists are empty")
    return ImportedPlacement(phy2log, S, "vllm-ascend")
