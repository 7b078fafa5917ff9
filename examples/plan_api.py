"""Plan from Python: a baseline EPLB placement with redundant experts for DeepSeek-V2-Lite on
two 8-GPU H100 nodes, scored on held-out steps of the shipped trace, then saved and reloaded.

    python examples/plan_api.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import planner


def main(out_dir: str | None = None) -> None:
    p = planner.plan("deepseek-v2-lite", "h100-sxm", nodes=2, gpus_per_node=8, ep=16,
                     baseline="eplb", redundant_experts=16)
    pr = p.predicted
    print(f"{p.model.name}: ep {p.parallel.ep}, {p.placement.slots_per_gpu} slots per GPU")
    print(f"held-out MoE time per step {pr.moe_time_per_step_ms:.3f} ms, imbalance {pr.imbalance:.3f}")
    print(f"layer 0, GPU 0 holds experts {p.placement.physical_to_logical[0][: p.placement.slots_per_gpu]}")
    out = Path(out_dir or tempfile.mkdtemp()) / "plan.json"
    p.save(out)
    assert planner.Plan.load(out) == p
    print(f"saved {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
