"""Text for ``moe-planner plan``: the parallelism search's summary and the launch commands.

Reads only the plan's data (``plan.search``, a :class:`~planner.specs.search.SearchReport`, and
``plan.launch``, a :class:`~planner.specs.search.LaunchArgs`); the solver returns data and the
CLI owns the wording.
"""

from __future__ import annotations

import re
import shlex

from planner.exports.launch import launch_notes
from planner.solve.serve_imbalance import IMBALANCE_NOTE
from planner.specs.plan import Plan
from planner.specs.search import Alternative

_ENGINES = (
    ("megatron", "pretrain_gpt.py"),
    ("vllm", "vllm serve MODEL"),
    ("sglang", "python -m sglang.launch_server --model-path MODEL"),
)


def flags_text(text: str) -> str:
    """``text`` with the fields it names in backquotes (`gpus_per_node`) spelled as flags."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: "--" + m.group(1).replace("_", "-"), text)


def _figure(a: Alternative, mode: str) -> str:
    """The candidate's headline figure, named for what it is: training throughput per GPU, the
    time to first token (prefill: one step holds whole prompts) or the time per output token
    (decode: one step adds a token to every sequence)."""
    if a.tflops_per_gpu is not None:
        return f"{a.tflops_per_gpu:.0f} TFLOP/s/GPU"
    if a.latency_ms is None:
        return "no latency figure"
    if mode == "prefill":
        return f"time to first token {a.latency_ms:.2f} ms"
    return f"{a.latency_ms:.2f} ms per output token"


def render_launch(plan: Plan) -> list[str]:
    """Lines for ``moe-planner plan``: the search summary and the launch commands."""
    s, la = plan.search, plan.launch
    lines: list[str] = []
    if s is not None:
        lines.append("")
        lines += [
            f"  parallelism search: {s.enumerated} candidates, {s.evaluated} timed in {s.time_s:.2f} s; "
            f"ranked by {s.objective}" + (f"; fixed: {', '.join(s.fixed)}" if s.fixed else ""),
            "  (whole-model step at "
            + ("its busiest GPU (routing imbalance note below)" if any(n.startswith(IMBALANCE_NOTE) for n in s.notes)
               else "uniform routing") + ", experts as one grouped GEMM per GPU; the MoE figures above"
            + (" replay the trace with grouped GEMMs too)" if plan.workload.expert_kernel == "grouped" else
               " replay the trace with experts run one after another (--expert-kernel loop), an upper bound for"
               " grouped kernels)"),
        ]
        for i, a in enumerate(s.alternatives):
            extra = (f" mb {a.micro_batch} {a.recompute}{' distopt' if a.distributed_optimizer else ''}"
                     f" cp {a.cp} vpp {a.vpp}{' a2a-overlap' if a.a2a_overlap else ''}") if a.micro_batch \
                else f" batch {a.sequences}"
            fig = _figure(a, plan.workload.mode)
            lines.append(
                f"  {'*' if i == 0 else ' '} dp {a.dp} tp {a.tp} pp {a.pp} ep {a.ep} etp {a.etp}{extra}: "
                f"{a.step_ms:.1f} ms/step, {a.tokens_per_s:,.0f} tok/s, {fig}, {a.memory_gib:.1f} GiB"
            )
        for r in s.rejected[:3]:
            lines.append(f"    rejected {r.config}: {flags_text(r.reason)}")
        lines += [f"  note: {flags_text(n)}" for n in s.notes]
    if la is not None:
        for name, cmd in _ENGINES:
            argv = getattr(la, name)
            if argv:
                lines.append(f"  {name}: {cmd} {shlex.join(argv)}")
        lines += [f"  note: {n}" for n in launch_notes(plan)]
    return lines
