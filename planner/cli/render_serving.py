"""Text for ``moe-planner plan --mode serve``: both pools, the KV copy, the colocated comparison,
the GPUs a request rate needs and each pool's launch lines (reads only ``plan.serving``)."""

from __future__ import annotations

import shlex

from planner.specs.plan import Plan, PoolReport

_CMDS = (("sglang", "python -m sglang.launch_server --model-path MODEL"), ("vllm", "vllm serve MODEL"))


def _pool_line(r: PoolReport) -> str:
    if r.parallel is None:
        return f"  {r.role:10} {r.gpus} GPUs: nothing fits — {r.reason}"
    par = r.parallel
    lat = []
    if r.ttft_ms is not None:
        lat.append(f"TTFT {r.ttft_ms:,.1f} ms")
    if r.tpot_ms is not None:
        lat.append(f"TPOT {r.tpot_ms:.2f} ms")
    what = "prompts/step" if r.role == "prefill" else "in flight"
    return (
        f"  {r.role:10} {r.nodes} node(s), {r.gpus} GPUs: dp {par.dp} tp {par.tp} pp {par.pp} ep {par.ep} etp {par.etp}, "
        f"batch {r.batch} {what}, step {r.step_ms or 0:,.1f} ms"
        f"{' (two-batch overlap)' if r.detail.get('two_batch_overlap') else ''}{_imbalance(r)}; "
        f"{', '.join(lat) or 'no latency figure'}; "
        f"capacity {r.capacity_rps:,.2f} req/s, goodput {r.goodput_rps:,.2f} req/s ({r.binding or '-'} binds), "
        f"{r.memory_gib:.1f} GiB/GPU" + (f"; {r.reason}" if r.reason else "")
    )


def _imbalance(r: object) -> str:
    """The routing imbalance the pool's step is priced at (busiest GPU over the mean), when not 1."""
    d = r.detail  # type: ignore[attr-defined]
    fe, fa = d.get("imbalance_experts", 1.0), d.get("imbalance_alltoall", 1.0)
    return "" if fe == fa == 1.0 else f", busiest GPU {fe:.2f}× the mean expert tokens, {fa:.2f}× the dispatch"


def render_serving(plan: Plan) -> list[str]:
    """Lines for the ``serving`` section (empty without one)."""
    s = plan.serving
    if s is None:
        return []
    c = s.cluster
    tg = ", ".join(x for x in (f"TTFT ≤ {s.ttft_target_ms:g} ms" if s.ttft_target_ms else "",
                               f"TPOT ≤ {s.tpot_target_ms:g} ms" if s.tpot_target_ms else "") if x) or "no latency target"
    kv = s.kv_transfer
    lines = [
        "",
        f"  disaggregated serving on {c.num_nodes} × {c.gpus_per_node} {c.hardware}: prompt {s.prompt_len}, "
        f"output {s.output_len} tokens; {tg}",
        _pool_line(s.prefill),
        _pool_line(s.decode),
        f"  KV copy    {kv.bytes_per_request / 1e6:,.1f} MB per request ({kv.bytes_per_token:,.0f} B/token) over the "
        f"{'NVLink' if kv.link == 'nvlink' else 'inter-node NIC'} ({kv.bandwidth_gbps:g} GB/s per GPU): {kv.ms_per_request:.2f} ms; the pools' links carry "
        f"{kv.max_rps:,.0f} req/s ({kv.utilization:.0%} used)",
        f"  goodput    disaggregated {s.goodput_rps:,.2f} req/s ({s.binding} binds)",
        _pool_line(s.colocated),
    ]
    if s.colocated.goodput_rps > 0:
        lines.append(f"  ratio      disaggregated / colocated goodput: {s.goodput_rps / s.colocated.goodput_rps:.2f}×")
    if len(s.splits) > 1:
        shown = ", ".join(f"{x.prefill_units}+{x.decode_units}: {x.goodput_rps:,.1f}" for x in s.splits)
        lines.append(f"  splits     prefill+decode {'nodes' if c.num_nodes > 1 else 'GPUs'} → req/s: {shown}")
    g = s.gpus_needed
    if g is not None:
        def sz(r: object, what: str) -> str:
            return "no pool size meets the targets" if r is None else (
                f"{r.copies} × {r.units} {what} = {r.gpus} GPUs")  # type: ignore[attr-defined]
        unit = "node(s)" if c.num_nodes > 1 else "GPU(s)"
        lines.append(
            f"  for {g.request_rate:g} req/s: disaggregated {g.disaggregated_gpus if g.disaggregated_gpus else '-'} GPUs "
            f"(prefill {sz(g.prefill, unit)}, decode {sz(g.decode, unit)}); colocated {sz(g.colocated, unit)}"
        )
    for role, r in (("prefill", s.prefill), ("decode", s.decode)):
        if r.launch is None:
            continue
        for name, cmd in _CMDS:
            argv = getattr(r.launch, name)
            if argv:
                lines.append(f"  {role} {name}: {cmd} {shlex.join(argv)}")
    if s.prefill.launch is not None and s.prefill.launch.sglang:
        lines.append("  sglang router: python -m sglang_router.launch_router --pd-disaggregation "
                     "--prefill http://PREFILL_HOST:30000 8998 --decode http://DECODE_HOST:30000")
    lines += [f"  note: {n}" for n in s.notes]
    return lines
