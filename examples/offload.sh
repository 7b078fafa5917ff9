#!/usr/bin/env bash
# Offloaded decoding (one GPU, experts in pinned host memory): plan DeepSeek-V2-Lite on one H100
# with a 10 GB budget, replay a trace through the plan, draw the sizing curve (hit rate and
# tokens/s against GPU memory), and run the offloaded stack on the CPU (simulated transfer clock).
set -euo pipefail
out=${1:-$(mktemp -d)}
moe-planner trace synth --model deepseek-v2-lite --tokens 512 --tokens-per-step 256 --ranks 8 --no-weights \
    --out "$out/ds.npz" --force
moe-planner plan --mode offload --model deepseek-v2-lite --gpu-memory-gb 10 --trace "$out/ds.npz" --out "$out" --force
moe-planner check --plan "$out/plan.json"
moe-planner simulate --plan "$out/plan.json" --trace "$out/ds.npz"
moe-planner offload-curve --model deepseek-v2-lite --trace "$out/ds.npz" --budgets 3,10,30 --out "$out" --force
moe-planner validate --plan "$out/plan.json" --trace "$out/ds.npz" --device cpu --steps 32 --layers 4
