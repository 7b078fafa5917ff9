#!/usr/bin/env bash
# A validation run on the CPU: plan a tiny MoE model (examples/tiny-moe.yaml) on one 8-GPU H100
# node, then execute the expert FFNs each EP rank would run (the project's real MoE layer, torch)
# and compare with the prediction. On a CPU the errors check the pipeline, not the cost model
# (the prediction is for an H100): run it with --device cuda on the GPU the plan is for.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$(mktemp -d)}
moe-planner plan --model "$here/tiny-moe.yaml" --ep 8 --baseline eplb --out "$out" --force
moe-planner validate --plan "$out/plan.json" --device cpu --steps 1 --layers 2 --max-tokens 64 \
  --warmup 1 --reps 3 --runs 1 --out "$out/validation.json" --force
