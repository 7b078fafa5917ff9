"""Robustness: thousands of malformed inputs per loader, and the planner's promises on failure.

1. **Fuzzing.** The generators of ``tests/fuzz/generators.py`` (mutated real fixtures, garbage,
   hand-made archives) draw ``--examples`` inputs per loader (time-bounded by ``--budget``
   seconds each). Every input is loaded; an accepted one goes through the follow-up checks
   (trace statistics and a save/load round trip, every plan export); a rejected one also goes
   through the command line, which must exit 2 with one ``error:`` line naming the file. The
   table counts inputs tried, accepted, rejected with InputError (all of them checked on the
   CLI) and crashes (any other exception, a message of several lines or without the file
   name, or a CLI that did not exit 2 with one line).
2. **Infeasible problems** exit 1 with one line naming the binding constraint with numbers
   (DeepSeek-V3 on one 8-GPU H100 node).
3. **``--out``** refuses to overwrite ``plan.json`` without ``--force`` (exit 2, file kept).
4. **Interrupted writes** (a failure in the middle of writing, an interrupt before the rename)
   leave no partial ``plan.json`` and no temporary file, and keep an existing one intact.
5. **Determinism**: the same inputs and seed, in two fresh processes (different hash seeds),
   give byte-identical plan files apart from the fields listed as volatile.
6. **Memory**: peak RSS of planning DeepSeek-V3 on 64 GPUs (8 × 8, 64 redundant experts,
   EPLB) from a synthetic 65,536-token trace read from ``.npz``, in a fresh process; then the
   same with a trace memory budget (``MOE_PLANNER_TRACE_MEMORY_GB``) below the trace's in-memory
   size, so that it is streamed (exact counts of every step, a sample of steps held).

    python benchmarks/robustness.py                   # 2,000 inputs per loader, Markdown out
    python benchmarks/robustness.py --examples 200    # quicker
    python benchmarks/robustness.py --skip-rss        # without the DeepSeek-V3 run

Exit status 1 when any input crashed or any promise failed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.fuzz.generators (the same generators as the tests)

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402

from tests.fuzz.generators import STRATEGIES, describe, run_case, run_cli  # noqa: E402

#: Fields of plan.json allowed to differ between two runs on the same inputs and seed.
VOLATILE = {("provenance", "created"), ("solver", "time_s"), ("search", "time_s")}  # the wall-clock fields
RSS_TARGET_MB = 2048
#: Trace memory budget (GB) of the streamed run of the memory check.
STREAM_BUDGET_GB = 0.1


# ---- 1. fuzzing ------------------------------------------------------------------------------


def fuzz(loader: str, examples: int, budget_s: float, seed_value: int, show: int) -> dict:
    """Draw up to ``examples`` inputs for ``loader`` within ``budget_s`` seconds; tally them."""
    tally: collections.Counter[str] = collections.Counter()
    crashes: list[tuple[str, str]] = []
    start = time.perf_counter()

    @seed(seed_value)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[loader]())
    def draw(case):
        if time.perf_counter() - start > budget_s:
            tally["skipped (time budget)"] += 1
            return
        outcome = run_case(case, cli=run_cli)
        tally[outcome.kind] += 1
        if outcome.kind == "crash" and len(crashes) < show:
            crashes.append((describe(case), outcome.message))

    draw()
    tally["tried"] = tally["accepted"] + tally["rejected"] + tally["crash"]
    return {"loader": loader, "tally": tally, "seconds": time.perf_counter() - start, "crashes": crashes}


# ---- 2-4. the command line on failure --------------------------------------------------------


def check_infeasible() -> tuple[bool, str]:
    rc, _out, err = run_cli(["plan", "--model", "deepseek-v3", "--nodes", "1", "--gpus-per-node", "8"])
    lines = err.strip().splitlines()
    ok = rc == 1 and len(lines) == 1 and lines[0].startswith("infeasible: ") and any(c.isdigit() for c in lines[0])
    return ok, f"exit {rc}: {err.strip()}"


def _plan_args(out: Path, *extra: str) -> list[str]:
    return ["plan", "--model", "mixtral-8x7b", "--baseline", "eplb", "--out", str(out), *extra]


def check_overwrite() -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        rc1, _, _ = run_cli(_plan_args(out))
        first = (out / "plan.json").read_bytes()
        rc2, _, err2 = run_cli(_plan_args(out, "--seed", "7"))
        kept = (out / "plan.json").read_bytes() == first
        rc3, _, _ = run_cli(_plan_args(out, "--seed", "7", "--force"))
        replaced = json.loads((out / "plan.json").read_text())["provenance"]["seed"] == 7
    ok = rc1 == 0 and rc2 == 2 and kept and rc3 == 0 and replaced and len(err2.strip().splitlines()) == 1
    return ok, f"first exit {rc1}; again without --force: exit {rc2}, file kept {kept}, `{err2.strip()}`; with --force: exit {rc3}, replaced {replaced}"


class _Boom(Exception):
    pass


def check_interrupted_write() -> tuple[bool, list[str]]:
    """Fail the write of plan.json half-way (an error inside write) and just before the rename
    (KeyboardInterrupt in fsync), with no file there before and with an old one to replace."""
    import planner.io as pio

    real_fdopen, real_fsync = os.fdopen, os.fsync
    results, ok = [], True

    def half_write_fdopen(fd, *a, **kw):
        f = real_fdopen(fd, *a, **kw)
        real_write = f.write

        def write(data):
            real_write(data[: len(data) // 2])
            f.flush()
            raise _Boom("disk full half-way")

        f.write = write
        return f

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    failures = {"error half-way through write()": ("fdopen", half_write_fdopen), "KeyboardInterrupt before rename": ("fsync", interrupted_fsync)}
    for label, (attr, fake) in failures.items():
        for existing in (False, True):
            with tempfile.TemporaryDirectory() as d:
                out = Path(d)
                old = b""
                if existing:
                    assert run_cli(_plan_args(out))[0] == 0
                    old = (out / "plan.json").read_bytes()
                setattr(pio.os, attr, fake)
                try:
                    rc, _, err = run_cli(_plan_args(out, "--seed", "3", "--force"))
                    raised = f"exit {rc} `{err.strip()}`"  # click turns an interrupt into Abort: exit 1
                except (_Boom, KeyboardInterrupt) as e:
                    rc, raised = None, f"{type(e).__name__} raised"
                finally:
                    os.fdopen, os.fsync = real_fdopen, real_fsync
                left = sorted(p.name for p in out.iterdir())
                now = (out / "plan.json").read_bytes() if (out / "plan.json").exists() else None
                good = rc != 0 and (now == old if existing else now is None) and left == (["plan.json"] if existing else [])
                ok &= good
                before = "old plan.json there" if existing else "no plan.json before"
                results.append(
                    f"{label}, {before}: {raised}; folder holds {left or 'nothing'}"
                    f"{'; old file intact' if existing and now == old else ''} -> {'ok' if good else 'FAIL'}"
                )
    return ok, results


# ---- 5. determinism --------------------------------------------------------------------------


def _strip(doc: dict) -> dict:
    doc = json.loads(json.dumps(doc))
    for a, b in VOLATILE:
        (doc.get(a) or {}).pop(b, None)
    return doc


def _diff(x, y, path="") -> list[str]:
    if type(x) is not type(y):
        return [path or "(root)"]
    if isinstance(x, dict):
        return [d for k in sorted(set(x) | set(y)) for d in _diff(x.get(k), y.get(k), f"{path}.{k}".lstrip("."))]
    if isinstance(x, list):
        if len(x) != len(y):
            return [path]
        return [d for i, (u, v) in enumerate(zip(x, y, strict=True)) for d in _diff(u, v, f"{path}[{i}]")]
    return [] if x == y else [path]


def check_determinism(args: list[str]) -> tuple[bool, str]:
    """Plan twice in fresh processes with different hash seeds; compare plan.json bytes."""
    with tempfile.TemporaryDirectory() as d:
        files = []
        for i, hash_seed in enumerate(("0", "12345")):
            out = Path(d) / f"run{i}"
            env = {**os.environ, "PYTHONHASHSEED": hash_seed}
            cmd = [sys.executable, "-m", "planner", "plan", *args, "--seed", "0", "--out", str(out)]
            subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=ROOT)
            files.append((out / "plan.json").read_bytes())
    a, b = (json.loads(f) for f in files)
    raw_diff = _diff(a, b)
    same = json.dumps(_strip(a), indent=1) == json.dumps(_strip(b), indent=1)
    # the same bytes once the volatile fields are given equal values
    patched = [json.loads(f) for f in files]
    for doc in patched:
        for x, y in VOLATILE:
            if doc.get(x):
                doc[x][y] = None
    bytes_same = files[0] == files[1] or (
        json.dumps(patched[0], indent=1) == json.dumps(patched[1], indent=1) and len(raw_diff) <= len(VOLATILE)
    )
    return same and bytes_same, f"differing fields: {', '.join(raw_diff) or 'none'}"


# ---- 6. memory -------------------------------------------------------------------------------

# Peak RSS in kB: VmHWM, the high-water mark of this process image (Linux), else ru_maxrss.
# ru_maxrss alone can report the *parent's* size: Linux carries the RSS a process had when it
# forked into the child's ru_maxrss, so a child of a big process never reads below it.
_PEAK = """
import resource
def peak_kb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

