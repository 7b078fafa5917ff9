"""Build hwprofiles/h100-sxm.json and h200-sxm.json from a GPU measurement file (reproducible seeding).

Usage, from the repository root, with the project's bf16 expert-FFN measurement of each GPU
(``expert_ffn_bf16.json``, shared GPU data kept outside this repository)::

    python tools/seed_hwprofile.py H100_MEASUREMENT.json hwprofiles/h100-sxm.json \
        --extra hwprofiles/measurements/h100-sxm-2026-11-23.json
    python tools/seed_hwprofile.py H200_MEASUREMENT.json hwprofiles/h200-sxm.json

The measurement file (``device``, ``ceilings``, ``rows``, ``what``, ``measured``) gives
``hbm_usable_gib``, ``num_sms``, ``l2_mb``, ``hbm_bandwidth_gbps`` (``ceilings.d2d_GBps_rw``), the
PCIe curves (``ceilings.{h2d_pinned,d2h_pinned,h2d_pageable}_<N>MB_GBps``, N MB = N·2**20 bytes),
one bf16 ``expert_ffn_tables`` entry per (d, f) shape (two models of the same shape are merged
by keeping, per token count and column, the smaller figure: each is already a minimum over runs,
docs/facts.md §2) and the provenance. Sources are described by what was measured (device, date,
method, models), never by the file's path.

``--extra FILE`` (``hwprofiles/measurements/*.json``, sections ``expert_ffn_bf16`` /
``expert_ffn_fp8``) adds a table for every (d, f, dtype) the measurement file lacks.

Datasheet capacity and peaks and the interconnect figures (docs/facts.md §3) sit in
:data:`DATASHEET`, keyed by the GPU kind in the device name. The profile is validated against
:class:`planner.specs.hardware.HardwareProfile` before it is written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a source checkout without installing
    sys.path.insert(0, str(ROOT))

from planner.specs.base import parse  # noqa: E402
from planner.specs.hardware import HardwareProfile, dumps_profile  # noqa: E402

_H100_SOURCES = (
    "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: 80 GB, 3.35 TB/s, bf16 1979 TFLOP/s with sparsity = 989 dense, "
    "fp8 3958 sparse = 1979 dense, NVLink 900 GB/s); docs/facts.md §3 (nccl-tests issues #212, #267, #290)"
)

#: Figures H100 SXM and H200 SXM share: the same GH100 compute on an 8-GPU HGX board with NVLink 4
#: and 400 Gb/s NDR per GPU (docs/facts.md §2-3), and the measured copy cost and overlap.
_HGX_GH100: dict[str, Any] = {
    "peak_tflops": {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9, "tf32": 494.7},
    "nvlink": {"bandwidth_gbps": 370.0, "latency_us": 10.0, "gpus_per_domain": 8},
    "nic": {"bandwidth_gbps": 48.0, "latency_us": 20.0},
    "copy_latency_us": 7.0,
    "copy_compute_overlap": 0.89,
}

#: Figures the measurement file does not hold, per GPU kind (matched in the device name).
DATASHEET: dict[str, dict[str, Any]] = {
    "H100": {
        "name": "h100-sxm",
        "description": "NVIDIA H100 SXM5 80GB HBM3 in an 8-GPU HGX board (NVLink 4 / NVSwitch, 400 Gb/s NDR per GPU, PCIe Gen5 host link)",
        "hbm_gib": 80.0,
        "hbm_datasheet_gbps": 3350.0,
        **_HGX_GH100,
        "gemm_note": "bf16 8192^3 GEMM measured {gemm:.0f} TFLOP/s in this file (798 in another run on the same kind of machine, docs/facts.md §2) against 989 dense on the datasheet",
        "sources": _H100_SOURCES,
    },
    "H200": {
        "name": "h200-sxm",
        "description": "NVIDIA H200 SXM 141GB HBM3e in an 8-GPU HGX board (NVLink 4 / NVSwitch, 400 Gb/s NDR per GPU, PCIe Gen5 host link)",
        "hbm_gib": 141.0,
        "hbm_datasheet_gbps": 4800.0,
        **_HGX_GH100,
        "gemm_note": "bf16 8192^3 GEMM measured {gemm:.0f} TFLOP/s in this file against 989 dense on the datasheet (same GH100 compute as H100)",
        "sources": (
            "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM: 141 GB HBM3e, 4.8 TB/s, compute as H100 SXM, NVLink 900 GB/s); "
            "NVLink/NIC figures as H100 (same NVLink 4 / NDR fabric), docs/facts.md §3"
        ),
    },
}

_CEILING_RE = re.compile(r"^(h2d_pinned|d2h_pinned|h2d_pageable)_(\d+)MB_GBps$")


def _kind(device_name: str) -> str:
    for kind in DATASHEET:
        if kind in device_name.upper():
            return kind
    raise SystemExit(f"no datasheet figures for device {device_name!r}; known kinds: {', '.join(DATASHEET)}")


def _cuda_from_torch(torch_version: str) -> str | None:
    m = re.search(r"\+cu(\d+)(\d)$", torch_version)
    return f"{int(m.group(1))}.{m.group(2)}" if m else None


def source_label(measurement: dict[str, Any]) -> str:
    """What the measurement is (device, date, method), in place of a path outside the repository."""
    m = re.search(r"minimum over (\d+) runs", measurement.get("what", ""))
    runs = f"the minimum of {m.group(1)} runs" if m else "the minimum over runs"
    return (
        f"{table_label(measurement)} ({runs} of CUDA-event medians, triton do_bench, weights rotated past the L2)"
    )


def table_label(measurement: dict[str, Any]) -> str:
    """The short form of :func:`source_label` that each table's ``source`` starts with."""
    return f"bf16 expert-FFN timings on {measurement['device']['name']}, {measurement['measured']}"


