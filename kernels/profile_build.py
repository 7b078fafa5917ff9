"""The hardware profile ``moe-planner profile`` writes, built from the profiler's raw measurement.

A :class:`planner.specs.hardware.HardwareProfile` takes the measured figures
(``hbm_bandwidth_gbps``, ``pcie`` curves and fixed cost, ``num_sms``, ``l2_mb``,
``hbm_usable_gib``, ``expert_ffn_tables``; the NVLink all-to-all bus bandwidth and latency when
the collectives ran on GPUs of one node) and the datasheet figures a profiler cannot measure
(capacity and peaks on the datasheet, NIC, NVLink domain, copy/compute overlap) from a base
profile (``--base``, by default the shipped profile of the same GPU kind). Every other
measurement (grouped GEMM, layer pieces, collectives, checks) stays in the raw measurement file
beside it (``measurements/NAME-profile-DATE.json``), which the profile's provenance names.

torch-free: the raw measurement is plain data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Shipped profile used as the base of a GPU whose name contains the key.
BASE_FOR_DEVICE = {"H200": "h200-sxm", "H100": "h100-sxm", "A100": "a100-sxm-80gb", "B200": "b200"}


def default_base(device: str, device_label: str) -> str | None:
    """The shipped profile of this GPU kind (None on CPU or an unknown GPU)."""
    if device != "cuda":
        return None
    up = device_label.upper()
    return next((v for k, v in BASE_FOR_DEVICE.items() if k in up), None)


def _curve(rows: list[dict[str, Any]], kind: str, latency_us: float) -> list[dict[str, Any]]:
    pts = []
    for r in sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["bytes"]):
        if r["ms"] * 1e3 > latency_us:  # the schema needs every copy longer than its fixed cost
            pts.append({"bytes": int(r["bytes"]), "gbps": round(float(r["GBps"]), 4)})
    return pts


def _tables(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    by: dict[tuple[int, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault((r["d"], r["f"], r["dtype"]), []).append(r)
    tables = []
    for (d, f, dtype), rs in by.items():
        rs = sorted(rs, key=lambda r: r["M"])
        tables.append({
            "d": d, "f": f, "dtype": dtype, "tokens": [r["M"] for r in rs],
            "ffn_ms": [max(round(r["ffn_ms"], 6), 1e-6) for r in rs],
            "w13_ms": [max(round(r["w13_ms"], 6), 1e-6) for r in rs],
            "w2_ms": [max(round(r["w2_ms"], 6), 1e-6) for r in rs],
            "source": f"{source}: expert_ffn rows of {', '.join(dict.fromkeys(u.split(':')[0] for u in rs[0]['models']))}",
        })
    return tables


def build_profile(raw: dict[str, Any], *, name: str, base: Any | None, raw_name: str) -> dict[str, Any]:
    """The profile mapping (validated by the caller against ``HardwareProfile``).

    ``base``: a ``HardwareProfile`` whose datasheet fields are taken (None: only a CPU profile
    may do without one, and then takes measured CPU figures where a GPU has datasheet ones).
    """
    prov = raw["provenance"]
    cuda = prov["device_kind"] == "cuda"
    date = prov["date_utc"][:10]
    log = _Sources([], [], list(raw.get("notes", [])))
    mem = _memory(prov, raw["ceilings"], base, cuda, log)
    peaks = _peaks(raw["ceilings"], base, cuda, log)
    pcie = _pcie(raw["copies"], base, log)
    nvlink, nic, comm_overlap = _fabric(raw.get("collectives", {}), base, cuda, mem["hbm_bandwidth_gbps"], log)
    tables = _tables(raw["expert_ffn"]["rows"], raw_name)
    log.measured.append(
        f"expert_ffn_tables ({len(tables)} tables: {len({(t['d'], t['f']) for t in tables})} shapes x "
        f"{', '.join(sorted({t['dtype'] for t in tables}))} x {len(raw['tokens'])} token counts)"
    )
    if raw["expert_ffn"].get("fp8_note"):
        log.notes.append(f"no fp8 tables: {raw['expert_ffn']['fp8_note']}")

    label = prov["device"]
    status = "mixed" if base is not None else "measured"
    if cuda:
        description = f"{label} profiled by moe-planner profile on {date}"
    else:
        description = f"CPU profile ({label}) from moe-planner profile --device cpu on {date}: a test profile, not a GPU"
    if base is not None:
        description += f"; datasheet fields from {base.name}"
    return {
        "name": name,
        "description": description,
        **mem,
        "peak_tflops": peaks,
        "nvlink": nvlink,
        "nic": nic,
        "pcie": pcie,
        "comm_overlap": comm_overlap,
        "expert_ffn_tables": tables,
        "measured": {
            "status": status,
            "device": label,
            "driver": prov.get("driver_version"),
            "torch": prov["torch"],
            "cuda": prov.get("cuda"),
            "date": date,
            "method": raw["method"],
            "source": f"{raw_name} (raw measurements, {prov.get('command_line') or 'moe-planner profile'})"
            + (f"; datasheet fields from base profile {base.name} ({base.measured.source})" if base is not None else ""),
            "notes": f"Measured: {'; '.join(log.measured)}. "
            + (f"From base profile {base.name}: {', '.join(log.sheet)}. " if base is not None else "")
            + " ".join(log.notes),
        },
    }


@dataclass
class _Sources:
    """Which fields were measured, which came from the base's datasheet, and notes, in order."""

    measured: list[str]
    sheet: list[str]
    notes: list[str]


