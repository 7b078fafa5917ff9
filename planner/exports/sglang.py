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
``--init-expert-location``), plus the attention layout the plan assumes, and
``--ep-dispatch-algorithm static`` for plans made with ``nearest`` dispatch (SGLang's static
per-rank map picks a replica on the rank's GPU, then on its node, else a fair draw — what
:func:`planner.simulator.choose_slots` models as ``nearest``).
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


def flags(plan: Plan, path: str | Path | None) -> list[str]:
    par = plan.parallel
    out = [
        "--init-expert-location", str(path) if path is not None else "FILE",
        "--ep-size", str(par.ep),
        "--ep-num-redundant-experts", str(redundant_of(plan)),
        "--tp-size", str(par.dp * par.tp),
    ]
    if par.dp > 1:
        out += ["--dp-size", str(par.dp), "--enable-dp-attention"]
    if par.pp > 1:
        out += ["--pp-size", str(par.pp)]
    if plan.cluster.num_nodes > 1:
        out += ["--nnodes", str(plan.cluster.num_nodes)]
    if plan.dispatch == "nearest":
        # the static per-rank map: a replica on the rank's GPU, then its node, else a fair draw
        out += ["--ep-dispatch-algorithm", "static"]
    return out


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
    if plan.dispatch == "even" and redundant_of(plan) > 0:
        out.append(
            "SGLang switches to its static dispatch when --init-expert-location is given (a replica on the "
            "rank's GPU first, then on its node in versions that prefer the same node); this plan was made for "
            "even dispatch: re-plan with --dispatch nearest (or local-first) to place for what SGLang will do"
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
