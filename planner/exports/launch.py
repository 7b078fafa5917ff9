"""Launch arguments for a plan: Megatron-core when training, vLLM and SGLang when serving.

Built from the same argument builders as ``moe-planner export`` (:mod:`~planner.exports.megatron`,
:mod:`~planner.exports.vllm`, :mod:`~planner.exports.sglang`), so that ``plan`` and ``export``
print the same flags.
"""

from __future__ import annotations

from planner.exports.megatron import args as megatron_args
from planner.exports.sglang import flags as sglang_flags
from planner.exports.sglang import node_notes as sglang_node_notes
from planner.exports.vllm import flags as vllm_flags
from planner.exports.vllm import node_notes as vllm_node_notes
from planner.specs.plan import Plan
from planner.specs.search import LaunchArgs


def launch_args(plan: Plan) -> LaunchArgs:
    """Megatron-core (train) or vLLM and SGLang (serving) arguments for ``plan``."""
    if plan.workload.mode == "train":
        return LaunchArgs(megatron=megatron_args(plan))
    par = plan.parallel
    v = vllm_flags(plan)
    if par.pp > 1:
        v += ["--pipeline-parallel-size", str(par.pp)]
    sg = sglang_flags(plan, None)
    if plan.search is not None and plan.search.chosen.two_batch_overlap:  # the step was priced with it
        sg.append("--enable-two-batch-overlap")
    return LaunchArgs(vllm=v, sglang=sg)


def launch_notes(plan: Plan) -> list[str]:
    """What the launch lines leave to the user: on several nodes, how the other nodes' lines
    differ from node 0's (the lines are node 0's; ``HEAD_NODE_IP`` is a placeholder)."""
    if plan.workload.mode == "train":
        return []
    return [f"vllm: {n}" for n in vllm_node_notes(plan)] + [f"sglang: {n}" for n in sglang_node_notes(plan)]
