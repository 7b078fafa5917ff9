"""Accuracy and speed of the expert-FFN cost model, against simple baselines in the same run.

    python benchmarks/cost_model.py            # prints the tables (takes ~10 s)

1. **Between measured token counts** — leave one interior point out: for every table and every
   interior measured M (2 .. 8192), predict it from the other points of its table. The model
   (:func:`planner.cost.compute.table_curve`: per-shape soft roofline × interpolated residual)
   against plain log-log interpolation of the same (monotone) table. MAPE = mean |pred/meas − 1|.
   Tables: the shared measurements (``../shared/data/{h100,h200}/expert_ffn_bf16.json``, 7
   shapes × 15 M each, as seeded into ``hwprofiles/``), and the 16-shape bf16 / fp8 tables of
   ``hwprofiles/measurements/h100-sxm-2026-11-23.json``.
2. **Truly unseen token counts** — ``hwprofiles/measurements/h100-sxm-between-2026-11-23.json``
   (M = 3, 6, 12, ..., 12288 and 5, 20, 100, ..., 10000, measured in another session, never in a
   profile) predicted from the shipped h100-sxm tables. Only points whose two fastest runs agree
   within 3% are scored (a reliability rule fixed before scoring: other tenants of the shared GPU
   slow some runs by up to 2.5×). The same file re-measured the powers of two: their spread
   against the profile's own figures at the same M is the session-to-session noise floor.
3. **Unprofiled shapes** — leave one shape out: drop a table, predict its 15 points from the
   rest of the profile and the device peaks (:func:`planner.cost.compute.expert_ffn_ms` on the
   reduced profile: device model + residuals of the nearest measured shapes), against a
   3-constant roofline ``overhead + max(Q/(η_c·peak), bytes/(η_w·BW))`` (tile/wave-quantized FLOPs
   Q, weights plus activations bytes) with its constants fitted on the same remaining tables.
4. **Grouped GEMM** — the ``grouped`` kernel model (one launch for a GPU's local experts) and the
   sum of single-expert times, against ``torch._grouped_mm`` rows of the helper file.
5. **Evaluator speed** — :class:`planner.cost.evaluate.MoeEvaluator` on DeepSeek-V3 (58 MoE
   layers, 256 experts + 64 redundant = 320 slots) on 64 GPUs (8 per node), one evaluation per
   call on one core (numpy's own threads as they come), counts: 65,536 (token, expert) pairs per
   layer drawn uniformly over the 320 slots.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from planner.cost.compute import (  # noqa: E402
    expert_ffn_ms,
    gemm_flops_q,
    grouped_experts_ms,
    peak_tflops,
    table_curve,
)
from planner.cost.evaluate import MoeEvaluator  # noqa: E402
from planner.specs.hardware import ExpertFfnTable, HardwareProfile, load_hardware  # noqa: E402
from planner.specs.model import DTYPE_BYTES  # noqa: E402
from planner.specs.model_io import load_model  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
MEAS = ROOT / "hwprofiles" / "measurements"
HELPER_FILE = MEAS / "h100-sxm-2026-11-23.json"
BETWEEN_FILE = MEAS / "h100-sxm-between-2026-11-23.json"
CLEAN_TOL = 0.03


# ---- data ------------------------------------------------------------------------------------


def _table(d: int, f: int, dtype: str, per_m: dict[int, float], source: str) -> ExpertFfnTable:
    ms = sorted(per_m)
    return ExpertFfnTable(d=d, f=f, dtype=dtype, tokens=ms, ffn_ms=[per_m[m] for m in ms], source=source)


def shared_tables(device: str) -> list[ExpertFfnTable]:
    """The shared file's tables (shapes merged as the seed script does: per M the smaller figure)."""
    data = json.loads((SHARED / device / "expert_ffn_bf16.json").read_text())
    per: dict[tuple[int, int], dict[int, float]] = {}
    for r in data["rows"]:
        cur = per.setdefault((r["d"], r["f"]), {})
        cur[r["M"]] = min(cur.get(r["M"], np.inf), r["ffn_ms"])
    return [_table(d, f, "bf16", v, "shared") for (d, f), v in per.items()]


def helper_tables(section: str) -> list[ExpertFfnTable]:
    data = json.loads(HELPER_FILE.read_text())
    per: dict[tuple[int, int, str], dict[int, float]] = {}
    for r in data[section]["rows"]:
        per.setdefault((r["d"], r["f"], r["dtype"]), {})[r["M"]] = r["ffn_ms"]
    return [_table(d, f, dt, v, "helper") for (d, f, dt), v in per.items()]


def with_tables(hw: HardwareProfile, tables: list[ExpertFfnTable]) -> HardwareProfile:
    return hw.model_copy(update={"expert_ffn_tables": tables})


# ---- baselines -------------------------------------------------------------------------------


def loglog(table: ExpertFfnTable, m: np.ndarray) -> np.ndarray:
    """Plain log-log interpolation of the table's running maximum."""
    t_pts = np.maximum.accumulate(np.asarray(table.ffn_ms))
    return np.exp(np.interp(np.log(m), np.log(table.tokens), np.log(t_pts)))


