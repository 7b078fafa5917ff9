"""``plan --mode serve``: prefill/decode disaggregation planned end to end (docs/serving.md).

:func:`plan_serving` sizes a prefill pool and a decode pool on the cluster
(:mod:`planner.solve.pools`: every split of the nodes, each pool's degrees and batch from the
parallelism search, goodput under the TTFT and TPOT targets, the KV copy between them), then plans
each pool as ``moe-planner plan`` would (:func:`planner.api.plan` with the pool's degrees and batch
fixed: placement, redundant experts, held-out scoring, launch arguments), and compares the split
with a colocated deployment of the same GPUs. The result is the decode pool's plan with a
``serving`` section holding the prefill pool's plan, both pools' figures and launch lines, the
colocated figures and, with a request rate, the GPUs each deployment needs for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from planner.api import plan as plan_pool
from planner.errors import InfeasibleError, InputError
from planner.progress import stage
from planner.provenance import input_hash
from planner.resolve import resolve_hardware, resolve_model, resolve_trace
from planner.solve.pools import (
    DEFAULT_PREFILL_TOKENS,
    MAX_UTILIZATION,
    KVCopy,
    PoolFigures,
    PoolTable,
    ServeTargets,
    best_split,
    kv_copy,
    memory_gib,
    pool_cluster,
    units_for_rate,
    units_of,
)
from planner.specs.cluster import ClusterSpec
from planner.specs.hardware import HardwareProfile
from planner.specs.model import ModelSpec
from planner.specs.options import DEFAULT_HARDWARE, DEFAULT_MODEL, PlanOptions
from planner.specs.plan import (
    GpusNeeded,
    KVTransferReport,
    Parallel,
    Plan,
    PoolReport,
    RateSizing,
    ServingReport,
    SplitReport,
)
from planner.specs.search import LaunchArgs
from planner.specs.workload import DEFAULT_OUTPUT_LEN

__all__ = ["SERVE_UNUSED", "disaggregation_flags", "plan_serving"]

#: Options of ``plan`` that do not apply to ``--mode serve`` (each pool's degrees and batch are
#: searched); a value other than the default is an error naming it.
SERVE_UNUSED = ("ep", "tp", "pp", "dp", "etp", "vpp", "micro_batch", "cp", "recompute", "batch", "global_batch",
                "latency_target_ms", "previous", "gpu_memory_gb", "distributed_optimizer", "tokens_per_step")

#: SGLang PD flags (python/sglang/srt/server_args.py: ``--disaggregation-mode null|prefill|decode``,
#: ``--disaggregation-transfer-backend`` (default mooncake), ``--moe-a2a-backend deepep``,
#: ``--deepep-mode auto|normal|low_latency``, ``--max-prefill-tokens``, ``--max-running-requests``)
#: ``--enable-two-batch-overlap`` where the pool's step is priced with it (planner.cost.serve_step)
#: and vLLM's (``--kv-transfer-config`` with the NIXL connector, both roles on each instance;
#: vLLM docs "Disaggregated Prefilling", NixlConnector usage).
VLLM_KV_TRANSFER = '{"kv_connector":"NixlConnector","kv_role":"kv_both"}'


def disaggregation_flags(role: str, pool: Plan, prefill_tokens: int, two_batch_overlap: bool = False) -> LaunchArgs:
    """The pool's launch arguments (:func:`planner.exports.launch.launch_args`, already in its
    plan) with the disaggregation flags of its role, and SGLang's ``--enable-two-batch-overlap``
    when the pool's figures assume it; a flag the builder already wrote is kept."""
    la = pool.launch or LaunchArgs()
    sg = list(la.sglang or [])
    extra = ["--disaggregation-mode", role, "--disaggregation-transfer-backend", "mooncake"]
    # the all-to-all backend follows the plan's dispatch (planner.exports.sglang); under DeepEP each
    # pool gets its kernels: normal for prefill, low-latency for decode (SGLang's large-scale EP runs)
    if "--moe-a2a-backend" in sg and sg[sg.index("--moe-a2a-backend") + 1] == "deepep":
        extra += ["--deepep-mode", "normal" if role == "prefill" else "low_latency"]
    if role == "prefill":
        extra += ["--max-prefill-tokens", str(prefill_tokens * pool.parallel.tp)]
    else:
        extra += ["--max-running-requests", str(pool.workload.batch)]
    for i in range(0, len(extra), 2):
        if extra[i] not in sg:
            sg += extra[i:i + 2]
    if two_batch_overlap and "--enable-two-batch-overlap" not in sg:
        sg.append("--enable-two-batch-overlap")
    vl = list(la.vllm or [])
    if "--kv-transfer-config" not in vl:
        vl += ["--kv-transfer-config", VLLM_KV_TRANSFER]
    return LaunchArgs(megatron=la.megatron, vllm=vl, sglang=sg)