_SYNTH = _PEAK + """
import sys, planner
tr = planner.synth_trace(planner.load_model("deepseek-v3"), num_tokens=65536, seed=0)
planner.save_trace(tr, sys.argv[1])
print(peak_kb())
"""

_PLAN = _PEAK + """
import json, sys, time
import planner, planner.api
after_imports = peak_kb()
t = time.perf_counter()
p = planner.plan("deepseek-v3", nodes=8, gpus_per_node=8, redundant_experts=64, trace=sys.argv[1], baseline="eplb")
wall = time.perf_counter() - t
peak = peak_kb()
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tr = planner.load_trace(sys.argv[1])
sizes = {"topk_ids int32 [L, T, k]": tr.topk_ids.nbytes,
         "topk_weights [L, T, k]": 0 if tr.topk_weights is None else tr.topk_weights.nbytes}
print(json.dumps({"peak_kb": peak, "maxrss_kb": maxrss, "after_imports_kb": after_imports, "wall_s": wall, "sizes": sizes,
                  "ep": p.parallel.ep, "slots": p.placement.slots_per_gpu}))
"""


def check_rss() -> tuple[bool, list[str]]:
    with tempfile.TemporaryDirectory() as d:
        trace = Path(d) / "deepseek-v3-65536.npz"
        t = time.perf_counter()
        synth = subprocess.run([sys.executable, "-c", _SYNTH, str(trace)], check=True, capture_output=True, text=True, cwd=ROOT)
        synth_s = time.perf_counter() - t
        size_mb = trace.stat().st_size / 1e6
        run = subprocess.run([sys.executable, "-c", _PLAN, str(trace)], check=True, capture_output=True, text=True, cwd=ROOT)
        # the same plan with a trace memory budget below the trace's size: streamed (planner/traces/stream.py)
        env = dict(os.environ, MOE_PLANNER_TRACE_MEMORY_GB=str(STREAM_BUDGET_GB))
        streamed = subprocess.run([sys.executable, "-c", _PLAN, str(trace)], check=True, capture_output=True, text=True,
                                  cwd=ROOT, env=env)
    r = json.loads(run.stdout.strip().splitlines()[-1])
    rs = json.loads(streamed.stdout.strip().splitlines()[-1])
    peak_mb = r["peak_kb"] / 1024
    lines = [
        f"trace: synthetic, 65,536 tokens × 58 MoE layers × top-8 of 256 experts, {size_mb:.0f} MB .npz "
        f"(synthesized in a separate process: {synth_s:.0f} s, peak {int(synth.stdout.split()[-1]) / 1024:.0f} MB)",
        f"planning (EPLB, 8 × 8 GPUs, ep {r['ep']}, {r['slots']} slots per GPU): {r['wall_s']:.1f} s wall, "
        f"peak RSS {peak_mb:.0f} MB (VmHWM; ru_maxrss {r['maxrss_kb'] / 1024:.0f} MB; interpreter and imports "
        f"alone: {r['after_imports_kb'] / 1024:.0f} MB); "
        f"target < {RSS_TARGET_MB} MB -> {'ok' if peak_mb < RSS_TARGET_MB else 'ABOVE TARGET'}",
        "largest arrays held: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in r["sizes"].items()),
        f"streamed (MOE_PLANNER_TRACE_MEMORY_GB={STREAM_BUDGET_GB}, below the trace's "
        f"{r['sizes']['topk_ids int32 [L, T, k]'] * 3 / 1e9:.2f} GB in-memory form): {rs['wall_s']:.1f} s wall, "
        f"peak RSS {rs['peak_kb'] / 1024:.0f} MB; sample held: "
        + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in rs["sizes"].items()),
    ]
    return peak_mb < RSS_TARGET_MB and rs["peak_kb"] < r["peak_kb"], lines