def roofline3_fit(hw: HardwareProfile, tables: list[ExpertFfnTable]):
    """Grid fit of (overhead, η_w, η_c) minimising mean |ln(pred/meas)|; returns a predictor."""
    eta = np.round(np.arange(0.30, 1.0001, 0.02), 2)
    over = np.round(np.arange(0.0, 0.0401, 0.0005), 4)

    def parts(d, f, dtype, m):
        m = np.asarray(m, dtype=np.float64)
        flops = gemm_flops_q(m, 2 * f, d, hw.num_sms) + gemm_flops_q(m, d, f, hw.num_sms)
        comp = flops / (peak_tflops(hw, dtype) * 1e12) * 1e3
        nbytes = 3.0 * d * f * DTYPE_BYTES[dtype] + m * (2 * d + 6 * f) * 2.0
        return comp, nbytes / (hw.hbm_bandwidth_gbps * 1e9) * 1e3

    comp, mem, meas = [], [], []
    for t in tables:
        c, b = parts(t.d, t.f, t.dtype, t.tokens)
        comp.append(c)
        mem.append(b)
        meas.append(np.asarray(t.ffn_ms))
    comp_n, mem_n, meas_n = np.concatenate(comp), np.concatenate(mem), np.concatenate(meas)
    best = (np.inf, None)
    for ew in eta:
        base = np.maximum(comp_n[None, :] / eta[:, None], mem_n[None, :] / ew)  # [Ec, N]
        score = np.abs(np.log((base[:, None, :] + over[None, :, None]) / meas_n)).mean(-1)
        i, j = np.unravel_index(np.argmin(score), score.shape)
        if score[i, j] < best[0]:
            best = (score[i, j], (over[j], ew, eta[i]))
    o, ew, ec = best[1]

    def predict(d, f, dtype, m):
        c, b = parts(d, f, dtype, m)
        return o + np.maximum(c / ec, b / ew)

    return predict


# ---- 1. leave one point out ------------------------------------------------------------------


def loo(tables: list[ExpertFfnTable]) -> tuple[float, float, int]:
    ours, base = [], []
    for t in tables:
        for i in range(1, len(t.tokens) - 1):
            keep = [j for j in range(len(t.tokens)) if j != i]
            rest = t.model_copy(update={"tokens": [t.tokens[j] for j in keep], "ffn_ms": [t.ffn_ms[j] for j in keep]})
            m = np.array([float(t.tokens[i])])
            ours.append(abs(table_curve(rest)(m)[0] / t.ffn_ms[i] - 1))
            base.append(abs(loglog(rest, m)[0] / t.ffn_ms[i] - 1))
    return 100 * float(np.mean(ours)), 100 * float(np.mean(base)), len(ours)


# ---- 2. unseen token counts ------------------------------------------------------------------


def unseen(h100: HardwareProfile) -> list[tuple[str, str, float, float, int]]:
    """(points, baseline name, this model %, baseline %, n) on the held-out between-point file."""
    data = json.loads(BETWEEN_FILE.read_text())
    helper = with_tables(h100, helper_tables("expert_ffn_bf16"))
    # the shipped profile also holds the helper file's shapes: restrict it to the shared file's 7
    h100 = with_tables(h100, shared_tables("h100"))
    roof = roofline3_fit(h100, list(h100.expert_ffn_tables))
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def add(key: tuple[str, str], ours: float, base: float, meas: float) -> None:
        groups.setdefault(key, []).append((abs(ours / meas - 1), abs(base / meas - 1)))

    for r in data["rows"]:
        runs = sorted(r["runs_ms"])
        if len(runs) < 2 or runs[1] / runs[0] - 1 > CLEAN_TOL:
            continue
        d, f, meas = r["d"], r["f"], r["ffn_ms"]
        m = np.array([float(r["M"])])
        if r["phase"] == "mid-other-shapes":
            add(("9 further shapes, unprofiled (from the 7 profiled shapes)", "3-constant roofline"),
                expert_ffn_ms(h100, d, f, "bf16", m)[0], roof(d, f, "bf16", m)[0], meas)
            add(("9 further shapes, profiled by the helper file's tables", "plain log-log"),
                expert_ffn_ms(helper, d, f, "bf16", m)[0], loglog(helper.table_for(d, f, "bf16"), m)[0], meas)
            continue
        table = h100.table_for(d, f, "bf16")
        ours = expert_ffn_ms(h100, d, f, "bf16", m)[0]
        if r["phase"] == "pow2-recheck":
            add(("7 profiled shapes, the same M (noise floor)", "plain log-log"), ours, loglog(table, m)[0], meas)
        else:
            add(("7 profiled shapes, M between powers of 2 and odd M", "plain log-log"), ours, loglog(table, m)[0], meas)
    return [
        (k, b, 100 * float(np.mean([x for x, _ in v])), 100 * float(np.mean([y for _, y in v])), len(v))
        for (k, b), v in groups.items()
    ]


# ---- 3. leave one shape out ------------------------------------------------------------------


