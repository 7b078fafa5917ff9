"""Notes a placement plan carries about its inputs: routing that breaks the model's group limit,
redundant slots that cost more than they balance, and prefill steps the whole-step model and the
trace replay size differently. Each is a pure function of the planning
steps and the placement; :func:`planner.api.solve` adds what they return to the plan's notes."""

from __future__ import annotations

import numpy as np

from planner.resolve import counts_only
from planner.score import baseline_placement, ep_ranks_per_node, simulate_stage
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.plan import Parallel
from planner.traces import Trace
from planner.traces.stats import group_limit_excess
from planner.traces.steps import CHUNKED_PREFILL_TOKENS

#: Share of tokens breaking the model's group-limited routing above which the plan says so.
GROUP_EXCESS_NOTE = 0.01


def group_routing_note(m: ModelSpec, cluster: ClusterSpec, par: Parallel, trace_label: str, plan_trace: Trace,
                       baseline: str | None) -> list[str]:
    """A note when the planning steps break the model's group-limited routing (tokens drawn from
    counts carry no groups to check)."""
    excess = 0.0 if counts_only(trace_label) else group_limit_excess(plan_trace, m.n_group, m.topk_group)
    if excess <= GROUP_EXCESS_NOTE:
        return []
    return [
        f"the trace does not follow {m.name}'s group-limited routing: {excess:.0%} of tokens pick experts in "
        f"more than topk_group = {m.topk_group} of its n_group = {m.n_group} groups (recorded with another "
        "model, or with group routing off?); EPLB keeps groups together regardless"
        + ("; the solver moves single experts between nodes where that saves inter-node copies"
           if ep_ranks_per_node(cluster, par) < par.ep and baseline is None else "")
    ]


def replica_cost_note(plan_trace: Trace, plan_counts_LE: np.ndarray, m: ModelSpec, hw: HardwareProfile,
                      cluster: ClusterSpec, par: Parallel, redundant: int, dispatch: str, kernel: str,
                      p2l: np.ndarray, relay: str, t_plan: float | None = None) -> list[str]:
    """A note when the same GPUs without redundant slots (contiguous, E / ep per GPU) predict less
    MoE time on the planning steps than the plan: at small token counts an expert's GEMM is bound
    by reading its weights, and every replica that receives tokens reads them once more.
    ``t_plan``: the plan's planning-step MoE ms when already known (else simulated here)."""
    if redundant <= 0 or m.num_experts % par.ep:
        return []
    plain = baseline_placement("contiguous", plan_counts_LE.astype(np.float64), m, cluster, par, 0)

    def planning_ms(p: np.ndarray) -> float:
        return float(simulate_stage(p, plan_trace, m, hw, cluster, par, dispatch, relay, kernel).step_ms_S.mean())

    t_plain = planning_ms(plain)
    if t_plan is None:
        t_plan = planning_ms(p2l)
    if t_plain >= t_plan:
        return []
    return [
        f"without redundant slots (contiguous, {m.num_experts // par.ep} experts per GPU) the planning steps predict "
        f"{t_plain:.3f} ms of MoE time per step against {t_plan:.3f} ms with {redundant}: at these token "
        "counts a replica costs another read of its weights more than it balances; consider --redundant-experts 0"
    ]


#: Relative difference of the two prefill step sizes above which the plan says so.
STEP_SIZE_NOTE = 0.10


def prefill_step_note(mode: str, prompts: int, prompt_len: int | None, replay_tokens: float,
                      trace_tokens: int) -> list[str]:
    """A note when a prefill plan's whole-step figures (the parallelism search's step: ``prompts``
    prompts of ``prompt_len`` tokens) and its MoE figures (the trace's steps, ``replay_tokens``
    tokens on average, from a trace of ``trace_tokens``) are for steps of different sizes."""
    if mode != "prefill" or not prompts or not prompt_len or replay_tokens <= 0:
        return []
    model_tokens = prompts * prompt_len
    if abs(model_tokens / replay_tokens - 1) <= STEP_SIZE_NOTE:
        return []
    fix = (f"state --tokens-per-step {model_tokens} to replay steps of the same size" if model_tokens < trace_tokens
           else f"the trace's {trace_tokens} tokens make no step of that size: give a longer trace")
    return [f"the whole-step figures are for {prompts} prompts of {prompt_len} tokens ({model_tokens} tokens a step); "
            f"the MoE figures replay the trace's steps of {replay_tokens:.0f} tokens on average (--tokens-per-step, "
            f"else {CHUNKED_PREFILL_TOKENS}): {fix}"]
