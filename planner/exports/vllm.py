"""vLLM: the EPLB ``physical_to_logical_map``, and vllm-ascend's expert-map JSON.

**vLLM** (vllm-project/vllm 0.33, ``vllm/distributed/eplb/eplb_state.py``) keeps per model an
``EplbModelState`` over MoE layers only. Its one primary map is ``physical_to_logical_map`` int64
[num_moe_layers, num_physical] (logical id per slot, slot ``p`` on EP rank ``p // (P / G)``); the
other two are derived from it by ``compute_logical_maps``:
``logical_to_physical_map`` [L, E, max replicas] (slots of each expert in increasing slot order,
−1 padded) and ``logical_replica_count`` [L, E]. ``EplbState.add_model`` allocates
``logical_to_physical_map`` with ``MAX_EXPERT_REDUNDANCY + 1`` = 1024 columns whatever R is,
and ``EplbState.update_mapping(model_config, expanded_physical_to_logical)`` (or
``EplbState.from_mapping(..., expanded_physical_to_logical)``) takes a new
``physical_to_logical_map``, recomputes the other two with ``compute_logical_maps`` and pads them
to the state's width. So the export is that one tensor: the argument ``update_mapping`` takes.

The file is ``.pt`` (``{"physical_to_logical_map": tensor}``; needs torch) or ``.npz`` (same
name, no torch). Reading back also accepts the three-map files earlier releases wrote (checked
for consistency). vLLM itself loads no initial placement file: ``add_model`` starts from the
linear map (experts, then redundant copies ``i mod E``) and EPLB rebalances at run time; a
file-based initial map exists only in an open pull request (vllm-project/vllm#49572).

Flags (``vllm/engine/arg_utils.py``; ``vllm/config/parallel.py`` ``EPLBConfig``:
``window_size``, ``step_interval``, ``num_redundant_experts``, ``log_balancedness``, ``policy``
…): ``--enable-expert-parallel --enable-eplb --eplb-config '{"num_redundant_experts": R}'``;
vLLM's EP size is ``--tensor-parallel-size`` × ``--data-parallel-size``. On several nodes with
at least one DP rank per node: ``--data-parallel-size-local D/N --data-parallel-address
HEAD_NODE_IP --data-parallel-rpc-port 13345`` on node 0, and the same plus ``--headless
--data-parallel-start-rank n·D/N`` on node ``n`` (vLLM docs, "Data Parallel Deployment");
when TP × PP spans nodes instead: ``--nnodes N --node-rank n --master-addr HEAD_NODE_IP``.
``HEAD_NODE_IP`` is a placeholder for node 0's address.

**vllm-ascend** (vllm-project/vllm-ascend, ``vllm_ascend/ops/expert_load_balancer.py``,
``ExpertLoadBalancer._expert_file_to_tensor``) reads a JSON file::

    {"moe_layer_count": L,
     "layer_list": [{"layer_id": l, "device_count": G,
                     "device_list": [{"device_id": g, "device_expert": [ids of rank g's slots]}]}]}

``layer_list[l]`` is MoE layer ``l`` (0-based among MoE layers), ``device_list[g]`` EP rank ``g``;
the rows are stacked into one rectangular tensor, so every rank lists the same number of slots
and the flattened order is the physical slot order.

vllm-ascend (``vllm_ascend/eplb/core/eplb_utils.py``, ``init_eplb_config`` and
``generate_log2phy_map``) maps each expert to **one** local slot per rank
(``expert_map[local_placement] = arange(S)``) and takes the number of distinct experts on rank 0
as the slots per rank when it numbers physical slots. A rank holding two copies of one expert
therefore idles one copy, and on rank 0 shifts every other rank's slot numbers. The export
re-places such copies: each extra copy swaps with a slot of another rank (same node first, then
the nearest rank) whose expert the first rank lacks and that lacks the copied expert; the notes
count the swaps. A placement where an expert has more copies than there are ranks cannot be
written (an error). Pass it as
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
    phy2log_of,
    read_maps,
    redundant_of,
    slots_from_ep,
)
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan

P2L, L2P, COUNT = "physical_to_logical_map", "logical_to_physical_map", "logical_replica_count"
KEYS = (P2L, L2P, COUNT)
SUFFIXES = (".pt", ".npz")
ASCEND_SUFFIXES = (".json",)
_ALT = "or write .npz"


# ---- vLLM EPLB tensors -----------------------------------------------------------------------

#: Placeholder for node 0's address in multi-node launch lines, and vLLM's documented RPC port.
HEAD_IP = "HEAD_NODE_IP"
DP_RPC_PORT = "13345"


def build(plan: Plan) -> dict[str, np.ndarray]:
    """``{"physical_to_logical_map": int64 [num_moe_layers, P]}``: what ``EplbState.update_mapping``
    takes; vLLM derives the other maps from it (module docstring)."""
    return {P2L: phy2log_of(plan)}


def multi_node_flags(plan: Plan) -> list[str]:
    """Node 0's multi-node arguments (none on one node); other nodes: :func:`notes`."""
    par, nodes = plan.parallel, plan.cluster.num_nodes
    if nodes <= 1:
        return []
    if par.dp % nodes == 0:
        return ["--data-parallel-size-local", str(par.dp // nodes), "--data-parallel-address", HEAD_IP,
                "--data-parallel-rpc-port", DP_RPC_PORT]
    return ["--nnodes", str(nodes), "--node-rank", "0", "--master-addr", HEAD_IP]


def flags(plan: Plan, path: str | Path | None = None) -> list[str]:
    """``vllm serve`` arguments for the plan (node 0's line on several nodes)."""
    par = plan.parallel
    return [
        "--enable-expert-parallel",
        "--tensor-parallel-size", str(par.tp),
        "--data-parallel-size", str(par.dp),
        *multi_node_flags(plan),
        "--enable-eplb",
        "--eplb-config", json.dumps({"num_redundant_experts": redundant_of(plan)}),
    ]


def node_notes(plan: Plan) -> list[str]:
    """How the other nodes' lines differ from node 0's."""
    par, nodes = plan.parallel, plan.cluster.num_nodes
    if nodes <= 1:
        return []
    if par.dp % nodes == 0:
        local = par.dp // nodes
        return [
            f"on node n = 1 … {nodes - 1} run the same line plus --headless --data-parallel-start-rank n × {local}; "
            f"{HEAD_IP} stands for node 0's address"
        ]
    return [f"on node n = 1 … {nodes - 1} run the same line with --node-rank n; {HEAD_IP} stands for node 0's address"]


def notes(plan: Plan) -> list[str]:
    par = plan.parallel
    out = [
        "vLLM loads no initial placement file (EplbState starts linear and rebalances at run time; a file-based "
        "initial map is an open pull request, vllm-project/vllm#49572): the file is the physical_to_logical_map "
        "EplbState.update_mapping takes, which derives logical_to_physical_map and logical_replica_count "
        "(compute_logical_maps)"
    ]
    if par.ep != par.dp * par.tp:
        out.append(f"vLLM's EP size is tp × dp = {par.tp * par.dp}; this plan has ep {par.ep}")
    return out + node_notes(plan)


def dumps(payload: dict[str, np.ndarray], path: Path) -> bytes:
    suffix = _files.suffix_of(path, SUFFIXES, "vLLM EPLB map")
    if suffix == ".pt":
        return _files.pt_bytes(payload, path.name, _ALT)
    return _files.npz_bytes(payload)


def load(path: str | Path, *, model: ModelSpec | None = None, ep: int | None = None) -> ImportedPlacement:
    """Read a ``physical_to_logical_map`` file back (``.pt`` or ``.npz``); a file of the three
    maps (earlier releases) is read too, and its maps must agree."""
    p = Path(path)
    _files.suffix_of(p, SUFFIXES, "vLLM EPLB map")
    raw = _files.read_arrays(p, _ALT)
    if set(raw) != {P2L}:
        return ImportedPlacement(*read_maps(raw, p.name, KEYS, model, ep), "vllm")
    p2l = _files.int_array(raw[P2L], p.name, P2L, 2)
    expect_moe_layers(p2l, model, p.name, P2L)
    check_phy2log(p2l, p.name, P2L, num_experts=model.num_experts if model else None, ep=ep)
    return ImportedPlacement(p2l, slots_from_ep(p2l.shape[1], ep, p.name), "vllm")


# ---- vllm-ascend expert map JSON -------------------------------------------------------------


def _ranks_near(g: int, G: int, gpus_per_node: int) -> list[int]:
    """The other ranks, those on ``g``'s node first, each group by distance from ``g``."""
    node = g // gpus_per_node
    return sorted((h for h in range(G) if h != g), key=lambda h: (h // gpus_per_node != node, abs(h - g), h))


def ascend_placement(plan: Plan) -> tuple[np.ndarray, int]:
    """The plan's ``phy2log`` [L, P] with no rank holding two copies of one expert, and the
    number of swaps that took (module docstring). Deterministic."""
    out = phy2log_of(plan).copy()
    G, S, E = plan.parallel.ep, plan.placement.slots_per_gpu, plan.model.num_experts
    gpn = max(1, min(plan.cluster.gpus_per_node, G))
    swaps = 0
    for l, row in enumerate(out):
        cnt = np.bincount(row, minlength=E)
        if cnt.max() > G:
            e = int(np.argmax(cnt))
            raise InputError(
                f"vllm-ascend: MoE layer {l} holds {int(cnt[e])} copies of expert {e} on {G} EP ranks; vllm-ascend "
                "maps at most one slot per expert per rank"
            )
        for g in range(G):
            while True:
                mine = row[g * S:(g + 1) * S]
                vals, counts = np.unique(mine, return_counts=True)
                if counts.max() == 1:
                    break
                e = int(vals[np.argmax(counts > 1)])
                a = g * S + int(np.nonzero(mine == e)[0][-1])  # the last copy moves
                have = set(mine.tolist())
                b = next(
                    (h * S + j for h in _ranks_near(g, G, gpn) if e not in row[h * S:(h + 1) * S]
                     for j in range(S) if int(row[h * S + j]) not in have),
                    None,
                )
                if b is None:
                    raise InputError(
                        f"vllm-ascend: MoE layer {l}: no rank can take rank {g}'s second copy of expert {e} "
                        "in a swap; vllm-ascend maps at most one slot per expert per rank"
                    )
                row[a], row[b] = row[b], row[a]
                swaps += 1
    return out, swaps


def build_ascend(plan: Plan) -> dict[str, Any]:
    """``{"moe_layer_count", "layer_list": [{"layer_id", "device_count", "device_list": [...]}]}``
    of :func:`ascend_placement` (the plan's placement, same-rank copies swapped apart)."""
    phy2log, _ = ascend_placement(plan)
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
    """``vllm serve`` arguments for vllm-ascend (node 0's line on several nodes)."""
    par = plan.parallel
    eplb_config = {"expert_map_path": str(path) if path is not None else "FILE",
                   "num_redundant_experts": redundant_of(plan)}
    return [
        "--enable-expert-parallel",
        "--tensor-parallel-size", str(par.tp),
        "--data-parallel-size", str(par.dp),
        *multi_node_flags(plan),
        "--additional-config", json.dumps({"eplb_config": eplb_config}),
    ]


def notes_ascend(plan: Plan) -> list[str]:
    _, swaps = ascend_placement(plan)
    out = []
    if swaps:
        out.append(
            f"{swaps} slot swap(s) keep every rank to one copy of an expert (vllm-ascend maps one local slot per expert "
            "and numbers slots by rank 0's distinct experts): the file is the plan's placement with those copies "
            "moved to other ranks, same node first"
        )
    return out + node_notes(plan)


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