def _report(f: PoolFigures, units: int, cluster: ClusterSpec, launch: LaunchArgs | None = None) -> PoolReport:
    c = f.candidate
    nodes = units if cluster.num_nodes > 1 else 1
    par = Parallel(dp=c.dp, tp=c.tp, pp=c.pp, ep=c.ep, etp=c.etp) if c is not None else None
    return PoolReport(
        role=f.role, nodes=nodes, gpus=f.gpus, parallel=par, batch=c.sequences if c is not None and c.sequences else None,
        step_ms=f.step_ms or None, ttft_ms=f.ttft_ms, tpot_ms=f.tpot_ms, capacity_rps=f.capacity_rps,
        goodput_rps=f.goodput_rps, utilization=min(1.0, f.utilization), memory_gib=memory_gib(c), binding=f.binding,
        reason=f.reason, detail={k: float(v) for k, v in f.detail.items()}, launch=launch,
    )


def _fail(what: str, f: PoolFigures) -> str:
    return f"the {what} pool ({f.gpus} GPUs): {f.reason}" if f.reason else f"the {what} pool ({f.gpus} GPUs) meets no target"


def _sizes(units: int, *keep: int) -> list[int]:
    """Pool sizes tried for a request rate: powers of two up to ``units``, ``units`` and ``keep``."""
    out = {units, *keep}
    u = 1
    while u < units:
        out.add(u)
        u *= 2
    return sorted(x for x in out if x >= 1)


def _gpus_needed(table: PoolTable, rate: float, p_units: int, d_units: int) -> GpusNeeded:
    units = units_of(table.cluster)
    stage("sizing for the request rate")
    sizes = _sizes(units, p_units, d_units)

    def sizing(role: str) -> RateSizing | None:
        got = units_for_rate(table, role, rate, sizes)
        return RateSizing(units=got[0], copies=got[1], gpus=got[2]) if got else None

    p, d, c = sizing("prefill"), sizing("decode"), sizing("colocated")
    return GpusNeeded(request_rate=rate, prefill=p, decode=d, disaggregated_gpus=p.gpus + d.gpus if p and d else None,
                      colocated=c)


def _notes(t: ServeTargets, copy: KVCopy, output_src: str) -> list[str]:
    out = [
        f"serving lengths: prompt {t.prompt_len}, output {t.output_len} ({output_src})",
        f"prefill steps hold max(1, {t.prefill_tokens} // prompt) prompts per GPU or fewer (the best for goodput); "
        "time to first token = step × M/D/1 queue factor at the pool's utilisation + the KV copy",
        f"KV copy: {copy.bytes_per_request / 1e6:.1f} MB per request over one GPU's "
        f"{'NVLink (both pools on one node)' if copy.link == 'nvlink' else 'inter-node NIC'} "
        f"({copy.bandwidth_gbps:g} GB/s) in {copy.ms_per_request:.2f} ms",
        "colocated: each step runs the decode batch and, in a share f of steps, a prefill chunk; a chunk step costs "
        "decode + chunk − one near-empty step (weights read once); mean TPOT = decode + f × (chunk step − decode); "
        "the best chunk size of 512-16384 tokens per GPU is kept",
        f"two-batch overlap ({t.two_batch_overlap}): "
        + ("each pool's step priced with and without it, the faster kept" if t.two_batch_overlap == "auto" else
           "forced " + t.two_batch_overlap) + "; SGLang --enable-two-batch-overlap where kept",
        ("routing imbalance: each pool's step priced at its busiest GPU under EPLB with "
         f"{t.redundant} redundant experts, derived from {'the given' if t.trace is not None else 'the model'}'s "
         "routing at the step's tokens per GPU (placement fitted on half the sequences, steps from the other half)"
         if t.routing == "eplb" else "routing imbalance: uniform routing (every GPU at the mean load)"),
        "decode pools run with every slot busy (admission waits not modelled); without a TTFT target utilisation "
        f"is capped at {MAX_UTILIZATION:.0%}",
    ]
    return out


