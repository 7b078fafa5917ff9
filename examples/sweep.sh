#!/usr/bin/env bash
# A what-if sweep (examples/sweep.yaml): Mixtral-8x7B on 1, 2 or 4 H100 nodes, with and without
# redundant experts, the planner against the EPLB baseline. Writes OUT/results.csv and the PNG
# plots (step time and throughput against GPUs, the Pareto front, ...); a second run keeps the
# finished rows and plans nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-sweep-out}
moe-planner sweep "$here/sweep.yaml" --out "$out" --jobs 2
moe-planner sweep "$here/sweep.yaml" --out "$out" --quiet
ls "$out"
