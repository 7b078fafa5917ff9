"""Planning large models on multi-node clusters: wall time, peak memory, and whether the solver's
own placement was scored within the default time limit.

    python benchmarks/plan_scale.py [--out benchmarks/results/plan_scale.json]

Each case runs ``moe-planner plan --model M --mode MODE --nodes N`` (everything else default: the
model's shipped or synthetic trace, the parallelism search, the placement solver with its 60 s
time limit) in a child process, so that its peak resident memory is its own. A case *passes*
when the plan is written within 60 s of solving and the solver's own placement was scored on the
planning steps (not cut by the time limit with EPLB kept). The first two cases are SGLang's
published DeepSeek-V3 deployment (degrees fixed); the others let the search choose. They include
clusters whose experts do not split evenly over the nodes (DeepSeek-V3's 256 experts + 32
redundant on 9 nodes), where the placement search runs over the whole cluster at once.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from planner.io import atomic_write_text

#: SGLang's published DeepSeek-V3 deployment (LMSYS blog 2025-05-05): decode EP72 on 9 nodes and
#: prefill EP32 on 4, 32 redundant experts, 2,000-token prompts.
LMSYS_DECODE = ("--ep", "72", "--tp", "1", "--redundant-experts", "32", "--prompt-len", "2000", "--output-len", "200")
LMSYS_PREFILL = ("--ep", "32", "--tp", "1", "--redundant-experts", "32", "--prompt-len", "2000")
CASES: list[tuple[str, str, int, tuple[str, ...]]] = [
    ("deepseek-v3", "decode", 9, LMSYS_DECODE), ("deepseek-v3", "prefill", 4, LMSYS_PREFILL),
    ("deepseek-v3", "decode", 4, ()), ("deepseek-v3", "decode", 6, ()), ("deepseek-v3", "decode", 9, ()),
    ("deepseek-v3", "decode", 12, ()), ("deepseek-v3", "prefill", 6, ()), ("kimi-k2", "decode", 8, ()),
    ("kimi-k2", "decode", 12, ()), ("qwen3-235b-a22b", "decode", 3, ()), ("qwen3-235b-a22b", "prefill", 2, ()),
    ("gpt-oss-120b", "decode", 3, ()), ("mixtral-8x22b", "decode", 3, ()), ("kimi-k2", "train", 32, ()),
]
TIME_LIMIT_S = 60.0
#: Child process: run the CLI, then print its peak resident memory (ru_maxrss, KiB on Linux).
CHILD = ("import resource, sys\nfrom planner.cli import main\nrc = main(sys.argv[1:])\n"
         "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)\n")


def case(model: str, mode: str, nodes: int, extra: tuple[str, ...] = ()) -> dict:
    argv = ["plan", "--model", model, "--mode", mode, "--nodes", str(nodes), *extra]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    out = done.stdout
    rss = re.search(r"MAXRSS_KB (\d+)", out)
    solver = re.search(r"^  solver +(\S+) \((\w+)\)", out, re.M)
    solved = re.search(r"solved in ([0-9.]+) s", out)
    unscored = "ran out before the solver's own placement could be scored" in out
    baseline_kept = re.search(r"the (\S+) placement \([0-9.]+ ms\) (?:was better and )?is kept", out)
    row = dict(model=model, mode=mode, nodes=nodes, gpus=8 * nodes, args=" ".join(extra), rc=done.returncode,
               wall_s=round(wall, 1),
               peak_rss_gib=round(int(rss.group(1)) / 2**20, 2) if rss else None,
               solver_status=solver.group(2) if solver else None,
               solve_s=float(solved.group(1)) if solved else None, own_placement_scored=not unscored,
               kept=baseline_kept.group(1) if baseline_kept else (solver.group(1) if solver else None))
    row["passes"] = bool(done.returncode == 0 and not unscored and row["solve_s"] is not None
                         and row["solve_s"] <= TIME_LIMIT_S)
    if done.returncode:
        row["error"] = (done.stderr.strip().splitlines() or [""])[-1][:300]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/plan_scale.json")
    args = ap.parse_args()
    rows = []
    print("| model | mode | GPUs | fixed | wall | peak RSS | placement solve | solver status | kept | passes |")
    print("|---|---|---:|---|---:|---:|---:|---|---|---|")
    for m, mode, nodes, extra in CASES:
        r = case(m, mode, nodes, extra)
        rows.append(r)
        solve = f"{r['solve_s']:.1f} s" if r["solve_s"] is not None else "—"
        rss = f"{r['peak_rss_gib']:.2f} GiB" if r["peak_rss_gib"] is not None else "—"
        print(f"| {m} | {mode} | {r['gpus']} | {r['args'] or 'searched'} | {r['wall_s']:.1f} s | {rss} | {solve} | {r['solver_status'] or '—'} "
              f"| {r['kept'] or '—'} | {'yes' if r['passes'] else 'no: ' + r.get('error', 'own placement unscored')} |",
              flush=True)
    ok = sum(r["passes"] for r in rows)
    print(f"\n{ok} of {len(rows)} cases pass (plan written, own placement scored, solve within {TIME_LIMIT_S:g} s)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps({"rows": rows, "passed": ok, "cases": len(rows)}, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