# ---- main ------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="inputs per loader (default 2000)")
    ap.add_argument("--budget", type=float, default=180.0, help="seconds per loader at most (default 180)")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed (default 0)")
    ap.add_argument("--loaders", default=",".join(STRATEGIES), help="comma-separated subset of " + ", ".join(STRATEGIES))
    ap.add_argument("--show", type=int, default=3, help="crashes to print per loader")
    ap.add_argument("--skip-rss", action="store_true", help="skip the DeepSeek-V3 memory run")
    args = ap.parse_args()

    import logging

    logging.disable(logging.WARNING)  # accepted files' warnings ("assuming N experts") are noise here
    failed = False
    print(f"## Fuzzing the loaders ({args.examples} inputs each at most, {args.budget:.0f} s budget, seed {args.seed})\n")
    print("| loader | inputs tried | accepted | rejected (InputError, CLI exit 2) | crashes | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    reports = []
    for loader in args.loaders.split(","):
        if loader == "sglang_pt":
            try:
                import torch  # noqa: F401
            except ImportError:
                print("| sglang_pt | (torch not installed: skipped) | | | | |")
                continue
        with contextlib.redirect_stderr(open(os.devnull, "w")):  # noqa: SIM115 - torch/numpy warnings
            r = fuzz(loader, args.examples, args.budget, args.seed, args.show)
        t = r["tally"]
        skipped = f" ({t['skipped (time budget)']} over budget)" if t["skipped (time budget)"] else ""
        print(f"| {loader} | {t['tried']}{skipped} | {t['accepted']} | {t['rejected']} | {t['crash']} | {r['seconds']:.0f} |")
        failed |= t["crash"] > 0
        reports.append(r)
    total = collections.Counter()
    for r in reports:
        total.update({k: r["tally"][k] for k in ("tried", "accepted", "rejected", "crash")})
    print(f"| **all** | **{total['tried']}** | {total['accepted']} | {total['rejected']} | **{total['crash']}** | |")
    for r in reports:
        for what, msg in r["crashes"]:
            print(f"\ncrash ({r['loader']}): {what}\n```\n{msg[:2000]}\n```")

    print("\n## Failures the planner promises to handle\n")
    ok, text = check_infeasible()
    failed |= not ok
    print(f"- infeasible (`plan --model deepseek-v3` on 1 × 8 H100): {'ok' if ok else 'FAIL'} — {text}")
    ok, text = check_overwrite()
    failed |= not ok
    print(f"- `--out` without `--force`: {'ok' if ok else 'FAIL'} — {text}")
    ok, lines = check_interrupted_write()
    failed |= not ok
    print(f"- interrupted writes: {'ok' if ok else 'FAIL'}")
    for line in lines:
        print(f"  - {line}")
    for label, plan_args in (
        ("embedded default (qwen3-30b-a3b, shipped trace, best baseline)", []),
        ("deepseek-v2-lite, 2 × 8 GPUs, 16 redundant, eplb", ["--model", "deepseek-v2-lite", "--nodes", "2", "--redundant-experts", "16", "--baseline", "eplb"]),
    ):
        ok, text = check_determinism(plan_args)
        failed |= not ok
        volatile = ", ".join(".".join(v) for v in sorted(VOLATILE))
        print(f"- determinism, {label}: {'ok' if ok else 'FAIL'} — two processes, same seed; {text} (allowed: {volatile})")
    if not args.skip_rss:
        ok, lines = check_rss()
        failed |= not ok
        print(f"- memory, DeepSeek-V3 on 64 GPUs: {'ok' if ok else 'ABOVE TARGET'}")
        for line in lines:
            print(f"  - {line}")
    print(f"\n{'FAILED' if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