def _extra_name(path: Path) -> str:
    parts = path.resolve().parts
    return "/".join(parts[parts.index("hwprofiles"):]) if "hwprofiles" in parts else path.name


def _tables(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    by_shape: dict[tuple[int, int], dict[int, dict[str, float]]] = defaultdict(dict)
    models: dict[tuple[int, int], list[str]] = defaultdict(list)
    for r in rows:
        key = (int(r["d"]), int(r["f"]))
        if r["model"] not in models[key]:
            models[key].append(r["model"])
        cur = by_shape[key].setdefault(int(r["M"]), {})
        for col in ("ffn_ms", "w13_ms", "w2_ms"):
            if col in r:
                cur[col] = min(cur.get(col, float("inf")), float(r[col]))
    tables = []
    for (d, f), per_m in by_shape.items():
        tokens = sorted(per_m)
        names = models[(d, f)]
        how = (
            f"rows of model {names[0]}"
            if len(names) == 1
            else f"rows of models {', '.join(names)} (same shape; per token count the smaller figure)"
        )
        table: dict[str, Any] = {"d": d, "f": f, "dtype": "bf16", "tokens": tokens}
        for col in ("ffn_ms", "w13_ms", "w2_ms"):
            if all(col in per_m[m] for m in tokens):
                table[col] = [round(per_m[m][col], 6) for m in tokens]
        table["source"] = f"{source}: {how}"
        tables.append(table)
    return tables


def _extra_tables(extra: dict[str, Any], source: str, have: set[tuple[int, int, str]]) -> list[dict[str, Any]]:
    """Tables of ``extra`` (a project measurement file) for shapes not in ``have``, by dtype."""
    tables = []
    for section in ("expert_ffn_bf16", "expert_ffn_fp8"):
        rows = (extra.get(section) or {}).get("rows") or []
        by_shape: dict[tuple[int, int, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_shape[(int(r["d"]), int(r["f"]), str(r["dtype"]))].append(r)
        for (d, f, dtype), rs in by_shape.items():
            if (d, f, dtype) in have:
                continue
            rs = sorted(rs, key=lambda r: int(r["M"]))
            models = rs[0].get("models") or [rs[0].get("model", "?")]
            table: dict[str, Any] = {"d": d, "f": f, "dtype": dtype, "tokens": [int(r["M"]) for r in rs]}
            for col in ("ffn_ms", "w13_ms", "w2_ms"):
                if all(col in r for r in rs):
                    table[col] = [round(float(r[col]), 6) for r in rs]
            table["source"] = f"{source}: {section} rows of {', '.join(models)}"
            tables.append(table)
    return tables


def _curves(ceilings: dict[str, float]) -> dict[str, list[dict[str, float]]]:
    curves: dict[str, list[dict[str, float]]] = defaultdict(list)
    for key, value in ceilings.items():
        m = _CEILING_RE.match(key)
        if m:
            curves[m.group(1)].append({"bytes": int(m.group(2)) << 20, "gbps": round(float(value), 2)})
    return {k: sorted(v, key=lambda p: p["bytes"]) for k, v in curves.items()}


def build_profile(
    measurement: dict[str, Any], extras: list[tuple[dict[str, Any], str]] | None = None
) -> dict[str, Any]:
    """The profile mapping: datasheet figures of the device kind plus everything measured.

    ``extras``: (project measurement file, its name) pairs whose tables of shapes not in
    ``measurement`` are appended (module docstring).
    """
    dev = measurement["device"]
    ceil = measurement["ceilings"]
    ds = DATASHEET[_kind(dev["name"])]
    curves = _curves(ceil)
    hbm = round(float(ceil["d2d_GBps_rw"]), 1)
    gemm = float(ceil.get("gemm_bf16_TFLOPs", 0.0))
    pageable = curves.get("h2d_pageable")
    measured_list = (
        f"hbm_usable_gib ({dev['mem_gib']:.2f}, torch total_memory), num_sms, l2_mb (device properties); "
        f"hbm_bandwidth_gbps ({hbm:g}, device-to-device copy, read+write); pcie curves (pinned/pageable copies of "
        "1 MB to 1 GB, N MB read as N*2^20 bytes); expert_ffn_tables (all rows)"
    )
    datasheet_list = (
        f"hbm_gib, hbm_datasheet_gbps, peak_tflops (dense). From docs/facts.md §2-3: nvlink.bandwidth_gbps "
        f"{ds['nvlink']['bandwidth_gbps']:g} (NCCL all-to-all busbw in an 8-GPU node), nvlink.latency_us "
        f"{ds['nvlink']['latency_us']:g} and nic.latency_us {ds['nic']['latency_us']:g} (alpha-beta model), "
        f"nic.bandwidth_gbps {ds['nic']['bandwidth_gbps']:g} (one 400 Gb/s NDR NIC per GPU), "
        f"pcie.copy_latency_us {ds['copy_latency_us']:g} (about 7 µs per copy, measured on H100), "
        f"pcie.copy_compute_overlap {ds['copy_compute_overlap']:g} (a 352 MB copy on a side stream during bf16 GEMMs "
        "took 7.67 ms against 6.93 ideal and 13.43 serial on H100: 1 − (7.67 − 6.93)/(13.43 − 6.93) = 0.89; "
        "used for H200 too, not measured there)"
    )
    tables = _tables(measurement["rows"], table_label(measurement))
    extra_note, extra_source = "", ""
    for extra, extra_name in extras or []:
        have = {(t["d"], t["f"], t["dtype"]) for t in tables}
        added = _extra_tables(extra, extra_name, have)
        tables += added
        prov = extra.get("provenance", {})
        extra_note += (
            f" Further expert_ffn_tables ({len(added)}: shapes and dtypes the bf16 measurement lacks) from {extra_name}, "
            f"measured {extra.get('measured', '?')} on {prov.get('device', '?')} (driver {prov.get('driver_version', '?')}, "
            f"torch {prov.get('torch', '?')}); method: {extra.get('method', '?')}"
        )
        extra_source += f"; {extra_name}"
    notes = (
        f"Measured: {measured_list}. Datasheet or docs/facts.md: {datasheet_list}. "
        + ds["gemm_note"].format(gemm=gemm)
        + ". Driver version not recorded by the measurement. Times under ~0.05 ms jitter by tens of percent "
        "on shared virtualized GPUs; each table figure is the minimum of 4 runs."
        + extra_note
    )
    return {
        "name": ds["name"],
        "description": ds["description"],
        "hbm_gib": ds["hbm_gib"],
        "hbm_usable_gib": round(float(dev["mem_gib"]), 2),
        "hbm_bandwidth_gbps": hbm,
        "hbm_datasheet_gbps": ds["hbm_datasheet_gbps"],
        "num_sms": int(dev["sms"]),
        "l2_mb": float(dev["l2_mb"]),
        "peak_tflops": ds["peak_tflops"],
        "nvlink": ds["nvlink"],
        "nic": ds["nic"],
        "pcie": {
            "h2d_pinned": curves["h2d_pinned"],
            "d2h_pinned": curves["d2h_pinned"],
            **({"h2d_pageable": pageable} if pageable else {}),
            "copy_latency_us": ds["copy_latency_us"],
            "copy_compute_overlap": ds["copy_compute_overlap"],
        },
        "comm_overlap": 0.0,
        "expert_ffn_tables": tables,
        "measured": {
            "status": "mixed",
            "device": dev["name"],
            "driver": None,
            "torch": dev.get("torch"),
            "cuda": _cuda_from_torch(dev.get("torch", "")),
            "date": measurement["measured"],
            "method": measurement["what"],
            "source": f"{source_label(measurement)}{extra_source}; {ds['sources']}",
            "notes": notes,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("measurement", type=Path, help="GPU measurement file (expert_ffn_bf16.json)")
    ap.add_argument("out", type=Path, help="profile to write (hwprofiles/NAME.json)")
    ap.add_argument(
        "--extra", type=Path, action="append", default=[],
        help="project measurement file (hwprofiles/measurements/*.json) adding tables of further shapes/dtypes",
    )
    args = ap.parse_args(argv)
    data = json.loads(args.measurement.read_text(encoding="utf-8"))
    extras = [(json.loads(p.read_text(encoding="utf-8")), _extra_name(p)) for p in args.extra]
    profile = build_profile(data, extras)
    parse(HardwareProfile, profile, args.out.name)  # validate before writing
    args.out.write_text(dumps_profile(profile) + "\n", encoding="utf-8")
    n = sum(len(t["tokens"]) for t in profile["expert_ffn_tables"])
    print(f"wrote {args.out}: {len(profile['expert_ffn_tables'])} tables, {n} points", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
