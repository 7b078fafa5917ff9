"""Text of the validation reports (``moe-planner validate``): the library returns dicts (the
``--json`` output), this module renders them for the terminal."""

from __future__ import annotations

from typing import Any


def render_validation(report: dict[str, Any], max_rows: int = 12) -> str:
    """Human-readable summary of :func:`planner.validate.validate`'s report."""
    if report.get("mode") == "offload":
        return render_offload(report)
    pl, ev, dev = report["plan"], report["evaluated"], report["device"]
    bks = list(report["backends"])
    lines = [
        f"moe-planner validate: {pl['model']} ({pl['hardware']} plan, ep {pl['parallel']['ep']}, "
        f"{pl['slots_per_gpu']} slots per rank) on {dev['device']}",
        f"  evaluated  {ev['which']}; steps {ev['steps']}, {len(ev['layers'])} layer(s), "
        f"{ev['pairs_measured']}/{ev['pairs_planned']} (step, layer) pairs measured",
        f"  backends   {', '.join(f'{b} ({v})' for b, v in report['backends'].items())}",
        "",
        "  straggler per (step, layer), ms: predicted | " + " | ".join(f"measured {b} (err %)" for b in bks),
    ]
    for r in report["straggler"][:max_rows]:
        cells = " | ".join(
            f"{r['measured_ms'][b]:.4f} ({_fmt_pct(r['error_pct'][b])})" for b in bks
        )
        lines.append(f"  step {r['step']:>4} layer {r['layer']:>3}: {r['predicted_ms']:.4f} | {cells}")
    if len(report["straggler"]) > max_rows:
        lines.append(f"  ... {len(report['straggler']) - max_rows} more (see --json / --out)")
    lines.append("")
    for b in bks:
        sm = report["summary"][b]
        lines.append(
            f"  {b:>7}: MAPE ranks {_fmt_pct(sm['ranks']['mape_pct'], signed=False)} (n {sm['ranks']['n']}), "
            f"straggler {_fmt_pct(sm['straggler']['mape_pct'], signed=False)} (n {sm['straggler']['n']}); "
            f"summed stragglers predicted {sm['sum']['predicted_ms']:.3f} ms vs measured "
            f"{sm['sum']['measured_ms']:.3f} ms ({_fmt_pct(sm['sum']['error_pct'])})"
        )
    for c in report["checks"]:
        lines.append(f"  check {c['backend']}: rel err vs float64 {c['rel_err_vs_float64']:.2e} at {c['rows']} rows")
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _fmt_pct(v: float | None, signed: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.1f}%" if signed else f"{v:.1f}%"


def render_offload(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`planner.offload_validate.validate_offload`'s report."""
    pl, ev, p, x, e = report["plan"], report["evaluated"], report["predicted"], report["measured"], report["error_pct"]

    lines = [
        f"moe-planner validate (offload): {pl['model']} ({pl['hardware']}, {pl['gpu_memory_gb']} GB, batch {pl['decode_batch']})"
        f" on {report['device']['device']} ({report['device']['clock']} clock)",
        f"  evaluated  {ev['which']} ({ev['trace']})",
        f"  tokens/s   predicted {p['tokens_per_s']:.2f}, measured {x['tokens_per_s']:.2f} ({_fmt_pct(e['tokens_per_s'])})",
        f"  hit rate   predicted {100 * p['hit_rate']:.1f}%, measured {100 * x['hit_rate']:.1f}% ({_fmt_pct(e['hit_rate'])})",
        f"  copies     {x['transfers']} ({x['demand']} on demand, {x['prefetch']} prefetched, {x['prefetch_used']} used),"
        f" {x['cpu']} run on the CPU; peak expert buffers {report['expert_buffers']['peak']}"
        f" of {report['expert_buffers']['plan_slots']} planned",
    ]
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def _fmt(v: float | None) -> str:
    return "not computed (layer too large to copy to the CPU in float64)" if v is None else f"{v:.3g}"


def render_distributed(report: dict[str, Any]) -> str:
    """Human-readable summary of :func:`planner.validate_dist.validate_distributed`'s report."""
    pl = report["plan"]
    lines = [
        f"moe-planner validate --world-size {report['world_size']}: {pl['model']} (ep {pl['parallel']['ep']}, "
        f"{pl['slots_per_gpu']} slots per rank, dispatch {pl['dispatch']}) on {report['device']['device']}, "
        f"{report['dist_backend']}, {report['dtype']}",
        f"  evaluated  {report['evaluated']['which']}",
        f"  all-to-all {report['all_to_all']}",
        f"  max_abs_err {report['max_abs_err']:.3g} (tolerance {report['tolerance']:g}): "
        f"{'PASS' if report['passed'] else 'FAIL'}; vs float64 {_fmt(report['max_abs_err_vs_float64'])}; "
        f"rows received match the plan's dispatch: {report['rows_match_dispatch']}",
        "",
        "  rank | dispatch ms | compute ms (predicted) | combine ms | shared ms | total ms",
    ]
    for r in report["per_rank"]:
        lines.append(
            f"  {r['rank']:>4} | {r['dispatch_ms']:11.3f} | {r['compute_ms']:10.3f} ({r['predicted_compute_ms']:.3f}) | "
            f"{r['combine_ms']:10.3f} | {r['shared_ms']:9.3f} | {r['total_ms']:8.3f}"
        )
    lines += [f"  note: {n}" for n in report["notes"]]
    return "\n".join(lines)
