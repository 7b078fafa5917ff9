"""Pricing the parallelism search's training candidates: for one set of degrees, the variants
(distributed optimizer, recompute, EP all-to-all overlap) that fit memory, timed by
:class:`~planner.cost.step.StepModel`, and the caveats of the chosen one.

**Recompute** (dominance, never heuristics): none is faster than selective, which is faster than
full, so the first recompute that fits memory is the only one timed.

**All-to-all overlap** (``a2a_overlap``, :data:`A2A_MODES`; Megatron's combined 1F1B,
``--overlap-moe-expert-parallel-comm``, priced by :mod:`planner.cost.step`): ``off`` prices no
candidate with it; ``on`` prices with it every candidate Megatron can run it on
(:func:`~planner.cost.step.overlap_problem`: EP > 1, virtual stages when pp > 1) and the others
without; ``auto`` prices those candidates both ways and keeps both, and the ranking chooses: at
the same recompute the overlap is never slower, but it holds more activations
(:func:`~planner.cost.memory.training_memory`), which can force a heavier recompute (each variant
has its own memory check), and within the 1% tie the simpler layout wins.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from planner.cost.step import OVERLAP_GEMM_SLOWDOWN, StepModel, overlap_problem
from planner.errors import InputError
from planner.solve.candidates import Candidate, Rejected
from planner.solve.search_memory import candidate_memory
from planner.specs.cluster import ClusterSpec
from planner.specs.degrees import pipeline_layout
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec

#: ``a2a_overlap`` values of the training search (module docstring).
A2A_MODES = ("off", "on", "auto")


def check_a2a_overlap(mode: str, a2a_overlap: str | None) -> None:
    """``a2a_overlap``, when given, must be one of :data:`A2A_MODES` and the mode ``train``."""
    if a2a_overlap is None:
        return
    if mode != "train":
        raise InputError(f"a2a_overlap prices training steps: it applies to mode train, not {mode}", field="a2a_overlap")
    if a2a_overlap not in A2A_MODES:
        raise InputError(f"a2a_overlap must be one of {', '.join(A2A_MODES)} (got {a2a_overlap!r})", field="a2a_overlap")


def _overlap_options(model: ModelSpec, base: Candidate, a2a_overlap: str) -> list[bool]:
    if a2a_overlap == "off" or overlap_problem(ep=base.ep, pp=base.pp, vpp=base.vpp, mtp_layers=model.mtp_layers):
        return [False]
    return [True] if a2a_overlap == "on" else [False, True]


def train_variants(
    sm: StepModel, model: ModelSpec, hw: HardwareProfile, N: int, base: Candidate, gb: int, seq_len: int,
    rc_opts: list[str], do_opts: list[bool], budget: float, feasible: list[Candidate], mem_rejected: list[Rejected],
    train_dtype: str = "bf16", dispatcher: str = "pairs", a2a_overlap: str = "off",
) -> int:
    """Append the variants of ``base`` that fit to ``feasible`` (timed) and the leanest that does
    not, per variant, to ``mem_rejected`` (timed when within 1.5× the budget); the number timed."""
    timed = 0

    def step(c: Candidate) -> Any:
        nonlocal timed
        timed += 1
        return sm.train_step(num_gpus=N, tp=c.tp, pp=c.pp, ep=c.ep, etp=c.etp, cp=c.cp, vpp=c.vpp,
                             micro_batch=c.micro_batch, global_batch=gb, seq_len=seq_len, recompute=c.recompute,
                             distributed_optimizer=c.distributed_optimizer, dispatcher=dispatcher, pp_first=c.pp_first,
                             pp_last=c.pp_last, a2a_overlap=c.a2a_overlap)

    for do in do_opts:
        for ov in _overlap_options(model, base, a2a_overlap):
            fit = lean = None
            for rc in rc_opts:  # none < selective < full in time: the first that fits dominates
                c = replace(base, recompute=rc, distributed_optimizer=do, a2a_overlap=ov)
                mem = candidate_memory(model, c, seq_len=seq_len, global_batch=gb, train_dtype=train_dtype)
                object.__setattr__(c, "memory", mem)  # c is local until appended
                if mem.total <= budget:
                    fit = c
                    break
                lean = c
            if fit is None:
                if lean is not None and lean.memory is not None and lean.memory.total <= 1.5 * budget:
                    st = step(lean)
                    lean = replace(lean, step_ms=st.step_ms, tokens_per_s=st.tokens_per_s, tflops_per_gpu=st.tflops_per_gpu)
                if lean is not None:
                    mem_rejected.append(Rejected(lean, "memory", ""))  # reason written for the few reported
                continue
            st = step(fit)
            feasible.append(replace(
                fit, step_ms=st.step_ms, tokens_per_s=st.tokens_per_s, tflops_per_gpu=st.tflops_per_gpu,
                detail={"bubble_fraction": st.bubble_fraction, "micro_batches": st.micro_batches, "global_batch": gb,
                        "dp_exposed_ms": st.dp_exposed_ms, "p2p_ms": st.p2p_ms, **st.parts},
            ))
    return timed


def train_notes(
    best: Candidate, model: ModelSpec, cluster: ClusterSpec, fixed: dict[str, Any], cross_node: bool, dispatcher: str,
    train_dtype: str, a2a_overlap: str = "off",
) -> list[str]:
    """The chosen training layout's caveats: an uneven pipeline and how Megatron sets it, a
    fixed degree that spans nodes and how it is priced, the dispatcher and dtype assumed, and
    how the all-to-all overlap was priced."""
    notes = []
    layout = pipeline_layout(model.num_layers, best.pp, best.vpp, mtp=model.mtp_layers, first=best.pp_first,
                             last=best.pp_last)
    if not isinstance(layout, str) and layout.note():
        notes.append(layout.note())
    n = cluster.gpus_per_node
    if not cross_node and best.ep * best.etp > n and {"ep", "etp"} & set(fixed):
        notes.append(
            f"ep × etp ({best.ep} × {best.etp} = {best.ep * best.etp}) as fixed spans "
            f"{best.ep * best.etp // n} nodes: the expert all-to-all crosses the network, priced at the "
            f"inter-node all-to-all bandwidth of the profile ({dispatcher} dispatcher)")
    if not cross_node and best.tp > n and "tp" in fixed:
        notes.append(f"tp {best.tp} as fixed spans nodes: its collectives are priced over the network")
    if train_dtype == "fp8":
        notes.append("fp8 training: GEMMs priced on the fp8 tables with Transformer Engine's casts; "
                     "dispatch/combine moved in bf16; fp8 weights, fp32 gradients, master weights and Adam states")
    if a2a_overlap != "off":
        notes.append(_overlap_note(best, model, a2a_overlap))
    return notes


def _overlap_note(best: Candidate, model: ModelSpec, a2a_overlap: str) -> str:
    why = overlap_problem(ep=best.ep, pp=best.pp, vpp=best.vpp, mtp_layers=model.mtp_layers)
    if why:
        return f"a2a overlap ({a2a_overlap}): not for this layout, {why}"
    if not best.a2a_overlap:
        return (f"a2a overlap ({a2a_overlap}): priced both ways, the layout without it ranks first (with it, the "
                "activations of one more micro-batch chunk need a heavier recompute, or it is within the 1% tie where "
                "the simpler wins)")
    hidden = best.detail.get("a2a_hidden_ms", 0.0)
    paired = best.detail.get("a2a_paired_fraction", 0.0)
    return (f"a2a overlap ({a2a_overlap}): priced with Megatron's combined 1F1B (--overlap-moe-expert-parallel-comm; "
            f"set CUDA_DEVICE_MAX_CONNECTIONS > 1, Megatron's recipes use 32): {hidden:,.0f} ms of all-to-all hidden "
            f"per step, {100 * paired:.0f}% of the first pipeline rank's passes paired (warm-up and cool-down stay "
            f"exposed); the GEMMs it overlaps priced {100 * OVERLAP_GEMM_SLOWDOWN:.0f}% slower")