def loso(hw: HardwareProfile, tables: list[ExpertFfnTable]) -> tuple[float, float, float, float]:
    ours, base = [], []
    for i, t in enumerate(tables):
        rest = [u for j, u in enumerate(tables) if j != i]
        reduced = with_tables(hw, rest)
        m = np.asarray(t.tokens, dtype=np.float64)
        meas = np.asarray(t.ffn_ms)
        ours.append(np.abs(expert_ffn_ms(reduced, t.d, t.f, t.dtype, m) / meas - 1).mean())
        base.append(np.abs(roofline3_fit(hw, rest)(t.d, t.f, t.dtype, m) / meas - 1).mean())
    return 100 * float(np.mean(ours)), 100 * float(max(ours)), 100 * float(np.mean(base)), 100 * float(max(base))


# ---- 4. grouped GEMM ------------------------------------------------------------------------


def grouped(hw: HardwareProfile) -> tuple[float, float, int]:
    """Grouped model and summed single-expert times against the helper file's grouped_mm rows."""
    rows = json.loads(HELPER_FILE.read_text())["grouped_mm"]["rows"]
    ours, loop = [], []
    for r in rows:
        tokens_GE = np.full((1, r["E"]), r["M"])
        g = grouped_experts_ms(hw, r["d"], r["f"], "bf16", tokens_GE, kernel="grouped")[0]
        s = grouped_experts_ms(hw, r["d"], r["f"], "bf16", tokens_GE, kernel="loop")[0]
        ours.append(abs(g / r["grouped_ffn_ms"] - 1))
        loop.append(abs(s / r["grouped_ffn_ms"] - 1))
    return 100 * float(np.mean(ours)), 100 * float(np.mean(loop)), len(rows)


# ---- 5. evaluator speed ----------------------------------------------------------------------


def evaluator_speed(hw: HardwareProfile) -> tuple[float, float]:
    m = load_model("deepseek-v3")
    G, P = 64, m.num_experts + 64
    T = 8192 * 8  # tokens of one step over the 64 GPUs' data-parallel ranks (an upper bound per slot)
    ev = MoeEvaluator(
        hw, hidden=m.hidden_size, ffn=m.expert_intermediate_size, dtype=m.expert_dtype,
        num_gpus=G, slots_per_gpu=P // G, gpus_per_node=8, max_tokens=T,
    )
    counts = np.random.default_rng(0).multinomial(T * m.top_k // 8, np.ones(P) / P, size=m.num_moe_layers)
    out = []
    for check in (True, False):
        best = 0.0
        for _ in range(5):
            n = 1000
            t0 = time.perf_counter()
            for _ in range(n):
                ev(counts, check=check)
            best = max(best, n / (time.perf_counter() - t0))
        out.append(best)
    return out[0], out[1]


def main() -> None:
    h100, h200 = load_hardware("h100-sxm"), load_hardware("h200-sxm")
    sets = [
        ("H100, shared 7 bf16 shapes", h100, shared_tables("h100")),
        ("H200, shared 7 bf16 shapes", h200, shared_tables("h200")),
        ("H100, 16 bf16 shapes (helper file)", h100, helper_tables("expert_ffn_bf16")),
        ("H100, 16 fp8 shapes (helper file)", h100, helper_tables("expert_ffn_fp8")),
    ]
    print("## 1. Between measured points: leave one interior point out (MAPE)\n")
    print("| tables | points | this model | plain log-log |")
    print("|---|---|---|---|")
    for name, _, tables in sets:
        ours, base, n = loo(tables)
        print(f"| {name} | {n} | {ours:.2f}% | {base:.2f}% |")
    print("\n## 2. Unseen token counts: another session's measurements (h100-sxm-between-2026-11-23.json)\n")
    print("| points | n | this model | baseline |")
    print("|---|---|---|---|")
    for key, base_name, ours, base, n in unseen(h100):
        print(f"| {key} | {n} | {ours:.2f}% | {base:.2f}% ({base_name}) |")
    print("\n## 3. Unprofiled shape: leave one shape out (MAPE over its 15 points; mean / worst shape)\n")
    print("| tables | shapes | this model | 3-constant roofline |")
    print("|---|---|---|---|")
    for name, hw, tables in sets:
        o, ow, b, bw = loso(hw, tables)
        print(f"| {name} | {len(tables)} | {o:.2f}% / {ow:.1f}% | {b:.2f}% / {bw:.1f}% |")
    print("\n## 4. Grouped GEMM of E local experts (h100-sxm, against torch._grouped_mm in the helper file)\n")
    g, s_, n = grouped(h100)
    print(f"{n} rows (E = 8-32 experts × M = 16-1024 tokens): grouped model {g:.1f}% MAPE; "
          f"sum of single-expert FFN times {s_:.1f}%")
    print("\n## 5. Plan evaluator: DeepSeek-V3, 58 MoE layers × 320 slots, 64 GPUs, one core\n")
    checked, unchecked = evaluator_speed(h100)
    print(f"{checked:,.0f} evaluations/s with input checks, {unchecked:,.0f} without (best of 5 × 1000)")


if __name__ == "__main__":
    main()
