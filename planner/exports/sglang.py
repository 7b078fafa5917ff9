"""SGLang: the ``--init-expert-location`` file (``physical_to_logical_map``).

What SGLang reads (sgl-project/sglang, ``python/sglang/srt/eplb/expert_location.py``,
``compute_initial_expert_location_metadata``): a ``.pt`` (``torch.load(weights_only=True)``) or
``.json`` file holding a dict with ``physical_to_logical_map`` [num_layers, num_physical] — passed
to ``ExpertLocationMetadata.init_by_mapping`` — or ``logical_count``. There:

- ``num_layers`` is ``ModelConfigForExpertLocation.num_layers``, which the model classes set to
  ``config.num_hidden_layers`` (``get_model_config_for_expert_location`` in
  ``python/sglang/srt/models/deepseek_v2.py``, ``qwen3_moe.py`` …): **every** hidden layer,
  dense ones included (docs/facts.md §4);
- ``num_physical = num_logical_experts + --ep-num-redundant-experts`` and must divide by
  ``--ep-size`` (``_init_common``); the GPU of slot ``p`` is ``p // (num_physical / ep_size)``
  (``_compute_gpu_id_of_physical_expert``), the planner's own convention;
- ``_compute_logical_to_all_physical_map`` indexes a list by every id of every row, so a dense
  layer's row must hold valid logical ids too.

**Dense layers.** A dense layer's row holds SGLang's own *trivial* map,
``p mod num_logical`` for ``p`` in ``[0, num_physical)`` — exactly what
``ExpertLocationMetadata.init_trivial`` puts in every row (``torch.arange(num_physical)
.repeat(num_layers, 1) % num_logical``). SGLang never routes through these rows (the layer has
no experts), so any valid row would do; the trivial one is what SGLang itself would use.
Reading a file back with a model keeps the rows of ``model.moe_layer_indices``.

Flags to pass: ``--init-expert-location FILE --ep-size G --ep-num-redundant-experts R``
(``server_args.py``: ``--expert-parallel-size``/``--ep-size``, ``--ep-num-redundant-experts``,
``--init-expert-location``), plus the attention layout the plan assumes, the dispatch (below)
and, on several nodes, ``--nnodes N --node-rank n --dist-init-addr HEAD_NODE_IP:PORT`` (the
same line on every node, ``--node-rank`` 0 … N−1; the address is node 0's, a placeholder here).

**Dispatch** (SGLang 0.5.23, ``handle_eplb_and_dispatch`` in
``python/sglang/srt/arg_groups/parallel_hook.py`` and ``expert_location.py``). With a file given
and no ``--ep-dispatch-algorithm``, SGLang picks ``static`` under an all-to-all backend
(``--moe-a2a-backend deepep``) and ``dynamic`` without one; ``static`` (and ``lp``) without an
all-to-all backend is refused at start ("picks a different physical replica per rank …"). So:

==============  =============================================================================
plan            printed
==============  =============================================================================
``static``      ``--moe-a2a-backend deepep --ep-dispatch-algorithm static``: one replica pinned
                per (rank, expert) — own GPU, else the first on the node when the node holds
                some but not all replicas, else a seeded fair draw
                (:func:`planner.simulator.static_table` models it)
``nearest``,    ``--moe-a2a-backend deepep --ep-dispatch-algorithm dynamic``: each rank's
``local-first`` candidates are cut to its own-GPU replica, else to the first on its node
                (same rule), else all replicas, and each token draws one at random
``even``        ``--ep-dispatch-algorithm dynamic`` without an all-to-all backend: every rank
                picks replica ``token row mod c`` of all ``c`` replicas (the ``even`` spread);
                SGLang then runs EP without DeepEP's all-to-all (the plan's traffic assumes it)
==============  =============================================================================

With no redundant slots every expert has one replica, dispatch has no choice to make, and the
line asks for ``--moe-a2a-backend deepep`` alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import planner.exports._files as _files
from planner.errors import InputError
from planner.exports._common import (
    ImportedPlacement,
    check_phy2log,
    moe_rows,
    phy2log_of,
    redundant_of,
    slots_from_ep,
)
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan

KEY = "physical_to_logical_map"
SUFFIXES = (".json", ".pt")
_ALT = "or write .json"


def all_layers_map(phy2log_LP: np.ndarray, model: ModelSpec) -> np.ndarray:
    """[num_hidden_layers, P]: the MoE rows where they belong, the trivial map in dense rows."""
    L, P = phy2log_LP.shape
    if L != model.num_moe_layers:
        raise InputError(f"placement has {L} MoE layers, model {model.name} has {model.num_moe_layers}")
    out = np.tile(np.arange(P, dtype=np.int64) % model.num_experts, (model.num_layers, 1))
    out[model.moe_layer_indices] = phy2log_LP
    return out


def build(plan: Plan) -> dict[str, np.ndarray]:
    """The file's content: ``{"physical_to_logical_map": int64 [num_hidden_layers, P]}``."""
    return {KEY: all_layers_map(phy2log_of(plan), plan.model)}


#: Placeholder for node 0's address in multi-node launch lines (and the port SGLang's examples use).
HEAD_ADDR = "HEAD_NODE_IP:5000"


def dispatch_flags(plan: Plan) -> list[str]:
    """``--moe-a2a-backend`` / ``--ep-dispatch-algorithm`` for the plan's dispatch (module table)."""
    if redundant_of(plan) == 0:
        return ["--moe-a2a-backend", "deepep"]
    if plan.dispatch == "static":
        return ["--moe-a2a-backend", "deepep", "--ep-dispatch-algorithm", "static"]
    if plan.dispatch in ("nearest", "local-first"):
        return ["--moe-a2a-backend", "deepep", "--ep-dispatch-algorithm", "dynamic"]
    return ["--ep-dispatch-algorithm", "dynamic"]


