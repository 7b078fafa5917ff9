"""Inputs given by name or as objects, made objects: the model, the hardware profile, the trace.

The Python API, the offload planner, ``simulate`` and ``validate`` all accept a preset name, a
file or an object for each input; these functions are the one place that turns them into
objects, so every entry point reads the same file the same way and labels the trace alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from planner.specs.hardware import HardwareProfile, load_hardware
from planner.specs.model import ModelSpec
from planner.specs.model_io import load_model
from planner.traces import (
    CountsTrace,
    Trace,
    check_against_model,
    default_trace_path,
    load_trace,
    synth_trace,
)
from planner.traces.expand import CAVEAT, tokens_from_counts
from planner.traces.stream import StreamedTrace


def resolve_model(model: str | ModelSpec) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else load_model(model)


def resolve_hardware(hardware: str | HardwareProfile) -> HardwareProfile:
    return hardware if isinstance(hardware, HardwareProfile) else load_hardware(hardware)


def resolve_trace(
    trace: str | Path | Trace | CountsTrace | None, model: ModelSpec, seed: int, tokens_per_step: int | None = None
) -> tuple[Trace, str, tuple[np.ndarray, np.ndarray] | None]:
    """The trace to plan from, a label for provenance, and — for counts-only and streamed
    traces — the recorded counts of every step as (step ids [S], counts [S, L, E]): the
    per-token trace is then sampled from them (counts only) or holds a sample of the steps
    (streamed, :mod:`planner.traces.stream`)."""
    if trace is None:
        path = default_trace_path(model.name)
        if path is not None:
            t = load_trace(path)
            label = f"shipped:{path.name}"
        else:
            t = synth_trace(model, num_tokens=8192, tokens_per_step=512, seed=seed)
            label = f"synthetic(seed={seed})"
    elif isinstance(trace, str | Path):
        t = load_trace(trace, model=model, tokens_per_step=tokens_per_step)
        label = Path(trace).name
    else:
        t = trace
        label = "in-memory"
    check_against_model(t, model, label)
    if isinstance(t, StreamedTrace):
        return t, f"{label} (streamed)", (t.recorded_steps, t.recorded_counts)
    if not t.has_tokens:
        counts = t.counts_per_step()
        return tokens_from_counts(t, model.top_k, seed), f"{label} (counts only)", (np.arange(len(counts)), counts)
    return t, label, None


def counts_only(label: str) -> bool:
    """Whether a trace label (:func:`resolve_trace`) names tokens sampled from per-expert counts."""
    return label.endswith("(counts only)")


def trace_notes(trace: Trace, label: str) -> tuple[str, ...]:
    """The caveats a trace puts on the figures made from it: counts-only (tokens sampled from
    counts) and streamed (a sample of steps); labels as :func:`resolve_trace` gives them."""
    notes = (CAVEAT,) if counts_only(label) else ()
    return notes + ((trace.note(),) if isinstance(trace, StreamedTrace) else ())


def trace_arrays(trace: Trace) -> list[np.ndarray]:
    """The arrays a placement plan's input hash covers: token ids and steps, and for a streamed
    trace the sample's recorded step ids and the exact counts of every step."""
    arrays = [trace.topk_ids, trace.step]
    if isinstance(trace, StreamedTrace):
        arrays += [trace.recorded_steps, trace.recorded_counts]
    return arrays
