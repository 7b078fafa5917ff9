"""Regenerate the shipped synthetic routing traces (planner/data/traces/*.npz).

    python tools/make_default_traces.py            # writes planner/data/traces/
    python tools/make_default_traces.py --out DIR

Each trace is ``synth_trace`` at the model's calibrated default structure parameters
(``planner/data/synth_defaults.json``, fitted by ``tools/calibrate_synth.py``): 16 steps × 512
tokens over 8 data-parallel ranks, seed 0, without gate weights (ids in router order), with the
tokens' sequences (``seq_id`` / ``pos``: a workload forms its own steps from them): 512 requests
of 16 tokens each (``seq_len`` 16, ``seq_len_spread`` 0 instead of the calibrated prompt lengths,
median 25 with a long tail, so that the default decode workload, 256 concurrent sequences, forms
32 full steps from 8,192 tokens; the calibrated lengths would give ~100 requests and steps that
dwindle to one token). Equivalent CLI, per model:

    moe-planner trace synth --model qwen3-30b-a3b --tokens 8192 --tokens-per-step 512 \\
        --ranks 8 --seed 0 --no-weights --seq-len 16 --seq-len-spread 0 \\
        --out planner/data/traces/qwen3-30b-a3b.npz --force

(``--seq-len`` / ``--seq-len-spread``: requested of ``trace synth``.)

The shipped files were written at commit 8b1d48a. The generator's faster latent arithmetic
(2026-12-03) rounds differently in the last bits, which flips a handful of sampled ids (3 of
3.1M for qwen3-30b-a3b, 2 of 1.3M for deepseek-v2-lite, none for mixtral-8x7b): the files were
kept rather than rewritten for that; ``tests/traces/test_shipped_traces.py`` checks that the
generator still makes them up to such flips.

``qwen3-30b-a3b`` (48 MoE layers, 128 experts, top-8) is the embedded default of
``moe-planner plan``; ``mixtral-8x7b`` (32 layers, 8 experts, top-2) and ``deepseek-v2-lite``
(26 MoE layers, 64 experts, top-6) are smaller companions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

from planner.specs.model_io import load_model  # noqa: E402
from planner.traces import save_trace, synth_trace  # noqa: E402

TRACES = ROOT / "planner" / "data" / "traces"
MODELS = ("qwen3-30b-a3b", "mixtral-8x7b", "deepseek-v2-lite")
STEPS, TOKENS_PER_STEP, RANKS, SEED = 16, 512, 8, 0
SEQ_LEN = 16  # tokens per request (no spread): 512 requests


def default_trace(name: str):
    """The shipped trace of preset ``name`` as the generator makes it now."""
    return synth_trace(
        load_model(name),
        num_tokens=STEPS * TOKENS_PER_STEP,
        tokens_per_step=TOKENS_PER_STEP,
        num_ranks=RANKS,
        weights=False,
        seed=SEED,
        seq_len=SEQ_LEN,
        seq_len_spread=0.0,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=TRACES, help="output folder (default: planner/data/traces)")
    args = ap.parse_args(argv)
    for name in MODELS:
        tr = default_trace(name)
        path = args.out / f"{name}.npz"
        save_trace(tr, path)
        path.chmod(0o644)  # atomic writes create 0600 temporaries; shipped data is world-readable
        print(f"{path}: {tr.num_layers} layers × {tr.num_tokens} tokens × top-{tr.top_k}, {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