def _memory(prov: dict[str, Any], ceil: dict[str, Any], base: Any | None, cuda: bool, log: _Sources) -> dict[str, Any]:
    """HBM capacity and bandwidth, SMs and L2, in the profile's field order."""
    hbm_bw = round(float(ceil["copy_GBps_rw"]), 2)
    log.measured.append(f"hbm_bandwidth_gbps ({hbm_bw:g}, a {ceil['copy_bytes'] >> 20} MB device copy, read+write)")
    usable = prov.get("mem_gib")
    hbm_gib = base.hbm_gib if (base is not None and cuda) else None
    if usable is not None and (hbm_gib is None or usable > hbm_gib):
        hbm_gib = math.ceil(usable)
        log.measured.append("hbm_gib (rounded up from the memory the runtime reports)")
    elif hbm_gib is not None:
        log.sheet.append("hbm_gib")
    if hbm_gib is None:
        hbm_gib = 1.0
        log.notes.append("memory size unknown: hbm_gib set to 1")
    ds_bw = base.hbm_datasheet_gbps if (base is not None and cuda) else None
    if ds_bw is not None and hbm_bw > ds_bw:
        log.notes.append(f"the measured copy ({hbm_bw:g} GB/s) exceeds the base's datasheet HBM bandwidth ({ds_bw:g}): dropped")
        ds_bw = None
    sms = int(prov.get("sms") or (base.num_sms if base is not None else 1))
    log.measured.append(f"num_sms ({sms}{', CPU threads' if not cuda else ''})")
    l2 = prov.get("l2_mb") or (base.l2_mb if (base is not None and cuda) else 1.0)
    (log.measured if prov.get("l2_mb") else log.sheet).append(f"l2_mb ({l2:g})")
    return {
        "hbm_gib": float(hbm_gib),
        "hbm_usable_gib": round(float(usable), 2) if usable else None,
        "hbm_bandwidth_gbps": hbm_bw,
        "hbm_datasheet_gbps": ds_bw,
        "num_sms": sms,
        "l2_mb": float(l2),
    }