def plan_serving(
    model: str | ModelSpec = DEFAULT_MODEL,
    hardware: str | HardwareProfile = DEFAULT_HARDWARE,
    *,
    nodes: int = 1,
    gpus_per_node: int = 8,
    seq_len: int = 4096,
    prompt_len: int | None = None,
    output_len: int | None = None,
    request_rate: float | None = None,
    ttft_ms: float | None = None,
    tpot_ms: float | None = None,
    kv_dtype: str = "bf16",
    redundant_experts: int = 0,
    prefill_nodes: int | None = None,
    decode_nodes: int | None = None,
    prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    trace: str | Path | Any = None,
    time_limit: float = 60.0,
    seed: int = 0,
    dispatch: str = "even",
    expert_kernel: str = "loop",
    train_fraction: float = 0.75,
    cross_node: bool = False,
    baseline: str | None = None,
    placement_workers: int = 0,
    two_batch_overlap: str | None = None,
    routing: str | None = None,
    prefill_budget: str = "engine",
    **unused: Any,
) -> Plan:
    """Plan a prefill pool and a decode pool on ``nodes × gpus_per_node`` GPUs (module docstring).

    ``baseline`` places both pools' experts with that baseline instead of the solver.
    ``prefill_nodes`` / ``decode_nodes`` fix the split (GPUs when ``nodes`` is 1); otherwise every
    split is compared and the one with the highest goodput kept. ``prefill_tokens``: prefill
    tokens per GPU in one step. ``two_batch_overlap``: ``auto`` prices each pool with SGLang's
    two-batch overlap and without and keeps the faster (the launch line asks for it where kept),
    ``on`` / ``off`` force it (omitted: ``auto``). ``routing`` (omitted: ``eplb``): ``eplb`` prices each pool's step at its busiest GPU,
    the imbalance derived from routing (``trace``, else the model's) at the step's tokens per GPU
    with EPLB and ``redundant_experts`` (:mod:`planner.solve.serve_imbalance`); ``uniform`` at the mean.
    ``prefill_budget``: how the prefill pool's steps are formed from the trace's requests
    (:class:`~planner.specs.workload.Workload`). Keywords of :data:`SERVE_UNUSED` given a value are an
    :class:`InputError`; :class:`InfeasibleError` when no split serves a request within the targets.
    """
    for k, v in unused.items():
        if k not in PlanOptions.model_fields:
            raise InputError(f"unknown option {k!r} for mode serve", field=k)
        if v != PlanOptions.model_fields[k].default:
            why = "each pool's degrees and batch are searched" if k in SERVE_UNUSED else "it has no effect on serving pools"
            raise InputError(f"{k} does not apply to mode serve: {why}", field=k)
    if nodes <= 0 or gpus_per_node <= 0:
        name = "nodes" if nodes <= 0 else "gpus_per_node"
        raise InputError(f"{name} must be > 0", field=name)
    if kv_dtype not in ("bf16", "fp8"):
        raise InputError(f"kv_dtype must be bf16 or fp8 (got {kv_dtype!r})", field="kv_dtype")
    m, hw = resolve_model(model), resolve_hardware(hardware)
    cluster = ClusterSpec(hardware=hw.name, num_nodes=nodes, gpus_per_node=gpus_per_node)
    if units_of(cluster) < 2:
        raise InputError("gpus_per_node: mode serve needs at least two GPUs (one per pool)", field="gpus_per_node")
    out_src = "stated" if output_len is not None else "default"
    routed = resolve_trace(trace, m, seed)[0] if trace is not None else None
    t = ServeTargets(prompt_len=prompt_len or seq_len, output_len=output_len or DEFAULT_OUTPUT_LEN, ttft_ms=ttft_ms,
                     tpot_ms=tpot_ms, kv_dtype=kv_dtype, redundant=redundant_experts, prefill_tokens=prefill_tokens,
                     request_rate=request_rate, two_batch_overlap=two_batch_overlap or "auto", routing=routing or "eplb",
                     trace=routed)
    t.check()
    copy = kv_copy(m, hw, t.prompt_len, kv_dtype, same_node=cluster.num_nodes == 1)
    table = PoolTable(m, hw, cluster, t, copy)
    stage("pool sizes: every split of the cluster")
    split, splits = best_split(table, prefill_nodes, decode_nodes)
    pf, df = table.get("prefill", split.prefill_units), table.get("decode", split.decode_units)
    if split.goodput_rps <= 0:
        bad = [_fail("prefill", pf)] if pf.goodput_rps <= 0 else []
        bad += [_fail("decode", df)] if df.goodput_rps <= 0 else []
        raise InfeasibleError(
            f"no split of {units_of(cluster)} {'nodes' if nodes > 1 else 'GPUs'} serves a request within the targets "
            f"(best: {split.prefill_units} prefill + {split.decode_units} decode); " + "; ".join(bad),
            mentions=("ttft_ms", "tpot_ms", "prompt_len", "prefill_nodes", "decode_nodes"))
    stage("colocated deployment of the same GPUs")
    cf = table.get("colocated", units_of(cluster))
    common = dict(trace=trace, time_limit=time_limit, seed=seed, dispatch=dispatch, expert_kernel=expert_kernel,
                  train_fraction=train_fraction, redundant_experts=redundant_experts, kv_dtype=kv_dtype,
                  prompt_len=t.prompt_len, cross_node=cross_node, baseline=baseline,
                  placement_workers=placement_workers, prefill_budget=prefill_budget)
    plans = {}
    for role, f, units in (("prefill", pf, split.prefill_units), ("decode", df, split.decode_units)):
        stage(f"{role} pool: placement and scoring")
        c, pc = f.candidate, pool_cluster(units, cluster)
        assert c is not None
        extra = {"output_len": t.output_len} if role == "decode" else {}
        p = plan_pool(m, hw, nodes=pc.num_nodes, gpus_per_node=pc.gpus_per_node, mode=role, tp=c.tp, pp=c.pp, dp=c.dp,
                      ep=c.ep, etp=c.etp, batch=c.sequences, **common, **extra)
        tbo = bool(f.detail.get("two_batch_overlap"))
        plans[role] = p.model_copy(update={"launch": disaggregation_flags(role, p, t.prefill_tokens, tbo)})
    kv_max = copy.max_rps(min(pf.gpus, df.gpus))
    report = ServingReport(
        cluster=cluster, prompt_len=t.prompt_len, output_len=t.output_len, ttft_target_ms=ttft_ms,
        tpot_target_ms=tpot_ms, prefill_tokens=prefill_tokens,
        prefill=_report(pf, split.prefill_units, cluster, plans["prefill"].launch),
        decode=_report(df, split.decode_units, cluster, plans["decode"].launch),
        colocated=_report(cf, units_of(cluster), cluster),
        kv_transfer=KVTransferReport(
            bytes_per_token=copy.bytes_per_token, bytes_per_request=copy.bytes_per_request, link=copy.link,
            bandwidth_gbps=copy.bandwidth_gbps, ms_per_request=copy.ms_per_request, max_rps=kv_max,
            utilization=split.goodput_rps / kv_max if kv_max else 0.0),
        goodput_rps=split.goodput_rps, binding=split.binding,
        splits=[SplitReport(prefill_units=s.prefill_units, decode_units=s.decode_units, goodput_rps=s.goodput_rps,
                            binding=s.binding) for s in splits],
        gpus_needed=_gpus_needed(table, request_rate, split.prefill_units, split.decode_units) if request_rate else None,
        prefill_plan=plans["prefill"], notes=_notes(t, copy, out_src),
    )
    dec = plans["decode"]
    digest = input_hash({"decode": dec.provenance.input_hash, "prefill": plans["prefill"].provenance.input_hash,
                         "serve": json.loads(json.dumps(
                             {"cluster": cluster.model_dump(mode="json"),
                              "targets": {k: v for k, v in t.__dict__.items() if k != "trace"},
                              "prefill_nodes": prefill_nodes, "decode_nodes": decode_nodes}, default=str))}, [])
    prov = dec.provenance.model_copy(update={"input_hash": digest})
    return dec.model_copy(update={"serving": report, "provenance": prov})
