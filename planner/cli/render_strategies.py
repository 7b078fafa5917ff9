"""Text for ``moe-planner plan --mode train --strategies``: the training strategies priced as
what-ifs beside the search's Megatron layout (:mod:`planner.solve.strategies`)."""

from __future__ import annotations

from planner.solve.strategies import StrategyRow


def render_strategies(rows: list[StrategyRow]) -> list[str]:
    """A table of the what-if rows, then each strategy's assumptions once."""
    lines = ["", "  training strategies (what-if on the chosen layout; docs/strategies.md):",
             f"    {'strategy':32} {'layout':44} {'ms/step':>10} {'TFLOP/s/GPU':>12} {'GiB/GPU':>8}  fits"]
    for r in rows:
        lines.append(f"    {r.label:32} {r.layout:44} {r.step_ms:>10.1f} {r.tflops_per_gpu:>12.0f} "
                     f"{r.memory_gib:>8.1f}  {'yes' if r.fits else 'no'}")
    seen: set[str] = set()
    for r in rows:
        if r.strategy in seen:
            continue
        seen.add(r.strategy)
        lines.append(f"    {r.strategy}: " + "; ".join(a for a in r.assumptions if not a.startswith("ZeRO-")))
    return lines