def _peaks(ceil: dict[str, Any], base: Any | None, cuda: bool, log: _Sources) -> dict[str, float]:
    """Datasheet peaks of the base on a GPU (the measured GEMM as a note); the measured GEMM otherwise."""
    gemm = float(ceil["gemm_TFLOPs"])
    if cuda and base is not None:
        peaks = dict(base.peak_tflops)
        log.sheet.append("peak_tflops (dense datasheet peaks)")
        log.notes.append(f"bf16 {ceil['gemm_n']}^3 GEMM measured {gemm:.1f} TFLOP/s against {peaks.get('bf16', 0):g} on the datasheet")
        return peaks
    log.measured.append(f"peak_tflops.bf16 ({gemm:.3g}, a {ceil['gemm_n']}^3 {ceil['gemm_dtype']} GEMM)")
    return {"bf16": round(max(gemm, 1e-6), 6)}


def _pcie(cp: dict[str, Any], base: Any | None, log: _Sources) -> dict[str, Any]:
    """Copy curves and the fixed cost per copy (the base's copy/compute overlap)."""
    fc = cp["fixed_cost"].get("h2d_pinned", {})
    lat = fc.get("fixed_us_fit_4KB_1MB")
    min_us = min(r["ms"] * 1e3 for r in cp["rows"])
    lat = 0.0 if lat is None else max(0.0, min(float(lat), 0.9 * min_us))
    lat = round(lat, 3)
    log.measured.append(f"pcie curves and copy_latency_us ({lat:g}, intercept of t = a + bytes·b up to 1 MB, "
                        "kept below the fastest copy)")
    overlap = base.pcie.copy_compute_overlap if base is not None else 0.0
    pcie: dict[str, Any] = {
        "h2d_pinned": _curve(cp["rows"], "h2d_pinned", lat),
        "d2h_pinned": _curve(cp["rows"], "d2h_pinned", lat),
        "h2d_pageable": _curve(cp["rows"], "h2d_pageable", lat) or None,
        "copy_latency_us": lat,
        "copy_compute_overlap": overlap,
    }
    if base is not None:
        log.sheet.append(f"pcie.copy_compute_overlap ({overlap:g})")
    return pcie


def _fabric(
    coll: dict[str, Any], base: Any | None, cuda: bool, hbm_bw: float, log: _Sources
) -> tuple[dict[str, Any], dict[str, Any], float]:
    """(nvlink, nic, comm_overlap): the base's, with NVLink measured by NCCL on one node."""
    if base is not None:
        nvlink = base.nvlink.model_dump()
        nic = base.nic.model_dump()
        comm_overlap = base.comm_overlap
        log.sheet += ["nic", "comm_overlap"]
    else:
        # A CPU profile without a base: one "domain" of one device; figures from the gloo run when
        # there was one, else the host copy bandwidth (nothing here is a GPU fabric).
        nvlink = {"bandwidth_gbps": hbm_bw / 2, "latency_us": 10.0, "gpus_per_domain": 1}
        nic = {"bandwidth_gbps": hbm_bw / 2, "latency_us": 20.0}
        comm_overlap = 0.0
        log.notes.append("no base profile: nvlink and nic are placeholders (half the host copy bandwidth, 10/20 µs)")
    crow = coll.get("rows") or []
    if cuda and crow and coll.get("one_node") and coll.get("backend") == "nccl":
        big, small = max(crow, key=lambda r: r["bytes"]), min(crow, key=lambda r: r["bytes"])
        nvlink = {**nvlink, "bandwidth_gbps": round(big["all_to_all_busbw_GBps"], 2),
                  "latency_us": round(small["all_to_all_ms"] * 1e3, 2)}
        log.measured.append(
            f"nvlink.bandwidth_gbps ({nvlink['bandwidth_gbps']:g}, NCCL all-to-all bus bandwidth at {big['bytes']} B over "
            f"{coll['world_size']} GPUs) and nvlink.latency_us (all-to-all of {small['bytes']} B)"
        )
    elif base is not None:
        log.sheet.append("nvlink")
    return nvlink, nic, comm_overlap
