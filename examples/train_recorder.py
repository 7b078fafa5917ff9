"""Record routing while a small torch MoE model trains on the CPU, and re-place its experts with
``planner.rebalance`` every 10 steps as the routing shifts; then plan from the recorded trace.

The model (``tiny_moe.TinyMoELM``: 4 Mixtral-shaped MoE layers of 16 experts, top-2) has the
layers, experts and top-k of ``examples/tiny-moe.yaml``, the spec the planner plans for at the
end from the recorded routing. It learns to predict the next token of counting sequences over
the whole vocabulary; half-way through, the data narrows to a cycle of 8 tokens, the routers
send most tokens to a few experts, and the placement in service no longer balances the GPUs.
The recorder re-places the experts every 10 steps (``migration_weight``: a layer moves only
when that lowers its busiest GPU by more than 20 tokens per expert copy moved).

    python examples/train_recorder.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_moe import TinyMoELM  # noqa: E402

import planner  # noqa: E402
from planner.solve.rebalance import gpu_loads, moved_copies  # noqa: E402

HERE = Path(__file__).resolve().parent
GPUS, REDUNDANT, EVERY, STEPS, VOCAB = 4, 4, 10, 40, 256


def batch(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences counting up by 1 from a random start: mod 256 in the first half of training,
    mod 8 in the second (the routing shifts)."""
    period = VOCAB if step < STEPS // 2 else 8
    start = torch.randint(0, period, (8, 1), generator=gen)
    seq = (start + torch.arange(17)) % period
    return seq[:, :-1], seq[:, 1:]


def imbalance(counts_LE: np.ndarray, phy2log_LP: np.ndarray) -> float:
    """Mean over layers of max/mean GPU load when each expert's tokens split over its replicas."""
    loads = gpu_loads(counts_LE.astype(float), phy2log_LP, GPUS)
    return float((loads.max(axis=1) / loads.mean(axis=1)).mean())


def main(out_dir: str | None = None) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    layers, experts = 4, 16
    model = TinyMoELM(vocab=VOCAB, d=64, f=64, num_experts=experts, top_k=2, layers=layers)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    # in service before any routing is known: EPLB's placement for uniform counts
    served = {"placement": planner.rebalance(np.ones((layers, experts)), GPUS, 1, REDUNDANT)}

    def on_rebalance(placement: np.ndarray, counts: np.ndarray, step: int) -> None:
        before, after = imbalance(counts, served["placement"]), imbalance(counts, placement)
        moved = int(moved_copies(placement, served["placement"], (experts + REDUNDANT) // GPUS).sum())
        what = f"{after:.3f} re-placed ({moved} expert copies moved)" if moved else "kept (moving would not pay)"
        print(f"step {step:2d}: imbalance over the last {EVERY} steps {before:.3f} with the placement in service; {what}")
        served["placement"] = placement

    rec = planner.RoutingRecorder(
        model, rebalance_every=EVERY, num_gpus=GPUS, num_redundant=REDUNDANT, migration_weight=20.0,
        on_rebalance=on_rebalance, model_name="tiny-moe",
    )
    for step in range(STEPS):
        x, y = batch(step, gen)
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % EVERY == EVERY - 1:
            print(f"step {step + 1:2d}: loss {loss.item():.3f}")
    rec.detach()

    out = Path(out_dir or tempfile.mkdtemp())
    path = rec.save(out / "train-trace.npz")
    trace = planner.load_trace(path)
    print(f"saved {path}: {trace.num_layers} MoE layers, {trace.num_tokens} tokens, {trace.num_steps} steps")
    plan = planner.plan(str(HERE / "tiny-moe.yaml"), "h100-sxm", ep=GPUS, gpus_per_node=GPUS,
                        redundant_experts=REDUNDANT, trace=trace, time_limit=5)
    pr = plan.predicted
    print(f"plan from the recorded trace: ep {plan.parallel.ep}, {plan.placement.slots_per_gpu} slots per GPU, "
          f"held-out imbalance {pr.imbalance:.3f}, MoE time per step {pr.moe_time_per_step_ms:.3f} ms")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
