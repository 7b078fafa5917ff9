"""Launch arguments for a plan: Megatron-core when training, vLLM and SGLang when serving.

Built from the same argument builders as ``moe-planner export`` (:mod:`~planner.exports.megatron`,
:mod:`~planner.exports.vllm`, :mod:`~planner.exports.sglang`), so that ``plan`` and ``export``
print the same flags.
"""

from __future__ import annotations

from planner.exports import megatron, sglang, vllm
from planner.specs.plan import Plan
from planner.specs.search import LaunchArgs


def launch_args(plan: Plan) -> LaunchArgs:
    """Megatron-core (train) or vLLM and SGLang (serving) arguments for ``plan``."""
    if plan.workload.mode == "train":
        return LaunchArgs(megatron=megatron.args(plan))
    par = plan.parallel
    v = vllm.flags(plan)
    if par.pp > 1:
        v += ["--pipeline-parallel-size", str(par.pp)]
    return LaunchArgs(vllm=v, sglang=sglang.flags(plan, None))
