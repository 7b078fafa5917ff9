#!/usr/bin/env bash
# Plan from the command line: check inputs, plan the embedded default, plan Mixtral with an
# EPLB baseline into out/, then summarise a synthetic trace.
set -euo pipefail
out=${1:-$(mktemp -d)}
moe-planner plan --model mixtral-8x7b --nodes 2 --dry-run
moe-planner plan
moe-planner plan --model mixtral-8x7b --baseline eplb --redundant-experts 8 --out "$out" --force
moe-planner trace synth --model olmoe-1b-7b --tokens 2048 --out "$out/olmoe.npz" --force
moe-planner trace stats "$out/olmoe.npz" | head -5
