#!/usr/bin/env bash
# Validation run behind benchmarks/validation/h100-*.json: plan three models on one 8-GPU H100
# node, then execute every EP rank's expert FFN on this machine's GPU (moe-planner validate).
# From the repository root, on a machine with one CUDA GPU and moe-planner + torch installed:
#
#     OUT=out BUDGET_S=70 bash benchmarks/validation/run_h100.sh
#
# BUDGET_S caps the measuring time per model (a spread sample of (step, layer) pairs is kept
# when it runs out; each report says how many ran). STEPS: held-out steps considered (all 4).
set -euo pipefail
OUT=${OUT:-out}
BUDGET_S=${BUDGET_S:-70}
STEPS=${STEPS:-4}
mkdir -p "$OUT"
PLANS=$(mktemp -d)
MP="moe-planner"
command -v moe-planner >/dev/null || MP="python3 -m planner"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv || true
for model in qwen3-30b-a3b deepseek-v2-lite mixtral-8x7b; do
  if [ "$model" = qwen3-30b-a3b ]; then
    $MP plan --out "$PLANS/$model" >/dev/null  # the embedded default: qwen3-30b-a3b on 8 H100s
  else
    $MP plan --model "$model" --out "$PLANS/$model" >/dev/null
  fi
  $MP validate --plan "$PLANS/$model/plan.json" --device cuda --steps "$STEPS" \
    --backend auto --backend loop --budget-s "$BUDGET_S" --out "$OUT/h100-$model.json" --force
done
