#!/usr/bin/env bash
# Plan from the command line: check inputs, plan the embedded default, plan Mixtral with an
# EPLB baseline into out/, export it for SGLang, then summarise a synthetic trace.
set -euo pipefail
out=${1:-$(mktemp -d)}
moe-planner plan --model mixtral-8x7b --nodes 2 --dry-run
moe-planner plan
moe-planner plan --model mixtral-8x7b --baseline eplb --redundant-experts 8 --out "$out" --force
# hand the placement to SGLang: the --init-expert-location file and the flags to pass with it
moe-planner export --plan "$out/plan.json" --to sglang --out "$out/sglang-expert-location.json" --force
moe-planner trace synth --model olmoe-1b-7b --tokens 2048 --out "$out/olmoe.npz" --force
moe-planner trace stats "$out/olmoe.npz" > "$out/olmoe-stats.txt"  # not piped into head: SIGPIPE under pipefail
head -5 "$out/olmoe-stats.txt"