def flags(plan: Plan, path: str | Path | None) -> list[str]:
    """``python -m sglang.launch_server`` arguments for the plan (node 0's line on several nodes)."""
    par = plan.parallel
    out = [
        "--init-expert-location", str(path) if path is not None else "FILE",
        "--ep-size", str(par.ep),
        "--ep-num-redundant-experts", str(redundant_of(plan)),
        "--tp-size", str(par.dp * par.tp),
    ]
    if par.dp > 1:
        out += ["--dp-size", str(par.dp), "--enable-dp-attention"]
        w = plan.workload
        if w.mode == "prefill" and w.prefill_budget == "per-rank" and w.tokens_per_step is not None:
            out += ["--chunked-prefill-size", str(w.tokens_per_step)]  # SGLang divides it by dp: the plan's steps
    if par.pp > 1:
        out += ["--pp-size", str(par.pp)]
    out += dispatch_flags(plan)
    if plan.cluster.num_nodes > 1:
        out += ["--nnodes", str(plan.cluster.num_nodes), "--node-rank", "0", "--dist-init-addr", HEAD_ADDR]
    return out


def node_notes(plan: Plan) -> list[str]:
    """How the other nodes' lines differ from node 0's."""
    n = plan.cluster.num_nodes
    if n <= 1:
        return []
    return [f"run the same line on each of the {n} nodes with --node-rank 0 … {n - 1}; "
            f"{HEAD_ADDR} stands for node 0's address and a free port"]


def notes(plan: Plan) -> list[str]:
    m, par = plan.model, plan.parallel
    out: list[str] = []
    if m.num_dense_layers:
        out.append(
            f"{m.num_dense_layers} dense layer(s) ({_layer_list(m)}) hold SGLang's trivial map "
            "(slot p -> expert p mod E); SGLang never routes through them"
        )
    stage = plan.cluster.num_gpus // par.pp
    if par.ep * par.etp != stage:
        out.append(
            f"SGLang takes its EP group to be the whole TP group ({stage} GPUs per stage); "
            f"this plan has ep {par.ep} × etp {par.etp}"
        )
    out += node_notes(plan)
    if redundant_of(plan) > 0:
        if plan.dispatch == "even":
            out.append(
                "even dispatch in SGLang is --ep-dispatch-algorithm dynamic without an all-to-all backend (replica "
                "token row mod c on every rank), so EP runs without DeepEP's all-to-all the plan's traffic assumes; "
                "with --moe-a2a-backend deepep SGLang prefers local replicas: re-plan with --dispatch static "
                "(SGLang's default then) or nearest to place for what it will do"
            )
        elif plan.dispatch == "nearest":
            out.append(
                "SGLang's dynamic dispatch under deepep takes a replica on the rank's GPU, else the first one on its "
                "node when the node holds some but not all, else one at random per token; nearest spreads a token "
                "over its node's replicas instead of taking the first"
            )
        elif plan.dispatch == "local-first":
            out.append(
                "SGLang's dynamic dispatch under deepep takes a replica on the rank's GPU, else (on several nodes) "
                "the first one on its node when the node holds some but not all, else one at random per token; "
                "local-first skips the node step"
            )
    return out


def _layer_list(m: ModelSpec) -> str:
    moe = set(m.moe_layer_indices)
    dense = [i for i in range(m.num_layers) if i not in moe]
    shown = ", ".join(str(i) for i in dense[:6])
    return f"layer {shown}" + (f" … ({len(dense)} in all)" if len(dense) > 6 else "")


def dumps(payload: dict[str, np.ndarray], path: Path) -> bytes:
    suffix = _files.suffix_of(path, SUFFIXES, "SGLang --init-expert-location")
    if suffix == ".pt":
        return _files.pt_bytes(payload, path.name, _ALT)
    return _files.json_bytes({k: v.tolist() for k, v in payload.items()})


def load(path: str | Path, *, model: ModelSpec | None = None, ep: int | None = None) -> ImportedPlacement:
    """Read an ``--init-expert-location`` file back: the MoE rows as [L, P].

    With a model, a map over all ``num_hidden_layers`` keeps the rows of the MoE layers (one over
    MoE layers only is taken as is); without one, every row is returned.
    """
    p = Path(path)
    suffix = _files.suffix_of(p, SUFFIXES, "SGLang --init-expert-location")
    raw: Any = _files.read_pt(p, _ALT) if suffix == ".pt" else _files.read_json(p)
    if not isinstance(raw, dict):
        raise InputError(f"{p.name}: expected an object with the key {KEY!r}, got {type(raw).__name__}")
    if KEY not in raw:
        other = "logical_count (expert-load statistics, a trace: see 'moe-planner trace')" if "logical_count" in raw else ", ".join(map(repr, raw)) or "nothing"
        raise InputError(f"{p.name}: no {KEY!r} key (found {other})")
    extra = sorted(set(raw) - {KEY})
    if extra:
        raise InputError(f"{p.name}: unexpected key {extra[0]!r}: SGLang reads a file with exactly one key, {KEY!r}")
    all_LP = _files.int_array(raw[KEY], p.name, KEY, 2)
    moe_LP = moe_rows(all_LP, model, p.name, KEY)
    check_phy2log(moe_LP, p.name, KEY, num_experts=model.num_experts if model else None, ep=ep)
    return ImportedPlacement(moe_LP, slots_from_ep(moe_LP.shape[1], ep, p.name), "sglang")
