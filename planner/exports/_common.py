"""What every export format shares: the plan's placement as an array, and the imported result.

Legend: ``L`` MoE layers, ``E`` logical (routed) experts, ``P`` physical slots = ``E + R``
(``R`` redundant), ``G`` EP ranks, ``S`` slots per EP rank = ``P / G``. Physical slot ``p`` lives
on EP rank ``p // S`` (docs/contracts.md, "Plan file").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

import planner.exports._files as _files
from planner.errors import InputError
from planner.specs.model import ModelSpec
from planner.specs.plan import Plan


@dataclass(frozen=True)
class ImportedPlacement:
    """A placement read back from an engine file.

    ``phy2log_LP`` is int64 [L, P] over MoE layers only; ``slots_per_gpu`` is ``P / G`` when the
    file (or the ``ep`` given to the reader) says how many EP ranks there are, else ``None``.
    """

    phy2log_LP: np.ndarray
    slots_per_gpu: int | None
    fmt: str

    @property
    def num_moe_layers(self) -> int:
        return int(self.phy2log_LP.shape[0])

    @property
    def num_physical(self) -> int:
        return int(self.phy2log_LP.shape[1])

    def same_as(self, plan: Plan) -> bool:
        """Whether this is exactly the plan's placement (slots per GPU too, when known)."""
        mine = phy2log_of(plan)
        if self.phy2log_LP.shape != mine.shape or not np.array_equal(self.phy2log_LP, mine):
            return False
        return self.slots_per_gpu is None or self.slots_per_gpu == plan.placement.slots_per_gpu


def phy2log_of(plan: Plan) -> np.ndarray:
    """The plan's ``physical_to_logical`` as int64 [L, P]."""
    return np.asarray(plan.placement.physical_to_logical, dtype=np.int64).reshape(
        plan.model.num_moe_layers, -1
    )


def redundant_of(plan: Plan) -> int:
    """Redundant slots R = P − E."""
    return plan.parallel.ep * plan.placement.slots_per_gpu - plan.model.num_experts


def check_phy2log(
    phy2log_LP: np.ndarray, source: str, key: str, *, num_experts: int | None = None, ep: int | None = None
) -> None:
    """Ids ≥ 0 (and < E with every expert present, when E is known); P divisible by ``ep``."""
    if phy2log_LP.size == 0:
        raise InputError(f"{source}: {key} is empty (shape {phy2log_LP.shape})")
    if phy2log_LP.min() < 0:
        raise InputError(f"{source}: {key} holds {int(phy2log_LP.min())}: expert ids must be >= 0")
    if num_experts is not None:
        if phy2log_LP.max() >= num_experts:
            raise InputError(
                f"{source}: {key} holds expert {int(phy2log_LP.max())}, ids must be in [0, {num_experts})"
            )
        for l, row in enumerate(phy2log_LP):
            missing = np.setdiff1d(np.arange(num_experts), row)
            if missing.size:
                raise InputError(
                    f"{source}: {key}[{l}] misses expert {int(missing[0])}: every expert needs a slot in every layer"
                )
    if ep is not None and phy2log_LP.shape[1] % ep:
        raise InputError(
            f"{source}: {key} has {phy2log_LP.shape[1]} physical slots, not a multiple of ep ({ep})"
        )


def slots_from_ep(num_physical: int, ep: int | None, source: str) -> int | None:
    if ep is None:
        return None
    if ep <= 0:
        raise InputError(f"ep must be > 0 (got {ep})")
    if num_physical % ep:
        raise InputError(f"{source}: {num_physical} physical slots do not divide over ep {ep} ranks")
    return num_physical // ep


def moe_rows(all_LP: np.ndarray, model: ModelSpec | None, source: str, key: str) -> np.ndarray:
    """Rows of the MoE layers from a map over all hidden layers (or over MoE layers already)."""
    if model is None:
        return all_LP
    n = all_LP.shape[0]
    if n == model.num_layers:
        return all_LP[model.moe_layer_indices]
    if n == model.num_moe_layers:
        return all_LP
    raise InputError(
        f"{source}: {key} has {n} layers but model {model.name} has {model.num_layers} layers "
        f"({model.num_moe_layers} MoE layers): the file is for another model"
    )


def expect_moe_layers(phy2log_LP: np.ndarray, model: ModelSpec | None, source: str, key: str) -> None:
    if model is not None and phy2log_LP.shape[0] != model.num_moe_layers:
        raise InputError(
            f"{source}: {key} has {phy2log_LP.shape[0]} MoE layers but model {model.name} has "
            f"{model.num_moe_layers}: the file is for another model"
        )


# ---- the three EPLB-style maps (vLLM, DeepSeek EPLB) ---------------------------------------


def logical_to_physical(phy2log_LP: np.ndarray, num_experts: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``log2phy_LEX`` [L, E, width] (slots of each expert in increasing order, −1 padded) and
    ``count_LE`` [L, E]."""
    L, P = phy2log_LP.shape
    count_LE = np.zeros((L, num_experts), dtype=np.int64)
    for l in range(L):
        count_LE[l] = np.bincount(phy2log_LP[l], minlength=num_experts)
    if count_LE.size and count_LE.max() > width:
        raise InputError(f"an expert has {int(count_LE.max())} replicas, more than the map's width {width}")
    log2phy_LEX = np.full((L, num_experts, width), -1, dtype=np.int64)
    for l in range(L):
        order = np.argsort(phy2log_LP[l], kind="stable")  # slots grouped by expert, increasing slot
        experts = phy2log_LP[l][order]
        start = np.searchsorted(experts, experts, side="left")
        log2phy_LEX[l, experts, np.arange(P) - start] = order
    return log2phy_LEX, count_LE


def check_consistent(
    phy2log_LP: np.ndarray, log2phy_LEX: np.ndarray, count_LE: np.ndarray, source: str, names: tuple[str, str, str]
) -> None:
    """The three maps describe one placement (any replica order, any −1 padding width)."""
    p2l, l2p, cnt = names
    L, P = phy2log_LP.shape
    if log2phy_LEX.shape[0] != L or count_LE.shape[0] != L:
        raise InputError(
            f"{source}: {p2l} has {L} layers, {l2p} {log2phy_LEX.shape[0]}, {cnt} {count_LE.shape[0]}"
        )
    E = count_LE.shape[1]
    if log2phy_LEX.shape[1] != E:
        raise InputError(f"{source}: {l2p} has {log2phy_LEX.shape[1]} experts, {cnt} has {E}")
    if phy2log_LP.size and phy2log_LP.max() >= E:
        raise InputError(f"{source}: {p2l} holds expert {int(phy2log_LP.max())}, {cnt} has only {E} experts")
    if (log2phy_LEX < -1).any() or (log2phy_LEX >= P).any():
        raise InputError(f"{source}: {l2p} must hold slots in [0, {P}) or -1 padding")
    for l in range(L):
        counts = np.bincount(phy2log_LP[l], minlength=E)
        if not np.array_equal(count_LE[l], counts):
            e = int(np.nonzero(count_LE[l] != counts)[0][0])
            raise InputError(
                f"{source}: {cnt}[{l}][{e}] is {int(count_LE[l][e])}, {p2l} gives expert {e} {int(counts[e])} slot(s)"
            )
    width = log2phy_LEX.shape[2]
    if count_LE.size and count_LE.max() > width:
        raise InputError(f"{source}: {l2p} lists {width} slot(s) per expert, an expert has {int(count_LE.max())}")
    want, _ = logical_to_physical(phy2log_LP, E, width)
    for l in range(L):
        got = np.sort(np.where(log2phy_LEX[l] < 0, P, log2phy_LEX[l]), axis=1)
        exp = np.sort(np.where(want[l] < 0, P, want[l]), axis=1)
        if not np.array_equal(got, exp):
            e = int(np.nonzero((got != exp).any(axis=1))[0][0])
            raise InputError(f"{source}: {l2p}[{l}][{e}] does not list the slots {p2l}[{l}] gives expert {e}")


def read_maps(
    raw: dict[str, Any], source: str, names: tuple[str, str, str], model: ModelSpec | None, ep: int | None
) -> tuple[np.ndarray, int | None]:
    """``phy2log`` [L, P] and the slots per GPU from a file of three maps named ``names``
    (physical→logical, logical→physical, replica count): exactly those keys, consistent."""
    missing = [k for k in names if k not in raw]
    if missing:
        raise InputError(f"{source}: missing {missing[0]!r} (expects {', '.join(names)})")
    extra = sorted(set(raw) - set(names))
    if extra:
        raise InputError(f"{source}: unexpected key {extra[0]!r} (expects {', '.join(names)})")
    p2l = _files.int_array(raw[names[0]], source, names[0], 2)
    l2p = _files.int_array(raw[names[1]], source, names[1], 3)
    cnt = _files.int_array(raw[names[2]], source, names[2], 2)
    expect_moe_layers(p2l, model, source, names[0])
    if model is not None and cnt.shape[1] != model.num_experts:
        raise InputError(
            f"{source}: {names[2]} has {cnt.shape[1]} experts, model {model.name} has {model.num_experts}: "
            "the file is for another model"
        )
    check_phy2log(p2l, source, names[0], num_experts=cnt.shape[1], ep=ep)
    check_consistent(p2l, l2p, cnt, source, names)
    return p2l, slots_from_ep(p2l.shape[1], ep, source)
